"""launchers/pretrain.py end to end on CPU (gloo): the run, its logs, checkpoints, resume, faults.

One uninterrupted 2-rank run (data parallel 2, lowrank with self-guided training and
reduce_flop draws) is the reference; interrupted runs of the same command must repeat its
per-step losses bit for bit (metrics.jsonl holds them at full precision).
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from megatron_sffn.training.metrics import read_step_log

from .runs import ROOT, TINY, Ranks, base_env, latest, losses, read_meta, run, wait_for_steps

pytestmark = pytest.mark.slow

STEPS = 10
CRASH_IN_SAVE = os.path.join(ROOT, "tests", "e2e", "workers", "crash_in_save.py")
COMMON = TINY + ["--train-steps", str(STEPS), "--eval-interval", "100", "--save-interval", "100"]


# The runs of the module do not depend on each other: each test's (or fixture's) own commands, and
# the checks among them that need no other run, are a function of a fresh folder (BACKGROUND, in
# the order they start); a module fixture starts the selected tests' ones together, two at a time
# (tests/background.py: a 1-rank run, or a 2-rank run waiting in a refused start or at a
# save, leaves a core idle), and each test compares its own result with the reference runs.
BACKGROUND = {}


def in_background(key):
    def register(fn):
        BACKGROUND[key] = fn
        return fn
    return register


def _needed(request) -> set:
    """Keys of BACKGROUND the selected tests need: their own names and the fixtures they use."""
    from tests import background
    needed = set()
    for item in background.selected(request):
        needed.add(item.originalname)
        needed.update(item.fixturenames)
    return needed


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    """{key: future of its function's result}, for the keys the selected tests need."""
    from tests import background
    needed = _needed(request)
    return {key: background.submit(fn, tmp_path_factory.mktemp(key[:30])) for key, fn in BACKGROUND.items()
            if key in needed}


@in_background("reference")
def _reference(folder):
    run_dir = str(folder)
    out = run(2, COMMON + ["--run-dir", run_dir], os.path.join(run_dir, "logs"))
    return run_dir, out


@pytest.fixture(scope="module")
def reference(launched):
    """The uninterrupted run: run dir and rank 0's output."""
    return launched["reference"].result()


def test_uninterrupted_run_trains_and_drops_guides(reference):
    run_dir, out = reference
    record = read_step_log(run_dir)
    assert sorted(record) == list(range(1, STEPS + 1))
    assert record[STEPS]["loss"] < record[1]["loss"]
    alphas = [record[s]["guide_alpha"] for s in range(1, STEPS + 1)]
    assert alphas[0] == 1.0 and alphas[-1] == 0.0 and all(a >= b for a, b in zip(alphas, alphas[1:]))
    assert "guides dropped, optimizer rebuilt" in out
    assert "done: 10 steps" in out and "perplexity" in out
    assert latest(run_dir) == "step00000010"


@in_background("test_exact_resume_after_exit_interval")
def _exact_resume_after_exit_interval(tmp_path):
    run_dir = str(tmp_path / "run")
    out = run(2, COMMON + ["--run-dir", run_dir, "--exit-interval", "4"], str(tmp_path / "a"))
    assert "stopping: reached --exit-interval 4" in out and latest(run_dir) == "step00000004"
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    out = run(2, COMMON + ["--run-dir", run_dir], str(tmp_path / "b"))
    assert "resume     from step00000004 at step 4" in out
    return run_dir


def test_exact_resume_after_exit_interval(reference, launched):
    ref_dir, _ = reference
    run_dir = launched["test_exact_resume_after_exit_interval"].result()
    assert losses(run_dir) == losses(ref_dir)  # bit for bit, every step before and after the stop


@in_background("test_sigterm_saves_then_resume_continues_the_same_curve")
def _sigterm_saves_then_resume(tmp_path):
    run_dir = str(tmp_path / "run")
    ranks = Ranks(2, COMMON + ["--run-dir", run_dir], str(tmp_path / "a"))
    wait_for_steps(run_dir, 3, ranks)
    ranks.signal_all(signal.SIGTERM)  # what a scheduler does at preemption: every rank
    codes, out = ranks.wait()
    assert codes == [0, 0], out[-3000:]
    assert "stopping: received SIGTERM" in out
    stopped_at = read_meta(run_dir, latest(run_dir))["step"]
    assert 3 <= stopped_at < STEPS
    run(2, COMMON + ["--run-dir", run_dir], str(tmp_path / "b"))
    return run_dir


def test_sigterm_saves_then_resume_continues_the_same_curve(reference, launched):
    ref_dir, _ = reference
    run_dir = launched["test_sigterm_saves_then_resume_continues_the_same_curve"].result()
    assert losses(run_dir) == losses(ref_dir)


@in_background("test_resume_on_a_different_data_parallel_size_continues_the_stream")
def _resume_on_one_rank(tmp_path):
    zero0 = COMMON + ["--zero-stage", "0"]
    run_dir = str(tmp_path / "run")
    run(2, zero0 + ["--run-dir", run_dir, "--exit-interval", "6"], str(tmp_path / "a"))
    run(1, zero0 + ["--run-dir", run_dir], str(tmp_path / "b"))
    return run_dir


def test_resume_on_a_different_data_parallel_size_continues_the_stream(reference, launched):
    """ZeRO 0 keeps the optimizer state whole, so DeepSpeed reloads it on any data-parallel
    size; the data feed is a pure function of (step, rank, size), so resuming on 1 rank
    instead of 2 sees the same global batches: the same losses up to summation order. The
    uninterrupted run is the module's reference (ZeRO 1, 2 ranks: in fp32 it trains like
    ZeRO 0, bit for bit on CPU)."""
    ref_dir, _ = reference
    run_dir = launched["test_resume_on_a_different_data_parallel_size_continues_the_stream"].result()
    ref, resumed = losses(ref_dir), losses(run_dir)
    assert sorted(resumed) == sorted(ref)
    for step in range(7, STEPS + 1):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5), step


