"""Every config shipped in configs/ loads and validates; the paper configs match the paper."""
import glob
import json
import os

import pytest

from megatron_sffn.config import load_config
from megatron_sffn.model.accounting import model_stats
from megatron_sffn.model.paper import PAPER_XL_PARAMS_M

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.json"), recursive=True))


def test_there_are_configs():
    names = {os.path.basename(c) for c in CONFIGS}
    assert "1p3b_lowrank.json" in names
    for size in ("110m", "335m", "730m", "1p3b"):
        for kind in ("dense", "lowrank", "blockdense", "blockshuffle"):
            assert f"{size}_{kind}.json" in names
            if kind != "dense":
                assert f"{size}_{kind}_sgt.json" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, CONFIG_DIR))
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.name == os.path.basename(path)[:-5]
    if cfg.name.endswith("_sgt"):
        assert cfg.self_guided.enabled and cfg.self_guided.same_flops


@pytest.mark.parametrize("kind", list(PAPER_XL_PARAMS_M))
def test_1p3b_configs_have_the_paper_sizes(kind):
    cfg = load_config(os.path.join(CONFIG_DIR, f"1p3b_{kind}.json"))
    total = model_stats(cfg.model).total_params / 1e6
    assert abs(total - PAPER_XL_PARAMS_M[kind]) / PAPER_XL_PARAMS_M[kind] < 0.01


def test_generator_is_in_sync(tmp_path):
    from tools.make_configs import main
    main(["--out", str(tmp_path)])
    for generated in glob.glob(str(tmp_path / "*.json")):
        shipped = os.path.join(CONFIG_DIR, os.path.basename(generated))
        assert json.load(open(generated)) == json.load(open(shipped)), os.path.basename(generated)

