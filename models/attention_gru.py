"""A ConvGRU encoder-decoder whose decoder attends over every encoder time step, with blur upsampling.

Frames are cut into ``patch_size`` x ``patch_size`` patches stacked as channels (space-to-depth).

- Encoder, per level (level 0 = the patch resolution): level 0 a ConvGRU on the patches; level
  l > 0 a 3x3 conv of stride 2 + leaky ReLU on level l - 1's per-step hidden maps, then a ConvGRU of
  ``hidden_channels[l]``. Every level keeps the hidden maps of all t_in steps: they are the memory
  the decoder attends over.
- Decoder, per level from the lowest resolution up, each starting from the encoder's final state at
  that level: at output step t a per-pixel scaled dot-product attention (Luong/Vaswani) of the
  decoder's state h_{t-1} (the query, a 1x1 conv) over the encoder's t_in states at that level (keys
  and values, 1x1 convs): at every pixel, weights softmax_s(q . k_s / sqrt(d)) over the input steps
  s, context = sum_s weight_s v_s. The context (through its own conv) is an input of the decoder's
  ConvGRU step, next to the upsampled output of the level below (none at the lowest level).
- Upsampling between decoder levels: a 3x3 conv + leaky ReLU at the low resolution, nearest x2, then
  a fixed binomial [1, 2, 1] x [1, 2, 1] / 16 low-pass filter (Zhang 2019, "Making Convolutional
  Networks Shift-Invariant Again"): it removes the blocky copies of the nearest upsampling (after
  nearest x2 it is exactly bilinear interpolation in the interior) and is a buffer, not a parameter.
- Head: a 1x1 conv to the patches of a frame; with ``residual`` it predicts the change from the last
  input frame and starts at zero, so an untrained model is exactly copy-last.

Why per-pixel attention rather than one pooled weight per time step: different parts of a frame need
different input steps (a moving object its recent positions, a static background any of them, an
occluded region the step before the occlusion); a per-pixel softmax keeps that local and keeps the
model fully convolutional (shift-equivariant, any frame size), at t_in * d multiply-adds per pixel.

Nothing in the decoder feeds back upward or from its own predictions, so each level runs its whole
t_out sequence before the next one up, and the non-recurrent convs (space-to-depth, strided convs,
the cells' input convs over the encoder frames and over the upsampled maps, keys/values,
upsampling, head) are each ONE call over the (B*T, C, H, W) batch of every step. Per step run only
the query, the attention, the context conv and the GRU's hidden conv.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.base import FamilyModel, from_patches, start_at_copy_last, to_patches
from models.cells import ConvGRUCell, ConvRNNCell, stack_time

if TYPE_CHECKING:
    from core.config import ModelConfig

# Architecture constants (not tunables): 3x3 strided/upsampling convs, x2 per level, leaky ReLU
# slope 0.2 (as the encoder-forecaster), and the binomial taps of the blur filter (Zhang 2019).
FEATURE_KERNEL = 3
SCALE = 2
LEAKY_SLOPE = 0.2
BLUR_TAPS = (1.0, 2.0, 1.0)


class BlurUpsample(nn.Module):
    """(N, in, h, w) -> (N, out, 2h, 2w): 3x3 conv + leaky ReLU, nearest x2, fixed binomial blur."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, FEATURE_KERNEL, padding=FEATURE_KERNEL // 2)
        taps = torch.tensor(BLUR_TAPS)
        kernel = torch.outer(taps, taps) / taps.sum() ** 2  # (3, 3) [1,2,1]x[1,2,1]/16, sums to 1
        # One copy per channel for a depthwise conv. A buffer (moves with .to(), never trained) and not
        # persistent: a constant of the architecture, so checkpoints need not carry it.
        self.register_buffer("blur", kernel.expand(out_channels, 1, *kernel.shape).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv(x), LEAKY_SLOPE)  # (N, out, h, w)
        x = F.interpolate(x, scale_factor=SCALE, mode="nearest")  # (N, out, 2h, 2w)
        pad = self.blur.shape[-1] // 2
        # Edge pixels replicated, not zero-padded: the filter sums to 1, so borders keep their level.
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return F.conv2d(x, self.blur.to(x.dtype), groups=x.shape[1])  # (N, out, 2h, 2w)


