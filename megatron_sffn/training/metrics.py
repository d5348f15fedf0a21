"""Console lines (Megatron style) and TensorBoard scalars, written by one logging rank.

Every scalar goes to TensorBoard twice: against the optimizer step (`train/loss`) and
against consumed tokens (`train/loss_vs_tokens`, whose x axis is tokens), so runs with
different batch sizes or a same-FLOPs repeat phase line up either way.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Dict, Optional

import torch

# dense bf16 peak TFLOP/s per GPU, for MFU; override with training.peak_tflops_per_gpu
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0, "A10G": 125.0, "V100": 125.0}


def detect_peak_tflops(override: Optional[float] = None) -> Optional[float]:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def memory_gb() -> Dict[str, float]:
    """Peak accelerator memory (GB) since the last reset, or the process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return {"max_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
                "allocated_gb": torch.cuda.memory_allocated() / 1e9,
                "reserved_gb": torch.cuda.memory_reserved() / 1e9,
                "max_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"max_allocated_gb": rss_kb / 1e6}


def max_allocated_gb() -> float:
    """memory_gb()["max_allocated_gb"] alone: what every step's metrics.jsonl line records
    (an allocator counter on CUDA, no device wait)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def max_reserved_gb() -> Optional[float]:
    """Peak memory the caching allocator held from the device (GB), None off CUDA. Under
    training.cuda_graphs this is the number to read: tensors living in the CUDA-graph trees'
    private pool (a replayed block's saved activations) are outside the allocated counters, so
    max_allocated_gb drops by about those bytes while the memory in use does not
    (docs/performance.md, "What we learned")."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_reserved() / 1e9
    return None


def format_train_line(m: Dict, total_steps: int) -> str:
    parts = [f"step {m['step']:>7d}/{total_steps:d}",
             f"tokens {m['consumed_tokens']:.4g}",
             f"lr {m['lr']:.3e}",
             f"loss {m['loss']:.4f}",
             f"grad norm {m['grad_norm']:.3f}"]
    if m.get("guide_alpha") is not None:
        parts.append(f"guide a {m['guide_alpha']:.3f}")
    if m.get("loss_scale") is not None:
        parts.append(f"loss scale {m['loss_scale']:.0f}")
    parts.append(f"tokens/s {m['tokens_per_s']:,.0f}")
    parts.append(f"TFLOP/s/GPU {m['tflops_per_gpu']:.1f}")
    parts.append(f"MFU {100 * m['mfu']:.1f}%" if m.get("mfu") is not None else "MFU n/a")
    parts.append(f"mem {m['max_allocated_gb']:.2f} GB")
    parts.append(f"step time {1000 * m['step_time_s']:.0f} ms")
    if m.get("skipped_steps"):
        parts.append(f"skipped {m['skipped_steps']}")
    return " | ".join(parts)


STEP_LOG = "metrics.jsonl"


def read_step_log(run_dir: str) -> Dict[int, Dict]:
    """step -> record of run_dir/metrics.jsonl (one JSON object per optimizer step)."""
    records = {}
    with open(os.path.join(run_dir, STEP_LOG)) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                records[record["step"]] = record
    return records


def truncate_step_log(run_dir: str, last_step: int) -> None:
    """Drop records past `last_step` (steps an interrupted run made after its last checkpoint),
    so that after a resume the file holds one curve with no repeated steps."""
    path = os.path.join(run_dir, STEP_LOG)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class RunLogger:
    """Writes nothing unless `enabled` (the logging rank): TensorBoard under run_dir/tensorboard,
    and run_dir/metrics.jsonl with every step's loss, lr, grad norm and guide weight at full
    precision (the console and TensorBoard average over log intervals or round)."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool = True, resumed_step: Optional[int] = None):
        self.enabled = enabled
        self.writer = None
        self.step_log = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if resumed_step is not None:
            truncate_step_log(run_dir, resumed_step)
        elif os.path.isfile(os.path.join(run_dir, STEP_LOG)):
            os.remove(os.path.join(run_dir, STEP_LOG))  # a fresh run in a reused folder starts a new curve
        self.step_log = open(os.path.join(run_dir, STEP_LOG), "a", buffering=1)  # line-buffered: readable live
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))

    def step_record(self, record: Dict) -> None:
        if self.step_log is not None:
            self.step_log.write(json.dumps(record) + "\n")

    def print(self, text: str = "") -> None:
        if self.enabled:
            print(text, flush=True)

    def config(self, cfg_dict: Dict) -> None:
        if self.writer is not None:
            self.writer.add_text("config", "```json\n" + json.dumps(cfg_dict, indent=2) + "\n```", 0)

    def scalars(self, values: Dict[str, Optional[float]], step: int, tokens: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is None:
                continue
            self.writer.add_scalar(tag, value, step)
            self.writer.add_scalar(f"{tag}_vs_tokens", value, tokens)

    def flush(self) -> None:
        if self.step_log is not None:
            self.step_log.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.step_log is not None:
            self.step_log.close()
            self.step_log = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class StepTimer:
    def __init__(self):
        self.start = time.time()

    def lap(self) -> float:
        now = time.time()
        elapsed, self.start = now - self.start, now
        return elapsed


def progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on the logging rank where a person waits; the plain iterable elsewhere."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, file=sys.stdout, leave=False, dynamic_ncols=True)
