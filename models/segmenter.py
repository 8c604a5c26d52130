"""The segmenter: a UNet (Ronneberger et al. 2015) from one frame to per-pixel class logits.

(N, C, H, W) frames in [0, 1] -> (N, K, H, W) logits over ``data.num_classes`` classes, trained with
cross-entropy against the labeled videos' masks. Same blocks as the forecasting UNet (two 3x3 convs
with GroupNorm and ReLU per level, 2x2 max pool down, 2x2 up-conv and skip concatenation up), but one
frame in and class scores out: it is what turns any frame, true or predicted, into a mask.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from core.config import SegmentConfig
from core.errors import FramecastError
from models.unet import SCALE, ConvBlock


class Segmenter(nn.Module):
    title = "UNet segmenter"

    def __init__(self, cfg: SegmentConfig, in_channels: int, num_classes: int):
        super().__init__()
        self.cfg, self.in_channels, self.num_classes = cfg, in_channels, num_classes
        widths = [cfg.base_channels * SCALE ** i for i in range(cfg.levels + 1)]
        self.widths = widths
        groups = cfg.norm_groups
        self.stem = ConvBlock(in_channels, widths[0], groups)
        self.pool = nn.MaxPool2d(SCALE)
        self.down = nn.ModuleList(ConvBlock(widths[i - 1], widths[i], groups) for i in range(1, cfg.levels + 1))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], SCALE, stride=SCALE) for i in range(cfg.levels)
        )
        self.merge = nn.ModuleList(ConvBlock(2 * widths[i], widths[i], groups) for i in range(cfg.levels))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def stride(self) -> int:
        return SCALE ** self.cfg.levels

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Nothing recurrent to recompute: the trainer's switch has no effect here."""

    def summary(self) -> list[tuple[str, str]]:
        return [("model", self.title), ("levels", f"{self.cfg.levels} (stride {self.stride})"),
                ("channels", " -> ".join(map(str, self.widths))), ("classes", str(self.num_classes))]

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, num_classes, H, W) logits."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise FramecastError(f"the segmenter takes (frames, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise FramecastError(f"frame size {x.shape[-2]}x{x.shape[-1]} is not divisible by the segmenter's "
                                 f"stride {self.stride} (2 ** segment.levels={self.cfg.levels})")
        features = self.stem(x)
        skips = [features]
        for block in self.down:
            features = block(self.pool(features))
            skips.append(features)
        skips.pop()
        for level in reversed(range(len(self.up))):
            features = self.merge[level](torch.cat([self.up[level](features), skips[level]], dim=1))
        return self.head(features)


def build_segmenter(cfg: SegmentConfig, in_channels: int, num_classes: int) -> Segmenter:
    return Segmenter(cfg, in_channels, num_classes)
