#!/usr/bin/env python
"""Regenerate the paper configs in configs/ (sizes x FFN kinds x plain/self-guided, Table 2's
wide-and-structured GQA models). Hand-written configs (tiny_*) are left alone.

    python tools/make_configs.py [--out configs]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.model.paper import PAPER_SIZES, ffn_32_percent  # noqa: E402

# per size: learning rate, Chinchilla-style token budget (~20 x params), micro batch on an 80 GB GPU
RECIPE = {
    "110m": (6e-4, 2_200_000_000, 32),
    "335m": (3e-4, 6_700_000_000, 16),
    "730m": (2.5e-4, 14_600_000_000, 16),
    "1p3b": (2e-4, 25_500_000_000, 8),
}

# Table 2's wide-and-structured models: GQA attention + LowRank FFN at the paper's totals
WIDE = {
    "wide_219m_lowrank": dict(hidden_size=1536, num_layers=18, num_heads=12, num_kv_heads=2,
                              ffn_hidden_size=6144, rank=192, recipe="335m"),
    "wide_464m_lowrank": dict(hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=2,
                              ffn_hidden_size=8192, rank=288, recipe="730m"),
}

DATA = {"paths": ["data/refinedweb/refinedweb_content_document"], "split": "969,30,1",
        "tokenizer_model": "data/tokenizer/llama32k.model"}


def run_config(name, model, lr, tokens, micro, guided):
    cfg = {
        "name": name,
        "model": {"vocab_size": 32000, "seq_length": 1024, "norm": "layernorm", "activation": "gelu",
                  "bias": True, "tie_embeddings": True, "rope_base": 10000.0, "init_std": 0.02, **model},
        "self_guided": {"enabled": guided, "schedule": "cosine", "reduce_flop": True, "same_flops": guided,
                        "flops_budget": "dense"},
        "data": DATA,
        "optimizer": {"lr": lr, "min_lr_ratio": 0.1, "warmup_fraction": 0.1, "weight_decay": 0.1,
                      "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "grad_clip": 1.0},
        "training": {"train_tokens": tokens, "micro_batch_size": micro, "global_batch_size": 512,
                     "seed": 1234, "precision": "bf16", "log_interval": 10, "eval_interval": 1000,
                     "eval_iters": 10, "save_interval": 1000, "keep_last": 3},
        "parallel": {"tensor": 1, "pipeline": 1, "zero_stage": 1},
        "output": {"run_dir": f"runs/{name}"},
    }
    return cfg


def all_configs():
    out = {}
    for size, (d, layers, heads, ffn) in PAPER_SIZES.items():
        lr, tokens, micro = RECIPE[size]
        for kind in ("dense", "lowrank", "blockdense", "blockshuffle"):
            f = ffn_32_percent(kind, d)
            ffn_cfg = {"kind": kind, "first_layer_dense": True, "init": "paper"}
            ffn_cfg.update({k: v for k, v in (("rank", f.rank), ("blocks", f.blocks)) if v is not None})
            model = {"hidden_size": d, "num_layers": layers, "num_heads": heads, "ffn_hidden_size": ffn,
                     "ffn": ffn_cfg}
            out[f"{size}_{kind}"] = run_config(f"{size}_{kind}", model, lr, tokens, micro, False)
            if kind != "dense":
                out[f"{size}_{kind}_sgt"] = run_config(f"{size}_{kind}_sgt", model, lr, tokens, micro, True)
    for name, spec in WIDE.items():
        spec = dict(spec)
        lr, _, micro = RECIPE[spec.pop("recipe")]
        rank = spec.pop("rank")
        model = {**spec, "ffn": {"kind": "lowrank", "rank": rank, "first_layer_dense": True, "init": "paper"}}
        from megatron_sffn.config import FFNConfig, ModelConfig
        from megatron_sffn.model.accounting import model_stats
        params = model_stats(ModelConfig(vocab_size=32000, **{k: v for k, v in model.items() if k != "ffn"},
                                         ffn=FFNConfig(**model["ffn"]))).total_params
        out[name] = run_config(name, model, lr, 20 * params, micro, False)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name, cfg in all_configs().items():
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
    print(f"wrote {len(all_configs())} configs to {args.out}")


if __name__ == "__main__":
    main()
