"""Worker of test_host_syncs.py: the launcher's training step in this process (its argument
parser, config loader and training.loop.Trainer: the real DeepSpeed engine, the fused
optimizer), each step counted by training/host_syncs.py's SyncCounter. Writes JSON:
{"steps": [{"step", "log_step", "syncs": {kind: n}}], "run_dir": ...}.

    python tests/unit/host_syncs_worker.py OUT.json RUN_DIR [launcher args ...]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from megatron_sffn.config import load_config  # noqa: E402
from megatron_sffn.training.cli import parse  # noqa: E402
from megatron_sffn.training.host_syncs import SyncCounter  # noqa: E402
from megatron_sffn.training.loop import Trainer  # noqa: E402


def _without_fused_adamw() -> None:
    """HOST_SYNCS_WORKER_NO_FUSED=1: the fused optimizer on a device without torch's fused AdamW
    kernel (its foreach fallback, which decides on the host)."""
    from megatron_sffn.training import master_optimizer

    def foreach_adamw(params, cfg):
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, foreach=True)
    master_optimizer._adamw = foreach_adamw


def main(out: str, argv) -> None:
    torch.set_num_threads(1)
    if os.environ.get("HOST_SYNCS_WORKER_NO_FUSED") == "1":
        _without_fused_adamw()
    args, overrides = parse(argv)
    cfg = load_config(args.config, overrides, world_size=1)
    trainer = Trainer(cfg)
    steps, current = [], {}
    original = trainer.maybe_drop_guides

    def boundary():  # the top of each loop iteration: the previous step ended here
        counter = current.pop("counter", None)
        if counter is not None:
            counter.__exit__(None, None, None)
            step = trainer.loop.step
            steps.append({"step": step, "log_step": step % cfg.training.log_interval == 0,
                          "syncs": counter.snapshot()})
        current["counter"] = SyncCounter().__enter__()
        return original()

    trainer.maybe_drop_guides = boundary
    try:
        result = trainer.run()  # the last step is not recorded: the end-of-run evaluation follows it
    finally:
        counter = current.pop("counter", None)
        if counter is not None:
            counter.__exit__(None, None, None)
    with open(out, "w") as f:
        json.dump({"steps": steps, "optimizer": cfg.optimizer.implementation, "final_step": result.steps,
                   "engine_path": "fused, around DeepSpeed" if trainer.engine._fused_direct else "DeepSpeed"}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
