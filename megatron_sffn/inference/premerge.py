"""Pre-merge: keep each structured FFN map's merged dense matrix beside its factors and pick
one per call by the number of tokens in flight.

Few tokens (online decoding) leave the GPU idle in the structured map's two skinny products,
so the single merged GEMM is faster; many tokens (prefill) favour the factors, which do
fewer FLOPs. The crossover depends on the device and the layer shape, so it is measured by
`calibrate()` (tools/generate.py --calibrate) and stored per device in a JSON file.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..structured.base import LinearMap
from ..structured.linear import ParallelLinear

DEFAULT_CALIBRATION = os.path.join(os.path.expanduser("~"), ".cache", "megatron_sffn", "premerge.json")


class PreMergedMap(nn.Module):
    """Wraps a structured map: merged dense GEMM up to `threshold` tokens, the factors above."""

    def __init__(self, structure: LinearMap, threshold: int):
        super().__init__()
        if structure.mode != "column" and structure.tp.size > 1:
            raise ValueError("pre-merge is for single-rank inference (tensor-parallel size 1)")
        self.structure = structure
        self.threshold = threshold
        self.register_buffer("merged", structure.merged_weight().detach().clone(), persistent=False)
        self.calls = {"merged": 0, "structured": 0}

    @property
    def kind(self) -> str:
        return self.structure.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // x.shape[-1]
        if tokens <= self.threshold:
            self.calls["merged"] += 1
            return F.linear(x, self.merged)
        self.calls["structured"] += 1
        return self.structure(x)


def structured_linears(model: nn.Module) -> List[ParallelLinear]:
    return [m for m in model.modules() if isinstance(m, ParallelLinear) and m.kind != "dense"]


def layer_signature(structure: LinearMap) -> str:
    extra = "".join(f"-{k}{getattr(structure, k)}" for k in ("rank", "blocks") if hasattr(structure, k))
    return f"{structure.kind}-{structure.in_features}x{structure.out_features}{extra}"


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def apply_premerge(model: nn.Module, mode: str = "auto", thresholds: Optional[Dict[str, int]] = None,
                   default_threshold: int = 0) -> Dict[str, int]:
    """Install PreMergedMap on every structured linear. mode: on (always merged), off (never),
    auto (per-signature thresholds from calibration, else `default_threshold`)."""
    chosen = {}
    for lin in structured_linears(model):
        structure = lin.structure.structure if isinstance(lin.structure, PreMergedMap) else lin.structure
        sig = layer_signature(structure)
        if mode == "off":
            lin.structure = structure
            chosen[sig] = -1
            continue
        threshold = 1 << 62 if mode == "on" else (thresholds or {}).get(sig, default_threshold)
        lin.structure = PreMergedMap(structure, threshold)
        chosen[sig] = threshold
    return chosen


@torch.no_grad()
def _time(fn, x, repeats: int) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(3):
        fn(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


@torch.no_grad()
def calibrate(model: nn.Module, tokens: Iterable[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
              repeats: int = 20) -> Dict:
    """Time merged vs structured per distinct layer shape; the threshold is the largest token
    count at which the merged GEMM was faster (with every smaller count also faster)."""
    results = {}
    for lin in structured_linears(model):
        structure = lin.structure.structure if isinstance(lin.structure, PreMergedMap) else lin.structure
        sig = layer_signature(structure)
        if sig in results:
            continue
        param = next(structure.parameters())
        merged = structure.merged_weight()
        rows, threshold, crossed = [], 0, False
        for n in tokens:
            x = torch.randn(n, structure.in_features, device=param.device, dtype=param.dtype)
            t_struct = _time(structure, x, repeats)
            t_merged = _time(lambda v: F.linear(v, merged), x, repeats)
            rows.append({"tokens": n, "structured_s": t_struct, "merged_s": t_merged})
            if t_merged <= t_struct and not crossed:
                threshold = n
            else:
                crossed = True
        results[sig] = {"threshold": threshold, "timings": rows}
    return results


def load_thresholds(path: str, device) -> Dict[str, int]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    entry = data.get(device_name(device), {})
    return {sig: v["threshold"] for sig, v in entry.items()}


def save_calibration(path: str, device, results: Dict) -> None:
    data = {}
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f)
    data.setdefault(device_name(device), {}).update(results)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
