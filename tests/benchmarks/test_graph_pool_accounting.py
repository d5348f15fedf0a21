"""benchmarks/graph_pool_accounting.py's command line: one clear error naming the flag, and a
clear refusal without a CUDA device (the probe only means something on one)."""
import subprocess
import sys

import pytest
import torch

from tests.benchmarks.common import ROOT


def _run(*argv):
    return subprocess.run([sys.executable, "benchmarks/graph_pool_accounting.py", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flag", ["--width", "--depth", "--tokens", "--steps"])
def test_non_positive_sizes_name_the_flag(flag):
    proc = _run(flag, "0")
    assert proc.returncode == 2 and f"{flag} must be positive, got 0" in proc.stderr, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_refuses_and_writes_nothing(tmp_path):
    out = tmp_path / "probe.json"
    proc = _run("--out", str(out))
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr and not out.exists()
