"""optimizer.update = "compiled": AdamW over the fp32 masters and the bf16 weight write in one pass.

Why: the fused optimizer hands torch's fused AdamW the clip factor as `grad_scale`, so a step
never waits on the host for the gradient norm; torch's kernel then stores every unscaled
gradient back (the GradScaler contract, aten/src/ATen/native/cuda/fused_adam_utils.cuh), and the
bf16 weights are written by a copy of their own afterwards. Per parameter that is 4 bytes
written and 4 + 2 + 2 bytes moved that this update does not move (1.3B on an H100: about 2.4 ms
of a lowrank step, 4.2 ms of a dense one; docs/performance.md, the step ledger). Here Inductor
generates the update from plain tensor math: each master read once with its gradient and
moments, the master, moments and bf16 weight written once, nothing stored into the gradient.

Same arithmetic as torch's fused AdamW (decoupled weight decay, bias corrections from the
per-parameter step count, the gradient divided by the clip factor, nothing changed where the
step is non-finite), in fp32; the step counts are advanced and put back around it exactly as
for torch's kernel. The learning rate is a device tensor filled each step, so a schedule does
not recompile.

Compiled per chunk, not per group: a graph over every parameter of a 1.3B model lowers ~300
tensors and took minutes to compile (and again for each group, phase and clip variant). The
parameters are grouped by shape and dtype and called in chunks of at most CHUNK, so the 24 layers'
identical tensors share one small graph, and a step makes a few dozen calls, not one per
parameter (a per-parameter graph with dynamic shapes was launch-bound on an H100 at ~160 us a
call: 48 ms a step against 11 ms for torch's kernel). The tensors whose shape no other tensor
has (the embedding, the dense first layer) each get a static graph of their own where there are
at most CHUNK of them (one GPU: what was measured); where there are more (ZeRO 1's pieces cut at
a bucket's edge), they go in one call of a graph with symbolic sizes, so odd sizes do not each
compile a graph.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch


def adamw_update(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor],
                 exp_avg_sqs: Sequence[torch.Tensor], steps: Sequence[torch.Tensor], lows: Sequence[torch.Tensor],
                 lr: torch.Tensor, grad_scale: Optional[torch.Tensor], found_inf: torch.Tensor, *,
                 beta1: float, beta2: float, weight_decay: float, eps: float) -> None:
    """One AdamW step in place on params/exp_avgs/exp_avg_sqs, and lows[i] = params[i] in bf16.
    grads: fp32, or bf16 (exactly the values the fp32 buffer would hold). steps: already advanced
    (as torch's fused kernel expects). found_inf == 1: nothing changes (the bf16 weights are
    rewritten with the same values)."""
    keep = found_inf == 0
    for p, g, m, v, step, low in zip(params, grads, exp_avgs, exp_avg_sqs, steps, lows):
        g = g.to(p.dtype)  # a bf16 gradient (one backward, no buffer) upcast as it is loaded
        if grad_scale is not None:
            g = g / grad_scale
        bias_correction1 = 1 - torch.pow(beta1, step)
        bias_correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
        m_new = beta1 * m + (1 - beta1) * g
        v_new = beta2 * v + (1 - beta2) * g * g
        p_new = p - lr * weight_decay * p
        p_new = p_new - (lr / bias_correction1) * m_new / (torch.sqrt(v_new) / bias_correction2_sqrt + eps)
        p_new = torch.where(keep, p_new, p)
        m.copy_(torch.where(keep, m_new, m))
        v.copy_(torch.where(keep, v_new, v))
        p.copy_(p_new)
        low.copy_(p_new)


class CompiledAdamW:
    """The compiled update of each parameter group, and its device learning rate."""

    # parameters per compiled call: the layers' same-shaped tensors in a few calls of one graph
    CHUNK = 8
    # graphs of adamw_update per process: one per (shape, chunk length) x parameter group (their
    # weight decay differs) x (with, without a clip factor), and more where tests build many
    # optimizers; Dynamo's default limits would silently run the update eagerly past them
    RECOMPILE_LIMIT = 1024

    def __init__(self):
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, self.RECOMPILE_LIMIT)
        if hasattr(config, "accumulated_recompile_limit"):
            config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, self.RECOMPILE_LIMIT)
        self._compiled = torch.compile(adamw_update, fullgraph=True, dynamic=False)
        self._compiled_any_size = torch.compile(adamw_update, fullgraph=True, dynamic=True)
        self._lr: Dict[int, torch.Tensor] = {}
        # id(masters list) -> (that list, kept alive so its id is not reused; its calls)
        self._calls: Dict[int, Tuple[List[torch.Tensor], List[Tuple[bool, List[int]]]]] = {}

    @classmethod
    def calls(cls, params: Sequence[torch.Tensor]) -> List[Tuple[bool, List[int]]]:
        """(symbolic sizes?, indices of params) per compiled call: the same shape and dtype together
        in runs of at most CHUNK, then the tensors of a shape of their own: a static call each
        where there are at most CHUNK of them, else one call of symbolic sizes."""
        by_kind: Dict[Tuple, List[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_kind[(tuple(p.shape), p.dtype)].append(i)
        shared = [(False, ids[lo:lo + cls.CHUNK]) for ids in by_kind.values() if len(ids) > 1
                  for lo in range(0, len(ids), cls.CHUNK)]
        alone = [ids[0] for ids in by_kind.values() if len(ids) == 1]
        if len(alone) <= cls.CHUNK:
            return shared + [(False, [i]) for i in alone]
        return shared + [(True, alone)]

    def step(self, lists, lows: List[List[torch.Tensor]], grad_scale: Optional[torch.Tensor],
             found_inf: torch.Tensor) -> None:
        """lists: MasterWeightAdamW._adam_lists(); lows: each group's bf16 destinations, in its order."""
        for (group, params, grads, exp_avgs, exp_avg_sqs, steps), group_lows in zip(lists, lows):
            if not params:
                continue
            lr = self._lr.get(id(group))
            if lr is None:
                lr = self._lr[id(group)] = torch.zeros((), dtype=torch.float32, device=params[0].device)
            lr.fill_(group["lr"])
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            known = self._calls.get(id(params))
            if known is None or known[0] is not params:
                known = self._calls[id(params)] = (params, self.calls(params))
            for any_size, ids in known[1]:
                update = self._compiled_any_size if any_size else self._compiled
                update([params[i] for i in ids], [grads[i] for i in ids], [exp_avgs[i] for i in ids],
                       [exp_avg_sqs[i] for i in ids], [steps[i] for i in ids], [group_lows[i] for i in ids],
                       lr, grad_scale, found_inf, beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"])
            torch._foreach_sub_(steps, [found_inf] * len(steps))
