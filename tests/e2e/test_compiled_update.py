"""optimizer.update = "compiled" in real runs: 2 gloo ranks, bf16 with the fused optimizer, ZeRO 0
(the weights are the module's own bf16 parameters) and ZeRO 1 (each rank writes its slices of
one flat bf16 buffer, then the buckets are all-gathered), a self-guided model whose guides drop
mid-run (the optimizer, and with it the compiled update, is rebuilt). Every step's loss must
follow torch's fused AdamW's run to bf16 noise: a wrong update, a bf16 weight not written or not
gathered, would be off from the second step on. A run stopped and resumed continues the
uninterrupted run's losses bit for bit (the update reads the restored moments and steps)."""
import pytest

from megatron_sffn.training.metrics import read_step_log

from .runs import TINY, latest, losses, run

pytestmark = pytest.mark.slow

STEPS = 6
COMMON = TINY + ["--train-steps", str(STEPS), "--eval-interval", str(STEPS), "--save-interval", str(STEPS),
                 "--precision", "bf16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(zero, update) -> run dir of the uninterrupted run, its banner checked."""
    out_dirs = {}
    for zero in (0, 1):
        for update in ("torch", "compiled"):
            folder = tmp_path_factory.mktemp(f"z{zero}_{update}")
            run_dir = str(folder / "run")
            out = run(2, COMMON + ["--zero-stage", str(zero), "--run-dir", run_dir, "--override",
                                   f"optimizer.update={update}"], str(folder / "logs"))
            assert "guides dropped, optimizer rebuilt" in out
            assert ("update compiled" in out) == (update == "compiled")
            assert "reading the bf16 gradients" not in out  # two data ranks reduce in the fp32 buffer
            out_dirs[zero, update] = run_dir
    return out_dirs


@pytest.mark.parametrize("zero", [0, 1])
def test_the_compiled_update_trains_like_torchs_fused_adamw(zero, runs):
    want, got = losses(runs[zero, "torch"]), losses(runs[zero, "compiled"])
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=2e-3), step
    # the update really was compiled (blocks are not on a CPU): graphs made from the second step
    # on (the first makes AdamW's state); how many depends on the shapes (one per run of same-shaped
    # tensors, one of symbolic sizes for the rest, which under ZeRO 1's cut pieces may be all)
    graphs = [r.get("compiled_graphs") for _, r in sorted(read_step_log(runs[zero, "compiled"]).items())]
    assert graphs[0] == 0 and graphs[-1] >= 1 and graphs == sorted(graphs), graphs
    assert all(r.get("compiled_graphs") is None for r in read_step_log(runs[zero, "torch"]).values())


def test_a_resumed_run_continues_the_compiled_update_bit_for_bit(runs, tmp_path):
    run_dir = str(tmp_path / "run")
    args = COMMON + ["--zero-stage", "1", "--run-dir", run_dir, "--override", "optimizer.update=compiled"]
    out = run(2, args + ["--exit-interval", "3"], str(tmp_path / "a"))
    assert "stopping: reached --exit-interval 3" in out and latest(run_dir) == "step00000003"
    run(2, args, str(tmp_path / "b"))
    assert losses(run_dir) == losses(runs[1, "compiled"])


def test_one_rank_and_one_micro_batch_a_step_the_update_reads_the_bf16_gradients(tmp_path):
    """One data rank, a step of one micro-batch: the update reads each bf16 gradient as it is
    (the banner says so; the two-rank runs above keep the fp32 buffer; the unit tests check it
    steps bit for bit as the buffer does), and a run stopped and resumed continues bit for bit."""
    args = COMMON + ["--global-batch-size", "4", "--zero-stage", "1", "--override", "optimizer.update=compiled"]
    whole, resumed = str(tmp_path / "whole" / "run"), str(tmp_path / "resumed" / "run")
    out = run(1, args + ["--run-dir", whole], str(tmp_path / "whole" / "logs"))
    assert "reading the bf16 gradients" in out, out
    run(1, args + ["--run-dir", resumed, "--exit-interval", "3"], str(tmp_path / "resumed" / "a"))
    run(1, args + ["--run-dir", resumed], str(tmp_path / "resumed" / "b"))
    assert sorted(losses(whole)) == list(range(1, STEPS + 1))
    assert losses(resumed) == losses(whole)


def test_at_tensor_parallel_2_the_bf16_route_follows_sequence_parallelism(tmp_path):
    """TP2 on one data rank, one micro-batch a step: without sequence parallelism every gradient
    is whole on its rank and the update reads them in bf16; with it the replicated parameters'
    partial gradients are summed over the tensor group in the fp32 buffer, so the buffer stays
    (the banner states the route the optimizer takes). Both runs train alike."""
    args = COMMON + ["--global-batch-size", "4", "--tensor-parallel", "2", "--override", "optimizer.update=compiled"]
    dirs = {}
    for sp in ("--sequence-parallel", "--no-sequence-parallel"):
        dirs[sp] = str(tmp_path / sp / "run")
        out = run(2, args + [sp, "--run-dir", dirs[sp]], str(tmp_path / sp / "logs"))
        assert "tensor 2 x pipeline 1 x data 1" in out, out
        assert ("reading the bf16 gradients" in out) == (sp == "--no-sequence-parallel"), out
    with_sp, without = losses(dirs["--sequence-parallel"]), losses(dirs["--no-sequence-parallel"])
    assert sorted(with_sp) == sorted(without) == list(range(1, STEPS + 1))
    for step in without:
        assert with_sp[step] == pytest.approx(without[step], rel=2e-3), step
