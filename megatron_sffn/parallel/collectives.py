"""The single-tensor all-gather and reduce-scatter under whichever name this torch has.

torch 2.13 renamed them (all_gather_single, reduce_scatter_single; the old names warn) and
2.11 has only the old ones. They are looked up at each call, not bound at import, so a
wrapper installed on torch.distributed (benchmarks/bench_scaling.py's traffic counter)
sees every call.
"""
from __future__ import annotations

import torch.distributed as dist


def all_gather_single(*args, **kwargs):
    return (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(*args, **kwargs)


def reduce_scatter_single(*args, **kwargs):
    return (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(*args, **kwargs)