@in_background("stopped_at_step2")
def _stopped_at_step2(folder):
    """The stopped run, then the refused resume of it (the test that makes it runs it right after)."""
    run_dir = str(folder / "run")
    run(2, COMMON + ["--run-dir", run_dir, "--exit-interval", "2"], run_dir + "-logs")
    try:
        refused = run(1, COMMON + ["--run-dir", run_dir], str(folder / "b"), expect=2)
    except AssertionError as error:  # its own test reports it; the stopped run is still the fixture's
        refused = error
    return run_dir, refused


@pytest.fixture(scope="module")
def stopped_at_step2(launched):
    """The reference command stopped by --exit-interval 2 (guides still in): its run dir. The
    tests that use it only read it, or assert that a refused resume left it as it was."""
    return launched["stopped_at_step2"].result()[0]


def test_resume_refuses_a_zero_partitioned_checkpoint_of_another_layout(stopped_at_step2, launched):
    run_dir = stopped_at_step2
    out = launched["stopped_at_step2"].result()[1]
    if isinstance(out, AssertionError):
        raise out
    assert "was written by tensor 1 x pipeline 1 x data 2, ZeRO 1" in out
    assert "tools/convert_checkpoint.py" in out and "--data-parallel 1" in out
    assert latest(run_dir) == "step00000002"


FUSED = COMMON + ["--zero-stage", "0", "--precision", "bf16", "--override", 'optimizer.implementation="fused"']


@in_background("fused_reference")
def _fused_reference(folder):
    ref_dir = str(folder)
    out = run(2, FUSED + ["--run-dir", ref_dir], os.path.join(ref_dir, "logs"))
    return ref_dir, out


@pytest.fixture(scope="module")
def fused_reference(launched):
    """An uninterrupted 2-rank run with optimizer.implementation = fused, ZeRO 0."""
    return launched["fused_reference"].result()


