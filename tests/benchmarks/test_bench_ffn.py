"""benchmarks/bench_ffn.py on CPU: --plot-from redraws the figure and prints the tables of
docs/performance.md's FFN section from the H100 result file; --smoke runs every section on
Triton's interpreter where Triton is installed (CUDA builds of torch bring it)."""
import subprocess
import sys

import pytest

from tests.e2e.runs import ROOT, base_env

H100 = "benchmarks/results/h100_2026-11-22/bench_ffn.json"


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "benchmarks/bench_ffn.py", *map(str, args)], cwd=ROOT, env=base_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_plot_from_a_result_file_redraws_the_figure_and_its_tables(tmp_path):
    proc = _run("--plot-from", H100, "--out", tmp_path / "new_folder")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "new_folder" / "bench_ffn.png").stat().st_size > 10_000
    sweep = proc.stdout[proc.stdout.index("speed-up fwd+bwd vs dense"):]
    assert "2.19" in sweep.splitlines()[2] and sweep.splitlines()[2].startswith("lowrank32")


def test_smoke_on_the_triton_interpreter():
    pytest.importorskip("triton")
    proc = _run("--smoke", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
