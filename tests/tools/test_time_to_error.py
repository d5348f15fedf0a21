"""tools/time_to_error.py measures what docs/errors.md reports: a case's seconds, its exit code,
one error line, and whether it came before DeepSpeed's JIT op build."""
import json
import subprocess
import sys

import pytest

from .common import ROOT

pytestmark = pytest.mark.slow


def test_a_case_is_timed_and_checked(tmp_path):
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, "tools/time_to_error.py", "--cases", "missing-dataset", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["good_one_step_run_s"] > 0 and "deepspeed --num_accelerators 2" in report["command"]
    (case,) = report["cases"]
    assert case["case"] == "missing-dataset" and case["exit_code"] == 2 and case["error_lines"] == 1
    assert "dataset file" in case["error"] and not case["reached_jit_build"]
    assert 0 < case["seconds"] < report["good_one_step_run_s"] + 60
