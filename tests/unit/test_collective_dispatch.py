"""The compiled graphs' functional collectives skip torch's Python autograd kernels.

torch registers Python autograd formulas for `_c10d_functional` ops, entered on every call
(~20 us each on a CPU) even under no_grad inside a compiled graph; compile_blocks replaces
them with fallthroughs (parallel/collectives.py). Checked in fresh processes: the change is
process-wide. The numbers with it are the layout tests' (test_compiled_tensor_parallel.py).
"""
import subprocess
import sys
import textwrap

ROOT = __file__.rsplit("/tests/", 1)[0]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bypass_makes_every_traced_op_fall_through_and_stays_idempotent():
    out = run_python("""
        import torch
        from megatron_sffn.parallel import collectives as c
        print(c.traced_collectives_bypass_autograd())
        print(c.bypass_autograd_of_traced_collectives(), c.bypass_autograd_of_traced_collectives())
        print(all(torch._C._dispatch_kernel_for_dispatch_key_is_fallthrough(f"_c10d_functional::{op}", "Autograd")
                  for op in c.TRACED_OPS))
    """)
    assert out.split() == ["False", "True", "True", "True"]


def test_bypass_without_the_allow_override_keyword():
    """torch 2.11 (the GPU image) has no allow_override on Library.impl and refuses to override
    another Python registration there; the dispatcher handle takes the fallthrough instead."""
    out = run_python("""
        import torch
        from megatron_sffn.parallel import collectives as c

        class OldLibrary:  # Library.impl as torch 2.11 has it: no allow_override keyword
            def __init__(self, library):
                self.m = library.m
            def impl(self, op_name, fn, dispatch_key=""):
                raise AssertionError("must not be called: it would refuse the override")

        real = torch.library.Library("_c10d_functional", "IMPL")
        c._override_autograd_kernel(OldLibrary(real), "wait_tensor")
        print(torch._C._dispatch_kernel_for_dispatch_key_is_fallthrough("_c10d_functional::wait_tensor", "Autograd"))
    """)
    assert out.split() == ["True"]


def test_compile_blocks_applies_the_bypass():
    out = run_python("""
        import torch
        from megatron_sffn.model.compile import compile_blocks
        from megatron_sffn.parallel.collectives import traced_collectives_bypass_autograd
        compile_blocks(torch.nn.Linear(2, 2))
        print(traced_collectives_bypass_autograd())
    """)
    assert out.split() == ["True"]
