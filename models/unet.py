"""A UNet (Ronneberger et al. 2015) mapping the stacked input frames to the stacked future frames.

The t_in frames are stacked along channels, (B, t_in*C, H, W), and ONE pass of the UNet yields the
t_out future frames stacked the same way, (B, t_out*C, H, W): no recurrence, no rollout.

- Contracting path: a conv block (two 3x3 convs, each + GroupNorm + ReLU) at full resolution with
  ``base_channels``, then ``levels`` times a 2x2 max pool and a conv block doubling the channels.
- Expanding path: per level a 2x2 transposed conv of stride 2 halving the channels (the paper's
  "up-conv 2x2"), the contracting path's map at that resolution concatenated (the skip), a conv block.
- Head: a 1x1 conv to t_out*C. With ``residual`` it predicts the change from the last input frame
  and starts at zero, so an untrained model is exactly copy-last.

The paper's unpadded convs and cropped skips are replaced by 'same' padding (output size = input
size, as every framecast family), and GroupNorm (``norm_groups``, 0 disables it) is added after
each conv, as the video-prediction UNets do: batch statistics of small video batches are noisy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.base import FamilyModel, start_at_copy_last
from models.heads import WarpHead

if TYPE_CHECKING:
    from core.config import ModelConfig

# Architecture constants of the paper (not tunables): 3x3 convs, 2x2 pooling and up-convs.
CONV_KERNEL = 3
SCALE = 2  # each level halves H and W on the way down and doubles them on the way up


class ConvBlock(nn.Sequential):
    """(3x3 conv + GroupNorm + ReLU) twice: (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int):
        layers: list[nn.Module] = []
        for conv_in in (in_channels, out_channels):
            # GroupNorm's shift is the bias; without it the conv carries one.
            layers.append(nn.Conv2d(conv_in, out_channels, CONV_KERNEL, padding=CONV_KERNEL // 2,
                                    bias=norm_groups == 0))
            if norm_groups:
                layers.append(nn.GroupNorm(norm_groups, out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(FamilyModel):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W).

    With ``residual`` the head predicts the change from the last input frame (zero-initialised, so an
    untrained model is exactly copy-last).
    """

    family = "unet"
    warp_head = True
    title = "UNet over the stacked frames"

    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        cfg = self.cfg  # model.unet
        groups = cfg.norm_groups
        # widths[i]: channels at level i (level 0 = full resolution), doubling per level.
        widths = [cfg.base_channels * SCALE ** i for i in range(cfg.levels + 1)]
        self.widths = widths

        self.stem = ConvBlock(t_in * self.in_channels, widths[0], groups)
        self.pool = nn.MaxPool2d(SCALE)
        self.down = nn.ModuleList(ConvBlock(widths[i - 1], widths[i], groups) for i in range(1, cfg.levels + 1))
        # Indexed by the level they arrive at: up[i] takes level i + 1 up to level i.
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], SCALE, stride=SCALE) for i in range(cfg.levels)
        )
        self.merge = nn.ModuleList(ConvBlock(2 * widths[i], widths[i], groups) for i in range(cfg.levels))
        if cfg.head == "warp":  # every future frame: the last input frame moved, blended with a residual
            self.head = WarpHead(widths[0], self.in_channels, frames=t_out)
        else:
            self.head = nn.Conv2d(widths[0], t_out * self.in_channels, 1)
            if cfg.residual:
                start_at_copy_last(self.head)

    @property
    def stride(self) -> int:
        return SCALE ** self.cfg.levels

    def stride_reason(self) -> str:
        return f"2 ** model.unet.levels={self.cfg.levels}: every level halves the frame"

    def summary(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        return [
            *super().summary(),
            ("levels", f"{cfg.levels} downsamplings (max pool 2x2, up-conv 2x2), stride {self.stride}"),
            ("channels", (f"{' -> '.join(map(str, self.widths))} (stacked input {self.t_in * self.in_channels}, "
                          f"output {self.t_out * self.in_channels})")),
            ("norm", f"GroupNorm {cfg.norm_groups} groups" if cfg.norm_groups else "none"),
            ("output", "the last frame warped (displacement, mask, residual)" if cfg.head == "warp"
                       else "change from the last frame" if cfg.residual else "frames"),
        ]

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        channels = x.shape[2]
        features = self.stem(x.flatten(1, 2))  # (B, t_in*C, H, W) -> (B, base, H, W)
        skips = [features]
        for block in self.down:
            features = block(self.pool(features))  # (B, widths[i], H/2^i, W/2^i)
            skips.append(features)
        skips.pop()  # the lowest level's map is ``features`` itself
        for level in reversed(range(len(self.up))):
            up = self.up[level](features)  # (B, widths[level], H/2^level, W/2^level)
            features = self.merge[level](torch.cat([up, skips[level]], dim=1))  # skip by concatenation: (B, 2*w, h, w)
        if isinstance(self.head, WarpHead):
            return self.head(features, x[:, -1])  # (B, t_out, C, H, W)
        frames = self.head(features).unflatten(1, (self.t_out, channels))  # (B, t_out, C, H, W)
        if self.cfg.residual:
            return x[:, -1:] + frames  # the last input frame (B, 1, C, H, W) plus the predicted change
        return frames

