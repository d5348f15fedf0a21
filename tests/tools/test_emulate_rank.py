"""tools/emulate_rank.py's command line: one clear error, before anything is started."""
import json
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


def test_an_unknown_collectives_choice_is_refused():
    proc = subprocess.run([sys.executable, "tools/emulate_rank.py", "--world", "4", "--collectives", "nccl",
                           "launchers/pretrain.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--collectives: invalid choice: 'nccl'" in proc.stderr, proc.stderr


ONE_KERNEL_CHECK = r'''
import json, sys
import torch, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
sys.path.insert(0, ".")
from tools.emulate_rank import collectives_as_one_kernel
from megatron_sffn.parallel.collectives import gather_rows, reduce_scatter_rows

dist.init_process_group("fake", rank=0, world_size=4, store=FakeStore())
ops, name = torch.ops._c10d_functional, dist.group.WORLD.group_name
local, full = torch.arange(6.).view(3, 2), torch.arange(16.).view(8, 2)

def copies_in(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name == "aten::copy_" for e in prof.events())

def gather():
    return ops.wait_tensor(ops.all_gather_into_tensor(local, 4, name))

report = {"torch_copies": copies_in(gather)}
collectives_as_one_kernel()
collectives_as_one_kernel()  # idempotent
report["one_kernel_copies"] = copies_in(gather)
report["gathered"] = gather().tolist()
out = torch.empty(12, 2)
ops.all_gather_into_tensor_out(local, 4, name, out=out)
report["gathered_out"] = out.tolist()
report["scattered"] = ops.wait_tensor(ops.reduce_scatter_tensor(full, "sum", 4, name)).tolist()
out = torch.empty(2, 2)
ops.reduce_scatter_tensor_out(full, "sum", 4, name, out=out)
report["scattered_out"] = out.tolist()

@torch.compile(backend="inductor", fullgraph=True)
def block(x):  # the compiled tensor-parallel path: collectives traced into the graph
    gathered, _ = gather_rows(x * 2, dist.group.WORLD, 4)
    summed, _ = reduce_scatter_rows(gathered + 1, dist.group.WORLD, 4)
    return gathered, summed

gathered, summed = block(local)
report["compiled_gathered"], report["compiled_scattered"] = gathered.tolist(), summed.tolist()
print("REPORT " + json.dumps(report))
'''


def test_one_kernel_collectives_gather_and_scatter_in_one_copy():
    """emulate_rank --collectives one-kernel: an all-gather on the fake group is one copy (torch's
    fake group makes one per slot), eager and traced into an Inductor graph, and its output and a
    reduce-scatter's hold what the docstring says (the input in every slot; the first chunk)."""
    proc = subprocess.run([sys.executable, "-c", ONE_KERNEL_CHECK], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(lines[0][len("REPORT "):])
    assert report["torch_copies"] == 4 and report["one_kernel_copies"] == 1, report
    local = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert report["gathered"] == local * 4 and report["gathered_out"] == local * 4
    assert report["scattered"] == [[0.0, 1.0], [2.0, 3.0]] == report["scattered_out"]
    doubled = [[2 * v for v in row] for row in local]
    assert report["compiled_gathered"] == doubled * 4
    assert report["compiled_scattered"] == [[v + 1 for v in row] for row in doubled], report
