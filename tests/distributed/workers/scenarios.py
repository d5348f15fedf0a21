"""Worker: run training scenarios under one (tensor, pipe, data) layout through TrainEngine.

One launch runs several scenarios (starting processes costs more on 2 cores than the tiny
models do: each rank spends seconds importing torch, DeepSpeed and Dynamo before its first
engine). Each scenario is "what/kind/zero/precision", or "what/kind/zero/precision/sp" with
sequence parallelism (a layout with and without it shares the launch: same process groups),
and rank 0 saves its record to <out>/<what>-<kind>-z<zero>-<precision>[-sp].pt:

  train   5 steps, then eval_batch on batch 5; per step the loss, grad norm and skipped
          flag; at the first and last step
          (fp32) the full parameters and gradients right before the optimizer step; the
          final fp32 masters and Adam moments; the largest gradient difference between
          tensor ranks over replicated parameters
  resume  5 steps saving a checkpoint after step 3, then a fresh engine loads it and
          trains steps 3-4 again: both loss sequences and the client state read back
  drop    3 guided steps, drop_guides_and_rebuild, 2 more steps: losses, the Adam
          moments of surviving parameters just before and just after the rebuild, the
          returned stats and the final masters
  nonfinite  step 1 gets a NaN gradient: the step must be skipped, the weights untouched
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_sffn.parallel.topology import build_parallel_state, init_distributed  # noqa: E402
from megatron_sffn.training.engine import TrainEngine  # noqa: E402
from megatron_sffn.training.master_optimizer import MasterWeightAdamW  # noqa: E402
from megatron_sffn.training.optimizer import full_grad  # noqa: E402
from tests.distributed.common import (guide_state_for, is_guided, lr_at, micro_batches, set_step,  # noqa: E402
                                      tiny_config)

STEPS = 5
CHECKED_STEPS = (0, STEPS - 1)  # gradients gathered and compared at the first and the last step


def scenario_name(spec: str) -> str:
    """The record's file name (no extension) for a scenario spec."""
    what, kind, zero, precision, *flags = spec.split("/")
    return f"{what}-{kind}-z{zero}-{precision}" + "".join(f"-{f}" for f in flags)


class Scenario:
    def __init__(self, spec: str, args):
        self.what, self.kind, zero, self.precision, *flags = spec.split("/")
        self.zero = int(zero)
        self.sequence_parallel = args.sequence_parallel or flags == ["sp"]
        self.cfg = tiny_config(self.kind, args.tensor, args.pipe, self.zero, self.precision,
                               sequence_parallel=self.sequence_parallel)
        self.name = scenario_name(spec)
        self.args = args

    def engine(self, state):
        # small buckets: the tiny model's gradient is all-reduced in several pieces during backward
        MasterWeightAdamW.BUCKET_ELEMENTS = 3000
        guide_state = guide_state_for(self.kind)
        return TrainEngine.build(self.cfg, state, guide_state, guided=is_guided(self.kind)), guide_state


def step(engine, guide_state, state, i: int) -> float:
    set_step(guide_state, i)
    engine.set_lr(lr_at(i))
    return engine.train_batch(micro_batches(i, state.data_rank, state.data_size))


def replicated_grad_spread(engine: TrainEngine) -> float:
    """Largest |g_rank - g_rank0| over replicated parameters within the tensor group."""
    state = engine.state
    if state.tensor_size == 1:
        return 0.0
    grads = []
    for _, param in engine.named_parameters():
        if getattr(param, "tp_split_dim", None) is None:
            grad = full_grad(param, engine.ds.optimizer)
            grads.append(torch.zeros(param.numel()) if grad is None else grad.float().reshape(-1))
    flat = torch.cat(grads)
    everyone = torch.empty(state.tensor_size * flat.numel())
    dist.all_gather_into_tensor(everyone, flat, group=state.tensor_group)
    everyone = everyone.view(state.tensor_size, -1)
    return float((everyone - everyone[0]).abs().max())


