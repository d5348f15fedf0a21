"""Worker: train every requested FFN kind for a few steps under one (tensor, pipe, data) layout
through TrainEngine, recording what the test compares with the one-process reference.

Rank 0 writes <out>/<kind>.pt: losses, grad norms, per-step full parameters and gradients
(gathered across tensor ranks and pipeline stages right before each optimizer step), the
final fp32 master weights, and the largest difference between tensor ranks' gradients of
every replicated parameter.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_sffn.parallel.topology import build_parallel_state, init_distributed  # noqa: E402
from megatron_sffn.training.engine import TrainEngine  # noqa: E402
from tests.distributed.common import (guide_state_for, is_guided, lr_at, micro_batches, set_step,  # noqa: E402
                                      tiny_config)


def replicated_grad_spread(engine: TrainEngine) -> float:
    """Largest |g_rank - g_rank0| over replicated parameters within the tensor group."""
    from deepspeed.utils import safe_get_full_grad

    state, worst = engine.state, 0.0
    if state.tensor_size == 1:
        return 0.0
    for _, param in engine._named_parameters():
        if getattr(param, "tp_split_dim", None) is not None:
            continue
        grad = safe_get_full_grad(param)
        grad = torch.zeros_like(param, dtype=torch.float32) if grad is None else grad.float()
        parts = [torch.empty_like(grad) for _ in range(state.tensor_size)]
        dist.all_gather(parts, grad.contiguous(), group=state.tensor_group)
        worst = max(worst, max(float((p - parts[0]).abs().max()) for p in parts))
    return worst


def run_kind(kind: str, args, state) -> dict:
    cfg = tiny_config(kind, args.tensor, args.pipe, args.zero, args.precision)
    guide_state = guide_state_for(kind)
    engine = TrainEngine.build(cfg, state, guide_state, guided=is_guided(kind))
    record = {"losses": [], "grad_norms": [], "states": [], "replicated_spread": 0.0, "skipped": []}

    def observe(eng):
        if args.grads:  # parameters (fp32 masters) and their gradients right before the step
            full = eng.gather_full_state(include_grads=True, master=True)
            record["states"].append({k: v.float() for k, v in full.items()})
        record["replicated_spread"] = max(record["replicated_spread"], replicated_grad_spread(eng))

    engine.observe_gradients(observe)
    for step in range(args.steps):
        set_step(guide_state, step)
        engine.set_lr(lr_at(step))
        record["losses"].append(engine.train_batch(micro_batches(step, state.data_rank, state.data_size)))
        record["grad_norms"].append(engine.grad_norm)
        record["skipped"].append(engine.last_step_skipped)
    record["params"] = {k: v.float() for k, v in engine.gather_full_state(master=True).items()}
    record["global_steps"] = engine.global_steps
    return record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensor", type=int, required=True)
    ap.add_argument("--pipe", type=int, required=True)
    ap.add_argument("--zero", type=int, default=1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--kinds", default="dense,lowrank,blockdense,blockshuffle,lowrank_sgt")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--grads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    init_distributed()
    state = None
    for kind in args.kinds.split(","):
        cfg = tiny_config(kind, args.tensor, args.pipe, args.zero, args.precision)
        state = state or build_parallel_state(cfg)
        record = run_kind(kind, args, state)
        if state.rank == 0:
            torch.save(record, os.path.join(args.out, f"{kind}.pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
