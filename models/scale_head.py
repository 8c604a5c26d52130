"""A per-pixel error scale for any frame-predicting family: a small conv net over the input frames and
the forecast, trained afterwards with a Gaussian or Laplace likelihood of the forecast's errors
(stages/calibrate.py). It wraps the family's output, never its insides, so every family (and an
ensemble's mean) gets one the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScaleHead(nn.Module):
    """(inputs (B, t_in, C, H, W), forecast (B, t_out, C, H, W)) -> scale > 0, shaped as the forecast."""

    def __init__(self, channels: int, t_in: int, t_out: int, hidden: int, layers: int, kernel: int,
                 min_scale: float):
        super().__init__()
        self.t_out, self.channels, self.min_scale = t_out, channels, min_scale
        width, parts = (t_in + t_out) * channels, []
        for _ in range(layers - 1):
            parts += [nn.Conv2d(width, hidden, kernel, padding=kernel // 2), nn.GELU()]
            width = hidden
        parts.append(nn.Conv2d(width, t_out * channels, kernel, padding=kernel // 2))
        self.net = nn.Sequential(*parts)

    def forward(self, inputs: Tensor, forecast: Tensor) -> Tensor:
        batch, _, _, height, width = forecast.shape
        stacked = torch.cat([inputs.flatten(1, 2), forecast.flatten(1, 2)], dim=1)  # (B, (t_in+t_out)*C, H, W)
        raw = self.net(stacked).view(batch, self.t_out, self.channels, height, width)
        return F.softplus(raw) + self.min_scale