@in_background("test_fused_optimizer_trains_resumes_exactly_and_refuses_the_other_implementation")
def _fused_stopped_refused_resumed(tmp_path):
    run_dir = str(tmp_path / "run")
    run(2, FUSED + ["--run-dir", run_dir, "--exit-interval", "4"], str(tmp_path / "a"))
    other = COMMON + ["--zero-stage", "0", "--precision", "bf16", "--run-dir", run_dir,
                      "--optimizer-implementation", "deepspeed"]
    out = run(2, other, str(tmp_path / "b"), expect=2)
    assert "optimizer.implementation fused" in out and "--optimizer-implementation deepspeed" in out
    assert latest(run_dir) == "step00000004"
    run(2, FUSED + ["--run-dir", run_dir], str(tmp_path / "c"))
    return run_dir


def test_fused_optimizer_trains_resumes_exactly_and_refuses_the_other_implementation(fused_reference, launched):
    """optimizer.implementation = fused through the launcher: guides dropped (the optimizer
    rebuilt with its fp32 state), bit-exact resume, and a checkpoint it wrote is refused by a
    run using DeepSpeed's optimizer, with the conversion command, before anything is touched."""
    ref_dir, out = fused_reference
    assert "guides dropped, optimizer rebuilt" in out and "done: 10 steps" in out
    ref = losses(ref_dir)
    assert ref[STEPS] < ref[1]
    run_dir = launched["test_fused_optimizer_trains_resumes_exactly_and_refuses_the_other_implementation"].result()
    assert losses(run_dir) == ref  # bit for bit: fp32 masters, main gradients, Adam state


@in_background("test_auto_implementation_resumes_a_deepspeed_checkpoint_with_deepspeed")
def _auto_implementation_resumes(tmp_path):
    """optimizer.implementation 'auto' (the default) picks fused for bf16 with ZeRO 0/1, but a
    run whose checkpoint DeepSpeed's optimizer wrote resumes with DeepSpeed's optimizer (and
    says so) instead of being refused."""
    run_dir = str(tmp_path / "run")
    bf16 = COMMON + ["--zero-stage", "0", "--precision", "bf16", "--run-dir", run_dir]
    out = run(2, bf16 + ["--optimizer-implementation", "deepspeed", "--exit-interval", "4"], str(tmp_path / "a"))
    assert "| optimizer deepspeed" in out and latest(run_dir) == "step00000004"
    out = run(2, bf16, str(tmp_path / "b"))
    assert "'auto' follows the checkpoint: deepspeed (a new run would choose fused" in out
    assert "| optimizer deepspeed" in out and "done: 10 steps" in out
    assert read_meta(run_dir, latest(run_dir))["layout"]["optimizer"] == "deepspeed"
    fresh = run(1, COMMON + ["--zero-stage", "0", "--precision", "bf16", "--run-dir", str(tmp_path / "new"),
                             "--train-steps", "2"], str(tmp_path / "c"))
    assert "| optimizer fused" in fresh


def test_auto_implementation_resumes_a_deepspeed_checkpoint_with_deepspeed(launched):
    """optimizer.implementation 'auto' (the default) picks fused for bf16 with ZeRO 0/1, but a
    run whose checkpoint DeepSpeed's optimizer wrote resumes with DeepSpeed's optimizer (and
    says so) instead of being refused."""
    launched["test_auto_implementation_resumes_a_deepspeed_checkpoint_with_deepspeed"].result()


@in_background("test_fused_zero1_checkpoint_resumes_on_one_rank_without_zero")
def _fused_zero1_resumed_on_one_rank(tmp_path):
    """(the losses when it stopped at step 6, run dir, output of the resume on 1 rank)"""
    run_dir = str(tmp_path / "run")
    zero1 = FUSED + ["--zero-stage", "1", "--run-dir", run_dir]
    run(2, zero1 + ["--exit-interval", "6"], str(tmp_path / "a"))
    first = losses(run_dir)
    out = run(1, FUSED + ["--run-dir", run_dir], str(tmp_path / "b"))
    return first, run_dir, out


