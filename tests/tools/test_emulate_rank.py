"""tools/emulate_rank.py's command line: one clear error, before anything is started."""
import subprocess
import sys

import pytest

from tests.e2e.runs import ROOT


@pytest.mark.parametrize("argv, message", [
    (["--world", "4", "--rank", "4", "launchers/pretrain.py"], "--rank must be in [0, 4), got 4"),
    (["--world", "0", "launchers/pretrain.py"], "--world must be >= 1, got 0"),
    (["--world", "4", "no_such_script.py"], "script 'no_such_script.py' does not exist"),
])
def test_bad_command_lines_name_the_flag(argv, message):
    proc = subprocess.run([sys.executable, "tools/emulate_rank.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
