"""Every config error stops with one message naming the key and the value."""
import json

import pytest

from megatron_sffn.config import Config, ConfigError, check_layout, config_from_dict, load_config, train_steps


def base(**sections):
    data = {"model": {"vocab_size": 128, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                      "ffn_hidden_size": 256, "seq_length": 32, "ffn": {"kind": "lowrank", "rank": 16}},
            "training": {"train_steps": 10, "micro_batch_size": 2, "global_batch_size": 8}}
    for name, value in sections.items():
        data.setdefault(name, {}).update(value)
    return data


def model_with(**fields):
    data = base()
    data["model"].update(fields)
    return data


def error_of(data, overrides=None, world_size=None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, overrides, world_size)
    return str(info.value)


def test_valid_config_loads_typed():
    cfg = config_from_dict(base())
    assert isinstance(cfg, Config)
    assert cfg.model.ffn.rank == 16 and cfg.model.kv_heads == 4 and train_steps(cfg) == 10


def test_unknown_keys_are_named():
    assert "'model.ffn.rnak'" in error_of(model_with(ffn={"kind": "lowrank", "rnak": 3}))
    assert "'trainning'" in error_of({**base(), "trainning": {}})


def test_wrong_types_are_named():
    msg = error_of(model_with(hidden_size="64"))
    assert "'model.hidden_size'" in msg and "'64'" in msg
    assert "'model.bias'" in error_of(model_with(bias=1))
    assert "'data.paths'" in error_of(base(data={"paths": "x"}))


@pytest.mark.parametrize("fields, key", [
    ({"ffn": {"kind": "blockdense", "rank": 16, "blocks": 3}}, "model.ffn.blocks"),        # blocks vs width
    ({"ffn": {"kind": "blockshuffle", "blocks": 5}}, "model.ffn.blocks"),
    ({"ffn_hidden_size": 250, "ffn": {"kind": "blockshuffle", "blocks": 4}}, "model.ffn_hidden_size"),
    ({"ffn": {"kind": "blockdense", "rank": 18, "blocks": 4}}, "model.ffn.rank"),           # blocks vs rank
    ({"ffn": {"kind": "lowrank", "rank": 64}}, "model.ffn.rank"),                          # rank too large
    ({"ffn": {"kind": "lowrank"}}, "model.ffn.rank"),                                      # rank missing
    ({"ffn": {"kind": "sparse"}}, "model.ffn.kind"),
    ({"num_heads": 5}, "model.num_heads"),                                                 # heads vs width
    ({"num_kv_heads": 3}, "model.num_kv_heads"),                                          # kv vs heads
    ({"norm": "batchnorm"}, "model.norm"),
])
def test_impossible_shapes_are_named(fields, key):
    msg = error_of(model_with(**fields))
    assert key in msg


@pytest.mark.parametrize("tp, fields, key", [
    (3, {}, "model.num_heads"),
    (4, {"num_kv_heads": 2}, "model.num_kv_heads"),
    (8, {"num_heads": 8, "ffn_hidden_size": 260, "ffn": {"kind": "lowrank", "rank": 16}}, "model.ffn_hidden_size"),
    (8, {"num_heads": 8, "ffn": {"kind": "blockdense", "rank": 16, "blocks": 4}}, "model.ffn.blocks"),
])
def test_tensor_parallel_must_divide(tp, fields, key):
    data = model_with(**fields)
    data["parallel"] = {"tensor": tp}
    msg = error_of(data)
    assert "parallel.tensor" in msg and key in msg and str(tp) in msg


def test_layout_errors():
    assert "world size 6" in error_of(base(parallel={"tensor": 2, "pipeline": 2}), world_size=6)
    assert "parallel.pipeline" in error_of(base(parallel={"pipeline": 3}))  # more stages than blocks
    assert "parallel.zero_stage" in error_of(base(parallel={"pipeline": 2, "zero_stage": 2}))
    assert "global_batch_size" in error_of(base(training={"global_batch_size": 6}), world_size=2)
    assert check_layout(config_from_dict(base(parallel={"tensor": 2})), 8) == 4


def test_stop_condition_must_be_unique():
    data = base(training={"train_tokens": 1000})
    assert "train_steps" in error_of(data)
    data["training"].pop("train_steps")
    cfg = config_from_dict(data)
    assert train_steps(cfg) == 4  # ceil(1000 / (8 * 32))