def test_fused_zero1_checkpoint_resumes_on_one_rank_without_zero(fused_reference, launched):
    """The sharded fused optimizer (ZeRO 1 over 2 ranks) trains like the replicated one and
    saves whole tensors, so its checkpoint resumes on 1 rank with ZeRO 0, no conversion."""
    ref = losses(fused_reference[0])
    first, run_dir, out = launched["test_fused_zero1_checkpoint_resumes_on_one_rank_without_zero"].result()
    assert sorted(first) == list(range(1, 7))
    for step in first:
        assert first[step] == pytest.approx(ref[step], rel=1e-4), step
    assert "resume     from step00000006 at step 6" in out
    resumed = losses(run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(7, STEPS + 1):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-3), step


@in_background("test_compile_through_the_guided_phase_and_the_drop_trains_like_eager")
def _compiled(tmp_path):
    run_dir = str(tmp_path / "run")
    return run_dir, run(2, COMMON + ["--run-dir", run_dir, "--compile"], str(tmp_path / "a"))


def test_compile_through_the_guided_phase_and_the_drop_trains_like_eager(reference, launched):
    """--compile: guided blocks are compiled (a and the reduce_flop draws do not recompile
    them), compiled again when the engine is rebuilt without guides, and compute what the
    eager blocks compute at every step before and after the drop (fp32, 1e-5)."""
    ref_dir, _ = reference
    run_dir, out = launched["test_compile_through_the_guided_phase_and_the_drop_trains_like_eager"].result()
    assert "torch.compile of the blocks" in out and "recompile_limit" not in out
    assert "guides dropped, optimizer rebuilt" in out and "| 3 blocks compiled" in out
    ref, compiled = losses(ref_dir), losses(run_dir)
    assert sorted(compiled) == sorted(ref)
    for step in ref:
        assert compiled[step] == pytest.approx(ref[step], rel=1e-5), step


@in_background("test_bf16_pipeline_without_zero_resumes")
def _bf16_pipeline_without_zero_resumes(tmp_path):
    """bf16 + pipeline + ZeRO 0 is DeepSpeed's BF16_Optimizer outside ZeRO, whose own load
    path fails on its own files (engine.load_checkpoint works around it)."""
    run_dir = str(tmp_path / "run")
    args = COMMON + ["--run-dir", run_dir, "--pipeline-parallel", "2", "--zero-stage", "0", "--precision", "bf16",
                     "--train-steps", "4"]
    run(2, args + ["--exit-interval", "2"], str(tmp_path / "a"))
    out = run(2, args, str(tmp_path / "b"))
    assert "resume     from step00000002 at step 2" in out and "done: 4 steps" in out
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]


def test_bf16_pipeline_without_zero_resumes(launched):
    """bf16 + pipeline + ZeRO 0 is DeepSpeed's BF16_Optimizer outside ZeRO, whose own load
    path fails on its own files (engine.load_checkpoint works around it)."""
    launched["test_bf16_pipeline_without_zero_resumes"].result()


