"""benchmarks/diagnostics/bench_host_overhead.py on CPU: the launcher's step by phase, its syncs, and the
plain-PyTorch reference's, one tiny case each (eager, a few steps)."""
from tests.benchmarks.common import run_script


def test_phases_and_syncs_of_the_launchers_step_and_the_reference(tmp_path, cores_to_itself):
    # cores_to_itself (tests/benchmarks/conftest.py): the smoke commands started earlier have finished,
    # so the phase times below are measured without them
    out = tmp_path / "host.json"
    _, result = run_script("diagnostics/bench_host_overhead.py", [
        "--configs", "configs/1p3b_lowrank.json", "--modes", "eager", "--reference", "--steps", "3",
        "--warmup", "1", "--count-steps", "4", "--log-interval", "2", "--hidden-size", "32",
        "--ffn-hidden-size", "64", "--rank", "8", "--out", out])
    ours, reference = result["results"]
    assert ours["side"] == "megatron_sffn" and reference["side"] == "reference"
    assert ours["optimizer"] == "fused" and ours["layers"] == 24 and ours["param_tensors"] == reference["param_tensors"]
    for row in (ours, reference):
        phases = sum(row[f"{p}_ms"] for p in ("forward", "backward", "optimizer_step", "loop"))
        assert row["step_ms"] > 0 and abs(phases - row["step_ms"]) < 0.25 * row["step_ms"]
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0 and row["optimizer_step_ms"] > 0
    # the default path waits for the device only at log steps; the reference reads its loss every step
    assert ours["syncs_per_step"] == 0 and ours["syncs_per_log_step"] <= 1
    assert reference["syncs_per_step"] == 1


def test_tensor_parallel_cases_split_collectives_from_host_time(tmp_path):
    """--tensor-parallel 2 --sequence-parallel: tensor 1 x data 2, tensor 2 and tensor 2 with SP
    on 2 gloo processes each, collective time per phase and host ms per block."""
    out = tmp_path / "tp.json"
    _, result = run_script("diagnostics/bench_host_overhead.py", [
        "--configs", "configs/1p3b_lowrank.json", "--modes", "eager", "--tensor-parallel", "2",
        "--sequence-parallel", "--steps", "2", "--warmup", "1", "--count-steps", "0", "--log-interval", "100",
        "--hidden-size", "32", "--ffn-hidden-size", "64", "--rank", "8", "--out", out])
    rows = {(r["tensor"], r["sequence_parallel"]): r for r in result["results"]}
    assert set(rows) == {(1, False), (2, False), (2, True)}
    dp, tp, sp = rows[(1, False)], rows[(2, False)], rows[(2, True)]
    assert dp["data"] == 2 and tp["data"] == 1 and all(r["world_size"] == 2 for r in rows.values())
    forward = lambda r: sum(v for k, v in r["collective_calls_per_step"].items() if k.startswith("forward:"))
    # no collective in a data-parallel forward; one per row-parallel layer (2 per block) with TP;
    # under SP also the gathers entering the column-parallel layers
    assert forward(dp) == 0 and forward(tp) >= 2 * 24 and forward(sp) > forward(tp)
    for r in rows.values():
        assert 0 < r["host_ms_per_block"] and r["collective_forward_ms"] <= r["forward_ms"]
        assert len(r["other_ranks"]) == 1


def test_compiled_tensor_parallel_blocks_trace_their_collectives(tmp_path):
    """--modes compile, tensor 2 with SP on 2 gloo processes (4 blocks): the blocks' collectives
    run inside the compiled graphs (no graph break, and the torch.distributed wrapper sees only
    the few outside the blocks), so their time is in host/blk and f+b/blk covers it."""
    import bench_host_overhead as bench
    args = bench.parse_args(["--steps", "2", "--warmup", "1", "--count-steps", "0", "--log-interval", "100",
                             "--hidden-size", "32", "--ffn-hidden-size", "64", "--rank", "8",
                             "--override", "model.num_layers=4"])
    case = {"side": "megatron_sffn", "config": "configs/1p3b_lowrank.json", "mode": "compile", "world": 2,
            "tensor": 2, "sequence_parallel": True}
    row = bench.run_in_subprocess(case, args)
    assert "error" not in row, row
    assert row["layers"] == 4 and row["sequence_parallel"] and row["collectives_in_graphs"]
    assert row["graph_breaks"] == 0 and row["unique_graphs"] > 0
    # SP: 9 collectives per block fwd + bwd, all traced; only the few outside the blocks (embedding,
    # loss: < 10 a step) pass the wrapper
    assert row["wrapper_collective_calls_per_block"] * row["layers"] < 10
    assert row["ms_per_block"] >= row["host_ms_per_block"] > 0
    assert row["final_loss"] > 0