def test_overrides_apply_and_are_validated():
    cfg = config_from_dict(base(), ["model.ffn.rank=8", "data.split=98,1,1", "self_guided.enabled=true",
                                    "data.paths=[\"a\", \"b\"]"])
    assert cfg.model.ffn.rank == 8 and cfg.data.split == "98,1,1" and cfg.self_guided.enabled
    assert cfg.data.paths == ["a", "b"]
    assert "'model.ffn.rnk'" in error_of(base(), ["model.ffn.rnk=8"])
    assert "'model.ffn.rank'" in error_of(base(), ["model.ffn.rank=fast"])
    assert "key.path=value" in error_of(base(), ["model.ffn.rank"])


def test_deepspeed_section_cannot_shadow_owned_keys():
    assert "train_batch_size" in error_of(base(deepspeed={"train_batch_size": 4}))
    cfg = config_from_dict(base(deepspeed={"zero_optimization": {"reduce_bucket_size": 1000}}))
    assert cfg.deepspeed["zero_optimization"]["reduce_bucket_size"] == 1000


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(base()))
    assert load_config(good, ["model.num_layers=3"]).model.num_layers == 3


def test_cuda_graphs_name_what_they_need(monkeypatch):
    from megatron_sffn.config import ConfigError, validate
    from tests.distributed.common import tiny_config

    def error(**changes):
        cfg = tiny_config("lowrank", precision="bf16fused")
        cfg.training.compile = cfg.training.cuda_graphs = True
        for key, value in changes.items():
            section, field = key.split("__")
            setattr(getattr(cfg, section), field, value)
        try:
            validate(cfg)
        except ConfigError as e:
            return str(e)
        return None

    assert error() is None
    assert error(optimizer__implementation="auto") is None  # auto picks fused for bf16, ZeRO 1
    assert "'training.compile' = true" in error(training__compile=False)
    assert "'parallel.pipeline' = 1, got 2" in error(parallel__pipeline=2)
    assert "'parallel.tensor' = 1, got 2" in error(parallel__tensor=2)
    monkeypatch.setenv("MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS", "1")  # the opt-in lifts only that refusal
    assert error(parallel__tensor=2) is None
    assert "'parallel.pipeline' = 1, got 2" in error(parallel__tensor=2, parallel__pipeline=2)
    monkeypatch.setenv("MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS", "yes")
    assert "'parallel.tensor' = 1, got 2" in error(parallel__tensor=2)
    assert "'training.activation_checkpointing' = false" in error(training__activation_checkpointing=True)
    assert "needs the fused optimizer" in error(optimizer__implementation="deepspeed")
    assert "ZeRO 2" in error(optimizer__implementation="auto", parallel__zero_stage=2)



def test_cuda_graphs_wait_for_the_guides_to_drop_under_reduce_flop():
    # each step's reduce_flop draws are a new path through CUDA-graph trees (a new recording
    # per step): the guided phase runs compiled only, the unguided one as graphs
    from megatron_sffn.training.engine import replays_as_cuda_graphs
    from tests.distributed.common import tiny_config

    cfg = tiny_config("lowrank_sgt", precision="bf16fused")
    cfg.training.compile = cfg.training.cuda_graphs = True
    assert cfg.self_guided.enabled and cfg.self_guided.reduce_flop
    assert not replays_as_cuda_graphs(cfg, guided=True)
    assert replays_as_cuda_graphs(cfg, guided=False)
    cfg.self_guided.reduce_flop = False  # one path through the blocks: graphs from the start
    assert replays_as_cuda_graphs(cfg, guided=True)
    cfg.training.cuda_graphs = False
    assert not replays_as_cuda_graphs(cfg, guided=False)


def test_a_shipped_config_is_found_by_name_from_any_folder_and_a_path_wins(tmp_path, monkeypatch):
    from megatron_sffn.config import CONFIGS_DIR
    monkeypatch.chdir(tmp_path)
    assert load_config("1p3b_lowrank.json").name == "1p3b_lowrank"          # the design card's command
    assert load_config("1p3b_lowrank").name == "1p3b_lowrank"
    assert load_config("configs/tiny_demo.json").name == "tiny_demo"        # the repository's path, elsewhere
    own = base()
    own["name"] = "mine"
    (tmp_path / "1p3b_lowrank.json").write_text(json.dumps(own))
    assert load_config("1p3b_lowrank.json").name == "mine"                  # an existing path always wins
    assert load_config(CONFIGS_DIR / "tiny_demo.json").name == "tiny_demo"


def test_an_unknown_config_name_lists_the_closest_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("1p3b_lowrnak.json")
    line = str(info.value)
    assert "\n" not in line and line.startswith("config file not found: 1p3b_lowrnak.json; closest shipped configs")
    closest = line.split("): ")[-1].split(", ")
    assert closest[0] == "1p3b_lowrank.json" and len(closest) == 3


