"""What the tools tests share: the tiny runs they train, and readers for what a run leaves.

The runs go through the real launcher (launchers/pretrain.py on N local gloo ranks, as
torchrun starts them: tests/e2e/runs.py); the tools are called through their main().
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import torch

from megatron_sffn.checkpoint.consolidated import save_consolidated
from megatron_sffn.config import Config, FFNConfig, ModelConfig, SelfGuidedConfig, TrainingConfig
from megatron_sffn.model import GPTModel
from tests.e2e.runs import ROOT, losses, run  # noqa: F401  (re-exported for the tests)

STEPS = 4
# A tiny lowrank model with self-guided training: a falls 1 -> 0 over steps 0..2, so the
# checkpoint of step 2 still holds the guides (a = 0.25 at step 3, dropped before step 4).
LOWRANK = ["--config", os.path.join(ROOT, "configs", "tiny_demo.json"),
           "--override", "model.hidden_size=32", "--override", "model.num_layers=2",
           "--override", "model.num_heads=4", "--override", "model.ffn_hidden_size=64",
           "--override", "model.seq_length=32", "--override", "model.ffn.rank=8",
           "--override", "self_guided.guided_fraction=0.75", "--override", "training.eval_iters=2",
           "--override", "training.keep_last=3", "--override", "output.tensorboard=true",
           "--micro-batch-size", "2", "--global-batch-size", "8", "--log-interval", "1",
           "--train-steps", str(STEPS), "--save-interval", "2", "--eval-interval", "100"]
# Dense, Llama-shaped (RMSNorm, SwiGLU, no biases, GQA), one rank: the other HF architecture.
DENSE = ["--config", os.path.join(ROOT, "configs", "tiny_demo.json"),
         "--override", "model.hidden_size=32", "--override", "model.num_layers=2",
         "--override", "model.num_heads=4", "--override", "model.num_kv_heads=2",
         "--override", "model.ffn_hidden_size=64", "--override", "model.seq_length=32",
         "--override", "model.norm=rmsnorm", "--override", "model.activation=swiglu",
         "--override", "model.bias=false", "--override", "model.tie_embeddings=false",
         "--override", "model.ffn.kind=dense", "--override", "model.ffn.rank=null",
         "--override", "self_guided.enabled=false", "--override", "training.eval_iters=2",
         "--micro-batch-size", "2", "--global-batch-size", "8", "--log-interval", "1",
         "--train-steps", "2", "--save-interval", "100", "--eval-interval", "100"]


def val_losses(run_dir: str) -> Dict[int, float]:
    """step -> validation loss the training loop logged (TensorBoard, float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {e.step: e.value for e in events.Scalars("val/loss")}


def grad_norms(run_dir: str) -> Dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r["grad_norm"] for r in records}


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def call(main, argv: List[str], capsys) -> tuple:
    """(exit code, stdout, stderr) of a tool's main()."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def synthetic_consolidated(path: str, guided: bool = False, step: int = 3, optimizer: bool = True,
                           precision: str = "fp32", random_moments: bool = False, **model) -> Config:
    """A consolidated folder written without training (for the input checks, no process started)."""
    fields = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, seq_length=16,
                  ffn=FFNConfig(kind="lowrank", rank=8))
    fields.update(model)
    cfg = Config(model=ModelConfig(**fields), training=TrainingConfig(train_steps=8, micro_batch_size=2,
                                                                      global_batch_size=8, precision=precision),
                 self_guided=SelfGuidedConfig(enabled=guided))
    net = GPTModel(cfg.model, guided=guided).initialize(seed=0)
    weights = dict(net.state_dict())
    g = torch.Generator().manual_seed(7)
    fill = (lambda w: torch.rand(w.shape, generator=g)) if random_moments else torch.zeros_like
    moments = {key: {n: fill(w) for n, w in weights.items()} for key in ("exp_avg", "exp_avg_sq")}
    meta = {"step": step, "consumed_tokens": step * 8 * 16, "optimizer_step": step,
            "loop": {"step": step, "consumed_tokens": step * 8 * 16, "guides_dropped": False},
            "guide": {"active": guided, "alpha": 0.5, "step": step - 1, "seed": 1234, "reduce_flop": True},
            "nonfinite": {"in_a_row": 0, "total": 0},
            "source": {"layout": {"tensor": 1, "pipeline": 1, "data": 1, "zero_stage": 1}}}
    save_consolidated(path, weights, cfg.to_dict(), meta, moments if optimizer else None)
    return cfg
