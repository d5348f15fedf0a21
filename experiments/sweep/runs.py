"""Which runs the sweep holds, and the config file of each setting.

One model family (width 512, 8 layers, ffn 2048, seq 1024, vocab 16k, the paper's LayerNorm +
GELU + biases + RoPE + tied embeddings, bf16) with every FFN structure of PAPER.md Table 1
scaled to width d (R = d/2, d/4; B = 4 with R = 3d/4, 3d/8; B = 2, 4), self-guided training
in same-FLOPs mode on each 32% kind, and LowRank 32% trained on as many more tokens as the
dense run's FLOPs buy. A *setting* is one config file; a *run* is a setting at one seed and
one budget (a multiple of the dense run's tokens). The seed is an override of
`training.seed`, which drives initialisation, data order and the guide's reduce_flop draws.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from megatron_sffn.model.accounting import dense_equivalent, model_stats

from . import sweep_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "experiments", "sweep", "configs")

# Vocabulary 16000 (a tokenizer trained on the corpus): with 32000 the tied embedding / LM head
# would be 40% of the matmul parameters at width 512 and dilute the FFN share; at 16000 the
# dense FFN is half the model, as at the paper's 110M size (52%).
FAMILY = dict(hidden_size=512, num_layers=8, num_heads=8, ffn_hidden_size=2048, seq_length=1024,
              vocab_size=16000)
LR = 1e-3
GLOBAL_BATCH, MICRO_BATCH = 64, 32          # 64 x 1024 = 65,536 tokens per step
# 8 x 64 sequences = 512 of the 525 the held-out split holds: nearly all of it for every seed
# (the seed also shuffles which sequences are evaluated), so seeds differ in training, not in
# what they are measured on.
EVAL_ITERS = 8
SEEDS = (1234, 1235, 1236)
LONG_SCALE = 4                              # the longer point: 4 x the dense run's tokens
DEFAULT_DENSE_TOKENS = 50_331_648           # 768 steps of 65,536 tokens (docs/results_50m)
DATA_DIR = os.path.join(".cache", "sweep", "data")   # relative to the repository root, as in the configs
# Document counts of the held-out split of the packed corpus (experiments/sweep/sweep_data.py);
# the unpacked data's own manifest wins when it differs.
DATA_SPLIT = "303387,2955,0"

# --smoke: the same configs shrunk to run on two CPU cores in seconds
SMOKE_FAMILY = dict(hidden_size=128, num_layers=3, num_heads=2, ffn_hidden_size=512, seq_length=64,
                    vocab_size=8192)
SMOKE_BATCH = (8, 8)
SMOKE_DENSE_STEPS = 12


@dataclass(frozen=True)
class Setting:
    """One config file: an FFN structure, with or without self-guided training, and its budget rule."""
    name: str
    kind: str
    share: Optional[int] = None          # 63 or 32: percent of a dense FFN layer's parameters
    guided: bool = False                 # self-guided training, same-FLOPs mode
    budget: str = "tokens"               # "tokens": the dense run's tokens; "dense_flops": its FLOPs

    @property
    def config_name(self) -> str:
        return f"sweep_{self.name}"


@dataclass(frozen=True)
class SweepRun:
    setting: Setting
    seed: int = SEEDS[0]
    scale: int = 1                       # budget: this many times the dense run's tokens (or FLOPs)

    @property
    def name(self) -> str:
        return (self.setting.name + (f"_x{self.scale}" if self.scale != 1 else "")
                + (f"_seed{self.seed}" if self.seed != SEEDS[0] else ""))

    @property
    def budget_label(self) -> str:
        return "x1" if self.scale == 1 else f"x{self.scale}"


SETTINGS = [
    Setting("dense", "dense"),
    Setting("lowrank_32", "lowrank", 32),
    Setting("blockdense_32", "blockdense", 32),
    Setting("blockshuffle_32", "blockshuffle", 32),
    Setting("lowrank_32_sgt", "lowrank", 32, guided=True, budget="dense_flops"),
    Setting("blockdense_32_sgt", "blockdense", 32, guided=True, budget="dense_flops"),
    Setting("blockshuffle_32_sgt", "blockshuffle", 32, guided=True, budget="dense_flops"),
    Setting("lowrank_32_flops", "lowrank", 32, budget="dense_flops"),
    Setting("lowrank_63", "lowrank", 63),
    Setting("blockdense_63", "blockdense", 63),
    Setting("blockshuffle_63", "blockshuffle", 63),
]
SETTING = {s.name: s for s in SETTINGS}
SEEDED = ("dense", "lowrank_32", "lowrank_32_sgt")       # three seeds each: the seed spread
LONG = ("dense", "lowrank_32", "lowrank_32_sgt")         # one seed each at LONG_SCALE x the tokens

SWEEP: List[SweepRun] = (
    [SweepRun(s) for s in SETTINGS]
    + [SweepRun(SETTING[n], seed) for n in SEEDED for seed in SEEDS[1:]]
    + [SweepRun(SETTING[n], scale=LONG_SCALE) for n in LONG])
BY_NAME = {r.name: r for r in SWEEP}


def ffn_setting(kind: str, share: Optional[int], d: int) -> Dict:
    """PAPER.md Table 1's structures at width d: 63% and 32% of a dense FFN layer."""
    if kind == "dense":
        return {"kind": "dense"}
    big = share == 63
    spec = {"lowrank": {"rank": d // 2 if big else d // 4},
            "blockdense": {"rank": 3 * d // 4 if big else 3 * d // 8, "blocks": 4},
            "blockshuffle": {"blocks": 2 if big else 4}}[kind]
    return {"kind": kind, "first_layer_dense": True, "init": "paper", **spec}


def tokens_per_step(family: Dict = FAMILY, batch: int = GLOBAL_BATCH) -> int:
    return batch * family["seq_length"]


def steps_for(setting: Setting, cfg, dense_steps: int) -> int:
    """Optimizer steps before any same-FLOPs repeat phase (the launcher's --train-steps)."""
    if setting.budget == "dense_flops" and not setting.guided:
        dense = model_stats(dense_equivalent(cfg.model)).train_flops_per_token
        return max(1, round(dense_steps * dense / model_stats(cfg.model).train_flops_per_token))
    return dense_steps   # self-guided same-FLOPs: its plan adds the repeat steps to these


def sweep_config(setting: Setting, dense_tokens: int = DEFAULT_DENSE_TOKENS) -> Dict:
    model = {"vocab_size": FAMILY["vocab_size"], "seq_length": FAMILY["seq_length"], "norm": "layernorm",
             "activation": "gelu", "bias": True, "tie_embeddings": True, "rope_base": 10000.0, "init_std": 0.02,
             **{k: FAMILY[k] for k in ("hidden_size", "num_layers", "num_heads", "ffn_hidden_size")},
             "ffn": ffn_setting(setting.kind, setting.share, FAMILY["hidden_size"])}
    cfg = {
        "name": setting.config_name, "model": model,
        "self_guided": {"enabled": setting.guided, "schedule": "cosine", "reduce_flop": True,
                        "same_flops": setting.guided, "flops_budget": "dense"},
        "data": {"paths": [sweep_data.dataset_prefix(DATA_DIR)], "split": DATA_SPLIT,
                 "tokenizer_model": sweep_data.tokenizer_path(DATA_DIR)},
        "optimizer": {"lr": LR, "min_lr_ratio": 0.1, "warmup_fraction": 0.1, "weight_decay": 0.1,
                      "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "grad_clip": 1.0},
        "training": {"train_tokens": dense_tokens, "micro_batch_size": MICRO_BATCH,
                     "global_batch_size": GLOBAL_BATCH, "seed": SEEDS[0], "precision": "bf16", "log_interval": 5,
                     "eval_interval": 96, "eval_iters": EVAL_ITERS, "save_interval": 100000, "keep_last": 1},
        "parallel": {"tensor": 1, "pipeline": 1, "zero_stage": 1},
        "output": {"run_dir": f"runs/sweep/{setting.name}"},
    }
    if setting.budget == "dense_flops" and not setting.guided:
        from megatron_sffn.config import config_from_dict
        dense_steps = round(dense_tokens / tokens_per_step())
        cfg["training"]["train_tokens"] = steps_for(setting, config_from_dict(cfg), dense_steps) * tokens_per_step()
    return cfg


def write_configs(out_dir: str = CONFIG_DIR) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for setting in SETTINGS:
        path = os.path.join(out_dir, f"{setting.config_name}.json")
        with open(path, "w") as f:
            json.dump(sweep_config(setting), f, indent=2)
            f.write("\n")
        paths.append(path)
    return paths


def smoke_overrides(cfg) -> List[str]:
    """Shrink a sweep config to SMOKE_FAMILY (ranks scaled with the width) on the bundled corpus."""
    scale = SMOKE_FAMILY["hidden_size"] / cfg.model.hidden_size
    out = [f"model.{k}={v}" for k, v in SMOKE_FAMILY.items()]
    if cfg.model.ffn.rank is not None:
        out.append(f"model.ffn.rank={int(cfg.model.ffn.rank * scale)}")
    out += ['data.paths=["embedded"]', "data.tokenizer_model=embedded", "data.split=969,30,1",
            "training.precision=fp32", f"training.global_batch_size={SMOKE_BATCH[0]}",
            f"training.micro_batch_size={SMOKE_BATCH[1]}", "training.eval_iters=2", "training.log_interval=1"]
    return out
