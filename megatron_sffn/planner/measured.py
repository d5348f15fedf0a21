"""Measured peaks and throughput beside the planner's predictions.

The file (benchmarks/results/layout_planner_measured.json) lists runs as
  {"config": "configs/6p7b_lowrank.json", "overrides": [...], "gpus": 4,
   "global_batch_size": 512, "layout": {Layout fields}, "device": "...", "mode": "compiled",
   "measured_allocated_gb": 78.6 or null, "measured_tokens_per_s_per_gpu": ... or null,
   "source": "where the number was measured", "label": optional short name for tables}
An entry whose measured values are null is a prediction waiting for its run; filling in
the numbers (from bench_scaling.py / bench_train.py JSON: max_allocated_gb, tokens_per_s)
is all the GPU session has to do. Peaks compare with `Prediction.allocated_gb` (what
torch.cuda.max_memory_allocated counts); the measured peaks so far are run-wide maxima,
start-up included, so they may sit above a steady-state prediction. bench_train.py reads
the run's own log, which is global rank 0's: the first pipeline stage. An entry with
"measured_stage": 0 compares with that stage's prediction, not the largest stage's.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..config import ConfigError, apply_overrides
from .hardware import Hardware
from .layout import Layout
from .hardware import GIB
from .plan import Prediction, layout_config, predict

DEFAULT_FILE = os.path.join("benchmarks", "results", "layout_planner_measured.json")


@dataclass
class Comparison:
    entry: Dict[str, Any]
    prediction: Prediction

    def _error(self, measured: Optional[float], predicted: float) -> Optional[float]:
        return None if measured is None else (predicted - measured) / measured

    @property
    def memory_error(self) -> Optional[float]:
        """(predicted - measured) / measured of the allocated peak; None until measured."""
        return self._error(self.entry.get("measured_allocated_gb"), self.predicted_allocated_gb)

    @property
    def predicted_allocated_gb(self) -> float:
        """The prediction for what was measured: one stage's (measured_stage), else the largest."""
        stage = self.entry.get("measured_stage")
        if stage is None:
            return self.prediction.allocated_gb
        return self.prediction.stages[stage].allocated / GIB

    @property
    def throughput_error(self) -> Optional[float]:
        return self._error(self.entry.get("measured_tokens_per_s_per_gpu"), self.prediction.tokens_per_s_per_gpu)

    def as_dict(self) -> Dict[str, Any]:
        return {**self.entry, "layout_name": self.prediction.layout.short(),
                "predicted_allocated_gb": self.predicted_allocated_gb, "predicted_peak_gb": self.prediction.peak_gb,
                "predicted_tokens_per_s_per_gpu": self.prediction.tokens_per_s_per_gpu,
                "memory_error": self.memory_error, "throughput_error": self.throughput_error}


def load_entries(path: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(path):
        raise ConfigError(f"measured-results file not found: {path}")
    try:
        data = json.load(open(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"measured-results file {path} is not valid JSON: {e}") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"measured-results file {path} must hold an object with an 'entries' list")
    return entries


def compare_entry(entry: Dict[str, Any], root: str, hw: Hardware) -> Comparison:
    """The prediction for one measured (or to-be-measured) run."""
    path = os.path.join(root, entry["config"])
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path} (named by a measured entry)")
    raw = apply_overrides(json.load(open(path)), entry.get("overrides", []))
    layout = Layout(**entry["layout"])
    if layout.gpus != entry["gpus"]:
        raise ConfigError(f"measured entry {entry['config']} {layout.short()}: layout covers {layout.gpus} GPUs, "
                          f"'gpus' says {entry['gpus']}")
    cfg = layout_config(raw, layout, entry["global_batch_size"])
    return Comparison(entry, predict(cfg, layout, hw, bool(entry.get("main_gradients_whole_run", False))))


def compare_file(path: str, root: str, hw: Hardware) -> List[Comparison]:
    """Every entry of a measured-results file with its prediction (configs relative to `root`)."""
    return [compare_entry(e, root, hw) for e in load_entries(path)]
