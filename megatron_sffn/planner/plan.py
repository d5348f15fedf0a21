"""Enumerate layouts of one config on N GPUs, drop the illegal and the ones that do not fit,
rank the rest by predicted step time.

Legality is the project's own: each layout is the config with --override values applied,
checked by config.validate / check_layout (world size N) and ds_config.check_engine_support,
so a reason printed here is the one-line error the launcher would stop with.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ..config import Config, ConfigError, config_from_dict
from ..model.accounting import MEAN_ALPHA, model_stats, train_flops_per_token
from ..parallel.ds_config import check_engine_support
from .hardware import GIB, Hardware
from .layout import Layout
from .memory import StageMemory, predict_memory, stage_pieces
from .pieces import model_pieces
from .timing import StepTime, predict_step

MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
ZERO_STAGES = (0, 1, 2)


@dataclass
class Prediction:
    layout: Layout
    micro_batches: int          # per optimizer step and data rank (gradient accumulation)
    implementation: str         # optimizer that runs: fused | deepspeed
    stages: List[StageMemory]
    step: StepTime
    global_batch_size: int
    tokens_per_step: int
    model_flops_per_token: float
    hw: Hardware

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def peak_gb(self) -> float:
        """Per GPU, overhead included: what has to fit."""
        return self.peak.total / GIB

    @property
    def allocated_gb(self) -> float:
        """Per GPU, as torch.cuda.max_memory_allocated would report it (compare measurements with this)."""
        return max(s.allocated for s in self.stages) / GIB

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.hw.gpu_memory_gb

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_step / self.step.total / self.layout.gpus

    @property
    def mfu(self) -> float:
        return self.model_flops_per_token * self.tokens_per_s_per_gpu / (self.hw.peak_tflops * 1e12)

    def as_dict(self) -> Dict[str, Any]:
        return {"layout": self.layout.as_dict(), "name": self.layout.short(), "micro_batches": self.micro_batches,
                "overrides": self.layout.overrides(self.global_batch_size),
                "optimizer": self.implementation, "peak_gb": self.peak_gb, "allocated_gb": self.allocated_gb,
                "peak_stage": self.peak.stage,
                "memory_gb_by_stage": [s.as_gb() for s in self.stages], "step_s": self.step.total,
                "step_s_by_part": self.step.as_dict(), "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
                "mfu": self.mfu}


@dataclass
class Excluded:
    layout: Layout
    reason: str
    prediction: Optional[Prediction] = None   # set when the layout is legal but does not fit

    def as_dict(self) -> Dict[str, Any]:
        out = {"layout": self.layout.as_dict(), "name": self.layout.short(), "reason": self.reason}
        if self.prediction is not None:
            out["peak_gb"] = self.prediction.peak_gb
        return out


@dataclass
class Plan:
    ranked: List[Prediction]
    excluded: List[Excluded]


def guide_fraction(cfg: Config) -> float:
    """Mean share of guide work per step over the guided phase (the phase that sets the peak)."""
    if not cfg.self_guided.enabled:
        return 0.0
    return MEAN_ALPHA if cfg.self_guided.reduce_flop else 1.0


def layout_config(raw: Dict[str, Any], layout: Layout, global_batch_size: int, cuda: bool = True) -> Config:
    """The config turned into `layout`, validated for its world size; ConfigError if illegal.
    cuda: resolve the config's "auto" settings as on a GPU (what the planner plans for); its
    training.cuda_graphs "auto" becomes the layout's value, so what is predicted is what runs."""
    raw = copy.deepcopy(raw)
    training = raw.setdefault("training", {})
    if training.get("cuda_graphs", "auto") == "auto":
        training["cuda_graphs"] = layout.cuda_graphs
    cfg = config_from_dict(raw, layout.overrides(global_batch_size), world_size=layout.gpus, cuda=cuda)
    check_engine_support(cfg)
    return cfg