def test_compile_is_on_where_cuda_is_and_cuda_graphs_where_their_check_allows(monkeypatch):
    from megatron_sffn.config import speed_chosen_because
    monkeypatch.delenv("MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS", raising=False)
    bf16 = ["training.precision=bf16"]
    cpu = config_from_dict(base(), bf16, cuda=False)
    assert (cpu.training.compile, cpu.training.cuda_graphs) == (False, False)       # today's CPU behaviour
    assert speed_chosen_because(cpu) == {"compile": "auto, no CUDA", "cuda_graphs": "auto: no CUDA",
                                         "cpp_wrapper": "auto: no compile", "blocks_per_region": "auto, tensor 1"}
    gpu = config_from_dict(base(), bf16, cuda=True)
    assert (gpu.training.compile, gpu.training.cuda_graphs) == (True, True)
    assert speed_chosen_because(gpu) == {"compile": "auto, CUDA", "cuda_graphs": "auto",
                                         "cpp_wrapper": "auto: CUDA graphs replay the blocks",
                                         "blocks_per_region": "auto, tensor 1"}
    assert gpu.to_dict()["training"]["compile"] is True                             # saved: what ran
    # every refusal of an explicit `true` is a reason for "auto" to decline, named in the banner
    for overrides, reason in [(["parallel.pipeline=2"], "needs 'parallel.pipeline' = 1, got 2"),
                              (["training.activation_checkpointing=true"],
                               "needs 'training.activation_checkpointing' = false"),
                              (["optimizer.implementation=deepspeed"], "needs the fused optimizer"),
                              (["training.compile=false"], "needs 'training.compile' = true"),
                              (["model.num_heads=4", "parallel.tensor=2"], "needs 'parallel.tensor' = 1, got 2")]:
        cfg = config_from_dict(base(), bf16 + overrides, cuda=True)
        assert cfg.training.cuda_graphs is False, overrides
        assert speed_chosen_because(cfg)["cuda_graphs"] == f"auto: {reason}", overrides
    # measured on one GPU only: on several, auto leaves the graphs off and says so (--cuda-graphs opts in)
    several = config_from_dict(base(), bf16, world_size=2, cuda=True)
    assert (several.training.compile, several.training.cuda_graphs) == (True, False)
    assert speed_chosen_because(several)["cuda_graphs"] == "auto: not yet measured on several GPUs"
    assert config_from_dict(base(), bf16, world_size=1, cuda=True).training.cuda_graphs is True
    # one legality check: what lifts a refusal of `true` turns "auto" on there too
    monkeypatch.setenv("MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS", "1")
    assert config_from_dict(base(), bf16 + ["parallel.tensor=2"], cuda=True).training.cuda_graphs is True
    # explicit values win, and an explicit true is still checked
    forced = config_from_dict(base(), ["training.compile=true", "training.cuda_graphs=false"], cuda=False)
    assert (forced.training.compile, forced.training.cuda_graphs) == (True, False)
    assert speed_chosen_because(forced) == {"compile": "training.compile = true",
                                            "cuda_graphs": "training.cuda_graphs = false",
                                            "cpp_wrapper": "auto: no CUDA", "blocks_per_region": "auto, tensor 1"}
    assert "needs 'training.compile' = true" in error_of(base(training={"train_steps": 10, "cuda_graphs": True}),
                                                         ["training.compile=false"])
    assert "must be true, false or \"auto\"" in error_of(base(), ["training.compile=sometimes"])


