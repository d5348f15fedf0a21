"""parallel/launch.py exit_process: the launcher's way out keeps the exit code and the output
(buffered, unflushed text included) whether or not it skips the interpreter's teardown."""
import subprocess
import sys

import pytest

from tests.e2e.runs import ROOT

SCRIPT = """
import sys
import torch.distributed as dist
from megatron_sffn.parallel.launch import exit_process
if {group}:
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
    if {destroy}:
        dist.destroy_process_group()
sys.stdout.write("last words without a newline")
sys.stderr.write("and on stderr")
exit_process(7)
"""


@pytest.mark.parametrize("group, destroy", [(False, False), (True, True), (True, False)])
def test_exit_code_and_output_survive(group, destroy):
    from megatron_sffn.parallel.launch import free_port
    code = SCRIPT.format(group=group, destroy=destroy, port=free_port())
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert proc.stdout.endswith("last words without a newline")
    assert "and on stderr" in proc.stderr