def predict(cfg: Config, layout: Layout, hw: Hardware, main_gradients_whole_run: bool = False) -> Prediction:
    """Memory and step time of a config already in `layout` (layout_config). main_gradients_whole_run:
    the fused optimizer as it was before 2026-11-28 (one main-gradient buffer held for the whole
    run), for measurements made then."""
    m, t = cfg.model, cfg.training
    guided = cfg.self_guided.enabled
    pieces = model_pieces(m, layout.tensor, guided)
    micro_batches = t.global_batch_size // (t.micro_batch_size * layout.data)
    interval = t.checkpoint_interval
    implementation = cfg.optimizer.implementation
    stages_mem = predict_memory(m, layout, pieces, implementation, micro_batches, interval, guided, hw,
                                main_gradients_whole_run)
    gf = guide_fraction(cfg)
    step = predict_step(m, layout, stage_pieces(pieces, layout.pipeline), implementation, micro_batches, gf,
                        guided, m.ffn.kind, hw, cuda_graphs=t.cuda_graphs)
    flops = train_flops_per_token(model_stats(m), gf)
    return Prediction(layout, micro_batches, implementation, stages_mem, step, t.global_batch_size,
                      t.global_batch_size * m.seq_length, flops, hw)


def _divisors(n: int) -> List[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidate_layouts(gpus: int, micro_batch_sizes: Sequence[int] = MICRO_BATCHES,
                      cuda_graphs: Sequence[bool] = (False,)) -> Iterator[Layout]:
    for tensor in _divisors(gpus):
        for pipeline in _divisors(gpus // tensor):
            data = gpus // (tensor * pipeline)
            for zero in ZERO_STAGES:
                for mb in micro_batch_sizes:
                    for ckpt in (False, True):
                        for sp in ((False, True) if tensor > 1 else (False,)):
                            for graphs in cuda_graphs:
                                yield Layout(tensor, pipeline, data, zero, mb, ckpt, sp, graphs)


def plan(raw: Dict[str, Any], gpus: int, hw: Hardware, global_batch_size: Optional[int] = None,
         micro_batch_sizes: Sequence[int] = MICRO_BATCHES, search_cuda_graphs: bool = False,
         cuda: bool = True) -> Plan:
    """Every candidate layout of the config `raw` (a JSON dict) on `gpus` GPUs, ranked or excluded.
    search_cuda_graphs: each layout also with training.cuda_graphs (compiled blocks replayed as CUDA
    graphs), the config's own checks excluding where it is refused; otherwise the config's value
    (its "auto" planned as false). cuda: resolve "auto" settings as on a GPU; false plans the CPU
    run the launcher makes of it (launchers/pretrain.py --layout auto on gloo ranks)."""
    raw = copy.deepcopy(raw)
    training = raw.setdefault("training", {})
    if search_cuda_graphs or training.get("cuda_graphs", "auto") == "auto":
        training["cuda_graphs"] = False   # the layout says when it is on
    base = config_from_dict(copy.deepcopy(raw), cuda=cuda)
    if base.training.precision != "bf16":
        raise ConfigError(f"the planner models bf16 runs; 'training.precision' = {base.training.precision!r}")
    batch = global_batch_size or base.training.global_batch_size
    graphs: Sequence[bool] = (False, True) if search_cuda_graphs else (base.training.cuda_graphs,)
    ranked, excluded = [], []
    for layout in candidate_layouts(gpus, micro_batch_sizes, graphs):
        if layout.tensor > hw.gpus_per_node:
            excluded.append(Excluded(layout, f"parallel.tensor = {layout.tensor} exceeds the {hw.gpus_per_node} GPUs "
                                             "of a node (a tensor group is consecutive ranks of one node)"))
            continue
        try:
            cfg = layout_config(raw, layout, batch, cuda)
        except ConfigError as e:
            excluded.append(Excluded(layout, str(e)))
            continue
        pred = predict(cfg, layout, hw)
        if pred.fits:
            ranked.append(pred)
        else:
            excluded.append(Excluded(layout, f"predicted {pred.peak_gb:.0f} GB > {hw.gpu_memory_gb:g} GB "
                                             f"(stage {pred.peak.stage})", pred))
    ranked.sort(key=lambda p: (p.step.total, p.peak_gb, p.layout.cuda_graphs))   # a tie: without graphs
    return Plan(ranked, excluded)