def run_train(sc: Scenario, state) -> dict:
    engine, guide_state = sc.engine(state)
    record = {"losses": [], "grad_norms": [], "states": [], "replicated_spread": 0.0, "skipped": []}

    def observe(eng):
        if eng.global_steps not in CHECKED_STEPS:
            return
        if sc.precision in ("fp32", "bf16fused"):  # parameters and gradients right before the step
            full = eng.gather_full_state(include_grads=True, master=sc.zero == 3)
            record["states"].append({k: v.float() for k, v in full.items()})
        record["replicated_spread"] = max(record["replicated_spread"], replicated_grad_spread(eng))

    engine.observe_gradients(observe)
    for i in range(STEPS):
        record["losses"].append(step(engine, guide_state, state, i))
        record["grad_norms"].append(engine.grad_norm)
        record["skipped"].append(engine.last_step_skipped)
    set_step(guide_state, STEPS)
    record["eval_loss"] = engine.eval_batch(micro_batches(STEPS, state.data_rank, state.data_size))
    record["params"] = {k: v.float() for k, v in engine.gather_full_state(master=True).items()}
    record["moments"] = engine.gather_optimizer_state()
    record["global_steps"] = engine.global_steps
    if isinstance(engine.ds.optimizer, MasterWeightAdamW):  # (launched in backward, buckets) of the last step
        record["overlap"] = (engine.ds.optimizer.buckets_overlapped, len(engine.ds.optimizer._buckets))
    return record


def run_resume(sc: Scenario, state) -> dict:
    ckpt = os.path.join(sc.args.out, f"ckpt-{sc.name}")
    engine, guide_state = sc.engine(state)
    first = [step(engine, guide_state, state, i) for i in range(3)]
    engine.save_checkpoint(ckpt, "step00000003", {"loop": {"step": 3}, "note": "client state survives"})
    first += [step(engine, guide_state, state, i) for i in range(3, STEPS)]
    engine.close()
    resumed, guide_state = sc.engine(state)
    client = resumed.load_checkpoint(ckpt, "step00000003")
    start = client["loop"]["step"]
    second = [step(resumed, guide_state, state, i) for i in range(start, STEPS)]
    return {"first": first, "resumed": second, "client": client, "global_steps": resumed.global_steps}


def run_drop(sc: Scenario, state) -> dict:
    engine, guide_state = sc.engine(state)
    losses = [step(engine, guide_state, state, i) for i in range(3)]
    before = engine.gather_optimizer_state()
    stats = engine.drop_guides_and_rebuild()
    after = engine.gather_optimizer_state()
    losses += [step(engine, guide_state, state, i) for i in range(3, STEPS)]
    guides_left = sum(1 for name, _ in engine.named_parameters() if ".guide." in name)
    return {"losses": losses, "moments_before": before, "moments_after": after, "stats": stats,
            "guides_left": guides_left, "guide_active": guide_state.active,
            "params": {k: v.float() for k, v in engine.gather_full_state(master=True).items()}}


def run_nonfinite(sc: Scenario, state) -> dict:
    engine, guide_state = sc.engine(state)
    losses, skipped, params = [], [], []
    for i in range(3):
        hook = None
        if i == 1:  # a NaN in every rank's first piece poisons the loss and every gradient
            first = next(m for m in engine.module.modules() if hasattr(m, "weight") and m.weight is not None)
            hook = first.register_forward_hook(lambda mod, inp, out: out * float("nan"))
        losses.append(step(engine, guide_state, state, i))
        if hook is not None:
            hook.remove()
        skipped.append(engine.last_step_skipped)
        params.append({k: v.float() for k, v in engine.gather_full_state(master=True).items()})
    return {"losses": losses, "skipped": skipped, "params": params}


RUNNERS = {"train": run_train, "resume": run_resume, "drop": run_drop, "nonfinite": run_nonfinite}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensor", type=int, required=True)
    ap.add_argument("--pipe", type=int, required=True)
    ap.add_argument("--scenarios", required=True, help="comma-separated what/kind/zero/precision[/sp]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sequence-parallel", action="store_true", help="every scenario with sequence parallelism")
    args = ap.parse_args()
    torch.set_num_threads(1)
    init_distributed()
    states = {}  # with and without sequence parallelism: its flag lives in the state's TensorParallel
    for spec in args.scenarios.split(","):
        sc = Scenario(spec, args)
        if sc.sequence_parallel not in states:  # every rank reaches this at the same spec: new_group is collective
            states[sc.sequence_parallel] = build_parallel_state(sc.cfg)
        state = states[sc.sequence_parallel]
        started = time.perf_counter()
        record = RUNNERS[sc.what](sc, state)
        record["seconds"] = time.perf_counter() - started
        if state.rank == 0:
            torch.save(record, os.path.join(args.out, f"{sc.name}.pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
