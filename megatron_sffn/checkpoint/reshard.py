"""The per-rank halves of checkpoint conversion, run in every process of a local gloo world
(checkpoint/convert.py starts them): `python -m megatron_sffn.checkpoint.reshard
{export,import} ...`.

export  The training engine is rebuilt in the layout the checkpoint was saved in (tensor x
        pipeline x data, ZeRO stage, precision, guides present or not), DeepSpeed loads its
        own files, and parameter by parameter the full fp32 master weight and Adam moments
        are gathered (over ZeRO partitions, then tensor ranks); each pipeline stage's
        (data 0, tensor 0) rank writes its stage to a file and rank 0 assembles the
        consolidated folder from them.
import  The engine is built in the target layout with each rank's slice of the consolidated
        weights (sliced as initialisation slices: `tp_split_dim`), then every parameter's
        fp32 master and Adam moments are set through DeepSpeed's safe_set_full_* (ZeRO
        partitions included), Adam's step and the engine's counters are restored, and
        CheckpointManager saves it with the training loop's client state, so
        `launchers/pretrain.py` resumes from it as from its own checkpoint.

The model draws no random numbers while training (no dropout; the reduce_flop draw and the
data order are pure functions of seed and step), so RNG states need not travel: each new
rank saves its own.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback
from typing import Dict, Optional

import torch

from .consolidated import CONFIG_FILE, META_FILE, MODEL_FILE, OPTIM_FILE, ConsolidatedError, publish

FORMAT = "megatron_sffn.consolidated/1"
PARTIAL_SUFFIX = ".partial"


class ConversionError(RuntimeError):
    """A checkpoint cannot be converted; the message names the file or the flag."""


class ConsolidatedReader:
    """Tensors of a consolidated folder read one at a time (memory-mapped, never all at once)."""

    def __init__(self, path: str, with_optimizer: bool):
        from safetensors import safe_open
        self.path = path
        with open(os.path.join(path, META_FILE)) as f:
            self.meta = json.load(f)
        self._model = safe_open(os.path.join(path, MODEL_FILE), framework="pt", device="cpu")
        self.names = set(self._model.keys())
        self._optim = None
        if with_optimizer:
            self._optim = safe_open(os.path.join(path, OPTIM_FILE), framework="pt", device="cpu")
            self.moment_names = set(self._optim.keys())

    @property
    def has_guides(self) -> bool:
        return any(".guide." in name for name in self.names)

    def weight(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise ConversionError(f"{os.path.join(self.path, MODEL_FILE)} has no parameter '{name}' "
                                  "(mismatched config.json?)")
        return self._model.get_tensor(name)

    def moment(self, key: str, name: str) -> torch.Tensor:
        flat = f"{key}/{name}"
        if flat not in self.moment_names:
            raise ConversionError(f"{os.path.join(self.path, OPTIM_FILE)} has no '{flat}' (partial optimizer state)")
        return self._optim.get_tensor(flat)


def _build_engine(cfg, guided: bool, guide_state_dict: Optional[Dict], set_values):
    from ..parallel.topology import build_parallel_state, init_distributed
    from ..structured.guide import GuideState
    from ..training.engine import TrainEngine

    init_distributed()
    state = build_parallel_state(cfg)
    sg = cfg.self_guided
    guide_state = GuideState(active=guided, seed=cfg.training.seed, reduce_flop=sg.reduce_flop)
    if guide_state_dict:
        guide_state.load_state_dict({**guide_state_dict, "active": guided})
    engine = TrainEngine.build(cfg, state, guide_state, guided, set_values=lambda module: set_values(module, state))
    return engine, state


# ---------------------------------------------------------------------------------- export

def export_rank(source_path: str, out_dir: str, with_optimizer: bool) -> None:
    import torch.distributed as dist

    from ..config import config_from_dict
    from .locate import locate

    src = locate(source_path)
    cfg = config_from_dict(src.config)
    guided = cfg.self_guided.enabled and not src.meta.get("loop", {}).get("guides_dropped", False)

    def zeros(module, state):  # DeepSpeed's load overwrites every value
        for p in module.parameters():
            p.zero_()

    engine, state = _build_engine(cfg, guided, src.meta.get("guide"), zeros)
    try:
        client = engine.load_checkpoint(src.checkpoints_dir, src.tag)
    except Exception as e:  # noqa: BLE001  (whatever DeepSpeed or torch.load raise, the files are at fault)
        traceback.print_exc()  # into this rank's log (shown with --verbose)
        raise ConversionError(f"checkpoint {src.path} is partial or does not fit its meta.json: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    from ..training.optimizer import optimizer_step_count
    partial = out_dir.rstrip("/") + PARTIAL_SUFFIX
    stages = os.path.join(partial, "stages")
    if state.rank == 0:
        os.makedirs(stages, exist_ok=True)
    dist.barrier()
    step = optimizer_step_count(engine.ds.optimizer)
    _write_stage(engine, state, with_optimizer and step > 0, stages)
    dist.barrier()  # every stage's part is on disk
    if state.rank == 0:
        loop = dict(client.get("loop", src.meta.get("loop", {})))
        meta = {
            "format": FORMAT, "step": int(loop.get("step", src.step)),
            "consumed_tokens": int(loop.get("consumed_tokens", 0)), "loop": loop,
            "guide": client.get("guide", src.meta.get("guide", {})), "nonfinite": client.get("nonfinite", {}),
            "engine": {k: int(getattr(engine.ds, k)) for k in ("global_steps", "global_samples", "skipped_steps")},
            "source": {"path": src.path, "tag": src.tag, "layout": src.layout,
                       "precision": cfg.training.precision},
            "has_optimizer": with_optimizer, "optimizer_step": step,
        }
        _assemble(stages, partial, out_dir, cfg.to_dict(), meta, with_optimizer)
    dist.barrier()
    engine.close()


def _write_stage(engine, state, with_moments: bool, stages: str) -> None:
    """Parameter by parameter, the full fp32 master (and Adam moments) of this pipeline stage,
    gathered over data-parallel (ZeRO) and tensor ranks, kept by the stage's (data 0, tensor 0)
    rank only and written as one safetensors file: no rank ever holds more than one stage."""
    from safetensors.torch import save_file

    from ..parallel.full_state import gather_tensor_parallel
    from ..training.optimizer import ADAM_STATE_KEYS, full_master, full_moment

    optimizer = engine.ds.optimizer
    keeper = state.data_rank == 0 and state.tensor_rank == 0
    part = {}
    for name, param in engine.named_parameters():
        master = full_master(param, optimizer).float()
        values = [("model", master)]
        for key in ADAM_STATE_KEYS if with_moments else ():
            moment = full_moment(param, key, optimizer)  # None: no gradient ever reached it, Adam's zeros
            values.append((key, torch.zeros_like(master) if moment is None else moment.float()))
        split = getattr(param, "tp_split_dim", None)
        full = gather_tensor_parallel([(v, split) for _, v in values], state.tp)
        if keeper:
            part.update({f"{kind}/{name}": t.detach().cpu().contiguous() for (kind, _), t in zip(values, full)})
    if keeper:
        save_file(part, os.path.join(stages, f"stage{state.pipe_rank:05d}.safetensors"))


def _assemble(stages: str, partial: str, out_dir: str, config: Dict, meta: Dict, with_optimizer: bool) -> None:
    """Rank 0: the stages' parts -> model.safetensors (+ optimizer.safetensors), config, meta;
    then the folder is renamed into place (one file kind in memory at a time)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    parts = sorted(os.path.join(stages, n) for n in os.listdir(stages))
    for kinds, file_name in ((("model",), MODEL_FILE), (("exp_avg", "exp_avg_sq"), OPTIM_FILE)):
        if file_name == OPTIM_FILE and not with_optimizer:
            continue
        tensors = {}
        for path in parts:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    kind, name = key.split("/", 1)
                    if kind in kinds:
                        tensors[name if kind == "model" else key] = f.get_tensor(key)
        save_file(tensors, os.path.join(partial, file_name))
        del tensors
    shutil.rmtree(stages)
    publish(partial, out_dir, config, meta)