def test_blocks_per_region_auto_groups_four_blocks_at_tensor_above_one():
    """A tensor-parallel rank's blocks are small and its host is the bound (docs/performance.md):
    "auto" compiles AUTO_BLOCKS_PER_REGION blocks to a region there, one elsewhere; a number
    is kept; a config written for another machine says "auto" again where auto chose."""
    from megatron_sffn.config import AUTO_BLOCKS_PER_REGION, config_for_another_machine, speed_chosen_because
    assert AUTO_BLOCKS_PER_REGION == 4
    one = config_from_dict(base(), [], cuda=True)
    tp = config_from_dict(base(), ["model.num_heads=4", "parallel.tensor=2"], cuda=True)
    assert (one.training.blocks_per_region, tp.training.blocks_per_region) == (1, 4)
    assert speed_chosen_because(tp)["blocks_per_region"] == "auto, tensor > 1"
    assert config_for_another_machine(tp)["training"]["blocks_per_region"] == "auto"
    assert tp.to_dict()["training"]["blocks_per_region"] == 4                        # saved: what ran
    two = config_from_dict(base(), ["model.num_heads=4", "parallel.tensor=2", "training.blocks_per_region=2"])
    assert two.training.blocks_per_region == 2
    assert speed_chosen_because(two)["blocks_per_region"] == "training.blocks_per_region = 2"
    assert config_for_another_machine(two)["training"]["blocks_per_region"] == 2
    for bad, shown in (("0", "0"), ("-1", "-1"), ('"many"', "'many'")):
        assert (f"config key 'training.blocks_per_region' = {shown} must be \"auto\" or a positive whole number"
                in error_of(base(), [f"training.blocks_per_region={bad}"]))
    for bad in ("true", "2.5"):  # the types' own check
        assert "config key 'training.blocks_per_region' must be int or str" in error_of(
            base(), [f"training.blocks_per_region={bad}"])


def test_cpp_wrapper_is_on_where_compiled_blocks_run_on_cuda_and_needs_compile():
    from megatron_sffn.config import speed_chosen_because
    bf16 = ["training.precision=bf16"]
    assert config_from_dict(base(), bf16 + ["training.cuda_graphs=false"], cuda=True).training.cpp_wrapper is True
    several = config_from_dict(base(), bf16, world_size=4, cuda=True)   # graphs auto-off on several GPUs
    assert (several.training.cuda_graphs, several.training.cpp_wrapper) == (False, True)
    graphs = config_from_dict(base(), bf16, cuda=True)   # a replay runs no wrapper: nothing to gain
    assert (graphs.training.cuda_graphs, graphs.training.cpp_wrapper) == (True, False)
    eager_gpu = config_from_dict(base(), bf16 + ["training.compile=false"], cuda=True)
    assert eager_gpu.training.cpp_wrapper is False
    assert speed_chosen_because(eager_gpu)["cpp_wrapper"] == "auto: no compile"
    # explicit values win: on for compiled CPU blocks (the tests' way to run it), off as the fallback
    cpu = config_from_dict(base(), ["training.compile=true", "training.cpp_wrapper=true"], cuda=False)
    assert cpu.training.cpp_wrapper is True
    assert speed_chosen_because(cpu)["cpp_wrapper"] == "training.cpp_wrapper = true"
    off = config_from_dict(base(), bf16 + ["training.cpp_wrapper=false"], cuda=True)
    assert (off.training.compile, off.training.cpp_wrapper) == (True, False)
    # true without compiled blocks is one error naming both keys, whether compile is false or resolves off
    assert "'training.cpp_wrapper' = true needs 'training.compile'" in error_of(
        base(), ["training.cpp_wrapper=true", "training.compile=false"])
    with pytest.raises(ConfigError, match="'training.cpp_wrapper' = true needs the blocks compiled.*auto, no CUDA"):
        config_from_dict(base(), ["training.cpp_wrapper=true"], cuda=False)
    assert "must be true, false or \"auto\"" in error_of(base(), ["training.cpp_wrapper=cpp"])


def test_cpp_wrapper_under_tensor_parallelism_follows_what_the_installed_torch_can_call():
    """The traced collectives' group name is typed Any in torch 2.13 (the C++ wrapper cannot pass
    it) and str in 2.11: auto is on under TP only where the wrapper can call them, and an
    explicit true where it cannot is one error naming the torch version."""
    import torch
    from megatron_sffn.config import speed_chosen_because
    schema = torch.ops._c10d_functional.all_gather_into_tensor.default._schema
    callable_from_cpp = all(str(arg.real_type) != "Any" for arg in schema.arguments)
    tp = ["training.precision=bf16", "model.num_heads=4", "parallel.tensor=2", "training.cuda_graphs=false"]
    auto = config_from_dict(base(), tp, cuda=True)
    assert auto.training.cpp_wrapper is callable_from_cpp
    outside = config_from_dict(base(), tp + ["training.trace_collectives=false"], cuda=True)
    assert outside.training.cpp_wrapper is True  # collectives outside the graphs: nothing to pass
    if callable_from_cpp:
        assert config_from_dict(base(), tp + ["training.cpp_wrapper=true"], cuda=True).training.cpp_wrapper
    else:
        assert speed_chosen_because(auto)["cpp_wrapper"] == \
            f"auto: needs 'parallel.tensor' = 1 with torch {torch.__version__}"
        message = error_of(base(), tp + ["training.cpp_wrapper=true", "training.compile=true"])
        assert "'training.cpp_wrapper' = true needs 'parallel.tensor' = 1 with torch" in message
        assert "group name typed Any" in message


