"""The encoder-forecaster of the 2017 TrajGRU benchmark, with ConvLSTM or ConvGRU cells.

Encoder, per level (top = full resolution first): conv (the stem first, then stride
``model.strides[i]``) + leaky ReLU, then a recurrent cell. The forecaster mirrors it from the lowest
resolution up, each level starting from the encoder's final state at that level: a cell (the lowest
one has no input), then an upsampling (transposed) conv + leaky ReLU, and at the top a 1x1 output
conv back to ``in_channels`` per frame.

Nothing in the forecaster feeds back upward, so every level runs its whole sequence before the next
one, and all non-recurrent convs (stem, strided convs, cells' input convs, upsampling, output) are
each ONE call over the (B*T, C, H, W) batch of every frame.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.families import EncoderForecasterConfig
from models.base import FamilyModel, start_at_copy_last
from models.cells import CELLS, ConvRNNCell

if TYPE_CHECKING:
    from core.config import ModelConfig

# Architecture constants of the reference design (not tunables): 3x3 stem/strided convs,
# stride-2 upsampling by 4x4 transposed convs, leaky ReLU slope 0.2.
FEATURE_KERNEL = 3
LEAKY_SLOPE = 0.2


def total_stride(cfg: EncoderForecasterConfig) -> int:
    """Frame sides must be divisible by this: the product of the strides times the patch size."""
    return math.prod(cfg.strides) * cfg.patch_size


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    """A conv dividing H and W exactly by ``stride`` (odd kernel with 'same' padding covers all pixels)."""
    kernel = max(FEATURE_KERNEL, 2 * (stride // 2) + 1)
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)


def _upsample(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The mirror of ``_downsample``: multiplies H and W exactly by ``stride``.

    Stride 1 is the reference's plain 3x3 conv; stride s > 1 a transposed conv of kernel 2s (4 for
    s = 2, as the reference; 2s - 1 for odd s) with padding (kernel - s) / 2, so out = in * s.
    """
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, FEATURE_KERNEL, padding=FEATURE_KERNEL // 2)
    kernel = 2 * stride - stride % 2
    return nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - stride) // 2)


class EncoderForecaster(FamilyModel):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W).

    With ``residual`` the head predicts the change from the last input frame (zero-initialised, so an
    untrained model is exactly copy-last); with ``bounded`` the output is kept in [0, 1].
    """

    family = "encoder_forecaster"
    title = "ConvLSTM/ConvGRU encoder-forecaster"

    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        cfg = self.cfg  # model.encoder_forecaster
        cell = CELLS[cfg.cell]
        hidden, strides, patch = cfg.hidden_channels, cfg.strides, cfg.patch_size
        frame_channels = self.in_channels * patch * patch  # after space-to-depth
        levels = len(hidden)
        cell_args = (cfg.kernel_size, cfg.norm_groups)

        # Encoder: level i = strided conv (the stem at level 0) then a cell of hidden[i] channels.
        self.down = nn.ModuleList()
        self.encoder_cells = nn.ModuleList()
        for i in range(levels):
            conv_in = frame_channels if i == 0 else hidden[i - 1]
            conv_out = cfg.stem_channels if i == 0 else hidden[i - 1]
            self.down.append(_downsample(conv_in, conv_out, strides[i]))
            self.encoder_cells.append(cell(conv_out, hidden[i], *cell_args))

        # Forecaster, indexed by level like the encoder, run from the last level back to 0:
        # cell i takes the upsampled output of level i + 1 (none at the lowest level).
        self.forecaster_cells = nn.ModuleList(
            cell(hidden[i + 1] if i + 1 < levels else 0, hidden[i], *cell_args) for i in range(levels)
        )
        self.up = nn.ModuleList(
            _upsample(hidden[i], cfg.stem_channels if i == 0 else hidden[i], strides[i])
            for i in range(levels)
        )
        self.head = nn.Conv2d(cfg.stem_channels, frame_channels, 1)
        if cfg.residual:
            start_at_copy_last(self.head)

    @property
    def stride(self) -> int:
        return total_stride(self.cfg)

    def stride_reason(self) -> str:
        return (f"model.encoder_forecaster.strides={self.cfg.strides} x "
                f"model.encoder_forecaster.patch_size={self.cfg.patch_size}")

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute every recurrent step's gates in the backward pass instead of storing them."""
        for cell in (*self.encoder_cells, *self.forecaster_cells):
            cell.checkpoint_steps = enabled

    def summary(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        cells = sorted({type(m).__name__ for m in self.modules() if isinstance(m, ConvRNNCell)})
        output = ("change from the last frame" if cfg.residual else "frames") + (", bounded" if cfg.bounded else "")
        return [
            *super().summary(),
            ("cell", f"{cfg.cell} (modules: {', '.join(cells)})"),
            ("levels", f"hidden {cfg.hidden_channels}, strides {cfg.strides}, kernel {cfg.kernel_size}, "
                       f"patch {cfg.patch_size}"),
            ("output", output),
        ]

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        batch = x.shape[0]
        patch = self.cfg.patch_size
        seq = x.flatten(0, 1)  # (B*t_in, C, H, W)
        if patch > 1:
            seq = F.pixel_unshuffle(seq, patch)  # (B*t_in, C*p*p, H/p, W/p)

        states = []
        last = len(self.encoder_cells) - 1
        for level, (down, cell) in enumerate(zip(self.down, self.encoder_cells)):
            features = F.leaky_relu(down(seq), LEAKY_SLOPE, inplace=True)  # (B*t_in, C_i, H_i, W_i)
            out, state = cell(features.unflatten(0, (batch, self.t_in)), keep_outputs=level < last)
            states.append(state)
            if out is not None:
                seq = out.flatten(0, 1)  # (B*t_in, hidden_i, H_i, W_i)

        upsampled = None  # (B, t_out, C, H_i, W_i) input to the next forecaster level
        for level in reversed(range(len(self.forecaster_cells))):
            out, _ = self.forecaster_cells[level](upsampled, states[level], steps=self.t_out)
            # out: (B, t_out, hidden_i, H_i, W_i)
            up = F.leaky_relu(self.up[level](out.flatten(0, 1)), LEAKY_SLOPE, inplace=True)  # (B*t_out, C, H_i*s, W_i*s)
            upsampled = up.unflatten(0, (batch, self.t_out))

        frames = self.head(upsampled.flatten(0, 1))  # (B*t_out, C*p*p, H/p, W/p)
        if patch > 1:
            frames = F.pixel_shuffle(frames, patch)  # (B*t_out, C, H, W)
        frames = frames.unflatten(0, (batch, self.t_out))  # (B, t_out, C, H, W)
        if self.cfg.residual:
            frames = x[:, -1:] + frames  # the last input frame (B, 1, C, H, W) plus the predicted change
            return frames.clamp(0, 1) if self.cfg.bounded else frames
        return torch.sigmoid(frames) if self.cfg.bounded else frames
