#!/usr/bin/env python
"""Write configs/{2p7b,6p7b,13b}_{dense,lowrank,blockdense,blockshuffle}[_sgt].json: GPT-3's
shapes (model/paper.py GPT3_SIZES) with the paper's recipe and 32% structures, each laid out
for 4 GPUs.

    python tools/make_large_configs.py [--out configs]
    python tools/make_large_configs.py --suggest     # the planner's picks, as LAYOUT_TABLE lines
    python tools/make_large_configs.py --table       # the shipped layouts with predictions (Markdown)

Recipe, as the paper configs: vocab 32000 (Llama tokenizer), seq 1024, LayerNorm, GELU,
biases, RoPE, tied embeddings, AdamW 0.9/0.999, weight decay 0.1, cosine to 0.1 x lr with
10% warmup, global batch 512 sequences, GPT-3's learning rate for the size, ~20 tokens per
dense parameter. Each config runs as written on 4 x 141 GB (H200); `layouts` names the
overrides for 4 x 80 GB (H100/A100) too. The layouts are the planner's picks
(tools/plan_layout.py; docs/performance.md, "Layout planner"), kept here as data so that a
planner change does not silently move a shipped config. The rule (--suggest applies it):
the fastest predicted layout that needs at most 85% of the GPU's memory (90% when none
does), preferring the fused optimizer (ZeRO 0/1) when it is within 2% of the fastest.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.model.accounting import model_stats  # noqa: E402
from megatron_sffn.model.paper import GPT3_SIZES, ffn_32_percent, paper_model  # noqa: E402
from megatron_sffn.planner.layout import Layout  # noqa: E402

KINDS = ("dense", "lowrank", "blockdense", "blockshuffle")
LR = {"2p7b": 1.6e-4, "6p7b": 1.2e-4, "13b": 1.0e-4}  # GPT-3 Table 2.1
GLOBAL_BATCH = 512
DEFAULT_MEMORY = "4x141GB"  # the layout a config runs as written

DATA = {"paths": ["data/refinedweb/refinedweb_content_document"], "split": "969,30,1",
        "tokenizer_model": "data/tokenizer/llama32k.model"}


def L(spec: str) -> Layout:
    """'t2 p1 d2 z1 mb8 ckpt sp' -> Layout (the planner's short form)."""
    parts = spec.split()
    num = {p[0]: int(p[1:]) for p in parts if p[0] in "tpdz"}
    mb = int(next(p for p in parts if p.startswith("mb"))[2:])
    return Layout(num["t"], num["p"], num["d"], num["z"], mb, "ckpt" in parts, "sp" in parts)


# The default layout of each config per GPU memory, in the planner's short form
# (t tensor, p pipeline, d data, z ZeRO stage, mb micro-batch, ckpt activation checkpointing,
# sp sequence parallel). The 4 x 141 GB one is what the config runs as written.
LAYOUT_TABLE = """
# config               | 4 x 141 GB (runs as written) | 4 x 80 GB
2p7b_dense               | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb8
2p7b_lowrank             | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb16
2p7b_lowrank_sgt         | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb8
2p7b_blockdense          | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb16
2p7b_blockdense_sgt      | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb8
2p7b_blockshuffle        | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb8
2p7b_blockshuffle_sgt    | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb8
6p7b_dense               | t1 p1 d4 z1 mb8          | t1 p1 d4 z2 mb4
6p7b_lowrank             | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb4
6p7b_lowrank_sgt         | t1 p1 d4 z1 mb8          | t1 p1 d4 z2 mb4
6p7b_blockdense          | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb4
6p7b_blockdense_sgt      | t1 p1 d4 z1 mb8          | t1 p1 d4 z2 mb4
6p7b_blockshuffle        | t1 p1 d4 z1 mb16         | t1 p1 d4 z1 mb4
6p7b_blockshuffle_sgt    | t1 p1 d4 z1 mb8          | t1 p2 d2 z1 mb4
13b_dense                | t1 p1 d4 z2 mb4          | t1 p4 d1 z1 mb1
13b_lowrank              | t1 p1 d4 z1 mb4          | t1 p2 d2 z1 mb2
13b_lowrank_sgt          | t1 p2 d2 z1 mb4          | t2 p2 d1 z1 mb4 ckpt sp
13b_blockdense           | t1 p1 d4 z1 mb4          | t1 p2 d2 z1 mb2
13b_blockdense_sgt       | t1 p1 d4 z2 mb4          | t2 p2 d1 z1 mb8 ckpt sp
13b_blockshuffle         | t1 p1 d4 z1 mb4          | t1 p2 d2 z1 mb2
13b_blockshuffle_sgt     | t1 p2 d2 z1 mb2          | t2 p2 d1 z1 mb4 ckpt sp
"""
MEMORIES = ("4x141GB", "4x80GB")


def parse_layout_table(text: str) -> Dict[str, Dict[str, Layout]]:
    table = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            continue
        name, *specs = [c.strip() for c in line.split("|")]
        table[name] = {memory: L(spec) for memory, spec in zip(MEMORIES, specs)}
    return table


LAYOUTS = parse_layout_table(LAYOUT_TABLE)


def train_tokens(size: str) -> int:
    """~20 tokens per dense parameter (Chinchilla), rounded to 0.1B as the paper configs are."""
    params = model_stats(paper_model(size)).total_params
    return int(round(20 * params / 1e8)) * 100_000_000


def layout_overrides(layout: Layout) -> list:
    return [o for o in layout.overrides(GLOBAL_BATCH) if not o.startswith("training.global_batch_size")]


def config_name(size: str, kind: str, guided: bool) -> str:
    return f"{size}_{kind}" + ("_sgt" if guided else "")


def config_names():
    return [(size, kind, guided) for size in GPT3_SIZES for kind in KINDS
            for guided in ((False,) if kind == "dense" else (False, True))]


def make_config(size: str, kind: str, guided: bool, layouts: Optional[Dict[str, Layout]] = None) -> dict:
    """One config; `layouts` (default: LAYOUT_TABLE's row) per GPU memory, 4x141GB the one it runs."""
    d, layers, heads, ffn = GPT3_SIZES[size]
    f = ffn_32_percent(kind, d)
    ffn_cfg = {"kind": kind, "first_layer_dense": True, "init": "paper"}
    ffn_cfg.update({k: v for k, v in (("rank", f.rank), ("blocks", f.blocks)) if v is not None})
    name = config_name(size, kind, guided)
    layouts = layouts or LAYOUTS[name]
    run = layouts[DEFAULT_MEMORY]
    return {
        "name": name,
        "model": {"vocab_size": 32000, "seq_length": 1024, "norm": "layernorm", "activation": "gelu", "bias": True,
                  "tie_embeddings": True, "rope_base": 10000.0, "init_std": 0.02, "hidden_size": d,
                  "num_layers": layers, "num_heads": heads, "ffn_hidden_size": ffn, "ffn": ffn_cfg},
        "self_guided": {"enabled": guided, "schedule": "cosine", "reduce_flop": True, "same_flops": guided,
                        "flops_budget": "dense"},
        "data": DATA,
        "optimizer": {"lr": LR[size], "min_lr_ratio": 0.1, "warmup_fraction": 0.1, "weight_decay": 0.1,
                      "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "grad_clip": 1.0},
        "training": {"train_tokens": train_tokens(size), "micro_batch_size": run.micro_batch,
                     "global_batch_size": GLOBAL_BATCH, "seed": 1234, "precision": "bf16", "log_interval": 10,
                     "eval_interval": 1000, "eval_iters": 10, "save_interval": 1000, "keep_last": 3,
                     "activation_checkpointing": run.activation_checkpointing},
        "parallel": {"tensor": run.tensor, "pipeline": run.pipeline, "zero_stage": run.zero_stage,
                     "sequence_parallel": run.sequence_parallel},
        "output": {"run_dir": f"runs/{name}"},
        "layouts": {memory: layout_overrides(layout) for memory, layout in sorted(layouts.items())},
    }


def all_configs() -> Dict[str, dict]:
    return {config_name(*n): make_config(*n) for n in config_names()}


def suggest_layout(raw: dict, gpu_memory_gb: float) -> Layout:
    """The module docstring's rule over the planner's ranking for 4 GPUs."""
    from megatron_sffn.planner.hardware import Hardware
    from megatron_sffn.planner.plan import plan
    ranked = plan(raw, 4, Hardware(gpu_memory_gb=gpu_memory_gb), micro_batch_sizes=(1, 2, 4, 8, 16)).ranked
    for limit in (0.85, 0.90):
        ok = [p for p in ranked if p.peak_gb <= limit * gpu_memory_gb]
        if ok:
            break
    else:
        raise SystemExit(f"{raw['name']}: no layout fits on 4 x {gpu_memory_gb:g} GB")
    fastest = ok[0].step.total
    fused = [p for p in ok if p.layout.zero_stage < 2 and p.step.total <= 1.02 * fastest]
    # ZeRO 0 and 1 are the same layout on one data rank; name it ZeRO 1 like the other configs
    return min(fused or ok, key=lambda p: (round(p.step.total, 6), p.layout.zero_stage != 1)).layout


def suggest() -> None:
    """Print a LAYOUT_TABLE for the current planner (paste it above after reviewing it)."""
    placeholder = {memory: L("t1 p1 d4 z1 mb1") for memory in MEMORIES}
    for size, kind, guided in config_names():
        raw = make_config(size, kind, guided, placeholder)
        raw.pop("layouts")
        specs = [suggest_layout(raw, float(memory.split("x")[1][:-2])).short() for memory in MEMORIES]
        print(f"{raw['name']:<24} | " + " | ".join(f"{s:<24}" for s in specs).rstrip(), flush=True)


def layouts_table() -> None:
    """Markdown: every config's layouts with the planner's predicted peak and throughput."""
    from megatron_sffn.planner.hardware import Hardware
    from megatron_sffn.planner.plan import layout_config, predict
    print("| config | params | 4 x 141 GB (as written) | GB | tokens/s/GPU | 4 x 80 GB | GB | tokens/s/GPU |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for name, raw in all_configs().items():
        cells = [name, f"{model_stats(paper_model(*name.split('_')[:2])).total_params / 1e9:.2f}B"]
        for memory in MEMORIES:
            layout = LAYOUTS[name][memory]
            pred = predict(layout_config(raw, layout, GLOBAL_BATCH), layout,
                           Hardware(gpu_memory_gb=float(memory.split("x")[1][:-2])))
            cells += [layout.short(), f"{pred.peak_gb:.0f}", f"{pred.tokens_per_s_per_gpu:,.0f}"]
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "configs"))
    p.add_argument("--suggest", action="store_true", help="print the planner's picks instead of writing configs")
    p.add_argument("--table", action="store_true", help="print the shipped layouts with predictions (Markdown)")
    args = p.parse_args(argv)
    if args.table:
        layouts_table()
        return 0
    if args.suggest:
        suggest()
        return 0
    os.makedirs(args.out, exist_ok=True)
    configs = all_configs()
    for name, cfg in configs.items():
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
    print(f"wrote {len(configs)} configs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
