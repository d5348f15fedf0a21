"""benchmarks/bench_train.py: TFLOP/s from the config the case really ran (a shape-changing
variant's own FLOPs), --reference (the reference beside each case, ratios in the JSON), and
--guided (the guided phase's executed guide FLOPs, replayed with the model's own draws)."""
import json

import pytest

from megatron_sffn.config import load_config
from megatron_sffn.model import GPTModel
from megatron_sffn.model.accounting import model_stats, train_flops_per_token
from megatron_sffn.structured.guide import GuideState
from megatron_sffn.training.phases import RunPhases
from tests import background
from tests.benchmarks.common import LLAMA, ROOT, SHAPE, TINY, finish_script, start_script

import bench_train  # noqa: E402  (benchmarks/ is on sys.path via common)
from sgt_phase import executed_guide_flops_per_token  # noqa: E402

LOWRANK_1P3B = f"{ROOT}/configs/1p3b_lowrank.json"
WIDE = ["model.hidden_size=4096", "model.num_heads=32", "model.ffn_hidden_size=16384", "model.ffn.rank=1024"]
OUT = "{out}"   # the --out file, in a folder of its own per command
COMMANDS = {
    "reference": ["--smoke", "--modes", "eager", "--reference", "--variant", "deep:model.num_layers=3",
                  "--out", OUT],
    "loss_after": ["--smoke", "--modes", "eager", "--steps", "6", "--warmup", "2", "--loss-after", "2",
                   "--variant", "same:training.seed=1234", "--variant", "fast:optimizer.lr=0.01", "--out", OUT],
    "guided": ["--smoke", "--modes", "eager", "--guided", "--steps", "8", "--warmup", "1", "--out", OUT],
    "emulate": ["--smoke", "--configs", TINY, "--modes", "eager", "--nproc", "4", "--emulate",
                "--override", "parallel.tensor=2", "--override", "parallel.sequence_parallel=false",
                "--variant", "sp:parallel.sequence_parallel=true", "--out", OUT],
    "emulate_stage": ["--smoke", "--configs", TINY, "--modes", "eager", "--nproc", "2", "--emulate", "1",
                      "--override", "parallel.pipeline=2", "--out", OUT],
}


TEST_OF = {"reference": "test_reference_ratio_per_case_with_a_shape_changing_variant",
           "loss_after": "test_loss_after_compares_each_variant_with_its_base_run",
           "guided": "test_guided_phase_counts_the_guide_flops_it_executed",
           "emulate": "test_emulate_runs_rank_zero_of_the_layout_alone",
           "emulate_stage": "test_emulate_a_later_pipeline_stage"}


@pytest.fixture(scope="module")
def commands(request, tmp_path_factory):
    """The selected tests' bench_train.py runs, started together (two at a time: tests/background.py):
    name -> (its args, the future of its run); each test checks its own as before."""
    started = {}
    wanted = background.selected_names(request)
    for name, args in COMMANDS.items():
        if TEST_OF[name] not in wanted:
            continue
        out = tmp_path_factory.mktemp(name) / f"{name}.json"
        args = [out if a == OUT else a for a in args]
        started[name] = args, start_script("bench_train.py", args)
    return started


def finished(commands, name):
    """(completed process, parsed --out JSON, --out path) of one of the module's commands."""
    args, future = commands[name]
    proc, data = finish_script(future, args)
    return proc, data, args[args.index("--out") + 1]


