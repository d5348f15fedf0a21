#!/usr/bin/env python
"""Look inside a checkpoint without loading it: config, step, tokens seen, layout, sizes.

    python tools/inspect_checkpoint.py RUN_DIR                 # its newest complete checkpoint + the others
    python tools/inspect_checkpoint.py RUN_DIR/checkpoints/step00001000 [--json]
    python tools/inspect_checkpoint.py CONSOLIDATED_DIR [--json]

Reads meta.json, config and file sizes only (safetensors headers for a consolidated
folder), so it is instant at any model size. Exits with status 2 and a one-line message
naming the path for a missing or partial checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.checkpoint.locate import CheckpointSourceError, locate  # noqa: E402
from megatron_sffn.config import ConfigError, config_from_dict  # noqa: E402


def _files(path: str):
    found = []
    for root, _, names in os.walk(path):
        found += [os.path.join(root, n) for n in names]
    return found


def _tensor_counts(path: str):
    """(parameters, tensors, dtypes) of a safetensors file, from its header."""
    from safetensors import safe_open
    total, dtypes = 0, set()
    with safe_open(path, framework="pt") as f:
        names = list(f.keys())
        for name in names:
            piece = f.get_slice(name)
            count = 1
            for dim in piece.get_shape():
                count *= dim
            total += count
            dtypes.add(str(piece.get_dtype()))
    return total, len(names), sorted(dtypes)


def describe(path: str) -> dict:
    from megatron_sffn.model.accounting import model_stats
    from megatron_sffn.model.paper import describe_ffn
    from megatron_sffn.training.phases import RunPhases

    src = locate(path)
    info = {"path": src.path, "kind": src.kind, "run_dir": src.run_dir, "step": src.step}
    try:
        cfg = config_from_dict(src.config)
    except ConfigError as e:
        raise CheckpointSourceError(f"{src.path}: its config does not load: {e}") from None
    m, t = cfg.model, cfg.training
    loop = src.meta.get("loop", {})
    stats = model_stats(m)
    guided_left = cfg.self_guided.enabled and not loop.get("guides_dropped", False)
    info.update({
        "name": cfg.name,
        "model": {"hidden_size": m.hidden_size, "num_layers": m.num_layers, "num_heads": m.num_heads,
                  "kv_heads": m.kv_heads, "ffn_hidden_size": m.ffn_hidden_size, "ffn": describe_ffn(m.ffn),
                  "seq_length": m.seq_length, "vocab_size": m.vocab_size, "norm": m.norm, "activation": m.activation},
        "parameters": stats.total_params + (stats.guide_params if guided_left else 0),
        "consumed_tokens": loop.get("consumed_tokens", src.meta.get("consumed_tokens")),
        "planned_steps": RunPhases.from_config(cfg).total_steps,
        "self_guided": ({"guides_dropped": loop.get("guides_dropped"), "guide": src.meta.get("guide")}
                        if cfg.self_guided.enabled else None),
        "layout": src.layout, "precision": t.precision if src.kind != "consolidated" else "float32 (masters)",
        "reason": src.meta.get("reason"),
    })
    files = _files(src.path)
    info["files"] = len(files)
    info["bytes"] = sum(os.path.getsize(f) for f in files)
    if src.kind == "consolidated":
        params, tensors, dtypes = _tensor_counts(os.path.join(src.path, "model.safetensors"))
        info.update(parameters=params, tensors=tensors, dtypes=dtypes, has_optimizer=src.has_optimizer,
                    optimizer_step=src.meta.get("optimizer_step"), source=src.meta.get("source"))
    elif src.run_dir and os.path.isdir(os.path.join(src.run_dir, "checkpoints")):
        from megatron_sffn.training.checkpointing import CheckpointManager
        manager = CheckpointManager(os.path.join(src.run_dir, "checkpoints"), keep_last=1, rank=0)
        info["tags"] = [{"tag": tag, "complete": os.path.isfile(os.path.join(manager.directory, tag, "meta.json")),
                         "bytes": sum(os.path.getsize(f) for f in _files(os.path.join(manager.directory, tag)))}
                        for tag in manager.tags()]
    return info


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def format_info(info: dict) -> str:
    m, lay = info["model"], info["layout"]
    lines = [
        f"checkpoint   {info['path']} ({info['kind']})",
        f"run          {info['name']}" + (f" in {info['run_dir']}" if info.get("run_dir") else ""),
        f"model        {info['parameters']:,} parameters | width {m['hidden_size']} x {m['num_layers']} layers, "
        f"{m['num_heads']} heads ({m['kv_heads']} kv), ffn {m['ffn_hidden_size']} {m['ffn']}, seq {m['seq_length']}, "
        f"vocab {m['vocab_size']}, {m['norm']} + {m['activation']}",
        f"step         {info['step']:,} of {info['planned_steps']:,} planned",
        f"tokens seen  {info['consumed_tokens']:,}" if info.get("consumed_tokens") is not None else "tokens seen  ?",
    ]
    if info.get("self_guided"):
        sg = info["self_guided"]
        guide = sg.get("guide") or {}
        lines.append(f"self-guided  guides {'dropped' if sg['guides_dropped'] else 'present'}, "
                     f"guide weight {guide.get('alpha', float('nan')):.3f}")
    if lay:
        lines.append(f"layout       tensor {lay.get('tensor')} x pipeline {lay.get('pipeline')} x data "
                     f"{lay.get('data')} | ZeRO {lay.get('zero_stage')} | {info['precision']}"
                     + (" | fused optimizer" if lay.get("optimizer") == "fused" else "")
                     + (" (source of this consolidated copy)" if info["kind"] == "consolidated" else ""))
    if info["kind"] == "consolidated":
        lines.append(f"tensors      {info['tensors']} ({', '.join(info['dtypes'])}), optimizer state "
                     + (f"yes (Adam step {info['optimizer_step']})" if info["has_optimizer"] else "no"))
    lines.append(f"size         {_human(info['bytes'])} in {info['files']} files")
    if info.get("reason"):
        lines.append(f"saved        {info['reason']}")
    for tag in info.get("tags", []):
        mark = " <- this one" if tag["tag"] == os.path.basename(info["path"]) else ""
        lines.append(f"  {tag['tag']}  {_human(tag['bytes']):>10}{'' if tag['complete'] else '  (partial)'}{mark}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="run folder, checkpoint step folder or consolidated folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    try:
        info = describe(args.path)
    except CheckpointSourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