# ---------------------------------------------------------------------------------- import

def _initialise_adam_state(ds_optimizer, step: int) -> None:
    """Adam's state at `step` (zero moments, to be overwritten). ZeRO 3 hands its flat fp32
    partitions to the torch optimizer only during a step (param_groups are empty otherwise),
    so their state is created here by hand; every other optimizer goes through
    training/optimizer.py's initialise_adam_state."""
    from ..training.optimizer import ADAM_STATE_KEYS, base_optimizer, initialise_adam_state
    flat = getattr(ds_optimizer, "fp32_partitioned_groups_flat", None)
    if flat is None:
        initialise_adam_state(ds_optimizer, step)
        return
    state = base_optimizer(ds_optimizer).state
    for partition in flat:
        if not state[partition]:
            state[partition]["step"] = torch.tensor(float(step), dtype=torch.float32)
            for key in ADAM_STATE_KEYS:
                state[partition][key] = torch.zeros_like(partition)


def import_rank(consolidated: str, run_dir: str) -> None:
    """Build the engine in the layout of `run_dir/config.json` from `consolidated`; save under run_dir/checkpoints."""
    import torch.distributed as dist

    from ..config import config_from_dict
    from ..structured.base import shard_of
    from ..training.checkpointing import CheckpointManager
    from ..training.optimizer import ADAM_STATE_KEYS, set_full_master, set_full_moment

    with open(os.path.join(run_dir, CONFIG_FILE)) as f:
        cfg = config_from_dict(json.load(f))
    reader = ConsolidatedReader(consolidated, with_optimizer=True)
    meta = reader.meta
    names: Dict[str, str] = {}

    def load_weights(module, state):
        from ..model.pipeline import layout_free_names
        local = layout_free_names(module) if state.pipe_size > 1 else {n: n for n, _ in module.named_parameters()}
        names.update(local)
        for name, param in module.named_parameters():
            param.copy_(shard_of(reader.weight(local[name]), param, state.tp).to(param.dtype))

    engine, state = _build_engine(cfg, reader.has_guides, meta.get("guide"), load_weights)
    optimizer = engine.ds.optimizer
    step = int(meta["optimizer_step"])
    if step > 0:
        _initialise_adam_state(optimizer, step)
    for local_name, param in engine.ds.module.named_parameters():
        name = names[local_name]
        set_full_master(param, optimizer, shard_of(reader.weight(name), param, state.tp))
        if step > 0:
            for key in ADAM_STATE_KEYS:
                set_full_moment(param, optimizer, key, shard_of(reader.moment(key, name), param, state.tp))
    for counter, value in meta.get("engine", {}).items():
        setattr(engine.ds, counter, int(value))

    loop = meta["loop"]
    layout = {"tensor": state.tensor_size, "pipeline": state.pipe_size, "data": state.data_size,
              "zero_stage": cfg.parallel.zero_stage, "optimizer": cfg.optimizer.implementation}
    run_meta = {"step": int(loop["step"]), "loop": loop, "guide": meta.get("guide", {}),
                "reason": f"converted from {meta.get('source', {}).get('path', consolidated)}",
                "config": cfg.to_dict(), "layout": layout}
    client = {"loop": loop, "nonfinite": meta.get("nonfinite", {}), "guide": meta.get("guide", {}),
              "config": cfg.to_dict()}
    manager = CheckpointManager(os.path.join(run_dir, "checkpoints"), cfg.training.keep_last, state.rank)
    manager.save(engine, int(loop["step"]), run_meta, client)
    dist.barrier()
    engine.close()


# ---------------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    from .local_ranks import report_worker_error
    from .locate import CheckpointSourceError

    p = argparse.ArgumentParser(description="one rank of a checkpoint conversion (started by convert.py)")
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("export")
    e.add_argument("--load", required=True)
    e.add_argument("--save", required=True)
    e.add_argument("--weights-only", action="store_true")
    i = sub.add_parser("import")
    i.add_argument("--load", required=True)
    i.add_argument("--run-dir", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    try:
        if args.what == "export":
            export_rank(args.load, args.save, not args.weights_only)
        else:
            import_rank(args.load, args.run_dir)
    except (ConversionError, CheckpointSourceError, ConsolidatedError) as err:
        report_worker_error(str(err))
        return 2
    except Exception as err:  # noqa: BLE001  (the coordinator shows it; the traceback stays in the log)
        traceback.print_exc()
        report_worker_error(f"internal error on rank {os.environ.get('RANK', '?')}: {type(err).__name__}: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
