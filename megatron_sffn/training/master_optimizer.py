"""AdamW over fp32 master weights for a bf16 module, with fp32 main gradients in one buffer.

Why not DeepSpeed's BF16 optimizer: on a 1.3B step it spends ~17 ms of ~112 ms on
per-parameter bookkeeping (an fp32 temporary for every bf16 gradient, then an add, per-tensor
norms and clip multiplies, a zeroing pass, a copy back). Here (Megatron's "main grad" design):

  backward   a post-accumulate hook takes each bf16 gradient off its parameter; once every
             gradient of a ~100 MB bucket is in, they are copied with one multi-tensor cast
             (the first micro-batch of a step) or concatenated and added (later ones) into
             the bucket's fp32 buffer: one or two kernel launches per bucket instead of one
             per parameter (a tensor-parallel rank's host, not its GPU, bounds its step, and
             pays for each launch). What a backward leaves incomplete (an unused parameter)
             goes in parameter by parameter at its end
  overlap    on the last micro-batch of a step (data parallel, no pipeline), each ~100 MB
             bucket of the flat buffer is reduced over data-parallel ranks asynchronously as
             soon as its last gradient is in, while backward goes on
  step       the tied embedding copies of a pipeline summed first (DeepSpeed's tied-gradient
             reduction looks for .grad, which is gone), the remaining buckets reduced; the
             gradient norm from torch._foreach_norm; torch's AdamW (fused where available) on
             the fp32 masters, whose .grad are views of the reduced buffer, with the clip
             factor passed as its grad_scale instead of a separate multiply; the masters
             copied into the bf16 weights
  no syncs   with torch's fused AdamW the step never waits for the device: the clip factor
             (1 when the norm is within the limit) and the non-finite flag are computed on
             the device and handed to the fused kernel as its grad_scale and found_inf (a
             non-finite step then leaves masters, moments and step count untouched, as
             torch's GradScaler relies on); the norm stays a device tensor
             (`grad_norm_tensor`, `found_inf`) until someone reads `_global_grad_norm` or
             `overflow`, which the training loop does only at its log steps

One backward a step on one data rank (no accumulation, nothing to reduce) with the compiled
update: the buffer would hold each bf16 gradient cast to fp32, exactly, so the bf16 gradients
are kept as they come and the update reads them (_holds_bf16_gradients): no cast pass, and
2 bytes a parameter held until the update instead of 4.

Memory: the main gradients exist only while a step is under way. Each bucket has its own
fp32 buffer whose storage is allocated when the bucket's first gradient of the step arrives
(backward reaches the buckets one after another, freeing activations as it goes) and
released after the update; the views (`_main`, the masters' .grad) stay the same objects.
So the first micro-batch's forward, where activations peak, holds bf16 weights, fp32
masters and Adam moments (2 + 4 + 8 bytes per parameter), like a plain script's fp32
weights, their bf16 autocast copies and moments (4 + 2 + 8), not 4 bytes per parameter more
(issue 15: the run-wide peak no higher than the plain script's). At start-up a master takes
over its parameter's fp32 storage where it is the whole parameter (no copy).

Two layouts of the optimizer state over data-parallel ranks:
  MasterWeightAdamW   (parallel.zero_stage 0) whole on every rank; buckets all-reduced
  ShardedMasterAdamW  (parallel.zero_stage 1) each rank owns 1/D of every bucket: buckets
                      reduce-scattered, masters and moments kept for the owned slices only,
                      the updated bf16 slices all-gathered into the weights (ZeRO-1)

Both save one format (`state_dict`: whole fp32 masters and moments per parameter, gathered
before DeepSpeed writes the model-states file of data-parallel rank 0), so a checkpoint
resumes on any data-parallel size and with either layout. To DeepSpeed this is a plain
client optimizer (its bf16 mode and ZeRO off); `overflow` and `_global_grad_norm` are what
its engine reads to count skipped steps and report the norm. training/optimizer.py's state
accessors (guide drop, checkpoint tools) call the `*_of` methods.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import OptimizerConfig
from ..parallel.collectives import all_gather_single, reduce_scatter_single
from .compiled_update import CompiledAdamW
from .optimizer import param_groups

STATE_FORMAT = "megatron_sffn.fused_adamw/1"
_reduce_scatter, _all_gather = reduce_scatter_single, all_gather_single
MOMENTS = ("exp_avg", "exp_avg_sq")


def _average_op(state):
    """NCCL averages in the collective itself; gloo sums (then one division)."""
    if state.data_size > 1 and dist.get_backend(state.data_group) == "nccl":
        return dist.ReduceOp.AVG
    return dist.ReduceOp.SUM


def _adamw(params, cfg: OptimizerConfig) -> torch.optim.AdamW:
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, fused=True)
    except RuntimeError:  # a device without torch's fused kernel
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, foreach=True)


class _Bucket:
    """A contiguous range of the flat gradient layout, reduced as one once its last gradient is
    in. `padded` rounds the size up to a multiple of the data-parallel size (sharded layout).
    `main` is its fp32 buffer, whose storage holds memory only while `allocated` (one step)."""

    def __init__(self, start: int):
        self.start, self.size, self.padded, self.params, self.pending, self.handle = start, 0, 0, 0, 0, None
        self.main: Optional[torch.Tensor] = None
        self.allocated = False
        # this backward's gradients not yet in `main`: (offset in the bucket, main slice, grad, first of the step)
        self.waiting: List[Tuple[int, torch.Tensor, torch.Tensor, bool]] = []

    def add(self, numel: int) -> None:
        self.size += numel
        self.params += 1


class MasterWeightAdamW(torch.optim.Optimizer):
    """Build it over the module in fp32: the masters copy those values, then the module's
    parameters become bf16 (buffers stay fp32, as DeepSpeed's own cast leaves them)."""

    wraps_optimizer = True
    BUCKET_ELEMENTS = 25_000_000  # 100 MB of fp32 per collective

    def __init__(self, module: nn.Module, cfg: OptimizerConfig, state, counted_in_norm):
        """state: ParallelState (groups); counted_in_norm(param) -> bool says whether this rank
        adds the parameter to the gradient norm (replicated copies count once)."""
        self.cfg, self._pstate = cfg, state
        groups = param_groups(module.named_parameters(), cfg.weight_decay)
        self.fp16_groups: List[List[nn.Parameter]] = [list(g["params"]) for g in groups]
        params = [p for group in self.fp16_groups for p in group]
        self._params = params
        self._device = params[0].device
        self._layout(module, params)
        masters = self._build_masters()
        self._link_gradients()
        self.optimizer = _adamw([{**g, "params": m} for g, m in zip(groups, masters) if m] or
                                [{"params": [torch.zeros(1, device=self._device)]}], cfg)
        super().__init__(params, dict(lr=cfg.lr))
        self.param_groups = self.optimizer.param_groups  # lr set on either reaches AdamW
        self.state = self.optimizer.state  # type: ignore[assignment]
        self._counted = self._norm_tensors(counted_in_norm)
        # has this step's gradient arrived? seen[i] == generation (no per-step reset loop)
        self._index = {id(p): i for i, p in enumerate(params)}
        self._seen = [-1] * len(params)
        self._generation = 0
        self._arrived = 0  # parameters whose gradient arrived this step
        self._flush_queued = False  # _accumulate_incomplete queued for the end of this backward
        self._reduced = False
        self.last_micro_batch = False  # set by the engine; overlap only then
        # set by the engine: this step has one backward (no accumulation); see _holds_bf16_gradients
        self.single_micro_batch = False
        # this step's bf16 gradients by parameter index, where they skip the fp32 buffer (else None)
        self._bf16_grads: Optional[Dict[int, torch.Tensor]] = None
        self._decided_generation = -1  # the step whose gradient route is decided
        self._counted_index = [i for i, p in enumerate(params) if counted_in_norm(p)]
        self._bf16_lists_index: Optional[List] = None  # _lists_with_bf16_gradients: (masters, indices) a group
        self.buckets_overlapped = 0  # buckets launched during the last step's backward
        self._average_op = _average_op(state)
        self.tied_groups: List = []  # (parameter, process group): copies whose gradients are summed
        # (tensor group, parameters): sequence parallelism's partial gradients, summed once per step
        self.tensor_partial: Tuple = (None, [])
        self._hooks = [p.register_post_accumulate_grad_hook(self._gradient_hook(i, p)) for i, p in enumerate(params)]
        self.found_inf: Optional[torch.Tensor] = None  # device flag of the last step (1.0: skipped)
        self.grad_norm_tensor: Optional[torch.Tensor] = None  # device norm of the last step
        self._overflow: object = False  # bool, or found_inf (read lazily)
        self._norm_value: object = None  # float, or grad_norm_tensor (read lazily)
        self._write_back_lists: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None
        self._adam_cache: Optional[List] = None  # _adam_lists
        self._lows_cache: Optional[List[List[torch.Tensor]]] = None  # _group_lows
        # optimizer.update = "compiled": AdamW and the bf16 write in one Inductor pass (compiled_update.py)
        self._compiled_update = CompiledAdamW() if cfg.update == "compiled" else None
        self._to_save: Optional[Dict] = None

    # -- layout -------------------------------------------------------------------------------
    def _pad(self) -> int:
        return 1

    def _layout(self, module: nn.Module, params: List[nn.Parameter]) -> None:
        """The flat buffer follows module order, so backward (roughly the reverse) fills it bucket by bucket."""
        in_groups = {id(p) for p in params}
        self._offset: Dict[int, int] = {}
        self._bucket_of: Dict[int, int] = {}
        self._buckets: List[_Bucket] = []
        pad, offset = self._pad(), 0
        for p in (p for p in module.parameters() if id(p) in in_groups):
            if not self._buckets or self._buckets[-1].size >= self.BUCKET_ELEMENTS:
                if self._buckets:
                    offset = self._close(self._buckets[-1], pad)
                self._buckets.append(_Bucket(offset))
            self._buckets[-1].add(p.numel())
            self._bucket_of[id(p)], self._offset[id(p)] = len(self._buckets) - 1, offset
            offset += p.numel()
        self._total = self._close(self._buckets[-1], pad)
        self._main: Dict[int, torch.Tensor] = {}  # id(p) -> its slice of its bucket's buffer (_link_gradients)
        for bucket in self._buckets:  # no memory until a step needs it
            bucket.main = torch.empty(bucket.padded, dtype=torch.float32, device=self._device)
            bucket.main.untyped_storage().resize_(0)

    def _link_gradients(self) -> None:
        """Make the views of every bucket's buffer (each parameter's main gradient, the masters'
        .grad), one bucket holding memory at a time; the views stay valid when the memory comes
        and goes."""
        members: Dict[int, List[nn.Parameter]] = {}
        for p in self._params:
            members.setdefault(self._bucket_of[id(p)], []).append(p)
        for b, bucket in enumerate(self._buckets):
            self._allocate(bucket)
            for p in members.get(b, []):
                lo = self._offset[id(p)] - bucket.start
                self._main[id(p)] = bucket.main[lo:lo + p.numel()].view_as(p)
            self._link_bucket(b, members.get(b, []))
            bucket.main.untyped_storage().resize_(0)
            bucket.allocated = False

    def _link_bucket(self, b: int, params: List[nn.Parameter]) -> None:
        masters = {id(low): high for lows, highs in zip(self.fp16_groups, self.fp32_groups)
                   for low, high in zip(lows, highs)}
        for p in params:
            masters[id(p)].grad = self._main[id(p)]

    # -- main-gradient memory: held from a bucket's first gradient of a step to the step's end ----
    def _allocate(self, bucket: _Bucket) -> None:
        """Give the bucket's buffer its memory (uninitialised: every slice is copied into or
        zeroed before it is read; the padding, which takes part in reductions, is zeroed)."""
        bucket.main.untyped_storage().resize_(bucket.padded * bucket.main.element_size())
        if bucket.padded > bucket.size:
            bucket.main[bucket.size:].zero_()
        bucket.allocated = True

    def _release_gradients(self) -> None:
        for bucket in self._buckets:
            if bucket.allocated:
                bucket.main.untyped_storage().resize_(0)
                bucket.allocated = False

    @staticmethod
    def _close(bucket: _Bucket, pad: int) -> int:
        bucket.padded = -(-bucket.size // pad) * pad
        return bucket.start + bucket.padded

    def _build_masters(self) -> List[List[torch.Tensor]]:
        """Each master takes over its parameter's fp32 storage (no copy; `.float()` copies only
        a parameter that is not fp32); the parameter then gets a new bf16 one."""
        self.fp32_groups: List[List[torch.Tensor]] = []
        for group in self.fp16_groups:
            masters = []
            for p in group:
                masters.append(p.detach().float())
            self.fp32_groups.append(masters)
        with torch.no_grad():
            for p in self._params:
                p.data = p.data.to(torch.bfloat16)
        return self.fp32_groups

    def _norm_tensors(self, counted_in_norm) -> List[torch.Tensor]:
        return [self._main[id(p)] for p in self._params if counted_in_norm(p)]

    # -- what DeepSpeed's engine and the tests read (each read of a device value waits for it) ----
    @property
    def overflow(self) -> bool:
        return bool(self._overflow)

    @overflow.setter
    def overflow(self, value) -> None:
        self._overflow = value

    @property
    def _global_grad_norm(self) -> Optional[float]:
        return None if self._norm_value is None else float(self._norm_value)

    @_global_grad_norm.setter
    def _global_grad_norm(self, value) -> None:
        self._norm_value = value

    # -- backward -----------------------------------------------------------------------------
    def _gradient_hook(self, index: int, param: nn.Parameter):
        """The post-accumulate hook of one parameter, with its main-gradient slice bound."""
        main = self._main[id(param)]

        def hook(p: nn.Parameter) -> None:
            self._take_gradient(p, index, main)
        return hook

    def _holds_bf16_gradients(self) -> bool:
        """Whether this step's bf16 gradients go to the update as they are, without the fp32 buffer.

        Where a step has one backward and nothing reduces its gradients (one data rank, no tied
        pipeline copies, no sequence-parallel partial sums), the buffer holds each bf16 gradient
        cast to fp32, exactly: the compiled update can read the bf16 gradient itself, upcast as it
        loads. That skips a cast pass (2 bytes read, 4 written a parameter) and 2 bytes of the
        update's reads, and holds 2 bytes a parameter until the update instead of 4. Bit for bit
        the buffer's step. From the second step (the first makes AdamW's state with torch's step)."""
        return self.single_micro_batch and self._adam_cache is not None and self.can_hold_bf16_gradients()

    def can_hold_bf16_gradients(self) -> bool:
        """_holds_bf16_gradients' conditions that hold for the whole run (the step's: one backward)."""
        return (self._compiled_update is not None and self._pstate.data_size == 1 and not self.tied_groups
                and not self.tensor_partial[1])

    def _take_gradient(self, param: nn.Parameter, index: int, main: torch.Tensor) -> None:
        if self._decided_generation != self._generation:
            self._decided_generation = self._generation
            self._bf16_grads = {} if self._holds_bf16_gradients() else None
        if self._bf16_grads is not None:
            self._hold_bf16_gradient(param, index)
            return
        # no autograd here: neither the main gradient nor param.grad requires grad (backward
        # without create_graph), so in-place ops record nothing and no no_grad() is needed
        bucket = self._buckets[self._bucket_of[id(param)]]
        first = self._seen[index] != self._generation
        if first:
            if not bucket.allocated:
                self._allocate(bucket)
            self._seen[index] = self._generation
            self._arrived += 1
        bucket.waiting.append((self._offset[id(param)] - bucket.start, main, param.grad, first))
        param.grad = None
        if len(bucket.waiting) == bucket.params:
            self._accumulate(bucket)
        elif not self._flush_queued:  # whatever stays incomplete goes in when this backward ends
            torch.autograd.Variable._execution_engine.queue_callback(self._accumulate_incomplete)
            self._flush_queued = True
        if self.last_micro_batch and self._pstate.data_size > 1:
            if bucket.handle is not None:  # a second gradient in one backward: would race the reduction
                raise RuntimeError("a parameter received two gradients in the last micro-batch's backward after "
                                   "its bucket was reduced; use optimizer.implementation = 'deepspeed'")
            bucket.pending += 1
            if bucket.pending == bucket.params:
                self._launch(bucket)
                self.buckets_overlapped += 1

    def _hold_bf16_gradient(self, param: nn.Parameter, index: int) -> None:
        grad, param.grad = param.grad, None
        if self._seen[index] != self._generation:
            self._seen[index] = self._generation
            self._arrived += 1
            self._bf16_grads[index] = grad
        else:  # a second gradient in the one backward: summed in bf16, as autograd's .grad would be
            self._bf16_grads[index] = self._bf16_grads[index] + grad

    @staticmethod
    def _accumulate(bucket: _Bucket) -> None:
        """Every gradient of the bucket is waiting: one multi-tensor copy, or one concatenation and add."""
        waiting = sorted(bucket.waiting, key=lambda entry: entry[0])
        bucket.waiting = []
        firsts = {entry[3] for entry in waiting}
        # one by one where some parameters had no gradient in an earlier micro-batch of the step,
        # or one came twice (then the bucket is not covered once, slice by slice)
        if len(firsts) > 1 or len({entry[0] for entry in waiting}) < len(waiting):
            _accumulate_one_by_one(waiting)
            return
        if firsts.pop():  # one multi-tensor copy that casts as it goes: no bf16 concatenation first
            torch._foreach_copy_([main for _, main, _, _ in waiting], [grad for _, _, grad, _ in waiting])
            return
        # foreach adds need one dtype on both sides: concatenate the bf16 gradients, add once
        flat = torch.cat([grad.reshape(-1) for _, _, grad, _ in waiting])
        bucket.main[:bucket.size].add_(flat)

    def _accumulate_incomplete(self) -> None:
        self._flush_queued = False
        for bucket in self._buckets:
            if bucket.waiting:
                waiting, bucket.waiting = bucket.waiting, []
                _accumulate_one_by_one(waiting)

    def _launch(self, bucket: _Bucket) -> None:
        bucket.handle = dist.all_reduce(bucket.main, op=self._average_op, group=self._pstate.data_group,
                                        async_op=True)

    def _after_reduction(self) -> None:
        if self._average_op == dist.ReduceOp.SUM:
            torch._foreach_div_([bucket.main for bucket in self._buckets], float(self._pstate.data_size))

    @torch.no_grad()
    def zero_missing_gradients(self) -> None:
        """Zero the slices no gradient reached this step (they still hold the last step's)."""
        if self._arrived == len(self._params):
            return
        for i, p in enumerate(self._params):
            if self._seen[i] == self._generation:
                continue
            if self._bf16_grads is not None:
                self._bf16_grads[i] = torch.zeros_like(p)
            else:
                bucket = self._buckets[self._bucket_of[id(p)]]
                if not bucket.allocated:
                    self._allocate(bucket)
                self._main[id(p)].zero_()
            self._seen[i] = self._generation
        self._arrived = len(self._params)

    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """Sum tied copies' gradients, reduce the buckets over data-parallel ranks; once per step."""
        if self._reduced:
            return
        self.zero_missing_gradients()
        if self._bf16_grads is not None:  # nothing to reduce (_holds_bf16_gradients)
            self._reduced = True
            return
        for param, group in self.tied_groups:  # pipelines only, where no bucket was launched yet
            dist.all_reduce(self._main[id(param)], group=group)
        if self._pstate.data_size > 1:
            for bucket in self._buckets:  # those backward did not complete (or no overlap at all)
                if bucket.handle is None:
                    self._launch(bucket)
            for bucket in self._buckets:
                bucket.handle.wait()
                bucket.handle = None
            self._after_reduction()
        self._sum_tensor_partials()
        self._reduced = True

    def _partial_gradients(self, params) -> List[torch.Tensor]:
        """This rank's reduced fp32 gradients of `params` (whole, or the owned pieces when sharded)."""
        return [self._main[id(p)] for p in params]

    def _sum_tensor_partials(self) -> None:
        """Sequence parallelism: replicated parameters saw only this rank's tokens; one
        all-reduce over the tensor group, after the data-parallel reduction (the two sums
        commute), gives every tensor rank the full gradient. Every tensor rank holds the same
        parameter shapes in the same order, so the flat buffers line up."""
        group, params = self.tensor_partial
        grads = self._partial_gradients(params)
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=group)
        torch._foreach_copy_(grads, [piece.view_as(g) for piece, g in zip(flat.split([g.numel() for g in grads]), grads)])

    def _end_of_step(self) -> None:
        self._bf16_grads = None
        self._generation += 1  # every parameter's gradient is now "not arrived"
        self._arrived = 0
        for bucket in self._buckets:
            bucket.pending = 0
        self._reduced = False
        self._release_gradients()

    # -- step ---------------------------------------------------------------------------------
    def _norm_groups(self) -> List:
        st = self._pstate
        return [st.model_group] if st.tensor_size * st.pipe_size > 1 else []

    @torch.no_grad()
    def grad_norm_on_device(self) -> torch.Tensor:
        """The whole model's gradient norm (float64, 0-d) on the device; no host wait."""
        if self._bf16_grads is not None and self._counted_index:
            counted = [self._bf16_grads[i] for i in self._counted_index]
            squares = torch.stack(torch._foreach_norm(counted, 2, dtype=torch.float32)).double().pow(2).sum()
        elif self._counted:
            squares = torch.stack(torch._foreach_norm(self._counted)).double().pow(2).sum()
        else:
            squares = torch.zeros((), dtype=torch.float64, device=self._device)
        for group in self._norm_groups():
            dist.all_reduce(squares, group=group)
        return squares.sqrt()

    def grad_norm(self) -> float:
        return float(self.grad_norm_on_device())

    def _scale_gradients(self, factor: float) -> None:
        torch._foreach_mul_([bucket.main for bucket in self._buckets], factor)

    def _write_back_pairs(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(bf16 destinations, fp32 sources) of the write-back; fixed once built."""
        return [p for g in self.fp16_groups for p in g], [m for g in self.fp32_groups for m in g]

    def _write_back_targets(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """_write_back_pairs, built once."""
        if self._write_back_lists is None:
            self._write_back_lists = self._write_back_pairs()
        return self._write_back_lists

    def _write_back(self) -> None:
        lows, highs = self._write_back_targets()
        if lows:
            torch._foreach_copy_(lows, highs)
        self._share_weights()

    def _share_weights(self) -> None:
        """After this rank's bf16 weights are written: what other ranks need of them (nothing here)."""

    def _group_lows(self, lists) -> List[List[torch.Tensor]]:
        """Each AdamW group's bf16 destinations in the group's master order (the compiled update
        writes them); fixed once built, like the lists."""
        if self._lows_cache is None:
            lows, highs = self._write_back_targets()
            low_of = {id(high): low.detach() for low, high in zip(lows, highs)}
            self._lows_cache = [[low_of[id(master)] for master in params] for _, params, *_ in lists]
        return self._lows_cache

    @torch.no_grad()
    def step(self, closure=None):
        self.reduce_gradients()
        if self.optimizer.param_groups[0].get("fused"):
            self._step_on_device()
        else:
            self._step_on_host()
        self._end_of_step()
        return None

    def _step_on_device(self) -> None:
        """Fused AdamW: clip factor and non-finite flag as device tensors, no host wait.

        grad_scale = (norm + 1e-6) / clip where norm > clip, else exactly 1 (the kernel divides
        by it: the same factor as DeepSpeed's clip / (norm + 1e-6), bit for bit the host path's);
        found_inf = 1 where the norm is not finite: the kernel then changes nothing and the step
        count is put back (torch's fused AdamW contract). The write-back of an unchanged master
        rewrites the same bf16 value."""
        norm = self.grad_norm_on_device()
        found_inf = (~torch.isfinite(norm)).to(torch.float32)
        clip = self.cfg.grad_clip
        if clip > 0:
            self.optimizer.grad_scale = torch.where(norm > clip, (norm + 1e-6) / clip,
                                                    torch.ones_like(norm)).to(torch.float32)
        lists = self._adam_lists()
        if lists is not None and self._compiled_update is not None:  # the bf16 weights written in the update
            lows = self._group_lows(lists)
            if self._bf16_grads is not None:
                lists = self._lists_with_bf16_gradients(lists)
            self._compiled_update.step(lists, lows, self.optimizer.grad_scale, found_inf)
            self.optimizer.grad_scale = None
            self._share_weights()
        elif lists is not None:
            self._fused_adamw(lists, self.optimizer.grad_scale, found_inf)
            self.optimizer.grad_scale = None
            self._write_back()
        else:  # state not made yet (the first step): torch's AdamW makes it
            self.optimizer.found_inf = found_inf
            try:
                self.optimizer.step()
            finally:
                self.optimizer.grad_scale = None
                self.optimizer.found_inf = None
            self._write_back()
            self._adam_lists()  # built now, the next step's backward can skip the buffer
        self.grad_norm_tensor, self.found_inf = norm, found_inf
        self._norm_value, self._overflow = norm, found_inf

    def _adam_lists(self) -> Optional[List[Tuple[Dict, List[torch.Tensor], ...]]]:
        """Per parameter group: (group, masters, gradients, exp_avgs, exp_avg_sqs, steps), built
        once every master has its AdamW state (which then lives as long as the optimizer: state
        is only ever created, or copied into in place). None until then, or where torch's step
        must run (amsgrad, maximize, differentiable, a group without gradients)."""
        if self._adam_cache is not None:
            return self._adam_cache
        lists = []
        for group in self.optimizer.param_groups:
            params = list(group["params"])
            states = [self.optimizer.state.get(p) for p in params]
            if (group.get("amsgrad") or group.get("maximize") or group.get("differentiable")
                    or not group.get("fused") or any(p.grad is None for p in params)
                    or not all(st and {"step", "exp_avg", "exp_avg_sq"} <= set(st) for st in states)):
                return None
            lists.append((group, params, [p.grad for p in params], [st["exp_avg"] for st in states],
                          [st["exp_avg_sq"] for st in states], [st["step"] for st in states]))
        self._adam_cache = lists
        return lists

    def _masters_param_index(self) -> Dict[int, int]:
        """id(master) -> index of its parameter (a master is the whole parameter here)."""
        return {id(high): self._index[id(low)] for lows, highs in zip(self.fp16_groups, self.fp32_groups)
                for low, high in zip(lows, highs)}

    def _lists_with_bf16_gradients(self, lists):
        """_adam_lists with this step's bf16 gradients in place of the fp32 buffer's views, and the
        masters detached: a master's .grad (a view of the buffer, without memory this step) is
        then not traced with it (torch 2.11's Dynamo fails on a view's .grad of another view base)."""
        if self._bf16_lists_index is None:
            index_of = self._masters_param_index()
            self._bf16_lists_index = [([master.detach() for master in params],
                                       [index_of[id(master)] for master in params]) for _, params, *_ in lists]
        return [(group, masters, [self._bf16_grads[i].reshape(master.shape) for i, master in zip(indices, masters)],
                 exp_avgs, exp_avg_sqs, steps)
                for (group, _, _, exp_avgs, exp_avg_sqs, steps), (masters, indices) in zip(lists, self._bf16_lists_index)]

    @staticmethod
    def _fused_adamw(lists, grad_scale: Optional[torch.Tensor], found_inf: torch.Tensor) -> None:
        """What torch.optim.AdamW(fused=True).step() runs for one device and dtype, without
        its per-step Python (state checks and grouping over every parameter): the same three
        calls on the same tensors, so the same result bit for bit."""
        for group, params, grads, exp_avgs, exp_avg_sqs, steps in lists:
            if not params:
                continue
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                                beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                maximize=False, grad_scale=grad_scale, found_inf=found_inf)
            torch._foreach_sub_(steps, [found_inf] * len(steps))

    def _step_on_host(self) -> None:
        """Without the fused kernel (no grad_scale/found_inf): decide on the host."""
        norm = self.grad_norm()
        self.grad_norm_tensor = self.found_inf = None
        self._global_grad_norm = norm
        self.overflow = not math.isfinite(norm)
        if not self.overflow:
            clip = self.cfg.grad_clip
            clipping = clip > 0 and norm > clip  # factor clip / (norm + 1e-6), as DeepSpeed's
            if clipping and self.optimizer.param_groups[0].get("fused"):
                self.optimizer.grad_scale = torch.tensor((norm + 1e-6) / clip, device=self._device)
            elif clipping:
                self._scale_gradients(clip / (norm + 1e-6))
            self.optimizer.step()
            self.optimizer.grad_scale = None
            self._write_back()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients live in the main buffer and are overwritten by the next step's first hook."""
        for p in self._params:
            p.grad = None

    # -- whole tensors of one parameter (collective over data-parallel ranks when sharded) ---------
    def step_count(self) -> int:
        for state in self.optimizer.state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def _master_of(self, param) -> torch.Tensor:
        for lows, highs in zip(self.fp16_groups, self.fp32_groups):
            for low, high in zip(lows, highs):
                if low is param:
                    return high
        raise KeyError("parameter not in this optimizer")

    def full_master_of(self, param) -> torch.Tensor:
        return self._master_of(param).detach()

    def full_moment_of(self, param, key: str) -> Optional[torch.Tensor]:
        state = self.optimizer.state.get(self._master_of(param), {})
        return state[key].detach() if key in state else None

    def full_grad_of(self, param) -> torch.Tensor:
        """This step's fp32 gradient (data-parallel average once reduced); zeros between steps."""
        if self._bf16_grads is not None and self._index[id(param)] in self._bf16_grads:
            return self._bf16_grads[self._index[id(param)]].float()
        if not self._buckets[self._bucket_of[id(param)]].allocated:
            return torch.zeros(param.shape, dtype=torch.float32, device=self._device)
        return self._main[id(param)]

    @torch.no_grad()
    def set_master_of(self, param, value: torch.Tensor) -> None:
        self._master_of(param).copy_(value)
        param.copy_(value)

    @torch.no_grad()
    def set_moment_of(self, param, key: str, value: torch.Tensor) -> None:
        self.optimizer.state[self._master_of(param)][key].copy_(value)

    # -- checkpoints --------------------------------------------------------------------------
    def gather_for_save(self) -> None:
        """Collective over data-parallel ranks: whole tensors for state_dict() (rank 0 keeps them)."""
        step = self.step_count()
        keep = self._pstate.data_rank == 0
        entries = []
        for p in self._params:
            entry = {"master": self.full_master_of(p)}
            for key in MOMENTS:
                value = self.full_moment_of(p, key) if step > 0 else None
                entry[key] = value
            if keep:
                entries.append(_to_cpu(entry) if self._is_sharded() else entry)
        self._to_save = {"format": STATE_FORMAT, "step": step, "params": entries} if keep else \
            {"format": STATE_FORMAT, "saved_by_data_rank_0": True}

    def _is_sharded(self) -> bool:
        return False

    def state_dict(self) -> Dict:
        """Whole tensors on data rank 0 (the rank DeepSpeed writes), a stub on the others."""
        if self._to_save is None:
            if self._is_sharded():
                raise RuntimeError("ShardedMasterAdamW.state_dict() needs gather_for_save() on every data rank first")
            self.gather_for_save()
        saved, self._to_save = self._to_save, None
        return saved

    @torch.no_grad()
    def load_state_dict(self, state_dict: Dict) -> None:
        from .optimizer import initialise_adam_state
        if state_dict.get("format") != STATE_FORMAT or len(state_dict.get("params", ())) != len(self._params):
            raise ValueError("checkpoint optimizer state was not written by optimizer.implementation = 'fused' "
                             "for this model (convert it with tools/convert_checkpoint.py)")
        step = int(state_dict["step"])
        if step > 0:
            initialise_adam_state(self, step)
        for p, entry in zip(self._params, state_dict["params"]):
            if tuple(entry["master"].shape) != tuple(p.shape):
                raise ValueError(f"checkpoint master weight of shape {tuple(entry['master'].shape)} does not fit a "
                                 f"parameter of shape {tuple(p.shape)}")
            self.set_master_of(p, entry["master"].to(self._device))
            if step > 0:
                for key in MOMENTS:
                    self.set_moment_of(p, key, entry[key].to(self._device))

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _accumulate_one_by_one(waiting) -> None:
    for _, main, grad, first in waiting:
        if first:
            main.copy_(grad)
        else:
            main.add_(grad)


def _to_cpu(entry: Dict) -> Dict:
    return {k: (v.cpu() if v is not None else None) for k, v in entry.items()}


class ShardedMasterAdamW(MasterWeightAdamW):
    """ZeRO-1 over the data-parallel group: rank r owns slice r of every bucket (1/D of it).

    Gradients are reduce-scattered bucket by bucket (overlapping backward as above); AdamW
    runs on the owned pieces of each parameter (fp32 master + moments only there); the bf16
    weights live in one flat buffer with the same layout, whose buckets are all-gathered after
    the update. Memory per parameter and rank: 2 (bf16) + 4 (main gradient, during a step) +
    4 / D (shard gradient; with one data rank the main buffers themselves) + 12 / D."""

    def _pad(self) -> int:
        return self._pstate.data_size

    def _is_sharded(self) -> bool:
        return True

    def _owned(self, bucket: _Bucket) -> Tuple[int, int]:
        share = bucket.padded // self._pstate.data_size
        start = bucket.start + self._pstate.data_rank * share
        return start, start + share

    def _build_masters(self) -> List[List[torch.Tensor]]:
        d = self._pstate.data_size
        self._shard_start = []  # bucket -> offset in the shard gradient buffer
        total = 0
        for bucket in self._buckets:
            self._shard_start.append(total)
            total += bucket.padded // d
        # one data rank owns everything: the main gradients are the shard (no copy, no 4 B/param)
        self._shard_is_main = d == 1 and self._shard_start == [bucket.start for bucket in self._buckets]
        self._shard_grad = None if self._shard_is_main else torch.zeros(total, dtype=torch.float32,
                                                                         device=self._device)
        self._low_flat = torch.zeros(self._total, dtype=torch.bfloat16, device=self._device)
        self._pieces: Dict[int, Tuple[torch.Tensor, int, int]] = {}  # id(p) -> (master piece, lo, hi) in p
        self.fp32_groups = []
        for group in self.fp16_groups:
            masters = []
            for p in group:
                b = self._bucket_of[id(p)]
                own_lo, own_hi = self._owned(self._buckets[b])
                lo, hi = max(self._offset[id(p)], own_lo), min(self._offset[id(p)] + p.numel(), own_hi)
                if lo >= hi:
                    continue
                whole = hi - lo == p.numel()  # the piece is the whole parameter: take over its fp32 storage
                piece = p.detach().reshape(-1)[lo - self._offset[id(p)]:hi - self._offset[id(p)]]
                piece = piece.float() if whole else piece.clone().float()
                self._pieces[id(p)] = (piece, lo - self._offset[id(p)], hi - self._offset[id(p)])
                masters.append(piece)
            self.fp32_groups.append(masters)
        with torch.no_grad():  # the weights become bf16 views of one flat buffer in the bucket layout
            for p in self._params:
                view = self._low_flat[self._offset[id(p)]:self._offset[id(p)] + p.numel()]
                view.copy_(p.data.reshape(-1))
                p.data = view.view_as(p)
        return self.fp32_groups

    def _link_bucket(self, b: int, params: List[nn.Parameter]) -> None:
        own_lo, _ = self._owned(self._buckets[b])
        shard = self._shard_of(b)
        for p in params:
            if id(p) in self._pieces:
                piece, lo, hi = self._pieces[id(p)]
                start = self._offset[id(p)] + lo - own_lo
                piece.grad = shard[start:start + hi - lo]

    def _shard_of(self, b: int) -> torch.Tensor:
        """Bucket b's shard gradient: its owned slice, reduced (the bucket's main buffer itself
        with one data rank)."""
        if self._shard_is_main:
            return self._buckets[b].main
        share = self._buckets[b].padded // self._pstate.data_size
        return self._shard_grad[self._shard_start[b]:self._shard_start[b] + share]

    def _norm_tensors(self, counted_in_norm) -> List[torch.Tensor]:
        return [self._pieces[id(p)][0].grad for p in self._params if id(p) in self._pieces and counted_in_norm(p)]

    def _norm_groups(self) -> List:
        return [self._pstate.data_group] + super()._norm_groups()

    def _launch(self, bucket: _Bucket) -> None:
        b = self._buckets.index(bucket)
        out, view = self._shard_of(b), bucket.main
        if self._pstate.data_size == 1:
            if not self._shard_is_main:
                out.copy_(view)
            bucket.handle = _Done()
            return
        bucket.handle = _reduce_scatter(out, view, op=self._average_op, group=self._pstate.data_group,
                                                   async_op=True)

    @torch.no_grad()
    def reduce_gradients(self) -> None:
        if self._reduced:
            return
        if self._pstate.data_size > 1 or self._bf16_grads is not None:
            return super().reduce_gradients()
        self.zero_missing_gradients()
        for param, group in self.tied_groups:
            dist.all_reduce(self._main[id(param)], group=group)
        for bucket in self._buckets:
            self._launch(bucket)
            bucket.handle = None
        self._sum_tensor_partials()
        self._reduced = True

    def _partial_gradients(self, params) -> List[torch.Tensor]:
        return [self._pieces[id(p)][0].grad for p in params if id(p) in self._pieces]

    def _after_reduction(self) -> None:
        if self._average_op == dist.ReduceOp.SUM:
            self._shard_grad.div_(self._pstate.data_size)

    def _scale_gradients(self, factor: float) -> None:
        if self._shard_is_main:
            return super()._scale_gradients(factor)
        self._shard_grad.mul_(factor)

    def _write_back_pairs(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        lows, highs = [], []
        for p in self._params:
            if id(p) in self._pieces:
                piece, lo, hi = self._pieces[id(p)]
                lows.append(self._low_flat[self._offset[id(p)] + lo:self._offset[id(p)] + hi])
                highs.append(piece)
        return lows, highs

    def _share_weights(self) -> None:
        """Every rank updated only its own slices of the bf16 weights: gather them bucket by bucket."""
        if self._pstate.data_size > 1:
            for bucket in self._buckets:
                own_lo, own_hi = self._owned(bucket)
                _all_gather(self._low_flat[bucket.start:bucket.start + bucket.padded],
                                            self._low_flat[own_lo:own_hi].clone(), group=self._pstate.data_group)

    # -- whole tensors: each rank contributes its piece, summed over the data-parallel group ------
    def _assemble(self, param, piece_value: Optional[torch.Tensor]) -> torch.Tensor:
        full = torch.zeros(param.numel(), dtype=torch.float32, device=self._device)
        if piece_value is not None:
            _, lo, hi = self._pieces[id(param)]
            full[lo:hi] = piece_value
        if self._pstate.data_size > 1:
            dist.all_reduce(full, group=self._pstate.data_group)
        return full.view_as(param)

    def full_master_of(self, param) -> torch.Tensor:
        piece = self._pieces.get(id(param))
        return self._assemble(param, piece[0].detach() if piece else None)

    def full_moment_of(self, param, key: str) -> Optional[torch.Tensor]:
        piece = self._pieces.get(id(param))
        value = self.optimizer.state.get(piece[0], {}).get(key) if piece else None
        return self._assemble(param, value)

    def _masters_param_index(self) -> Dict[int, int]:
        return {id(piece): self._index[p_id] for p_id, (piece, _, _) in self._pieces.items()}

    def full_grad_of(self, param) -> torch.Tensor:
        if self._bf16_grads is not None:  # one data rank: the piece is the whole parameter
            return super().full_grad_of(param)
        piece = self._pieces.get(id(param))
        held = piece and (not self._shard_is_main or self._buckets[self._bucket_of[id(param)]].allocated)
        return self._assemble(param, piece[0].grad if held else None)

    @torch.no_grad()
    def set_master_of(self, param, value: torch.Tensor) -> None:
        piece = self._pieces.get(id(param))
        if piece:
            piece[0].copy_(value.reshape(-1)[piece[1]:piece[2]])
        param.copy_(value)

    @torch.no_grad()
    def set_moment_of(self, param, key: str, value: torch.Tensor) -> None:
        piece = self._pieces.get(id(param))
        if piece:
            self.optimizer.state[piece[0]][key].copy_(value.reshape(-1)[piece[1]:piece[2]])

    def step_count(self) -> int:
        """Equal on every rank (a rank without pieces reads it from the others)."""
        count = torch.tensor([float(super().step_count())], device=self._device)
        if self._pstate.data_size > 1:
            dist.all_reduce(count, op=dist.ReduceOp.MAX, group=self._pstate.data_group)
        return int(count.item())


class _Done:
    def wait(self) -> None:
        pass
