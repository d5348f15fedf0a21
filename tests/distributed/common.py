"""What the distributed workers and the tests share: tiny configs, the data, the reference.

The reference is plain PyTorch in one process: GPTModel (tensor size 1), torch AdamW with
the same parameter groups, torch's clip_grad_norm_. No DeepSpeed, no process group, so a
bug in the distributed code cannot hide in the reference.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch

from megatron_sffn.config import (Config, FFNConfig, ModelConfig, OptimizerConfig, ParallelConfig,
                                  SelfGuidedConfig, TrainingConfig)
from megatron_sffn.model import GPTModel
from megatron_sffn.structured.guide import GuideState
from megatron_sffn.training.optimizer import param_groups

KINDS = {
    "dense": dict(kind="dense"),
    "lowrank": dict(kind="lowrank", rank=8),
    "blockdense": dict(kind="blockdense", rank=16, blocks=4),
    "blockshuffle": dict(kind="blockshuffle", blocks=4),
    "lowrank_sgt": dict(kind="lowrank", rank=8),
}
# self-guided training of the other structures: run where a layout must show every kind
# guided (the sequence-parallel layouts), not in every layout
GUIDED_EXTRA = {
    "blockdense_sgt": dict(kind="blockdense", rank=16, blocks=4),
    "blockshuffle_sgt": dict(kind="blockshuffle", blocks=4),
}
# variants of a kind that change how it is trained, not what it computes
VARIANTS = {"lowrank_ckpt": "lowrank"}  # activation checkpointing of every layer
GUIDED_STEPS = 8          # a falls 1 -> 0 over 8 steps: 5 test steps see both branches of reduce_flop
SEED = 1234
VOCAB, SEQ, MICRO, GLOBAL = 64, 16, 2, 8
N_SAMPLES = 256


def tiny_config(kind: str, tensor: int = 1, pipe: int = 1, zero: int = 1, precision: str = "fp32",
                grad_clip: float = 0.5, sequence_parallel: bool = False, **training) -> Config:
    ffn = FFNConfig(**{**KINDS, **GUIDED_EXTRA}[VARIANTS.get(kind, kind)])
    if kind.endswith("_ckpt"):
        training = dict(activation_checkpointing=True, checkpoint_interval=1, **training)
    model = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2,
                        ffn_hidden_size=64, seq_length=SEQ, ffn=ffn)
    # "bf16fused": bf16 with optimizer.implementation = fused (training/master_optimizer.py)
    implementation = "fused" if precision == "bf16fused" else "deepspeed"
    precision = "bf16" if precision == "bf16fused" else precision
    train = dict(train_steps=10, micro_batch_size=MICRO, global_batch_size=GLOBAL, seed=SEED, precision=precision)
    train.update(training)
    return Config(model=model, training=TrainingConfig(**train),
                  optimizer=OptimizerConfig(lr=3e-3, weight_decay=0.1, grad_clip=grad_clip,
                                            implementation=implementation),
                  self_guided=SelfGuidedConfig(enabled=kind.endswith("_sgt")),
                  parallel=ParallelConfig(tensor=tensor, pipeline=pipe, zero_stage=zero,
                                          sequence_parallel=sequence_parallel))


def is_guided(kind: str) -> bool:
    return kind.endswith("_sgt")


def lr_at(step: int) -> float:
    return 3e-3 * (0.5 + 0.5 * (step % 3))  # changes every step: set_lr must reach the optimizer


def tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(99)
    return torch.randint(0, VOCAB, (N_SAMPLES, SEQ + 1), generator=g)


def micro_batches(step: int, data_rank: int, data_size: int, data: Optional[torch.Tensor] = None
                  ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """This data-parallel rank's micro-batches of global batch `step` (as the loop's DataFeed)."""
    data = tokens() if data is None else data
    per_rank = GLOBAL // data_size
    first = (step * GLOBAL) % N_SAMPLES + data_rank * per_rank
    for offset in range(0, per_rank, MICRO):
        rows = data[first + offset: first + offset + MICRO]
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def guide_state_for(kind: str) -> GuideState:
    return GuideState(active=is_guided(kind), seed=SEED, reduce_flop=True)


def set_step(guide_state: GuideState, step: int) -> None:
    guide_state.set_step(step, GUIDED_STEPS, "cosine")


class Reference:
    """Single-process training with the same math; records what the distributed run is checked against."""

    def __init__(self, kind: str, guided: Optional[bool] = None):
        self.cfg = tiny_config(kind)
        self.guide_state = guide_state_for(kind)
        guided = is_guided(kind) if guided is None else guided
        self.model = GPTModel(self.cfg.model, guided=guided, guide_state=self.guide_state).initialize(SEED)
        self.optimizer = self._optimizer()
        self.data = tokens()
        self.step = 0

    def _optimizer(self) -> torch.optim.AdamW:
        o = self.cfg.optimizer
        return torch.optim.AdamW(param_groups(self.model.named_parameters(), o.weight_decay), lr=o.lr,
                                 betas=(o.beta1, o.beta2), eps=o.eps)

    def train_step(self) -> Dict:
        set_step(self.guide_state, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=False)
        batches = list(micro_batches(self.step, 0, 1, self.data))
        losses = []
        for ids, labels in batches:
            loss = self.model.loss(ids, labels)
            (loss / len(batches)).backward()
            losses.append(loss.detach())
        for p in self.model.parameters():   # an unused guide gets a zero gradient, as under DeepSpeed
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = {f"{n}.grad": p.grad.detach().clone() for n, p in self.model.named_parameters()}
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optimizer.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {"loss": float(torch.stack(losses).mean()), "grad_norm": float(norm), "grads": grads}

    @torch.no_grad()
    def load(self, params: Dict[str, torch.Tensor]) -> None:
        for name, p in self.model.named_parameters():
            p.copy_(params[name])

    def gradients_at(self, params: Dict[str, torch.Tensor], step: int) -> Dict:
        """Loss, gradients and gradient norm of global batch `step` at the given parameters."""
        self.load(params)
        set_step(self.guide_state, step)
        self.model.zero_grad(set_to_none=True)
        batches = list(micro_batches(step, 0, 1, self.data))
        losses = []
        for ids, labels in batches:
            loss = self.model.loss(ids, labels)
            (loss / len(batches)).backward()
            losses.append(loss.detach())
        grads = {f"{n}.grad": (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                 for n, p in self.model.named_parameters()}
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        return {"loss": float(torch.stack(losses).mean()), "grads": grads, "grad_norm": float(norm)}

    def params(self) -> Dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def moments(self) -> Dict:
        state = {n: {k: self.optimizer.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")}
                 for n, p in self.model.named_parameters()}
        state["__step__"] = int(next(iter(self.optimizer.state.values()))["step"])
        return state

    def drop_guides(self) -> None:
        """Remove the guides and rebuild AdamW over the rest, keeping their state and step."""
        old = self.optimizer
        kept = {id(p) for n, p in self.model.named_parameters() if ".guide." not in n}
        self.model.drop_guides()
        self.optimizer = self._optimizer()
        for p in self.model.parameters():
            assert id(p) in kept
            if p in old.state:
                self.optimizer.state[p] = old.state[p]


def run_reference(kind: str, steps: int) -> Dict:
    ref = Reference(kind)
    records = [ref.train_step() for _ in range(steps)]
    return {"losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records],
            "grads": [r["grads"] for r in records], "params": ref.params(), "moments": ref.moments()}


def norm_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(got.float() - want.float()) / torch.linalg.vector_norm(want.float()).clamp_min(1e-12))


def max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (a tensor-wide scale, so near-zero entries do not blow it up)."""
    scale = want.abs().max().clamp_min(1e-12)
    return float((got.float() - want.float()).abs().max() / scale)


def compare_tensors(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor],
                    error=max_relative_error) -> Tuple[float, str]:
    """Worst relative error over `want`'s names (every one must be present in `got`)."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"names differ: missing {missing[:5]}, unexpected {extra[:5]}"
    worst, worst_name = 0.0, ""
    for name, value in want.items():
        assert tuple(got[name].shape) == tuple(value.shape), f"{name}: shape {tuple(got[name].shape)} != {tuple(value.shape)}"
        err = error(got[name], value)
        if err > worst:
            worst, worst_name = err, name
    return worst, worst_name


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def all_kinds() -> List[str]:
    return list(KINDS)
