"""TrainEngine: one interface over DeepSpeed's engines for the training loop.

  pipeline > 1   DeepSpeed PipelineEngine over model/pipeline.py's PipelineModule (1F1B,
                 tied embedding across first/last stage); ZeRO 0 or 1
  pipeline = 1   plain DeepSpeedEngine over CheckpointedGPT with our mpu; ZeRO 0, 1, 2 or 3
Both take one optimizer step per global batch (gradient accumulation inside) and return
the global-batch mean loss, the same float on every rank.

DeepSpeed's optimizer wrappers (ZeRO, BF16/FP16) skip a step whose gradients are not
finite, and `last_step_skipped` reports it. Without ZeRO in fp32 (and bf16 outside a
pipeline) this class guards the step itself (`uses_own_guard`): it computes the norm over
the whole model once (`global_grad_norm`), skips the step when it is not finite, and
clips with it, because DeepSpeed's own norm is wrong there under model parallelism.

With the fused optimizer outside a pipeline a micro-batch goes around DeepSpeed's engine:
the module is called and `loss.backward()` run directly and the optimizer stepped by
`_fused_step`, which keeps DeepSpeed's step and sample counters (DeepSpeed would only add its
hooks, timers and a per-parameter `zero_grad` loop: the optimizer reduces, clips, guards and
frees gradients itself). Nothing in such a step waits for the device: `train_batch_deferred`
returns the loss as a device tensor and `step_outcome()` the step's skip flag and gradient
norm as they are (device tensors with the fused optimizer); the training loop reads them at
its log steps. `train_batch`, `last_step_skipped` and `grad_norm` give host values (waiting).
"""
from __future__ import annotations

import gc
import logging
import math
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import Config, ConfigError, resolve_speed_settings
from ..fp8.device import fp8_problem
from ..fp8.dispatch import assign_from_config
from ..model.gpt import drop_guides
from ..model.compile import compile_blocks, grouping_refusal
from ..model.pipeline import build_data_parallel_module, build_pipeline_module, layout_free_names
from ..parallel.cross_entropy import use_compiled_passes
from ..parallel.ds_config import check_engine_support, deepspeed_config
from ..parallel.full_state import gather_tensor_parallel, merge_over_pipeline
from ..parallel.sequence import sum_partial_gradients_with_hooks
from ..parallel.topology import ParallelState
from ..structured.guide import GuideState
from .master_optimizer import MasterWeightAdamW, ShardedMasterAdamW
from .optimizer import (ADAM_STATE_KEYS, base_optimizer, build_optimizer, carry_state, full_grad, full_master,
                        full_moment, initialise_adam_state, optimizer_step_count, undo_initialisation_step)

Batch = Tuple[torch.Tensor, torch.Tensor]
CLIENT_KEY = "megatron_sffn_client_state"
OPTIMIZER_RANGE = "optimizer step"  # the profiler range around a step (benchmarks/profile_summary.py's name too)
GradientObserver = Callable[["TrainEngine"], None]


def uses_own_guard(cfg: Config) -> bool:
    """Without ZeRO, DeepSpeed's fp32 path does not skip non-finite steps, and both it and
    its bf16 wrapper (FP16_UnfusedOptimizer) get the norm wrong under model parallelism:
    the first counts replicated parameters only on model-parallel rank 0 (so a pipeline's
    later stages never), the second flattens the gradients before asking which are
    tensor-parallel (so tensor ranks > 0 count nothing). The pipeline's bf16 optimizer
    (BF16_Optimizer) and the ZeRO optimizers count per parameter and are left alone."""
    precision, pipeline = cfg.training.precision, cfg.parallel.pipeline > 1
    if cfg.optimizer.implementation == "fused":  # MasterWeightAdamW guards and clips itself
        return False
    return cfg.parallel.zero_stage == 0 and (precision == "fp32" or (precision == "bf16" and not pipeline))


def replays_as_cuda_graphs(cfg: Config, guided: bool) -> bool:
    """training.cuda_graphs, except while reduce_flop guides run: every step draws which blocks
    compute their guide, and CUDA-graph trees record a new graph for each new sequence of
    draws (one H200, 1.3B lowrank: 4.6K tokens/s guided against 26.6K compiled alone). The
    guided phase runs compiled; the blocks are compiled again, as graphs, when the guides drop."""
    return cfg.training.cuda_graphs and not (guided and cfg.self_guided.enabled and cfg.self_guided.reduce_flop)


