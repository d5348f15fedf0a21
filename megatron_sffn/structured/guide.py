"""Self-guided training: the guide weight a, its schedule, and the reduce_flop draw.

o = a * W x + (1 - a) * S(x), W a dense guide initialised to S's merged matrix, a falling
from 1 to 0 over the guided phase (cosine or linear). With reduce_flop a layer computes the
guide at a step only with probability a (else o = S(x)), saving about half the guide FLOPs.
The draw is a pure function of (seed, step, layer), so every rank of every parallel layout
takes the same branch (collectives never mismatch) and a resumed run repeats it exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def guide_alpha(step: int, guided_steps: int, schedule: str) -> float:
    """a after `step` optimizer steps: 1 at step 0, 0 from `guided_steps` on."""
    if guided_steps <= 0 or step >= guided_steps:
        return 0.0
    progress = step / guided_steps
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown self-guided schedule {schedule!r}")


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def guide_draw(seed: int, step: int, layer_id: int) -> float:
    """A uniform number in [0, 1) determined only by (seed, step, layer_id)."""
    h = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64)) ^ (layer_id & _MASK64))
    return (h >> 11) / float(1 << 53)


@dataclass
class GuideState:
    """Shared by every guided layer of a model (one object per process), stepped by the loop.

    `alpha_tensor` holds a as a 0-d fp32 tensor, kept equal to `alpha` on every assignment:
    the guided forward multiplies by it, so a compiled block reads a changing a as an input
    instead of recompiling for each new Python float.
    """
    active: bool = False          # guides exist and are used at all
    alpha: float = 1.0
    step: int = 0
    seed: int = 0
    reduce_flop: bool = True

    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        if name == "alpha":
            held = self.__dict__.get("alpha_tensor")
            if held is None:
                super().__setattr__("alpha_tensor", torch.tensor(float(value)))
            else:
                held.fill_(float(value))

    def place_alpha(self, device: torch.device) -> None:
        """Keep alpha_tensor on the activations' device: a CPU scalar in a compiled CUDA graph makes
        Inductor split the graph around it, and replayed as CUDA graphs (training.cuda_graphs) the
        guided backward then crashed (segfault, one H200, 2026-11-29)."""
        held = self.__dict__["alpha_tensor"]
        if held.device != device:
            super().__setattr__("alpha_tensor", held.to(device))

    def use_guide(self, layer_id: int) -> bool:
        if not self.active or self.alpha <= 0.0:
            return False
        if not self.reduce_flop:
            return True
        return guide_draw(self.seed, self.step, layer_id) < self.alpha

    def set_step(self, step: int, guided_steps: int, schedule: str) -> None:
        self.step = step
        self.alpha = guide_alpha(step, guided_steps, schedule)

    def state_dict(self) -> dict:
        return {"active": self.active, "alpha": self.alpha, "step": self.step,
                "seed": self.seed, "reduce_flop": self.reduce_flop}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
