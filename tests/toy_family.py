"""A toy model family, declared outside framecast the way a new family is: its settings, its model
and one ``Family(...)`` declaration, nothing else.

A config names this module in ``model.plugins``; reading that config imports it (in the CLI, in a
job, when a checkpoint is loaded), which declares the family.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from core.config import check_positive
from core.families import Family, register
from models.base import FamilyModel, start_at_copy_last
from models.families import Residual


@dataclass
class ToySettings(Residual):
    hidden_channels: int = 16

    def check(self, where: str) -> None:
        check_positive(where, hidden_channels=self.hidden_channels)


class ToyForecaster(FamilyModel):
    """Two convs from the stacked input frames to the stacked future frames."""

    family = "toy"
    title = "toy two-conv forecaster (a test family)"

    def __init__(self, model_cfg, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        c = self.in_channels
        self.body = nn.Sequential(nn.Conv2d(t_in * c, self.cfg.hidden_channels, 3, padding=1), nn.ReLU())
        self.readout = nn.Conv2d(self.cfg.hidden_channels, t_out * c, 3, padding=1)
        if self.cfg.residual:
            start_at_copy_last(self.readout)

    def forward(self, frames: Tensor) -> Tensor:
        self.check_input(frames)
        b, t, c, h, w = frames.shape
        out = self.readout(self.body(frames.reshape(b, t * c, h, w))).reshape(b, self.t_out, c, h, w)
        if self.cfg.residual:
            out = out + frames[:, -1:]
        return out


TOY = register(Family("toy", "a two-conv test family", ToySettings, "tests.toy_family:ToyForecaster",
                      tiny={"hidden_channels": 8}))
