"""Count host<->device synchronisations, on any device (CPU included).

A training step on a GPU is host-bound wherever the host waits for the device: `.item()`,
`float(t)`, `bool(t)` and `if t:` end in `aten._local_scalar_dense`, `.tolist()` copies to the
host (counted by patching it, as its C++ path dispatches no such op); ops whose
output shape depends on values (`nonzero`, boolean-mask indexing, `unique`, `equal`) read the
device too; a copy to the CPU waits for its source; and `torch.cuda.synchronize` / DeepSpeed's
`get_accelerator().synchronize()` (its throughput timer calls that around every step by
default) drain the whole device. `SyncCounter` counts all of them while it is active: the ops
through a TorchDispatchMode (so C++ callers are seen too, not only Python ones), the explicit
synchronize calls by patching them. On a CPU nothing actually waits, but the same calls are
made, so the count is what a GPU run would pay (benchmarks/diagnostics/bench_host_overhead.py,
tests/unit/test_host_syncs.py).
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that read device values on the host (CUDA synchronises the stream for each)
SYNCING_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
               "unique_consecutive", "equal", "allclose", "repeat_interleave")
_COPIES = ("_to_copy", "copy_", "_copy_from", "_copy_from_and_resize")


def _device_of(value):
    return value.device if isinstance(value, torch.Tensor) else None


class SyncCounter(TorchDispatchMode):
    """with SyncCounter() as c: ...; c.total, c.counts ({name: n}). Not reentrant."""

    def __init__(self, count_ops: bool = False):
        super().__init__()
        self.counts: Counter = Counter()
        self.ops = 0  # every dispatched aten op (a proxy for host work), when count_ops
        self._count_ops = count_ops
        self._patched: List[Tuple[object, str, object]] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if self._count_ops:
            self.ops += 1
        if name in SYNCING_OPS and not (name == "repeat_interleave" and kwargs.get("output_size") is not None):
            self.counts[f"aten.{name}"] += 1
        out = func(*args, **kwargs)
        if name in _COPIES:  # device -> host copies
            src = args[1] if name == "copy_" and len(args) > 1 else (args[0] if args else None)
            src_dev, dst_dev = _device_of(src), _device_of(out)
            if src_dev is not None and dst_dev is not None and src_dev.type != "cpu" and dst_dev.type == "cpu":
                self.counts["device->host copy"] += 1
        return out

    # -- explicit synchronize calls -------------------------------------------------------------
    def _patch(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr, None)
        if original is None:
            return
        counts = self.counts

        def counted(*args, **kwargs):
            counts[label] += 1
            return original(*args, **kwargs)

        own = isinstance(owner, type) or attr in getattr(owner, "__dict__", {})
        setattr(owner, attr, counted)
        self._patched.append((owner, attr, original if own else None))

    def __enter__(self):
        self._patch(torch.Tensor, "tolist", "Tensor.tolist")  # reads the data without _local_scalar_dense
        self._patch(torch.cuda, "synchronize", "torch.cuda.synchronize")
        self._patch(torch.cuda.Event, "synchronize", "torch.cuda.Event.synchronize")
        self._patch(torch.cuda.Stream, "synchronize", "torch.cuda.Stream.synchronize")
        try:
            from deepspeed.accelerator import get_accelerator
            self._patch(get_accelerator(), "synchronize", "accelerator.synchronize")
        except ImportError:  # pragma: no cover - deepspeed is a dependency
            pass
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for owner, attr, original in reversed(self._patched):
                if original is None:  # was the class's method: drop the instance attribute
                    delattr(owner, attr)
                else:
                    setattr(owner, attr, original)
            self._patched.clear()

    def snapshot(self) -> Dict[str, int]:
        return dict(self.counts)
