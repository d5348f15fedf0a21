"""configs/{2p7b,6p7b,13b}_*: written by tools/make_large_configs.py, GPT-3 shapes at the sizes
their names say, the paper's 32% structures, and layouts the planner predicts to fit."""
import glob
import json
import os

import pytest

from megatron_sffn.config import config_from_dict, load_config
from megatron_sffn.model.accounting import dense_equivalent, model_stats
from megatron_sffn.model.paper import GPT3_SIZES
from megatron_sffn.planner.hardware import Hardware
from megatron_sffn.planner.layout import Layout
from megatron_sffn.planner.plan import layout_config, predict
from tools.make_large_configs import LAYOUTS, main

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
NAMES = sorted(LAYOUTS)
SIZE_PARAMS = {"2p7b": 2.7e9, "6p7b": 6.7e9, "13b": 13e9}


def shipped(name):
    with open(os.path.join(CONFIG_DIR, f"{name}.json")) as f:
        return json.load(f)


def test_every_size_kind_and_guided_variant_is_there():
    expected = {f"{s}_{k}{g}" for s in GPT3_SIZES for k in ("dense", "lowrank", "blockdense", "blockshuffle")
                for g in ([""] if k == "dense" else ["", "_sgt"])}
    assert set(NAMES) == expected and len(expected) == 21
    on_disk = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.json"))}
    assert expected <= on_disk


def test_generator_is_in_sync(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name[:-5] for p in tmp_path.glob("*.json"))
    assert written == NAMES
    for name in written:
        assert json.load(open(tmp_path / f"{name}.json")) == shipped(name), name


def _keys(d, prefix=""):
    return {prefix + k for k, v in d.items()} | {x for k, v in d.items() if isinstance(v, dict) and k != "layouts"
                                                 for x in _keys(v, f"{prefix}{k}.")}


@pytest.mark.parametrize("name", NAMES)
def test_config_has_the_paper_recipe_and_a_gpt3_shape(name):
    raw = shipped(name)
    extra = _keys(raw) - _keys(shipped("1p3b_lowrank"))
    assert extra <= {"layouts", "training.activation_checkpointing", "parallel.sequence_parallel", "model.ffn.blocks"}
    cfg = load_config(os.path.join(CONFIG_DIR, f"{name}.json"), world_size=4)
    size = name.split("_")[0]
    m = cfg.model
    assert (m.hidden_size, m.num_layers, m.num_heads, m.ffn_hidden_size) == GPT3_SIZES[size]
    assert (m.ffn_hidden_size, m.vocab_size, m.seq_length) == (4 * m.hidden_size, 32000, 1024)
    assert cfg.training.global_batch_size == 512 and cfg.self_guided.enabled == name.endswith("_sgt")


@pytest.mark.parametrize("size", list(GPT3_SIZES))
def test_parameter_counts_are_what_the_names_say(size):
    dense = model_stats(load_config(os.path.join(CONFIG_DIR, f"{size}_dense.json")).model)
    assert dense.total_params == pytest.approx(SIZE_PARAMS[size], rel=0.05)
    assert load_config(os.path.join(CONFIG_DIR, f"{size}_dense.json")).training.train_tokens == pytest.approx(
        20 * dense.total_params, rel=0.01)
    for kind in ("lowrank", "blockdense", "blockshuffle"):
        m = load_config(os.path.join(CONFIG_DIR, f"{size}_{kind}.json")).model
        first_dense = model_stats(dense_equivalent(m)).ffn_params / m.num_layers  # layer 0 stays dense
        structured_share = (model_stats(m).ffn_params - first_dense) / (dense.ffn_params - first_dense)
        assert 0.29 < structured_share < 0.34, (kind, structured_share)


@pytest.mark.parametrize("name", NAMES)
def test_noted_layouts_are_legal_and_predicted_to_fit(name):
    raw = shipped(name)
    assert raw["layouts"]["4x141GB"] == [o for o in LAYOUTS[name]["4x141GB"].overrides(512)
                                         if not o.startswith("training.global_batch_size")]
    runs_as_written = config_from_dict(raw, world_size=4)
    for machine, memory in (("4x141GB", 141), ("4x80GB", 80)):
        cfg = config_from_dict(raw, raw["layouts"][machine], world_size=4)
        p, t = cfg.parallel, cfg.training
        layout = Layout(p.tensor, p.pipeline, 4 // (p.tensor * p.pipeline), p.zero_stage, t.micro_batch_size,
                        t.activation_checkpointing, p.sequence_parallel)
        assert layout == LAYOUTS[name][machine]
        pred = predict(layout_config(raw, layout, 512), layout, Hardware(gpu_memory_gb=memory))
        assert pred.peak_gb <= 0.9 * memory, (machine, layout.short(), pred.peak_gb)
        if machine == "4x141GB":
            assert (runs_as_written.parallel, runs_as_written.training.micro_batch_size) == (p, t.micro_batch_size)