def test_tflops_come_from_the_variants_own_shape(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in (1, 2, 3):
            f.write(json.dumps({"step": step, "loss": 10.0 - step, "step_time_s": 0.5, "max_allocated_gb": 1.0}) + "\n")
    args = bench_train.parse_args(["--micro-batch-size", "8", "--steps", "3", "--warmup", "1"])
    row = bench_train.summarise(LOWRANK_1P3B, "compile", str(tmp_path), args, WIDE)
    tokens = 8 * 1024
    wide = train_flops_per_token(model_stats(load_config(LOWRANK_1P3B, WIDE).model))
    base = train_flops_per_token(model_stats(load_config(LOWRANK_1P3B).model))
    assert row["tflops_per_gpu"] == pytest.approx(wide * tokens / 0.5 / 1e12)
    assert wide > 3 * base  # the base config's FLOPs would be far off
    assert row["timed_steps"] == 2 and row["tokens_per_s"] == pytest.approx(tokens / 0.5)


def test_reserved_peak_is_the_largest_step_record_and_none_without_it(tmp_path):
    """Under CUDA graphs the allocated counters miss the graphs' pool, so the row carries the
    reserved peak the step log records on CUDA (absent on CPU: None, not 0)."""
    args = bench_train.parse_args(["--micro-batch-size", "8", "--steps", "3", "--warmup", "1"])
    for name, reserved, want in (("cuda", [3.0, 5.5, 4.0], 5.5), ("cpu", None, None)):
        run = tmp_path / name
        run.mkdir()
        with open(run / "metrics.jsonl", "w") as f:
            for i, step in enumerate((1, 2, 3)):
                rec = {"step": step, "loss": 1.0, "step_time_s": 0.5, "max_allocated_gb": 1.0}
                if reserved:
                    rec["max_reserved_gb"] = reserved[i]
                f.write(json.dumps(rec) + "\n")
        assert bench_train.summarise(LOWRANK_1P3B, "eager", str(run), args)["max_reserved_gb"] == want


def test_multi_gpu_runs_take_their_own_port_and_the_gpus_cuda_visible_devices_names(monkeypatch):
    """Two 2-GPU runs side by side on a 4-GPU machine: DeepSpeed's launcher ignores
    CUDA_VISIBLE_DEVICES once --num_gpus is given and meets every run at port 29500."""
    def command(env, argv=()):
        if env is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        args = bench_train.parse_args(["--nproc", "2", *argv])
        return bench_train.launch_command(LOWRANK_1P3B, "compile", "/tmp/run", args)

    pair = command("2,3")
    assert pair[pair.index("--include") + 1] == "localhost:2,3" and "--num_gpus" not in pair
    first, second = (int(c[c.index("--master_port") + 1]) for c in (command("0,1"), pair))
    assert first != second and 29500 not in (first, second)
    whole = command(None)
    assert whole[whole.index("--num_gpus") + 1] == "2" and "--include" not in whole
    assert "--num_accelerators" in command("0,1", ["--smoke"])   # CPU smoke runs keep their flag
    with pytest.raises(SystemExit):
        command("3")                                             # one GPU named for two ranks


def test_reference_ratio_per_case_with_a_shape_changing_variant(commands, tmp_path, capsys):
    proc, data, out = finished(commands, "reference")
    base, deep = data["results"]
    for row, layers in ((base, 2), (deep, 3)):  # SMOKE has 2 layers
        cfg = load_config(TINY, bench_train.SMOKE + [f"model.num_layers={layers}"])
        ref = row["reference"]
        assert ref["params"] == model_stats(cfg.model).total_params
        assert ref["tokens_per_step"] == row["tokens_per_step"]
        assert ref["flops_per_token"] * ref["tokens_per_step"] == row["flops_per_step"]
        assert row["tflops_per_gpu"] == pytest.approx(row["flops_per_step"] / row["step_time_s"] / 1e12)
        assert row["vs_reference"]["tokens_per_s"] == pytest.approx(row["tokens_per_s"] / ref["tokens_per_s"])
        assert row["vs_reference"]["max_allocated_gb"] == pytest.approx(row["max_allocated_gb"] / ref["max_allocated_gb"])
        assert ref["final_loss"] < ref["first_loss"]
    assert deep["flops_per_step"] > base["flops_per_step"]
    assert "megatron_sffn / plain-PyTorch reference" in proc.stdout
    # --table-from: the tables of saved results (what `gpu/run.sh reference` prints at its end), merged
    other = out.parent / "profile.json"  # another script's JSON in the same folder (a suite's profile set)
    other.write_text(json.dumps({"steps": 1, "wall_ms_per_step": 2.0}))
    assert bench_train.main(["--table-from", str(out), str(other), str(out), "--out", str(tmp_path / "all.json")]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"skipped {other}: not a bench_train.py results file" in captured.err
    ratio_lines = [line for line in printed.splitlines() if line.startswith("tiny_demo.json") and line.endswith("x")]
    assert len(ratio_lines) == 4 and f"{deep['vs_reference']['tokens_per_s']:.3f}x" in ratio_lines[1]
    with open(tmp_path / "all.json") as f:
        assert [r["variant"] for r in json.load(f)["results"]] == ["base", "deep", "base", "deep"]


def test_loss_after_compares_each_variant_with_its_base_run(commands, tmp_path, capsys):
    """--loss-after: a variant whose numerics match the base (the same model on another optimizer
    implementation) agrees at every logged step; one that trains differently (10x the learning
    rate) is reported with its largest difference, both from real runs' logs."""
    proc, data, _ = finished(commands, "loss_after")
    base, same, fast = data["results"]
    assert base["loss_steps"] == [1, 2, 3, 4, 5, 6] and "loss_vs_base" not in base
    assert same["loss_vs_base"]["steps"] == 4 and same["loss_vs_base"]["max_rel_diff"] < 1e-6
    worst = max(abs(f - b) / b for f, b, step in zip(fast["losses"], base["losses"], base["loss_steps"]) if step > 2)
    assert fast["loss_vs_base"]["max_rel_diff"] == pytest.approx(worst) and worst > 1e-3
    assert "loss against the base run, logged steps after step 2" in proc.stdout
    # --loss-window 2 on the saved results: means over steps 3-4 and 5-6, as a log interval of 2
    # shows them; an emulated rank's row (losses not real) is left out
    emulated = dict(fast, variant="emulated", emulated=True)
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"results": [base, same, fast, emulated]}))
    out = tmp_path / "windows.json"
    assert bench_train.main(["--table-from", str(saved), "--loss-after", "2", "--loss-window", "2",
                             "--out", str(out)]) == 0
    assert "logged steps after step 2 (means over 2 steps)" in capsys.readouterr().out
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    mean = {v: {end: (rows[v]["losses"][end - 2] + rows[v]["losses"][end - 1]) / 2 for end in (4, 6)}
            for v in ("base", "fast")}
    want = max(abs(mean["fast"][e] - mean["base"][e]) / mean["base"][e] for e in (4, 6))
    got = rows["fast"]["loss_vs_base"]
    assert (got["steps"], got["window"]) == (2, 2) and got["max_rel_diff"] == pytest.approx(want)
    assert "loss_vs_base" not in rows["emulated"]


