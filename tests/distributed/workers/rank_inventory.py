"""Worker: what one rank holds and keeps for backward in a training step, real or emulated.

Real: started on every rank of a gloo world (tests/distributed/launcher.py). Emulated: one
process as --emulate-rank of that world on torch's fake process group
(tools/emulate_rank.py). Each reporting rank saves <out>/<tag>_rank<r>.pt with:

  params     (name, shape, dtype) of every parameter of the module on this rank
  optimizer  sorted (shape, dtype) of the tensors the optimizer holds (its attributes and
             per-parameter state, and those of the torch optimizer DeepSpeed wraps): ZeRO shards
  saved      bytes autograd kept for backward over one training step (all micro-batches),
             counted by storage: what sequence parallelism exists to shrink
  finite     the step's loss is finite

bench_train.py --emulate reads memory peaks from such an emulated rank; the test compares
it with the real rank, item by item.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch  # noqa: E402

from tools.emulate_rank import join_fake_world  # noqa: E402
from megatron_sffn.parallel.topology import build_parallel_state, init_distributed  # noqa: E402
from megatron_sffn.training.engine import TrainEngine  # noqa: E402
from tests.distributed.common import (guide_state_for, is_guided, micro_batches, set_step,  # noqa: E402
                                      tiny_config)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensor", type=int, default=1)
    ap.add_argument("--pipe", type=int, default=1)
    ap.add_argument("--sequence-parallel", action="store_true")
    ap.add_argument("--kind", default="lowrank")
    ap.add_argument("--precision", default="fp32", help="fp32 (DeepSpeed's ZeRO optimizer) or bf16fused")
    ap.add_argument("--emulate-world", type=int, default=None, help="emulate one rank of this world size")
    ap.add_argument("--emulate-rank", type=int, default=0)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", required=True)
    return ap.parse_args()


class SavedBytes:
    """Bytes of distinct storages autograd packs for backward while active. Every storage
    is kept alive until the end, so a freed one's address cannot come back as a new one."""

    def __init__(self):
        self.seen, self.total, self.kept, self.alive = set(), 0, [], []

    def pack(self, t):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in self.seen:
            self.seen.add(key)
            self.alive.append(storage)
            self.total += key[1]
            self.kept.append((tuple(t.shape), str(t.dtype), key[1]))
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v)


def optimizer_tensors(optimizer):
    """Tensors held by the optimizer object and the one it wraps (DeepSpeed's ZeRO optimizer
    keeps its fp32 partitions as attributes, torch's AdamW its moments in .state)."""
    found = []
    for obj in (optimizer, getattr(optimizer, "optimizer", None)):
        if obj is None:
            continue
        found += list(tensors_in([v for v in vars(obj).values() if isinstance(v, (torch.Tensor, list, tuple, dict))
                                  and not isinstance(v, torch.nn.Module)]))
        found += list(tensors_in(list(getattr(obj, "state", {}).values())))
    return found


def main():
    args = parse_args()
    if args.emulate_world:
        join_fake_world(args.emulate_world, args.emulate_rank)
    init_distributed()
    cfg = tiny_config(args.kind, args.tensor, args.pipe, 1, args.precision,
                      sequence_parallel=args.sequence_parallel)
    state = build_parallel_state(cfg)
    guide_state = guide_state_for(args.kind)
    engine = TrainEngine.build(cfg, state, guide_state, guided=is_guided(args.kind))
    set_step(guide_state, 0)
    saved = SavedBytes()
    with saved.hooks():
        loss = engine.train_batch(micro_batches(0, state.data_rank, state.data_size))
    record = {
        "params": [(n, tuple(p.shape), str(p.dtype)) for n, p in engine.named_parameters()],
        "optimizer": sorted((tuple(t.shape), str(t.dtype)) for t in optimizer_tensors(engine.ds.optimizer)),
        "saved": saved.total, "saved_tensors": sorted(saved.kept),
        "finite": bool(torch.isfinite(torch.tensor(float(loss)))),
        "rank": state.rank, "tensor_rank": state.tensor_rank, "pipe_rank": state.pipe_rank,
        "data_rank": state.data_rank,
    }
    os.makedirs(args.out, exist_ok=True)
    torch.save(record, os.path.join(args.out, f"{args.tag}_rank{state.rank}.pt"))
    engine.close()


if __name__ == "__main__":
    main()
