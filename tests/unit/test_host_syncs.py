"""No host<->device synchronisation in a training step that does not log (issue 15).

The launcher's own step (real DeepSpeed engine, the fused optimizer `auto` picks for bf16 +
ZeRO 1, a tiny model) runs in a subprocess under training/host_syncs.py's SyncCounter, which
counts `aten._local_scalar_dense` (.item(), float(t), bool(t)), value-dependent shapes, device
->host copies, `.tolist()` and explicit synchronize calls (DeepSpeed's throughput timer made
two a step). A step that does not log must make none, a non-finite one included (skipping is
decided on the device); a log step reads all its interval's values at once."""
import json
import os
import subprocess
import sys

import pytest

from megatron_sffn.training.host_syncs import SyncCounter
from megatron_sffn.training.metrics import read_step_log

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "unit", "host_syncs_worker.py")
TINY = ["--data-path", "embedded", "--micro-batch-size", "2", "--global-batch-size", "2", "--train-steps", "8",
        "--log-interval", "3", "--eval-interval", "1000000", "--no-save",
        "--override", "self_guided.enabled=false", "--override", "training.eval_iters=1",
        "--override", 'data.tokenizer_model="embedded"', "--override", "model.hidden_size=32",
        "--override", "model.num_layers=2", "--override", "model.num_heads=4",
        "--override", "model.ffn_hidden_size=64", "--override", "model.seq_length=16",
        "--override", "model.vocab_size=8192"]


def test_the_counter_sees_item_tolist_and_value_dependent_shapes():
    import torch
    x = torch.arange(6.0)
    with SyncCounter() as counter:
        x.sum().item()
        float(x.max())
        x.tolist()
        x[x > 2]
        torch.nonzero(x)
        (x + 1).mul_(2)  # no read of a value: not counted
    assert counter.counts["aten._local_scalar_dense"] == 2
    assert counter.counts["Tensor.tolist"] == 1
    assert counter.counts["aten.nonzero"] >= 1
    assert counter.total >= 4
    assert torch.Tensor.tolist is not None and x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # restored


def _run_worker(tmp_path, config, extra=(), env_extra=None):
    run_dir, out = str(tmp_path / "run"), str(tmp_path / "syncs.json")
    argv = ["--config", os.path.join(ROOT, "configs", config), "--run-dir", run_dir] + TINY + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
               MEGATRON_SFFN_INJECT_NONFINITE_STEPS="4", **(env_extra or {}))  # the 5th step (no log) is non-finite
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, WORKER, out, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with open(out) as f:
        return json.load(f), read_step_log(run_dir)


@pytest.mark.parametrize("config,extra", [
    ("1p3b_lowrank.json", ["--override", "model.ffn.rank=8"]),
    ("1p3b_dense.json", []),
])
def test_a_step_that_does_not_log_never_waits_for_the_device(tmp_path, config, extra):
    result, records = _run_worker(tmp_path, config, extra)
    assert result["optimizer"] == "fused" and result["engine_path"] == "fused, around DeepSpeed"
    steps = {s["step"]: s for s in result["steps"]}
    assert sorted(steps) == list(range(1, 8))
    for step, record in steps.items():
        if record["log_step"]:  # one read of the interval's losses, norms and skip flags
            assert sum(record["syncs"].values()) <= 1, (step, record)
        else:
            assert record["syncs"] == {}, f"step {step} waits for the device: {record['syncs']}"
    _check_records(records)


def _check_records(records):
    assert sorted(records) == list(range(1, 9))  # every step's line is still written, with exact values
    assert records[5]["skipped"] and all(not records[s]["skipped"] for s in records if s != 5)
    assert all(isinstance(records[s]["loss"], float) and isinstance(records[s]["grad_norm"], float) for s in records)


def test_without_torchs_fused_kernel_the_step_decides_on_the_host_and_logs_the_same_fields(tmp_path):
    """The foreach fallback cannot take grad_scale/found_inf: it reads the norm (a wait every
    step; on a CPU torch's foreach AdamW also reads each step counter), and the loop still
    records every step's norm and skip."""
    result, records = _run_worker(tmp_path, "1p3b_lowrank.json", ["--override", "model.ffn.rank=8"],
                                  {"HOST_SYNCS_WORKER_NO_FUSED": "1"})
    assert result["engine_path"] == "fused, around DeepSpeed"
    plain = [s for s in result["steps"] if not s["log_step"]]
    assert all(s["syncs"].get("aten._local_scalar_dense", 0) >= 1 for s in plain), plain
    _check_records(records)