def test_guided_phase_counts_the_guide_flops_it_executed(commands):
    proc, data, _ = finished(commands, "guided")
    (row,) = data["results"]
    guided, unguided = row["guided_phase"], row["unguided_phase"]
    assert row["guided_steps_planned"] == 4  # tiny_demo: guided_fraction 0.5 of 8 steps
    assert guided["steps"] == [2, 3, 4] and unguided["steps"] == [6, 7, 8] and row["timed_steps"] == 3
    cfg = load_config(TINY, bench_train.SMOKE + ["training.train_steps=8", "training.train_tokens=null"])
    stats = model_stats(cfg.model)
    done = [executed_guide_flops_per_token(cfg, s - 1, 4) for s in guided["steps"]]
    flops = sum(stats.train_flops_per_token + g for g in done) * row["tokens_per_step"]
    assert guided["tflops_per_gpu"] == pytest.approx(flops / guided["seconds"] / 1e12)
    assert guided["guide_fraction_executed"] == pytest.approx(sum(done) / 3 / stats.guide_train_flops_per_token)
    assert 0 < guided["guide_fraction_executed"] < 1  # reduce_flop skipped some guides
    assert row["guided_mfu_over_unguided"] == pytest.approx(guided["tflops_per_gpu"] / unguided["tflops_per_gpu"])
    assert "guided MFU / unguided MFU" in proc.stdout