def test_a_config_for_another_machine_keeps_what_was_chosen_automatically():
    from megatron_sffn.config import config_for_another_machine
    gpu = config_from_dict(base(), ["training.precision=bf16", "training.cuda_graphs=false"], cuda=True)
    written = config_for_another_machine(gpu)["training"]
    assert written["compile"] == "auto" and written["cuda_graphs"] is False


def test_launcher_flags_force_or_opt_out():
    from megatron_sffn.training.cli import parse
    argv = ["--config", "c.json"]
    assert not any("compile" in o or "cuda_graphs" in o for o in parse(argv)[1])      # the config's own "auto"
    assert "training.compile=false" in parse(argv + ["--no-compile"])[1]
    assert "training.compile=true" in parse(argv + ["--compile"])[1]
    assert "training.cuda_graphs=false" in parse(argv + ["--no-cuda-graphs"])[1]


def test_profile_flags_set_the_profile_section_and_its_errors_name_the_key():
    from megatron_sffn.training.cli import parse
    _, overrides = parse(["--config", "c.json", "--profile", "--profile-step-start", "5", "--profile-step-end", "7",
                          "--profile-ranks", "0", "3"])
    cfg = config_from_dict(base(), overrides, world_size=4)
    p = cfg.training.profile
    assert (p.enabled, p.start_step, p.end_step, p.ranks) == (True, 5, 7, [0, 3])
    assert config_from_dict(base()).training.profile.enabled is False  # off unless asked for
    assert "'training.profile.end_step' = 5 must be after 'training.profile.start_step' = 5" in \
        error_of(base(), ["training.profile.end_step=5", "training.profile.start_step=5"])
    assert "'training.profile.start_step' = 0" in error_of(base(), ["training.profile.start_step=0"])
    assert "outside this world of 2" in error_of(base(), ["training.profile.ranks=[0, 2]"], world_size=2)
    assert "non-empty list" in error_of(base(), ["training.profile.ranks=[]"])


def test_sequence_parallel_auto_is_on_wherever_tensor_allows_it():
    """Without sequence parallelism every tensor rank repeats the norms and residual adds on all
    tokens (docs/performance.md): "auto" turns it on at tensor > 1 unless the tensor size does not
    divide the sequence or ZeRO 3 partitions the replicated weights; it says why either way; an
    explicit value is kept; a config written for another machine says "auto" again."""
    from megatron_sffn.config import config_for_another_machine
    one = config_from_dict(base())
    assert one.parallel.sequence_parallel is False and one.parallel.chosen_because == "auto: tensor 1"
    tp = config_from_dict(base(), ["parallel.tensor=2"])
    assert tp.parallel.sequence_parallel is True and tp.parallel.chosen_because == "auto, tensor > 1"
    assert tp.to_dict()["parallel"]["sequence_parallel"] is True                      # saved: what ran
    assert config_for_another_machine(tp)["parallel"]["sequence_parallel"] == "auto"
    odd = config_from_dict(base(model={"seq_length": 30}), ["parallel.tensor=4"])
    assert odd.parallel.sequence_parallel is False
    assert odd.parallel.chosen_because == "auto: tensor 4 does not divide model.seq_length 30"
    zero3 = config_from_dict(base(), ["parallel.tensor=2", "parallel.zero_stage=3"])
    assert (zero3.parallel.sequence_parallel, zero3.parallel.chosen_because) == (False, "auto: ZeRO 3")
    off = config_from_dict(base(), ["parallel.tensor=2", "parallel.sequence_parallel=false"])
    assert off.parallel.sequence_parallel is False
    assert off.parallel.chosen_because == "parallel.sequence_parallel = false"
    assert config_for_another_machine(off)["parallel"]["sequence_parallel"] is False
    assert "'parallel.tensor' = 4 must divide 'model.seq_length' = 30" in error_of(
        base(model={"seq_length": 30}), ["parallel.tensor=4", "parallel.sequence_parallel=true"])
    assert "config key 'parallel.sequence_parallel' = 'yes' must be true, false or \"auto\"" in error_of(
        base(), ['parallel.sequence_parallel="yes"'])
    from megatron_sffn.config import validate
    built = config_from_dict(base(), ["parallel.tensor=2"])
    built.parallel.sequence_parallel = "auto"   # a Config made in code: validate resolves it too
    validate(built)
    assert built.parallel.sequence_parallel is True