def _quiet_deepspeed() -> None:
    """DeepSpeed's info lines (per rank, per engine) drown the run's own log."""
    from deepspeed.utils import logger
    logger.setLevel(logging.WARNING)


class TrainEngine:
    def __init__(self, cfg: Config, state: ParallelState, guide_state: Optional[GuideState], guided: bool):
        self.cfg, self.state, self.guide_state, self.guided = cfg, state, guide_state, guided
        self.uses_pipeline = state.pipe_size > 1
        self._skip_flag: object = False  # bool, or the fused optimizer's device flag
        self._fused_direct = False  # a micro-batch goes around DeepSpeed's engine (fused, no pipeline)
        self._own_guard = uses_own_guard(cfg)
        self._own_grad_norm: Optional[float] = None
        self._observers: List[GradientObserver] = []
        self.compiled_blocks = 0  # blocks under torch.compile in the current module
        self.blocks_per_region = 1  # compiled blocks per region (model/compile.py: compile_block_groups)
        self.grouping_refused = None  # why training.blocks_per_region > 1 was not applied, if it was not
        self.fp8_choices = []  # per GEMM weight: FP8 or bf16, and why (fp8/dispatch.py)
        self.ds = None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: Config, state: ParallelState, guide_state: Optional[GuideState], guided: bool,
              set_values: Optional[Callable[[nn.Module], None]] = None) -> "TrainEngine":
        """set_values(module), when given, fills the freshly built module instead of the seeded
        initialisation, before DeepSpeed copies it into its fp32 masters / ZeRO partitions
        (checkpoint tools load consolidated weights this way, in any layout)."""
        t = cfg.training
        if "auto" in (t.compile, t.cuda_graphs, t.cpp_wrapper, t.blocks_per_region, cfg.optimizer.update):  # made in code
            resolve_speed_settings(cfg, world_size=state.world_size)
        check_engine_support(cfg)
        problem = fp8_problem() if cfg.training.fp8.enabled and set_values is None else None
        if problem:  # checkpoint tools (set_values) run no products: any machine
            raise ConfigError(problem)
        _quiet_deepspeed()
        engine = cls(cfg, state, guide_state, guided)
        module = engine._build_module(guided, initialize=set_values is None)
        if set_values is not None:
            with torch.no_grad():
                set_values(module)
        engine.ds = engine._initialize(module)
        return engine

    def _build_module(self, guided: bool, initialize: bool = True) -> nn.Module:
        builder = build_pipeline_module if self.uses_pipeline else build_data_parallel_module
        module = builder(self.cfg, self.state, self.guide_state, guided, initialize=initialize)
        self.fp8_choices = assign_from_config(module, self.cfg)  # before compile: the graphs read the tags
        use_compiled_passes(self.cfg.training.compile)  # the loss's T x V passes (no guide involved)
        if self.cfg.training.compile:  # guided blocks too (model/compile.py), again after the drop
            mode = "reduce-overhead" if replays_as_cuda_graphs(self.cfg, guided) else None
            per_region = self.cfg.training.blocks_per_region
            self.compiled_blocks = compile_blocks(module, mode=mode, cpp_wrapper=self.cfg.training.cpp_wrapper,
                                                  blocks_per_region=per_region,
                                                  collectives_in_graphs=self.cfg.training.trace_collectives,
                                                  keep_fp8_casts=self.cfg.training.fp8.enabled and self.cfg.training.fp8.keep_casts)
            self.blocks_per_region = getattr(module, "group_size", 1)  # what compile_blocks applied
            self.grouping_refused = grouping_refusal(module, mode) if self.blocks_per_region < per_region else None
        return module

    def _initialize(self, module: nn.Module):
        import deepspeed

        fused = self.cfg.optimizer.implementation == "fused"
        partial = [p for p in module.parameters() if getattr(p, "sequence_parallel", False)]
        if fused:
            optimizer = self._master_weight_optimizer(module)
            optimizer.tensor_partial = (self.state.tensor_group, partial)  # summed once per step
        else:
            optimizer = build_optimizer(module, self.cfg.optimizer)
            sum_partial_gradients_with_hooks(partial, self.state.tp)  # summed per use
        config = deepspeed_config(self.cfg, self.state.data_size)
        if self._own_guard:
            config["gradient_clipping"] = 0.0  # clipped in _guarded_step with the whole-model norm
        ds, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config,
                                           mpu=None if self.uses_pipeline else self.state.mpu)
        if fused:  # the optimizer reduces its own flat fp32 gradients, tied ones included
            ds.enable_backward_allreduce = False
            if self.uses_pipeline:  # the tied embedding's two copies: summed by the optimizer, not DeepSpeed
                ds.pipeline_enable_backward_allreduce = False
                optimizer.tied_groups = module.get_tied_weights_and_groups()
                module.get_tied_weights_and_groups = lambda: []
        undo_initialisation_step(ds.optimizer)
        self._wrap_optimizer_step(ds)
        self._fused_direct = fused and not self.uses_pipeline
        return ds

    def _master_weight_optimizer(self, module: nn.Module) -> MasterWeightAdamW:
        """Masters from the fp32 module on its training device; the optimizer then makes the
        parameters bf16. ZeRO 1 shards masters and moments over the data-parallel group."""
        module.to(torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu")
        kind = ShardedMasterAdamW if self.cfg.parallel.zero_stage == 1 else MasterWeightAdamW
        return kind(module, self.cfg.optimizer, self.state, self._counted_in_norm)

    def _counted_in_norm(self, param: nn.Parameter) -> bool:
        """Whether this rank adds `param` to the gradient norm (see global_grad_norm)."""
        if getattr(param, "ds_pipe_replicated", False):
            return False
        return self.state.tensor_rank == 0 or getattr(param, "tensor_model_parallel", False)

    def _wrap_optimizer_step(self, ds) -> None:
        """Run gradient observers (and, for fp32 without ZeRO, the guard) right before each step,
        all of it inside a profiler range (OPTIMIZER_RANGE: benchmarks/bench_ledger.py counts
        what runs in it as the optimizer's; a range costs about 10 us without a profiler)."""
        original = ds.optimizer.step
        reduce = ds.optimizer.reduce_gradients if isinstance(ds.optimizer, MasterWeightAdamW) else None

        def step(*args, **kwargs):
            with torch.profiler.record_function(OPTIMIZER_RANGE):
                if reduce is not None and self._observers:
                    reduce()  # observers see data-parallel-averaged gradients
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
    def last_step_skipped(self) -> bool:
        """Whether the last train_batch skipped its optimizer step (waits for the device)."""
        return bool(self._skip_flag)

    @last_step_skipped.setter
    def last_step_skipped(self, value) -> None:
        self._skip_flag = value

    def step_outcome(self) -> Tuple[object, object]:
        """(skipped, gradient norm) of the last step without waiting: bools/floats, or 0-d
        device tensors (skipped: 1.0 = skipped) with the fused optimizer; norm None if unknown."""
        if self._fused_direct:  # a new tensor every step (a float without torch's fused kernel)
            return self._skip_flag, _fused_norm(self.ds.optimizer)
        norm = self._grad_norm_now()
        if isinstance(norm, torch.Tensor):  # DeepSpeed's own: a copy, in case its buffer is reused
            norm = norm.detach().clone()
        return self._skip_flag, norm

    @property
    def device(self) -> torch.device:
        return self.ds.device if self.ds is not None else torch.device("cpu")

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def gradients_skip_buffer(self) -> bool:
        """Whether the fused optimizer's update reads each step's bf16 gradients as they are (one
        micro-batch a step, one data rank: master_optimizer._holds_bf16_gradients)."""
        optimizer = self.ds.optimizer if self.ds is not None else None
        return (self._fused_direct and self.micro_batches == 1
                and bool(getattr(optimizer, "can_hold_bf16_gradients", lambda: False)()))

    @property
    def micro_batches(self) -> int:
        return self.ds.gradient_accumulation_steps()

    def train_batch(self, data_iter: Iterator[Batch]) -> float:
        """One optimizer step over the global batch; the mean loss, equal on every rank."""
        return float(self.train_batch_deferred(data_iter))

    def train_batch_deferred(self, data_iter: Iterator[Batch]):
        """train_batch without waiting for the device: the loss as a 0-d device tensor (a float
        in a pipeline, whose engine reads it itself); step_outcome() says if the step was skipped."""
        if self._fused_direct:
            return self._train_batch_fused(data_iter)
        skipped_before = self.ds.skipped_steps
        self.last_step_skipped = False
        if self.uses_pipeline:
            loss = float(self.ds.train_batch(data_iter))
        else:
            self.ds.train()
            losses = []
            overlap = isinstance(self.ds.optimizer, MasterWeightAdamW)
            if overlap:
                self.ds.optimizer.buckets_overlapped = 0
            for i in range(self.micro_batches):
                ids, labels = self._to_device(next(data_iter))
                loss = self.ds(ids, labels)
                if overlap:  # its gradients are final: all-reduce buckets during this backward
                    self.ds.optimizer.last_micro_batch = i == self.micro_batches - 1
                self.ds.backward(loss)
                self.ds.step()
                losses.append(loss.detach().float())
            loss = self._data_parallel_mean_tensor(torch.stack(losses).mean() if len(losses) > 1 else losses[0])
        self.last_step_skipped = bool(self._skip_flag) or self.ds.skipped_steps > skipped_before
        return loss

    def _train_batch_fused(self, data_iter: Iterator[Batch]) -> torch.Tensor:
        """The fused optimizer's step, around DeepSpeed's engine (module docstring). The loss
        is divided by the micro-batch count before backward as DeepSpeed's backward does."""
        ds, optimizer, count = self.ds, self.ds.optimizer, self.micro_batches
        if not ds.module.training:
            ds.train()
        optimizer.buckets_overlapped = 0
        optimizer.single_micro_batch = count == 1  # its bf16 gradients may skip the fp32 buffer
        losses = []
        for i in range(count):
            ids, labels = self._to_device(next(data_iter))
            self._new_replay_step()
            loss = ds.module(ids, labels)
            optimizer.last_micro_batch = i == count - 1  # its gradients are final: reduce during backward
            (loss / count if count > 1 else loss).backward()
            losses.append(loss.detach().float())
            ds.micro_steps += 1
        optimizer.step()  # the wrapped step: gradient observers first
        ds.global_steps += 1
        ds.global_samples += ds.train_batch_size()
        ds._global_grad_norm = _fused_norm(optimizer)
        self._skip_flag = optimizer.found_inf if optimizer.found_inf is not None else optimizer.overflow
        return self._data_parallel_mean_tensor(torch.stack(losses).mean() if count > 1 else losses[0])

    def _new_replay_step(self) -> None:
        """With CUDA graphs: this micro-batch's replays may reuse the memory of the previous
        one's outputs (its backward is done, its loss detached)."""
        if self.cfg.training.cuda_graphs:  # harmless while the guided phase runs without graphs
            torch.compiler.cudagraph_mark_step_begin()

    @torch.no_grad()
    def eval_batch(self, data_iter: Iterator[Batch]) -> float:
        """Mean loss over one global batch of micro-batches, without gradients."""
        if self.uses_pipeline:
            return float(self.ds.eval_batch(data_iter))
        self.ds.eval()
        losses = []
        for _ in range(self.micro_batches):
            ids, labels = self._to_device(next(data_iter))
            self._new_replay_step()
            losses.append(self.ds(ids, labels).float())
        return self._data_parallel_mean(torch.stack(losses).mean())

    def _to_device(self, batch: Batch) -> Batch:
        ids, labels = batch
        return ids.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _data_parallel_mean(self, value: torch.Tensor) -> float:
        return float(self._data_parallel_mean_tensor(value))

    def _data_parallel_mean_tensor(self, value: torch.Tensor) -> torch.Tensor:
        if self.state.data_size > 1:
            value = value.clone()
            dist.all_reduce(value, group=self.state.data_group)
            value /= self.state.data_size
        return value

    # -- knobs and readings for the loop -------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr
        for group in base_optimizer(self.ds.optimizer).param_groups:
            group["lr"] = lr

    @property
    def grad_norm(self) -> Optional[float]:
        norm = self.step_outcome()[1]
        return None if norm is None else float(norm)

    def _grad_norm_now(self):
        if self._own_guard:
            return self._own_grad_norm
        return self.ds.get_global_grad_norm()

    @property
    def loss_scale(self) -> Optional[float]:
        if self.cfg.training.precision != "fp16":
            return None
        return float(getattr(self.ds.optimizer, "loss_scale", getattr(self.ds.optimizer, "cur_scale", 1.0)))

    @property
    def global_steps(self) -> int:
        return self.ds.global_steps

    def observe_gradients(self, observer: GradientObserver) -> Callable[[], None]:
        """Call observer(engine) before each optimizer step, when the gradients are averaged
        over data-parallel ranks but not yet clipped (gather_full_state(include_grads=True)
        sees them there). Returns a function that removes the observer."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, save_dir: str, tag: str, client_state: Dict) -> None:
        """DeepSpeed's own layout under save_dir/tag. `latest` is left to the caller, which
        writes it only once every rank has finished (training/checkpointing.py)."""
        if isinstance(self.ds.optimizer, MasterWeightAdamW):  # whole state on data rank 0, which saves it
            self.ds.optimizer.gather_for_save()
        self.ds.save_checkpoint(save_dir, tag=tag, client_state={CLIENT_KEY: dict(client_state)},
                                save_latest=False)

    def load_checkpoint(self, load_dir: str, tag: str) -> Dict:
        """Restore weights, fp32 masters, optimizer state and step counters; return the client state.

        DeepSpeed's BF16_Optimizer without ZeRO (bf16 + pipeline + ZeRO 0) saves its state in
        bf16_zero_pp_rank_* files, but DeepSpeed 0.19.8 then hands the model-states file's dict
        to its list-reading load (KeyError: 0); there the module is loaded alone and the
        optimizer from its own files, as DeepSpeed does under ZeRO."""
        ds = self.ds
        unzeroed_bf16 = type(ds.optimizer).__name__ == "BF16_Optimizer" and not ds.zero_optimization()
        path, state = ds.load_checkpoint(load_dir, tag=tag, load_optimizer_states=not unzeroed_bf16,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint '{tag}' under {load_dir}")
        if unzeroed_bf16 and not ds._load_zero_checkpoint(load_dir, tag, load_optimizer_states=True):
            raise FileNotFoundError(f"no bf16_zero_pp_rank_* optimizer files in {os.path.join(load_dir, tag)}")
        return dict((state or {}).get(CLIENT_KEY, {}))

    def close(self) -> None:
        """Release the DeepSpeed engine (hooks, optimizer buffers); the object is unusable after."""
        if self.ds is not None:
            _release(self.ds)
            self.ds = None

    # -- full tensors for tests and tools ----------------------------------------------------------
    def named_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """(layout-free name, parameter) of the parameters this rank owns, in module order
        (the last stage's copy of the tied embedding is not owned)."""
        if not self.uses_pipeline:
            return list(self.ds.module.named_parameters())
        names = layout_free_names(self.ds.module)
        return [(names[n], p) for n, p in self.ds.module.named_parameters()
                if not getattr(p, "ds_pipe_replicated", False)]

    def gather_full_state(self, include_grads: bool = False, master: bool = False) -> Dict[str, torch.Tensor]:
        """Every parameter as its full tensor, named as in GPTModel.state_dict(), on every rank.

        master=True reads the fp32 master weights instead of the (possibly bf16) module
        weights. include_grads adds "<name>.grad": the data-parallel-averaged gradient, only
        meaningful inside a gradient observer (DeepSpeed frees gradients after the step).
        Collective over the whole world; moves whole tensors (tests and tools, not training).
        """
        names, shards = [], []
        for name, param in self.named_parameters():
            split = getattr(param, "tp_split_dim", None)
            value = full_master(param, self.ds.optimizer) if master or hasattr(param, "ds_id") else param
            names.append(name)
            shards.append((value, split))
            if include_grads:
                grad = full_grad(param, self.ds.optimizer)
                names.append(f"{name}.grad")
                shards.append((torch.zeros_like(value, dtype=torch.float32) if grad is None else grad, split))
        local = dict(zip(names, gather_tensor_parallel(shards, self.state.tp)))
        return merge_over_pipeline(local, self.state.pipe_group, self.state.pipe_size)

    def gather_optimizer_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """{name: {"exp_avg": full, "exp_avg_sq": full}} plus {"__step__": Adam's step count}."""
        names, shards = [], []
        for name, param in self.named_parameters():
            split = getattr(param, "tp_split_dim", None)
            for key in ADAM_STATE_KEYS:
                value = full_moment(param, key, self.ds.optimizer)
                if value is not None:
                    names.append(f"{name}.{key}")
                    shards.append((value, split))
        local = dict(zip(names, gather_tensor_parallel(shards, self.state.tp)))
        merged = merge_over_pipeline(local, self.state.pipe_group, self.state.pipe_size)
        state: Dict[str, Dict[str, torch.Tensor]] = {}
        for flat_name, value in merged.items():
            name, key = flat_name.rsplit(".", 1)
            state.setdefault(name, {})[key] = value
        state["__step__"] = optimizer_step_count(self.ds.optimizer)
        return state

    # -- self-guided training: drop the guides -------------------------------------------------------
    def drop_guides_and_rebuild(self) -> Dict[str, float]:
        """Remove every guide and rebuild the DeepSpeed engine without them; returns
        parameter counts (this rank) and, on CUDA, memory before/after.

        How optimizer state survives: a module without guides is built (not initialised)
        and takes the old engine's fp32 master weights; a new engine is created over it;
        then, parameter by parameter and by name, the old engine's fp32 master and Adam
        moments are read whole (ZeRO partitions gathered by DeepSpeed's safe_get_full_*
        accessors) and written into the new engine's partitions. Adam's step count and
        the engine's step/sample/skip counters carry over. Both engines coexist during the
        copy (peak memory about twice one engine, plus one full parameter); then the old
        engine and the guides are released.
        """
        before = self._memory_stats("before")
        old = self.ds
        # Module-local names: identical in old and new module (same stage boundaries, see
        # GPTPipeline), and they include the last stage's copy of the tied embedding, whose
        # optimizer state must travel too.
        old_params = dict(old.module.named_parameters())
        step = optimizer_step_count(old.optimizer)
        module = self._build_module(guided=False, initialize=False)
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(full_master(old_params[name], old.optimizer))
        self.ds = self._initialize(module)
        if step > 0:
            initialise_adam_state(self.ds.optimizer, step)
        for name, param in self.ds.module.named_parameters():
            carry_state(old_params[name], old.optimizer, param, self.ds.optimizer)
        for counter in ("global_steps", "global_samples", "skipped_steps"):
            setattr(self.ds, counter, getattr(old, counter))
        drop_guides(old.module, self.guide_state)
        self.guided = False
        _release(old)
        del old, old_params
        gc.collect()
        return {**before, **self._memory_stats("after")}

    def _memory_stats(self, when: str) -> Dict[str, float]:
        stats = {f"params_{when}": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                                       for p in self.ds.module.parameters())}
        if torch.cuda.is_available():
            stats[f"allocated_gb_{when}"] = torch.cuda.memory_allocated() / 2 ** 30
            stats[f"max_allocated_gb_{when}"] = torch.cuda.max_memory_allocated() / 2 ** 30
        return stats


def _fused_norm(optimizer: MasterWeightAdamW):
    """The last step's gradient norm: a device tensor, or a float where the step ran on the host."""
    return optimizer.grad_norm_tensor if optimizer.grad_norm_tensor is not None else optimizer._global_grad_norm


def _release(ds) -> None:
    """Detach an engine from its module and free what it holds."""
    if hasattr(ds.optimizer, "remove_hooks"):
        ds.optimizer.remove_hooks()
    ds.destroy()
    for hook in ("module_forward_pre_hook", "module_forward_post_hook"):
        handle = getattr(ds, hook, None)
        if handle is not None:
            handle.remove()