class TemporalAttention(nn.Module):
    """Per-pixel scaled dot-product attention of a decoder state over the encoder's per-step states."""

    def __init__(self, hidden_channels: int):
        super().__init__()
        self.query = nn.Conv2d(hidden_channels, hidden_channels, 1)
        self.key_value = nn.Conv2d(hidden_channels, 2 * hidden_channels, 1)
        self.scale = hidden_channels ** -0.5

    def memory(self, encoder_states: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of every input step in one conv: (B, T, d, H, W) each."""
        kv = self.key_value(encoder_states.flatten(0, 1))  # (B*T, 2d, H, W)
        keys, values = kv.unflatten(0, encoder_states.shape[:2]).chunk(2, dim=2)  # 2 x (B, T, d, H, W)
        return keys, values

    def forward(self, state: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """state (B, d, H, W) -> context (B, d, H, W) and the weights over the steps (B, T, H, W)."""
        query = self.query(state)  # (B, d, H, W)
        scores = torch.einsum("bdhw,btdhw->bthw", query, keys) * self.scale  # (B, T, H, W)
        weights = torch.softmax(scores.float(), dim=1).to(values.dtype)  # sums to 1 over T, in fp32
        context = torch.einsum("bthw,btdhw->bdhw", weights, values)  # (B, d, H, W)
        return context, weights


class AttentionGRU(FamilyModel):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W).

    With ``residual`` the head predicts the change from the last input frame (zero-initialised, so an
    untrained model is exactly copy-last).
    """

    family = "attention_gru"
    title = "ConvGRU encoder-decoder with temporal attention and blur upsampling"

    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        cfg = self.cfg  # model.attention_gru
        hidden, patch = cfg.hidden_channels, cfg.patch_size
        levels = len(hidden)
        self.frame_channels = self.in_channels * patch * patch  # after space-to-depth
        cell_args = (cfg.kernel_size, cfg.norm_groups)

        # Encoder: down[l - 1] takes level l - 1's maps to level l (none at level 0).
        self.down = nn.ModuleList(
            nn.Conv2d(hidden[l - 1], hidden[l - 1], FEATURE_KERNEL, stride=SCALE, padding=FEATURE_KERNEL // 2)
            for l in range(1, levels)
        )
        self.encoder_cells = nn.ModuleList(
            ConvGRUCell(self.frame_channels if l == 0 else hidden[l - 1], hidden[l], *cell_args) for l in range(levels)
        )
        # Decoder, indexed by level: cell l takes the upsampled output of level l + 1 (none at the lowest
        # level) through its own input conv, and the attended context through ``context_convs[l]``
        # (no bias: the cell's GroupNorm or input/hidden conv carries the gates' bias).
        self.attention = nn.ModuleList(TemporalAttention(hidden[l]) for l in range(levels))
        self.decoder_cells = nn.ModuleList(
            ConvGRUCell(hidden[l] if l + 1 < levels else 0, hidden[l], *cell_args) for l in range(levels)
        )
        self.context_convs = nn.ModuleList(
            nn.Conv2d(hidden[l], ConvGRUCell.GATES * hidden[l], cfg.kernel_size, padding=cfg.kernel_size // 2,
                      bias=False)
            for l in range(levels)
        )
        # up[l] takes decoder level l + 1 to level l.
        self.up = nn.ModuleList(BlurUpsample(hidden[l + 1], hidden[l]) for l in range(levels - 1))
        self.head = nn.Conv2d(hidden[0], self.frame_channels, 1)
        if cfg.residual:
            start_at_copy_last(self.head)
        self.checkpoint_steps = False

    @property
    def stride(self) -> int:
        return self.cfg.patch_size * SCALE ** (len(self.cfg.hidden_channels) - 1)

    def stride_reason(self) -> str:
        levels = len(self.cfg.hidden_channels)
        return (f"model.attention_gru.patch_size={self.cfg.patch_size} x 2 ** ({levels} levels - 1), "
                f"levels = len(model.attention_gru.hidden_channels={self.cfg.hidden_channels})")

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute every recurrent step (encoder cells; decoder attention + cell) in the backward pass."""
        for cell in self.encoder_cells:
            cell.checkpoint_steps = enabled
        self.checkpoint_steps = enabled

    def summary(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        cells = sorted({type(m).__name__ for m in self.modules() if isinstance(m, ConvRNNCell)})
        return [
            *super().summary(),
            ("cell", f"gru (modules: {', '.join(cells)})"
                     + (f", GroupNorm {cfg.norm_groups} groups" if cfg.norm_groups else "")),
            ("levels", (f"hidden {cfg.hidden_channels}, kernel {cfg.kernel_size}, patch {cfg.patch_size}, "
                        f"stride {self.stride}")),
            ("attention", (f"per-pixel scaled dot-product over the {self.t_in} encoder steps at every level, "
                           "query from the decoder state")),
            ("upsampling", "conv 3x3, nearest x2, fixed binomial [1,2,1]x[1,2,1]/16 blur"),
            ("output", "change from the last frame" if cfg.residual else "frames"),
        ]

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        frames, _ = self._forecast(x)
        return frames

    def attention_weights(self, x: Tensor) -> list[Tensor]:
        """The decoder's attention weights per level (level 0 first), each (B, t_out, t_in, H_l, W_l)."""
        self.check_input(x)
        _, weights = self._forecast(x)
        return [torch.stack(level, dim=1) for level in weights]

    def _forecast(self, x: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        """Frames (B, t_out, C, H, W) and each level's t_out attention weights (B, t_in, H_l, W_l)."""
        batch, patch = x.shape[0], self.cfg.patch_size
        seq = to_patches(x, patch)  # (B, t_in, C*p*p, H/p, W/p)
        encoded = []  # per level: every step's hidden maps (B, t_in, hidden_l, H_l, W_l) and the final state
        for level, cell in enumerate(self.encoder_cells):
            if level > 0:
                down = F.leaky_relu(self.down[level - 1](seq.flatten(0, 1)), LEAKY_SLOPE)  # (B*t_in, hidden_{l-1}, H_l, W_l)
                seq = down.unflatten(0, (batch, self.t_in))
            seq, state = cell(seq)  # (B, t_in, hidden_l, H_l, W_l), (h,)
            encoded.append((seq, state[0]))

        weights: list[list[Tensor]] = [[] for _ in self.decoder_cells]
        upsampled = None  # (B, t_out, hidden_l, H_l, W_l) input to the next decoder level up
        out = None
        for level in reversed(range(len(self.decoder_cells))):
            out = self._decode_level(level, upsampled, *encoded[level], weights[level])  # (B, t_out, hidden_l, H_l, W_l)
            if level > 0:
                upsampled = self.up[level - 1](out.flatten(0, 1)).unflatten(0, (batch, self.t_out))

        assert out is not None
        frames = self.head(out.flatten(0, 1)).unflatten(0, (batch, self.t_out))  # (B, t_out, C*p*p, H/p, W/p)
        frames = from_patches(frames, patch)  # (B, t_out, C, H, W)
        if self.cfg.residual:
            frames = x[:, -1:] + frames  # the last input frame (B, 1, C, H, W) plus the predicted change
        return frames, weights

    def _decode_level(self, level: int, upsampled: Tensor | None, memory: Tensor, h: Tensor,
                      weights: list[Tensor]) -> Tensor:
        """The t_out decoder steps of one level from the encoder's final state ``h`` (B, hidden, H_l, W_l);
        appends each step's attention weights to ``weights``."""
        batch = h.shape[0]
        keys, values = self.attention[level].memory(memory)  # 2 x (B, t_in, hidden_l, H_l, W_l)
        cell = self.decoder_cells[level]
        if upsampled is not None:
            # The cell's input conv over the upsampled maps of every output step at once.
            gates = cell.input_conv(upsampled.flatten(0, 1))  # (B*t_out, 3*hidden_l, H_l, W_l)
            per_step = gates.unflatten(0, (batch, self.t_out)).unbind(1)  # t_out x (B, 3*hidden_l, H_l, W_l)
        else:
            per_step = (None,) * self.t_out
        recompute = self.checkpoint_steps and torch.is_grad_enabled()
        outputs = []
        for up_gates in per_step:
            if recompute:
                h, step_weights = checkpoint(self._decoder_step, level, up_gates, h, keys, values,
                                             use_reentrant=False, preserve_rng_state=False)
            else:
                h, step_weights = self._decoder_step(level, up_gates, h, keys, values)
            outputs.append(h)
            weights.append(step_weights)
        return stack_time(outputs)  # (B, t_out, hidden_l, H_l, W_l)

    def _decoder_step(self, level: int, up_gates: Tensor | None, h: Tensor, keys: Tensor,
                      values: Tensor) -> tuple[Tensor, Tensor]:
        """Attend from the previous state h (B, hidden, H_l, W_l), then one GRU step with the context."""
        context, step_weights = self.attention[level](h, keys, values)  # (B, hidden, H_l, W_l), (B, t_in, H_l, W_l)
        gates = self.context_convs[level](context)  # (B, 3*hidden, H_l, W_l)
        if up_gates is not None:
            gates = gates + up_gates
        (h,) = self.decoder_cells[level].step(gates, (h,))
        return h, step_weights
