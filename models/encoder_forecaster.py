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

import math

import torch.nn.functional as F
from torch import Tensor, nn

from core.config import ModelConfig
from core.errors import FramecastError
from models.cells import CELLS

# Architecture constants of the reference design (not tunables): 3x3 stem/strided convs,
# stride-2 upsampling by 4x4 transposed convs, leaky ReLU slope 0.2.
FEATURE_KERNEL = 3
LEAKY_SLOPE = 0.2


def total_stride(model_cfg: ModelConfig) -> int:
    """Frame sides must be divisible by this: the product of the strides times the patch size."""
    return math.prod(model_cfg.strides) * model_cfg.patch_size


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


def check_model_config(cfg: ModelConfig, t_in: int, t_out: int) -> None:
    """Reject settings the model cannot be built from, naming the setting."""
    if cfg.cell not in CELLS:
        raise FramecastError(f"model.cell: {cfg.cell!r} is not one of {', '.join(map(repr, CELLS))}")
    if not cfg.hidden_channels or len(cfg.hidden_channels) != len(cfg.strides):
        raise FramecastError(
            "model.hidden_channels and model.strides must be non-empty lists of the same length "
            f"(got {cfg.hidden_channels} and {cfg.strides})"
        )
    for name, values in (("hidden_channels", cfg.hidden_channels), ("strides", cfg.strides)):
        if any(v < 1 for v in values):
            raise FramecastError(f"model.{name}: every entry must be >= 1, got {values}")
    for name in ("in_channels", "stem_channels", "patch_size", "kernel_size"):
        if getattr(cfg, name) < 1:
            raise FramecastError(f"model.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.kernel_size % 2 == 0:
        raise FramecastError(f"model.kernel_size must be odd, got {cfg.kernel_size}")
    if cfg.norm_groups < 0:
        raise FramecastError(f"model.norm_groups must be >= 0 (0 disables GroupNorm), got {cfg.norm_groups}")
    if cfg.norm_groups > 0:
        cell = CELLS[cfg.cell]
        for level, hidden in enumerate(cfg.hidden_channels):
            for width in cell.norm_widths(hidden):
                if width % cfg.norm_groups:
                    raise FramecastError(
                        f"model.norm_groups={cfg.norm_groups} does not divide the {width} gate channels "
                        f"of the {cfg.cell} cell at level {level} (model.hidden_channels="
                        f"{cfg.hidden_channels}); pick a divisor of them, or 0 to disable GroupNorm"
                    )
    if t_in < 1 or t_out < 1:
        raise FramecastError(f"data.t_in and data.t_out must be >= 1 (got {t_in}, {t_out})")


class EncoderForecaster(nn.Module):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W)."""

    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__()
        check_model_config(model_cfg, t_in, t_out)
        self.cfg = model_cfg
        self.t_in, self.t_out = t_in, t_out
        self.stride = total_stride(model_cfg)
        cell = CELLS[model_cfg.cell]
        hidden, strides, patch = model_cfg.hidden_channels, model_cfg.strides, model_cfg.patch_size
        frame_channels = model_cfg.in_channels * patch * patch  # after space-to-depth
        levels = len(hidden)
        cell_args = (model_cfg.kernel_size, model_cfg.norm_groups)

        # Encoder: level i = strided conv (the stem at level 0) then a cell of hidden[i] channels.
        self.down = nn.ModuleList()
        self.encoder_cells = nn.ModuleList()
        for i in range(levels):
            conv_in = frame_channels if i == 0 else hidden[i - 1]
            conv_out = model_cfg.stem_channels if i == 0 else hidden[i - 1]
            self.down.append(_downsample(conv_in, conv_out, strides[i]))
            self.encoder_cells.append(cell(conv_out, hidden[i], *cell_args))

        # Forecaster, indexed by level like the encoder, run from the last level back to 0:
        # cell i takes the upsampled output of level i + 1 (none at the lowest level).
        self.forecaster_cells = nn.ModuleList(
            cell(hidden[i + 1] if i + 1 < levels else 0, hidden[i], *cell_args) for i in range(levels)
        )
        self.up = nn.ModuleList(
            _upsample(hidden[i], model_cfg.stem_channels if i == 0 else hidden[i], strides[i])
            for i in range(levels)
        )
        self.head = nn.Conv2d(model_cfg.stem_channels, frame_channels, 1)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute every recurrent step's gates in the backward pass instead of storing them."""
        for cell in (*self.encoder_cells, *self.forecaster_cells):
            cell.checkpoint_steps = enabled

    def check_input(self, x: Tensor) -> None:
        """Shape errors the user can cause (frame size, channel count, frames per window)."""
        if x.dim() != 5:
            raise FramecastError(f"model input must be (batch, frames, channels, height, width), got {tuple(x.shape)}")
        _, frames, channels, height, width = x.shape
        if height % self.stride or width % self.stride:
            raise FramecastError(
                f"frame size {height}x{width} is not divisible by the model's total stride {self.stride} "
                f"(model.strides={self.cfg.strides} x model.patch_size={self.cfg.patch_size})"
            )
        if channels != self.cfg.in_channels:
            raise FramecastError(f"frames have {channels} channels but model.in_channels is {self.cfg.in_channels}")
        if frames != self.t_in:
            raise FramecastError(f"the model takes t_in={self.t_in} input frames, got {frames}")

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
        return frames.unflatten(0, (batch, self.t_out))  # (B, t_out, C, H, W)