@pytest.mark.parametrize("shape", ["gpt", "llama"])
def test_executed_guide_flops_follow_the_models_own_draws(shape):
    cfg = load_config(TINY, SHAPE + ["self_guided.enabled=true", "model.ffn.rank=8", "training.train_steps=40",
                                     "training.train_tokens=null"] + (LLAMA if shape == "llama" else []))
    guided_steps = RunPhases.from_config(cfg).guided_steps
    state = GuideState(active=True, seed=cfg.training.seed, reduce_flop=True)
    model = GPTModel(cfg.model, guided=True, guide_state=state)
    full = model_stats(cfg.model).guide_train_flops_per_token
    seen = set()
    for step in range(guided_steps + 2):
        state.set_step(step, guided_steps, cfg.self_guided.schedule)
        expected = sum(6.0 * m.structure.in_features * m.structure.out_features
                       for m in model.structured_linears() if m.uses_guide_now())
        assert executed_guide_flops_per_token(cfg, step, guided_steps) == expected, step
        seen.add(expected)
    assert executed_guide_flops_per_token(cfg, 0, guided_steps) == full  # a = 1: every guide runs
    assert 0.0 in seen and len(seen) > 3  # a = 0 after the phase; partial draws in between


def test_steps_that_compiled_graphs_are_left_out_of_both_phases():
    from sgt_phase import compile_steps, summarise_phases
    cfg = load_config(TINY, bench_train.SMOKE + ["training.train_steps=8", "training.train_tokens=null",
                                                 "self_guided.enabled=true"])
    guided_steps = RunPhases.from_config(cfg).guided_steps
    assert guided_steps == 4
    phases = RunPhases.from_config(cfg)
    graphs = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4, 6: 6, 7: 6, 8: 6}  # step 3 met a new draw combination, 6 the drop
    records = {s: {"step_time_s": 2.0 if s in (3, 6) else 0.1, "guide_alpha": phases.alpha(s - 1) if s <= 4 else 0.0,
                   "compiled_graphs": graphs[s]} for s in graphs}
    assert compile_steps(records) == {3, 6}
    out = summarise_phases(cfg, records, 1, 64, 1, None)
    assert out["guided_phase"]["steps"] == [2, 4] and out["unguided_phase"]["steps"] == [7, 8]
    assert out["compile_steps_excluded"] == [3, 6]
    assert out["guided_phase"]["seconds"] == pytest.approx(0.2)
    # records without the count (eager runs, older logs) leave every step in
    plain = {s: {k: v for k, v in r.items() if k != "compiled_graphs"} for s, r in records.items()}
    assert compile_steps(plain) == set()


def test_emulate_runs_rank_zero_of_the_layout_alone(commands):
    """--emulate: one process, rank 0 of the --nproc layout on the fake group; the rows say so,
    and SP shrinks what that rank holds (its per-step peak on CPU is the process's RSS, so only
    the run's shape is checked here; tests/distributed/test_emulated_rank.py checks the shards)."""
    proc, data, _ = finished(commands, "emulate")
    rows = data["results"]
    assert [r["variant"] for r in rows] == ["base", "sp"]
    assert all(r["emulated"] and r["nproc"] == 4 and "error" not in r for r in rows)
    assert all(r["emulated_collectives"] == "one-kernel" for r in rows)  # the default: one kernel a collective
    assert all(len(r["max_allocated_gb_per_step"]) == len(r["losses"]) for r in rows)
    assert "emulated rank 0: no communication" in proc.stdout


def test_emulate_a_later_pipeline_stage(commands):
    """The last stage alone (rank 1 of PP2): it gets its input's shape from the module and
    writes the run's metrics though it is not global rank 0."""
    proc, data, _ = finished(commands, "emulate_stage")
    (row,) = data["results"]
    assert row["emulated"] and row["emulated_rank"] == 1 and "error" not in row
    assert len(row["losses"]) == len(row["step_times_s"]) > 0
    assert "emulated rank 1: no communication" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--emulate"], "--emulate runs one rank of an --nproc >= 2 layout"),
    (["--emulate", "--nproc", "4", "--guided"], "--emulate runs one rank of an --nproc >= 2 layout"),
    (["--emulate", "4", "--nproc", "4"], "--emulate RANK must be in [0, --nproc 4), got 4"),
    (["--nproc", "4", "--emulate-collectives", "torch"], "--emulate-collectives applies to an emulated rank")])
def test_emulate_refuses_what_it_cannot_mean(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_train.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
