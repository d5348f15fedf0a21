"""What a `--load PATH` names: a run folder, a DeepSpeed checkpoint, or a consolidated one.

  run folder          RUN/checkpoints/latest -> RUN/checkpoints/stepXXXXXXXX (the newest complete one)
  checkpoints folder  RUN/checkpoints (holds `latest`)
  step folder         RUN/checkpoints/stepXXXXXXXX (meta.json + DeepSpeed's files)
  consolidated        model.safetensors + config.json + meta.json (+ optimizer.safetensors)

Everything here only reads small files (meta.json, `latest`, directory listings): a bad
path stops with one line naming it before any process or tensor exists.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

from ..training.checkpointing import TAG_PATTERN, CheckpointError
from .consolidated import CONFIG_FILE, META_FILE, MODEL_FILE, OPTIM_FILE

PARTIAL_SUFFIX = ".partial"


class CheckpointSourceError(ValueError):
    """--load names no checkpoint, or a partial one; the message names the path."""


@dataclass
class CheckpointSource:
    kind: str                        # "consolidated" | "deepspeed"
    path: str                        # the consolidated folder, or the DeepSpeed step folder
    meta: Dict = field(default_factory=dict)
    run_dir: Optional[str] = None    # the run folder a DeepSpeed checkpoint belongs to, when known

    @property
    def checkpoints_dir(self) -> str:
        return os.path.dirname(self.path)

    @property
    def tag(self) -> str:
        return os.path.basename(self.path)

    @property
    def config(self) -> Dict:
        return self.meta.get("config", {})

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def layout(self) -> Dict:
        """tensor, pipeline, data, zero_stage of the run that wrote it (consolidated: its source)."""
        if self.kind == "consolidated":
            return dict(self.meta.get("source", {}).get("layout", {}))
        if "layout" in self.meta:
            return dict(self.meta["layout"])
        p = self.config.get("parallel", {})
        return {"tensor": p.get("tensor", 1), "pipeline": p.get("pipeline", 1), "data": None,
                "zero_stage": p.get("zero_stage", 0)}

    @property
    def has_optimizer(self) -> bool:
        if self.kind == "consolidated":
            return os.path.isfile(os.path.join(self.path, OPTIM_FILE))
        return True


def _read_json(path: str, what: str) -> Dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointSourceError(f"cannot read {what} {path}: {e}") from None


def _deepspeed_files(path: str):
    return glob.glob(os.path.join(path, "*model_states.pt")) + glob.glob(os.path.join(path, "*optim_states.pt"))


def _step_folder(path: str, run_dir: Optional[str] = None) -> CheckpointSource:
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise CheckpointSourceError(f"{path} is a partial checkpoint: meta.json is missing (the save did not "
                                    "finish); load an earlier step folder")
    if not _deepspeed_files(path):
        raise CheckpointSourceError(f"{path} holds no DeepSpeed files (*model_states.pt): partial or moved checkpoint")
    meta = _read_json(meta_path, "checkpoint metadata")
    if "config" not in meta:
        raise CheckpointSourceError(f"{meta_path} has no 'config': not written by megatron_sffn's training loop")
    src = CheckpointSource("deepspeed", os.path.abspath(path), meta, run_dir)
    missing = missing_deepspeed_files(src)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointSourceError(f"{src.path} is a partial checkpoint: {missing[0]}{more} missing for its layout "
                                    f"{src.layout}")
    return src


def missing_deepspeed_files(src: CheckpointSource) -> list:
    """Files DeepSpeed will look for that the step folder lacks, judged from its recorded layout
    (ZeRO 3 and unknown layouts are left to DeepSpeed's own load, which names what it misses)."""
    layout, config = src.layout, src.config
    if layout.get("data") is None or int(layout.get("zero_stage", 0)) >= 3:
        return []
    tensor, pipeline, data = int(layout["tensor"]), int(layout["pipeline"]), int(layout["data"])
    present = set(os.listdir(src.path))
    wanted = [f"mp_rank_{m:02d}_model_states.pt" for m in range(tensor * pipeline)]
    if pipeline > 1:  # one file per layer with parameters and tensor rank: embedding, blocks, norm (+ head)
        model = config.get("model", {})
        layers = int(model.get("num_layers", 0)) + 2 + (0 if model.get("tie_embeddings", True) else 1)
        wanted += [f"layer_{i:02d}-model_{t:02d}-model_states.pt" for i in range(layers) for t in range(tensor)]
    zero_prefixes = {n.split("zero_pp_rank_")[0] for n in present if "zero_pp_rank_" in n and n.endswith("optim_states.pt")}
    if int(layout.get("zero_stage", 0)) > 0 and layout.get("optimizer") != "fused" and not zero_prefixes:
        zero_prefixes = {""}
    for prefix in zero_prefixes:
        wanted += [f"{prefix}zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt"
                   for d in range(data) for m in range(tensor * pipeline)]
    return [name for name in wanted if name not in present]


def _from_checkpoints_dir(checkpoints: str, run_dir: Optional[str]) -> CheckpointSource:
    from ..training.checkpointing import CheckpointManager
    try:
        tag = CheckpointManager(checkpoints, keep_last=1, rank=0).latest_tag()
    except CheckpointError as e:
        raise CheckpointSourceError(str(e)) from None
    if tag is None:
        raise CheckpointSourceError(f"{checkpoints} has no complete checkpoint ('latest' is missing)")
    return _step_folder(os.path.join(checkpoints, tag), run_dir)


def locate(path: str) -> CheckpointSource:
    """The checkpoint `path` names, checked for completeness; CheckpointSourceError otherwise."""
    path = os.path.abspath(os.path.expanduser(path))
    if path.endswith(PARTIAL_SUFFIX):
        raise CheckpointSourceError(f"{path} is a half-written output of an interrupted conversion; convert again")
    if not os.path.exists(path):
        raise CheckpointSourceError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise CheckpointSourceError(f"{path} is a file; give the checkpoint's folder (a run folder, a step folder "
                                    "or a consolidated folder)")
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a run folder (converted ones hold config.json too)
        return _from_checkpoints_dir(os.path.join(path, "checkpoints"), path)
    if os.path.isfile(os.path.join(path, MODEL_FILE)) or os.path.isfile(os.path.join(path, CONFIG_FILE)):
        for name in (MODEL_FILE, CONFIG_FILE, META_FILE):
            if not os.path.isfile(os.path.join(path, name)):
                raise CheckpointSourceError(f"consolidated checkpoint {path} is partial: {name} is missing")
        meta = _read_json(os.path.join(path, META_FILE), "consolidated metadata")
        meta["config"] = _read_json(os.path.join(path, CONFIG_FILE), "model config")
        return CheckpointSource("consolidated", path, meta)
    if os.path.exists(os.path.join(path, "latest")):
        return _from_checkpoints_dir(path, os.path.dirname(path))
    if os.path.isfile(os.path.join(path, "meta.json")) or TAG_PATTERN.match(os.path.basename(path)) \
            or _deepspeed_files(path):
        return _step_folder(path, os.path.dirname(os.path.dirname(path)))
    raise CheckpointSourceError(f"{path} is not a checkpoint: expected a run folder (checkpoints/latest), a step "
                                "folder (meta.json + DeepSpeed files) or a consolidated folder "
                                "(model.safetensors + config.json)")
