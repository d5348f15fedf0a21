"""TrainEngine: one interface over DeepSpeed's engines for the training loop.

  pipeline > 1   DeepSpeed PipelineEngine over model/pipeline.py's PipelineModule (1F1B,
                 tied embedding across first/last stage); ZeRO 0 or 1
  pipeline = 1   plain DeepSpeedEngine over CheckpointedGPT with our mpu; ZeRO 0, 1, 2 or 3
Both take one optimizer step per global batch (gradient accumulation inside) and return
the global-batch mean loss, the same float on every rank.

DeepSpeed's optimizer wrappers (ZeRO, BF16/FP16) skip a step whose gradients are not
finite. The one path with no wrapper, fp32 without ZeRO, is guarded here: the global norm
is computed over the whole model (see `global_grad_norm`) and the step is skipped, and
gradients dropped, when it is not finite. The same guard clips with that norm, because
DeepSpeed's fp32 clipping in a pipeline counts replicated parameters of later stages
never (it asks for model-parallel rank 0 instead of tensor rank 0).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import Config
from ..model.gpt import drop_guides
from ..model.pipeline import build_data_parallel_module, build_pipeline_module, layout_free_names
from ..parallel.ds_config import deepspeed_config
from ..parallel.full_state import gather_tensor_parallel, merge_over_pipeline
from ..parallel.topology import ParallelState
from ..structured.guide import GuideState
from .optimizer import (ADAM_STATE_KEYS, base_optimizer, build_optimizer, initialise_adam_state,
                        optimizer_step_count)

Batch = Tuple[torch.Tensor, torch.Tensor]
GradientObserver = Callable[["TrainEngine"], None]


def _quiet_deepspeed() -> None:
    """DeepSpeed's info lines (per rank, per engine) drown the run's own log."""
    from deepspeed.utils import logger
    logger.setLevel(logging.WARNING)


class TrainEngine:
    def __init__(self, cfg: Config, state: ParallelState, guide_state: Optional[GuideState], guided: bool):
        self.cfg, self.state, self.guide_state, self.guided = cfg, state, guide_state, guided
        self.uses_pipeline = state.pipe_size > 1
        self.last_step_skipped = False
        self._own_guard = cfg.training.precision == "fp32" and cfg.parallel.zero_stage == 0
        self._own_grad_norm: Optional[float] = None
        self._observers: List[GradientObserver] = []
        self.ds = None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: Config, state: ParallelState, guide_state: Optional[GuideState], guided: bool) -> "TrainEngine":
        _quiet_deepspeed()
        engine = cls(cfg, state, guide_state, guided)
        engine.ds = engine._initialize(engine._build_module(guided))
        return engine

    def _build_module(self, guided: bool, initialize: bool = True) -> nn.Module:
        builder = build_pipeline_module if self.uses_pipeline else build_data_parallel_module
        return builder(self.cfg, self.state, self.guide_state, guided, initialize=initialize)

    def _initialize(self, module: nn.Module):
        import deepspeed

        optimizer = build_optimizer(module, self.cfg.optimizer)
        config = deepspeed_config(self.cfg, self.state.data_size)
        if self._own_guard:
            config["gradient_clipping"] = 0.0  # clipped in _guarded_step with the whole-model norm
        ds, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config,
                                           mpu=None if self.uses_pipeline else self.state.mpu)
        self._wrap_optimizer_step(ds)
        return ds

    def _wrap_optimizer_step(self, ds) -> None:
        """Run gradient observers (and, for fp32 without ZeRO, the guard) right before each step."""
        original = ds.optimizer.step

        def step(*args, **kwargs):
            for observe in self._observers:
                observe(self)
            if self._own_guard:
                return self._guarded_step(original, *args, **kwargs)
            return original(*args, **kwargs)

        ds.optimizer.step = step

    # -- the fp32 / ZeRO-0 guard ---------------------------------------------------------
    def global_grad_norm(self) -> float:
        """L2 norm of the whole model's gradient, each tensor counted once.

        Sharded parameters count on every tensor rank, replicated ones on tensor rank 0
        only, the last stage's copy of the tied embedding not at all; the sum runs over
        the model-parallel group (pipeline x tensor ranks of one replica). Gradients are
        already averaged over data-parallel ranks when this runs.
        """
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for param in self.ds.module.parameters():
            if param.grad is None or getattr(param, "ds_pipe_replicated", False):
                continue
            if self.state.tensor_rank > 0 and not getattr(param, "tensor_model_parallel", False):
                continue
            total += param.grad.detach().double().pow(2).sum()
        if self.state.tensor_size * self.state.pipe_size > 1:
            dist.all_reduce(total, group=self.state.model_group)
        return float(total.sqrt())

    def _guarded_step(self, original, *args, **kwargs):
        norm = self.global_grad_norm()
        self._own_grad_norm = norm
        if not math.isfinite(norm):
            self.last_step_skipped = True
            self.ds.module.zero_grad(set_to_none=True)
            return None
        clip = self.cfg.optimizer.grad_clip
        if clip > 0 and norm > clip:
            coefficient = clip / (norm + 1e-6)
            for param in self.ds.module.parameters():
                if param.grad is not None:
                    param.grad.mul_(coefficient)
        return original(*args, **kwargs)

    # -- training and evaluation -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.ds.device if self.ds is not None else torch.device("cpu")

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def micro_batches(self) -> int:
        return self.ds.gradient_accumulation_steps()

    def train_batch(self, data_iter: Iterator[Batch]) -> float:
        """One optimizer step over the global batch; the mean loss, equal on every rank."""
        skipped_before = self.ds.skipped_steps
        self.last_step_skipped = False
        if self.uses_pipeline:
            loss = float(self.ds.train_batch(data_iter))
        else:
            self.ds.train()
            losses = []
            for _ in range(self.micro_batches):
                ids, labels = self._to_device(next(data_iter))
                loss = self.ds(ids, labels)
                self.ds.backward(loss)
                self.ds.step()
                losses.append(loss.detach().float())
            loss = self._data_parallel_mean(torch.stack(losses).mean())
        self.last_step_skipped = self.last_step_skipped or self.ds.skipped_steps > skipped_before
        return loss

    @torch.no_grad()
    def eval_batch(self, data_iter: Iterator[Batch]) -> float:
        """Mean loss over one global batch of micro-batches, without gradients."""
        if self.uses_pipeline:
            return float(self.ds.eval_batch(data_iter))
        self.ds.eval()
        losses = []
        for _ in range(self.micro_batches):
            ids, labels = self._to_device(next(data_iter))
            losses.append(self.ds(ids, labels).float())
        return self._data_parallel_mean(torch.stack(losses).mean())

    def _to_device(self, batch: Batch) -> Batch:
        ids, labels = batch
        return ids.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _data_parallel_mean(self, value: torch.Tensor) -> float:
        if self.state.data_size > 1:
            value = value.clone()
            dist.all_reduce(value, group=self.state.data_group)
            value /= self.state.data_size
        return float(value)

    # -- knobs and readings for the loop -------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr
        for group in base_optimizer(self.ds.optimizer).param_groups:
            group["lr"] = lr

    @property
    def grad_norm(self) -> Optional[float]:
        if self._own_guard:
            return self._own_grad_norm
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    @property
    def loss_scale(self) -> Optional[float]:
        if self.cfg.training.precision != "fp16":
            return None
        return float(getattr(self.ds.optimizer, "loss_scale", getattr(self.ds.optimizer, "cur_scale", 1.0)))

    @property
    def global_steps(self) -> int:
        return self.ds.global_steps

    def observe_gradients(self, observer: GradientObserver) -> Callable[[], None]:
        """Call observer(engine) after gradients are reduced and before each optimizer step
        (where gather_full_state(include_grads=True) sees them). Returns a remover."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, save_dir: str, tag: str, client_state: Dict) -> None:
        """DeepSpeed's own layout under save_dir/tag. `latest` is left to the caller, which
        writes it only once every rank has finished (training/checkpointing.py)."""
        self.ds.save_checkpoint(save_dir, tag=tag, client_state=dict(client_state), save_latest=False)

    def load_checkpoint(self, load_dir: str, tag: str) -> Dict:
        path, client_state = self.ds.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint '{tag}' under {load_dir}")
        return client_state or {}

    # -- full tensors for tests and tools ----------------------------------------------------------
    def _named_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """(layout-free name, parameter) of the parameters this rank owns, in module order."""
        if not self.uses_pipeline:
            return list(self.ds.module.named_parameters())
        names = layout_free_names(self.ds.module)
        return [(names[n], p) for n, p in self.ds.module.named_parameters()
                if not getattr(p, "ds_pipe_replicated", False)]

    def gather_full_state(self, include_grads: bool = False, master: bool = False) -> Dict[str, torch.Tensor]:
        """Every parameter as its full tensor, named as in GPTModel.state_dict(), on every rank.

        include_grads adds "<name>.grad" entries (only meaningful inside a gradient observer:
        DeepSpeed frees gradients after the step). master=True reads the fp32 master weights.
        Collective over the whole world; moves whole tensors (tests and tools, not training).
        """
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

        local = {}
        for name, param in self._named_parameters():
            split = getattr(param, "tp_split_dim", None)
            value = safe_get_full_fp32_param(param) if master else None
            local[name] = gather_tensor_parallel(value if value is not None else param, split, self.state.tp)
            if include_grads:
                grad = safe_get_full_grad(param)
                if grad is None:
                    grad = torch.zeros_like(param, dtype=torch.float32)
                local[f"{name}.grad"] = gather_tensor_parallel(grad, split, self.state.tp)
        return merge_over_pipeline(local, self.state.pipe_group, self.state.pipe_size)

    # -- self-guided training: drop the guides -------------------------------------------------------
    def drop_guides_and_rebuild(self) -> Dict[str, float]:
        """Remove every guide and rebuild the DeepSpeed engine without them.

        How optimizer state survives: a new module without guides is built (not
        re-initialised), the old engine's parameters are copied into it, and a new engine
        is created. Then, parameter by parameter, the old engine's fp32 master weight and
        Adam moments are read in full (DeepSpeed's safe_get_full_* accessors gather ZeRO
        partitions) and written into the new engine's partitions; Adam's step count and
        the engine's step/sample/skip counters carry over. Both engines coexist during the
        copy, so peak memory is about twice one engine; the old one is then released.
        """
        before = self._memory_stats("before")
        old = self.ds
        old_params = dict(self._named_parameters())
        step = optimizer_step_count(old.optimizer)
        drop_guides(old.module, self.guide_state)
        self.guided = False
        module = self._build_module(guided=False, initialize=False)
        self._copy_weights(old_params, module)
        self.ds = self._initialize(module)
        self._carry_optimizer_state(old, old_params, step)
        for counter in ("global_steps", "global_samples", "skipped_steps"):
            setattr(self.ds, counter, getattr(old, counter))
        _release(old)
        del old, old_params
        return {**before, **self._memory_stats("after")}

    def _copy_weights(self, old_params: Dict[str, nn.Parameter], module: nn.Module) -> None:
        names = layout_free_names(module) if self.uses_pipeline else None
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(old_params[names[name] if names else name].float())

    def _carry_optimizer_state(self, old, old_params: Dict[str, nn.Parameter], step: int) -> None:
        from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_optimizer_state,
                                     safe_set_full_fp32_param, safe_set_full_optimizer_state)

        new_optimizer = self.ds.optimizer
        if step > 0:
            initialise_adam_state(new_optimizer, step)
        old_state, new_state = base_optimizer(old.optimizer).state, base_optimizer(new_optimizer).state
        for name, param in self._named_parameters():
            previous = old_params[name]
            master = safe_get_full_fp32_param(previous)
            if master is not None:
                safe_set_full_fp32_param(param, master)
            if step == 0:
                continue
            for key in ADAM_STATE_KEYS:
                value = safe_get_full_optimizer_state(previous, key)
                if value is None:
                    value = old_state[previous][key]
                if not safe_set_full_optimizer_state_or_none(param, value, key, safe_set_full_optimizer_state):
                    new_state[param][key].copy_(value)
        for state in new_state.values():
            if "step" in state:
                state["step"].fill_(float(step))

    def _memory_stats(self, when: str) -> Dict[str, float]:
        stats = {f"params_{when}": sum(p.numel() for p in self.ds.module.parameters())}
        if torch.cuda.is_available():
            stats[f"allocated_gb_{when}"] = torch.cuda.memory_allocated() / 2 ** 30
            stats[f"max_allocated_gb_{when}"] = torch.cuda.max_memory_allocated() / 2 ** 30
        return stats


def safe_set_full_optimizer_state_or_none(param, value, key, setter) -> bool:
    """Write through DeepSpeed when the parameter's state is partitioned; False otherwise."""
    if hasattr(param, "_hp_mapping") or hasattr(param, "ds_id"):
        setter(param, value, key)
        return True
    return False


def _release(ds) -> None:
    """Detach an engine from its module and free what it holds."""
    ds.destroy()
    for hook in ("module_forward_pre_hook", "module_forward_post_hook"):
        handle = getattr(ds, hook, None)
        if handle is not None:
            handle.remove()
