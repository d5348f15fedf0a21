"""The consolidated checkpoint: one layout-free copy of a run, the hub between layouts.

  model.safetensors       every parameter at full shape, named as in GPTModel.state_dict()
  optimizer.safetensors   Adam moments per parameter (`exp_avg/<name>`, `exp_avg_sq/<name>`),
                          full shape, float32; absent for a weights-only export
  config.json             the run config the model was trained with
  meta.json               step, consumed tokens, guide state, optimizer step, source layout

Adam's state is elementwise, so moments shard exactly like their parameters: any tensor,
pipeline or data layout can be rebuilt from this directory with the same slicing that
initialisation uses (param.tp_split_dim).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import torch

from ..config import Config, ConfigError, config_from_dict

MODEL_FILE, OPTIM_FILE, CONFIG_FILE, META_FILE = "model.safetensors", "optimizer.safetensors", "config.json", "meta.json"


class ConsolidatedError(RuntimeError):
    """A consolidated checkpoint is missing, partial, or does not fit the model."""


def save_consolidated(out_dir: str, weights: Dict[str, torch.Tensor], config: Dict, meta: Dict,
                      optimizer: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
                      dtype: Optional[torch.dtype] = None) -> None:
    """Write atomically: files go to a temporary folder that is renamed into place last."""
    from safetensors.torch import save_file
    tmp = out_dir.rstrip("/") + ".partial"
    os.makedirs(tmp, exist_ok=True)
    save_file({k: _to_save(v, dtype) for k, v in weights.items()}, os.path.join(tmp, MODEL_FILE))
    if optimizer:
        flat = {f"{key}/{name}": _to_save(t, torch.float32) for key, per in optimizer.items() for name, t in per.items()}
        save_file(flat, os.path.join(tmp, OPTIM_FILE))
    publish(tmp, out_dir, config, meta)


def publish(partial: str, out_dir: str, config: Dict, meta: Dict) -> None:
    """Write config.json and meta.json into the `partial` folder, then rename it to `out_dir`:
    the last step, so an interrupted write never leaves a complete-looking checkpoint, and an
    existing `out_dir` is never replaced."""
    with open(os.path.join(partial, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(partial, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    if os.path.exists(out_dir):
        raise ConsolidatedError(f"--save {out_dir} already exists; choose a new path")
    os.replace(partial, out_dir)


def _to_save(t: torch.Tensor, dtype) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return t.to(dtype) if dtype is not None else t


def is_consolidated(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_FILE)) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def load_consolidated(path: str, with_optimizer: bool = False) -> Tuple[Dict[str, torch.Tensor], Config, Dict,
                                                                       Optional[Dict[str, Dict[str, torch.Tensor]]]]:
    from safetensors.torch import load_file
    for name in (MODEL_FILE, CONFIG_FILE, META_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise ConsolidatedError(f"consolidated checkpoint {path} is missing {name}")
    with open(os.path.join(path, CONFIG_FILE)) as f:
        raw = json.load(f)
    try:
        cfg = config_from_dict(raw)
    except ConfigError as e:
        raise ConsolidatedError(f"{os.path.join(path, CONFIG_FILE)}: {e}") from None
    with open(os.path.join(path, META_FILE)) as f:
        meta = json.load(f)
    weights = load_file(os.path.join(path, MODEL_FILE))
    optimizer = None
    if with_optimizer:
        optim_path = os.path.join(path, OPTIM_FILE)
        if not os.path.isfile(optim_path):
            raise ConsolidatedError(f"{path} holds no optimizer state ({OPTIM_FILE}); it cannot resume training")
        optimizer = {}
        for key, t in load_file(optim_path).items():
            kind, name = key.split("/", 1)
            optimizer.setdefault(kind, {})[name] = t
    return weights, cfg, meta, optimizer


def check_weights_fit(weights: Dict[str, torch.Tensor], expected: Dict[str, Tuple[int, ...]], source: str) -> None:
    """Same names and full shapes as the model expects, or one error naming the first mismatch."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ConsolidatedError(f"{source} does not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
                                f", unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != tuple(shape):
            raise ConsolidatedError(f"{source}: parameter '{name}' has shape {tuple(weights[name].shape)}, "
                                    f"the model expects {tuple(shape)} (mismatched config?)")


def model_from_consolidated(path: str, device="cpu", dtype=torch.float32):
    """A single-rank GPTModel with the consolidated weights (guides kept if they were saved)."""
    from ..model.gpt import GPTModel
    weights, cfg, meta, _ = load_consolidated(path)
    guided = any(".guide." in k for k in weights)
    model = GPTModel(cfg.model, guided=guided)
    check_weights_fit(weights, {n: tuple(p.shape) for n, p in model.named_parameters()}, path)
    model.load_state_dict(weights, strict=True)
    if guided:
        model.guide_state.load_state_dict(meta.get("guide", {}))
    return model.to(device=device, dtype=dtype).eval(), cfg, meta
