"""Worker: the same code under any launcher (deepspeed, torchrun, mpirun, plain python).

init_distributed() finds its place from whatever the launcher provides; then one training
step runs through a pipeline of all ranks (pipe = world size), or one process alone.
Every rank writes <out>/rank<r>.json: what it saw and the loss.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_sffn.parallel.topology import build_parallel_state, init_distributed  # noqa: E402
from megatron_sffn.training.engine import TrainEngine  # noqa: E402
from tests.distributed.common import guide_state_for, lr_at, micro_batches, tiny_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--local_rank", type=int, default=None)  # the deepspeed launcher may pass it
    args = ap.parse_args()
    torch.set_num_threads(1)
    init_distributed()
    world = dist.get_world_size()
    cfg = tiny_config("lowrank", tensor=1, pipe=world, zero=1)
    state = build_parallel_state(cfg)
    engine = TrainEngine.build(cfg, state, guide_state_for("lowrank"), guided=False)
    engine.set_lr(lr_at(0))
    loss = engine.train_batch(micro_batches(0, state.data_rank, state.data_size))
    info = {"rank": dist.get_rank(), "world": world, "local_rank": int(os.environ["LOCAL_RANK"]),
            "backend": dist.get_backend(), "pipe_rank": state.pipe_rank, "loss": loss,
            "engine": type(engine.ds).__name__}
    with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(info, f)
    dist.barrier()


if __name__ == "__main__":
    main()
