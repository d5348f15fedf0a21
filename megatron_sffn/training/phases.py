"""Which data, guide weight and FLOPs each optimizer step has, for plain and self-guided runs.

Steps [0, N) read the data stream in order. With self-guided training the guide weight a
falls from 1 to 0 over the first G steps; in same-FLOPs mode the run then goes on for G
more steps that re-read the guided phase's batches (data steps 0..G-1) with the structured
layers alone, G chosen so the total FLOPs equal the budget (model/accounting.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, train_steps
from ..model.accounting import GuidePlan, plan_self_guided
from ..structured.guide import guide_alpha


@dataclass
class RunPhases:
    plan: GuidePlan
    schedule: str

    @classmethod
    def from_config(cls, cfg: Config) -> "RunPhases":
        return cls(plan_self_guided(cfg, train_steps(cfg)), cfg.self_guided.schedule)

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def guided_steps(self) -> int:
        return self.plan.guided_steps

    def data_step(self, step: int) -> int:
        """The step of the data stream that optimizer step `step` trains on."""
        base = self.plan.base_steps
        return step if step < base else step - base

    def alpha(self, step: int) -> float:
        return guide_alpha(step, self.plan.guided_steps, self.schedule) if self.plan.guided_steps else 0.0

    def guides_end_at(self) -> int:
        """First step at which a = 0 and the guides can be dropped (0 when never guided)."""
        return self.plan.guided_steps
