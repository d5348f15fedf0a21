"""`--layout auto`: the launcher asks the layout planner instead of the user.

The planner (megatron_sffn/planner) ranks every legal (tensor, pipeline, data, ZeRO,
micro-batch, activation checkpointing, sequence parallel) layout of the config on this world
size by predicted step time, among those whose predicted peak fits the GPU memory. Every rank
asks it the same question before the rendezvous and gets the same answer. Layout flags the
user gave beside `--layout auto` are kept: the best layout that has them is chosen.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..config import ConfigError

GIB = float(2 ** 30)

# launcher flag (argparse attribute) -> the planner Layout field it fixes
EXPLICIT_FLAGS = {"tensor_parallel": "tensor", "pipeline_parallel": "pipeline", "zero_stage": "zero_stage",
                  "micro_batch_size": "micro_batch", "sequence_parallel": "sequence_parallel"}


@dataclass
class LayoutChoice:
    chosen: Any                  # planner.plan.Prediction
    runner_up: Optional[Any]
    memory_gb: float
    memory_source: str
    kept: Dict[str, Any]         # the user's layout flags the choice honours
    searched_graphs: bool        # the planner weighed each layout with and without CUDA graphs

    def overrides(self) -> List[str]:
        layout = self.chosen.layout   # without graphs, where that was planned: "auto" must not add them
        off = self.searched_graphs and not layout.cuda_graphs
        return layout.overrides(self.chosen.global_batch_size) + (["training.cuda_graphs=false"] if off else [])

    def explain(self, cfg) -> None:
        """The banner's reason for CUDA graphs, where the planner decided them."""
        if self.searched_graphs:
            cfg.training.chosen_because["cuda_graphs"] = "--layout auto"

    def banner_lines(self) -> List[str]:
        def describe(p) -> str:
            return (f"{p.layout.short()} (predicted peak {p.peak_gb:.1f} GB, {p.step.total * 1e3:,.1f} ms/step, "
                    f"{p.tokens_per_s_per_gpu:,.0f} tokens/s/GPU)")
        kept = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.kept.items())
        lines = [f"auto       layout {describe(self.chosen)} for {self.chosen.layout.gpus} GPUs x "
                 f"{self.memory_gb:g} GB ({self.memory_source})" + (f", keeping {kept}" if kept else "")]
        lines.append("runner-up  " + (describe(self.runner_up) if self.runner_up else "none: no other layout fits"))
        return lines


def gpu_memory_gb(given: Optional[float]) -> tuple:
    """(GB per GPU, where the number comes from). Detected from this rank's GPU unless given."""
    if given is not None:
        return given, "--gpu-memory-gb"
    import torch
    if not torch.cuda.is_available():
        raise ConfigError("--layout auto needs the memory per GPU, and this machine has no CUDA device to ask: "
                          "pass --gpu-memory-gb N (GB = 2^30 bytes)")
    device = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    props = torch.cuda.get_device_properties(device)
    return round(props.total_memory / GIB, 1), f"detected: {props.name}"


def choose_layout(raw: Dict[str, Any], world_size: int, kept: Dict[str, Any], memory_gb: float,
                  memory_source: str, cuda: bool, gpus_per_node: int) -> LayoutChoice:
    """The planner's best layout of `raw` (the config file with the user's overrides) that has
    every value in `kept`; ConfigError naming why none fits."""
    from ..planner.hardware import Hardware
    from ..planner.plan import MICRO_BATCHES, plan
    hw = Hardware(gpu_memory_gb=memory_gb, gpus_per_node=gpus_per_node)
    training = raw.get("training", {})
    search_graphs = cuda and training.get("cuda_graphs", "auto") == "auto" and training.get("compile", "auto") in (
        "auto", True)
    micro = (kept["micro_batch"],) if "micro_batch" in kept else MICRO_BATCHES
    try:
        result = plan(copy.deepcopy(raw), world_size, hw, micro_batch_sizes=micro, search_cuda_graphs=search_graphs,
                      cuda=cuda)
    except ConfigError as e:
        raise ConfigError(f"--layout auto: {e}") from None
    fits = [p for p in result.ranked if all(getattr(p.layout, field) == v for field, v in kept.items())]
    flags = {flag: kept[field] for flag, field in EXPLICIT_FLAGS.items() if field in kept}
    if not fits:
        closest = [e for e in result.excluded if all(getattr(e.layout, f) == v for f, v in kept.items())]
        near = min((e for e in closest if e.prediction is not None), key=lambda e: e.prediction.peak_gb, default=None)
        why = (f"the closest, {near.layout.short()}, is predicted at {near.prediction.peak_gb:.1f} GB"
               if near else (f"e.g. {closest[0].layout.short()}: {closest[0].reason}" if closest else
                             "no candidate has them"))
        given = "".join(f" --{k.replace('_', '-')} {v}" for k, v in flags.items())
        raise ConfigError(f"--layout auto: no layout of this config{' with' + given if given else ''} fits "
                          f"{world_size} GPUs x {memory_gb:g} GB ({why}); lower --micro-batch-size or "
                          "--global-batch-size, drop a layout flag, or see python tools/plan_layout.py")
    return LayoutChoice(fits[0], fits[1] if len(fits) > 1 else None, memory_gb, memory_source, flags,
                        search_graphs)
