"""Learning-rate schedules whose value is a pure function of the global step.

Resuming then needs no scheduler state to line up (the nanoGPT ``get_lr`` idea): step ``s`` gets the
same rate in an uninterrupted run and in one resumed from a checkpoint. Only reduce-on-plateau has
state (its current factor, best loss, bad-validation count), and that goes into the checkpoint.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from core.config import TrainConfig


class LRSchedule:
    """``lr(step) = base(step) * factor``.

    onecycle: linear warm-up over the first ``warmup_frac`` of the steps, then a half cosine down to 0
    at ``total_steps``; constant: ``train.lr`` throughout; plateau: ``train.lr`` times a factor that
    shrinks by ``plateau_factor`` after more than ``plateau_patience`` validations without improvement.
    """

    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.kind = cfg.schedule
        self.peak = cfg.lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = int(round(cfg.warmup_frac * self.total_steps))
        self.plateau_factor = cfg.plateau_factor
        self.plateau_patience = cfg.plateau_patience
        self.factor = 1.0
        self.best = math.inf
        self.bad = 0

    def base(self, step: int) -> float:
        if self.kind != "onecycle":
            return self.peak
        if step < self.warmup_steps:
            # (step + 1) so the very first step already learns something.
            return self.peak * (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.peak * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.base(step) * self.factor

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe(self, val_loss: float) -> None:
        """Tell the schedule a validation result (only plateau reacts)."""
        if self.kind != "plateau":
            return
        if val_loss < self.best:
            self.best, self.bad = val_loss, 0
            return
        self.bad += 1
        if self.bad > self.plateau_patience:
            self.factor *= self.plateau_factor
            self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "factor": self.factor, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") == self.kind:
            self.factor, self.best, self.bad = float(state["factor"]), float(state["best"]), int(state["bad"])
        # A different schedule kind than the checkpoint's starts its own (stateless) course.
