"""How far a run has got: the trainer's counters, as one value saved in every checkpoint.

Epochs are numbered from 1 in files and messages (``epoch`` = the epoch last worked on); loops use
0-based indices, converted in one place (``epoch_number``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


def epoch_number(epoch_index: int) -> int:
    """0-based loop index -> the 1-based epoch number users see."""
    return epoch_index + 1


@dataclass
class Progress:
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # 1-based number of the epoch last worked on (0 = none yet)
    batches_done: int = 0  # batches of that epoch consumed
    steps_per_epoch: int = 0
    total_steps: int = 0
    val_loss: float | None = None  # the latest validation loss
    best_val_loss: float = math.inf
    best_epoch: int = 0  # 0 = no validation yet
    best_step: int = 0
    bad_validations: int = 0  # validations since the last improvement
    stopped: str = ""  # "early_stop" once patience ran out
    world_size: int = 1
    # The log interval under way when saved (a stop between two log lines): summed (frame loss,
    # extra loss) and its step count, so the resumed run logs the same numbers as an uninterrupted one.
    interval_loss: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])
    interval_steps: int = 0

    @property
    def epoch_complete(self) -> bool:
        return self.batches_done >= self.steps_per_epoch > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Progress":
        """From a checkpoint's ``progress``; counters a file lacks keep their defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kept = {key: value for key, value in values.items() if key in fields}
        progress = cls(**kept)
        progress.best_val_loss = float(progress.best_val_loss)
        return progress