def test_tensorboard_scalars_read_back(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir, _ = reference
    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    required = ["train/loss", "val/loss", "val/ppl", "train/lr", "train/grad_norm", "train/guide_alpha",
                "perf/tokens_per_s", "perf/tflops_per_gpu", "mem/max_allocated_gb", "train/consumed_tokens"]
    for tag in required:
        assert tag in tags and f"{tag}_vs_tokens" in tags, tag
    steps_logged = [e.step for e in events.Scalars("train/loss")]
    assert steps_logged == list(range(2, STEPS + 1, 2))  # log interval 2
    record = read_step_log(run_dir)
    mean_1_2 = (record[1]["loss"] + record[2]["loss"]) / 2
    assert events.Scalars("train/loss")[0].value == pytest.approx(mean_1_2, rel=1e-6)
    tokens = [e.step for e in events.Scalars("train/loss_vs_tokens")]
    assert tokens == [record[s]["tokens"] for s in steps_logged]
    assert [e.step for e in events.Scalars("val/ppl")] == [STEPS]
    assert "config/text_summary" in events.Tags()["tensors"]
    assert "lowrank" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def test_console_lines(reference):
    _, out = reference
    for field in ("model ", "ffn ", "layout     world 2 = tensor 1 x pipeline 1 x data 2", "batch ", "plan "):
        assert field in out
    line = next(l for l in out.splitlines() if l.startswith("step       2/10"))
    for field in ("tokens ", "lr ", "loss ", "grad norm ", "guide a ", "tokens/s ", "TFLOP/s/GPU ", "MFU ",
                  "mem ", "step time "):
        assert field in line, field


def _optimizer_view(ckpt: str, dp: int):
    """(module state names, names the optimizer holds, fp32 master elements over all ZeRO partitions)."""
    states = torch.load(os.path.join(ckpt, "mp_rank_00_model_states.pt"), weights_only=False)
    optimized = [name for group in states["param_shapes"] for name in group]
    partitions = [torch.load(os.path.join(ckpt, f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"), weights_only=False)
                  for r in range(dp)]
    masters = sum(t.numel() for p in partitions for t in p["optimizer_state_dict"]["single_partition_of_fp32_groups"])
    return set(states["module"]), optimized, masters, states


def test_guides_leave_parameters_and_optimizer_state(reference, stopped_at_step2):
    """Before the drop the checkpoint holds guide weights and the optimizer holds them too;
    after it neither does, and the fp32 masters shrink by the guides' size."""
    run_dir, _ = reference
    after, optimized_after, masters_after, states = _optimizer_view(
        os.path.join(run_dir, "checkpoints", "step00000010"), 2)
    assert after and not any(".guide." in n for n in after) and not any(".guide." in n for n in optimized_after)
    assert any(".structure.weight_u" in n for n in optimized_after)

    early = stopped_at_step2
    assert read_meta(early, "step00000002")["loop"]["guides_dropped"] is False
    before, optimized_before, masters_before, early_states = _optimizer_view(
        os.path.join(early, "checkpoints", "step00000002"), 2)
    guides = [n for n in optimized_before if ".guide." in n]
    assert guides and set(guides) <= before
    guide_elements = sum(early_states["module"][n].numel() for n in guides)
    assert set(optimized_before) - set(guides) == set(optimized_after)
    assert masters_before - masters_after == pytest.approx(guide_elements, abs=64 * len(guides))


@in_background("one_rank_no_save")
def _one_rank_no_save(folder):
    run_dir = str(folder / "run")
    out = run(1, COMMON + ["--run-dir", run_dir, "--train-steps", "4", "--save-interval", "1", "--no-save"],
              run_dir + "-logs", extra_env={"MEGATRON_SFFN_INJECT_NONFINITE_STEPS": "2"})
    return run_dir, out


@pytest.fixture(scope="module")
def one_rank_no_save(launched):
    """One rank, 4 steps, a non-finite step injected at step 3, a save due every step but
    --no-save: (run dir, output). Neither feature touches what the other's test reads."""
    return launched["one_rank_no_save"].result()


def test_nonfinite_step_is_skipped_counted_and_logged(one_rank_no_save):
    run_dir, out = one_rank_no_save
    record = read_step_log(run_dir)
    assert record[3]["skipped"] and not record[2]["skipped"] and not record[4]["skipped"]
    assert "[step 3] non-finite loss or gradient: step skipped (1 in a row, 1 in total)" in out
    assert "skipped 1" in out  # the log line of the interval counts it


@in_background("test_too_many_nonfinite_steps_stop_the_run")
def _too_many_nonfinite_steps(tmp_path):
    run_dir = str(tmp_path / "run")
    out = run(1, COMMON + ["--run-dir", run_dir, "--override", "training.max_nonfinite_steps=2"],
              str(tmp_path / "a"), extra_env={"MEGATRON_SFFN_INJECT_NONFINITE_STEPS": "1,2,3"}, expect=3)
    assert "2 non-finite steps in a row (limit training.max_nonfinite_steps = 2)" in out


def test_too_many_nonfinite_steps_stop_the_run(launched):
    launched["test_too_many_nonfinite_steps_stop_the_run"].result()


@in_background("test_wall_clock_limit_saves_and_exits")
def _wall_clock_limit(tmp_path):
    run_dir = str(tmp_path / "run")
    out = run(1, COMMON + ["--run-dir", run_dir, "--exit-duration-minutes", "0.0001"], str(tmp_path / "a"))
    assert "stopping: reached --exit-duration-minutes" in out
    assert read_meta(run_dir, latest(run_dir))["step"] == 1


def test_wall_clock_limit_saves_and_exits(launched):
    launched["test_wall_clock_limit_saves_and_exits"].result()


def test_no_save_writes_no_checkpoint(one_rank_no_save):
    run_dir, out = one_rank_no_save
    assert "done: 4 steps" in out and "saved checkpoint" not in out
    assert not os.path.exists(os.path.join(run_dir, "checkpoints"))
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]


@in_background("test_crash_during_save_keeps_the_previous_checkpoint_latest")
def _crash_during_save(tmp_path):
    run_dir = str(tmp_path / "run")
    args = COMMON + ["--run-dir", run_dir, "--save-interval", "3"]
    out = run(2, args, str(tmp_path / "a"), extra_env={"CRASH_IN_SAVE_OF": "step00000006"}, expect=17,
              script=CRASH_IN_SAVE)
    assert "crash injected while saving step00000006" in out
    assert latest(run_dir) == "step00000003"
    partial = os.path.join(run_dir, "checkpoints", "step00000006")
    assert os.path.isdir(partial) and not os.path.exists(os.path.join(partial, "meta.json"))
    out = run(2, args, str(tmp_path / "b"))
    assert "resume     from step00000003 at step 3" in out
    return run_dir


def test_crash_during_save_keeps_the_previous_checkpoint_latest(reference, launched):
    ref_dir, _ = reference
    run_dir = launched["test_crash_during_save_keeps_the_previous_checkpoint_latest"].result()
    assert losses(run_dir) == losses(ref_dir)


@in_background("test_bad_config_stops_before_any_work")
def _bad_config(tmp_path):
    env = base_env()
    proc = subprocess.run([sys.executable, "launchers/pretrain.py", *COMMON, "--run-dir", str(tmp_path / "r"),
                           "--override", "model.ffn.rank=-3"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "model.ffn.rank" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "r")


def test_bad_config_stops_before_any_work(launched):
    launched["test_bad_config_stops_before_any_work"].result()


@in_background("test_deepspeed_launcher_runs_the_main_job")
def _deepspeed_launcher(tmp_path):
    """The README's command shape: `deepspeed launchers/pretrain.py --config ...`, 2 ranks."""
    from megatron_sffn.parallel.launch import free_port
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    run_dir = str(tmp_path / "run")
    proc = subprocess.run([deepspeed, "--num_accelerators", "2", "--master_port", str(free_port()),
                           "launchers/pretrain.py", *COMMON, "--train-steps", "4", "--tensor-parallel", "2",
                           "--run-dir", run_dir], cwd=ROOT, env=base_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # sequence parallelism is on by default wherever tensor > 1 allows it, and the banner says why
    assert "layout     world 2 = tensor 2 x pipeline 1 x data 1, sequence parallel: on (auto, tensor > 1)" in proc.stdout
    assert "without sequence parallelism" not in proc.stdout
    assert "done: 4 steps" in proc.stdout
    assert latest(run_dir) == "step00000004"
    assert json.load(open(os.path.join(run_dir, "checkpoints", "step00000004", "meta.json")))["layout"]["tensor"] == 2


def test_deepspeed_launcher_runs_the_main_job(launched):
    """The README's command shape: `deepspeed launchers/pretrain.py --config ...`, 2 ranks."""
    launched["test_deepspeed_launcher_runs_the_main_job"].result()
