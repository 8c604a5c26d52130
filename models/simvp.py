"""SimVP: a per-frame conv encoder, a translator over the stacked frames' features, a per-frame decoder.

Gao et al., CVPR 2022 ("SimVP: Simpler yet Better Video Prediction") gave the encoder-translator-
decoder layout; Tan et al. 2022 (SimVP-v2) the gSTA translator; Tan et al., CVPR 2023 (TAU) the
temporal attention unit and its differential divergence regularisation. Written from the papers'
equations.

- Encoder: ``spatial_layers`` blocks of conv k x k + GroupNorm + SiLU, strides [1, 2, 1, 2, ...],
  ONE call over every frame (B*t_in, C, H, W). The first block's output is the decoder's skip.
- Translator: the t_in frames' features stacked along channels, (B, t_in*hid_S, H', W'), through
  ``temporal_layers`` meta-blocks of widths t_in*hid_S -> hid_T -> ... -> hid_T -> t_in*hid_S (a 1x1
  reduction after each block whose width changes). Each block is gSTA or TAU: a pre-norm (BatchNorm)
  attention sub-block and a pre-norm MLP sub-block, each with layer scale and drop path.
- Decoder: the encoder mirrored (strides reversed, a conv to 4x channels + PixelShuffle where the
  encoder halved), the skip added before its last block, then a 1x1 readout to in_channels per frame.

One pass maps t_in frames to t_in frames; fewer are cut, more are rolled out pass after pass, each
fed the previous pass's t_in predicted frames (as OpenSTL does). Everything is a fixed number of
tensor ops on static shapes: no host-device syncs, nothing data-dependent for torch.compile.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.families import SIMVP_NORM_GROUPS
from models.base import FamilyModel, Forecast, start_at_copy_last
from models.heads import WarpHead

if TYPE_CHECKING:
    from core.config import ModelConfig

# Architecture constants of the papers (not tunables).
SPATIAL_NORM_GROUPS = SIMVP_NORM_GROUPS  # GroupNorm groups in the encoder/decoder blocks (SimVP)
SPATIAL_STRIDE = 2  # the strided encoder blocks halve H and W; the decoder doubles them back
# Large-kernel attention (SimVP-v2/TAU after VAN): a K x K receptive field decomposed into a
# (2d - 1) depthwise conv, then a depthwise conv of K // d taps (made odd) dilated by d, then 1x1.
ATTENTION_KERNEL = 21  # K
ATTENTION_DILATION = 3  # d: so a 5x5 depthwise conv then a 7x7 depthwise conv of dilation 3
MLP_DEPTHWISE_KERNEL = 3  # the depthwise conv inside the translator's MLP
LAYER_SCALE_INIT = 1e-2  # initial per-channel scale of each sub-block's residual branch
SE_REDUCTION = 16  # TAU's dynamic (squeeze-and-excitation) attention: hidden = width // 16 ...
SE_MIN_HIDDEN = 4  # ... but at least 4
# TAU's differential divergence: softmax over time of frame differences divided by this
# temperature (TAU's 0.1: frame differences of [0, 1] frames are small, so sharpen them).
DIVERGENCE_TEMPERATURE = 0.1
# model.simvp.init: published: the reference code's std of its truncated-normal weights.
PUBLISHED_STD = 0.02


def strided_layers(spatial_layers: int) -> list[bool]:
    """Which encoder blocks stride 2: SimVP's [no, down, no, down, ...], so the first never does."""
    return [i % 2 == 1 for i in range(spatial_layers)]


def differential_divergence(predicted: Tensor, target: Tensor, temperature: float = DIVERGENCE_TEMPERATURE) -> Tensor:
    """TAU's regulariser: KL(softmax_t(dy / tau) || softmax_t(dy_hat / tau)) per pixel, averaged.

    predicted/target (B, T, C, H, W); dy are the T - 1 frame-to-frame differences. The softmax runs
    over those T - 1 steps for each (video, channel, pixel), so the model is asked to put its motion
    in the same frames as the truth, whatever its MSE. The KL sums over time and is averaged over
    batch, channels and pixels, in fp32. With T < 3 there is one difference or none and it is 0.
    """
    true_change = (target[:, 1:] - target[:, :-1]).float() / temperature  # (B, T-1, C, H, W)
    predicted_change = (predicted[:, 1:] - predicted[:, :-1]).float() / temperature  # (B, T-1, C, H, W)
    log_true = F.log_softmax(true_change, dim=1)
    log_predicted = F.log_softmax(predicted_change, dim=1)
    per_pixel = (log_true.exp() * (log_true - log_predicted)).sum(1)  # (B, C, H, W)
    return per_pixel.mean()


class ConvBlock(nn.Module):
    """conv k x k + GroupNorm + SiLU; stride 2 halves H and W, ``upsample`` doubles them (PixelShuffle)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, downsample: bool = False,
                 upsample: bool = False):
        super().__init__()
        stride = SPATIAL_STRIDE if downsample else 1
        # Upsampling: the conv runs at the low resolution, making 4x channels that PixelShuffle turns
        # into 2x the side (no checkerboard of a transposed conv, as SimVP).
        conv_out = out_channels * SPATIAL_STRIDE ** 2 if upsample else out_channels
        self.conv = nn.Conv2d(in_channels, conv_out, kernel, stride=stride, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(SPATIAL_STRIDE) if upsample else nn.Identity()
        self.norm = nn.GroupNorm(SPATIAL_NORM_GROUPS, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.norm(self.shuffle(self.conv(x))))


class Encoder(nn.Module):
    """Frames (N, C, H, W) -> features (N, hid_S, H/s, W/s) and the first block's (N, hid_S, H, W) skip."""

    def __init__(self, in_channels: int, width: int, layers: int, kernel: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else width, width, kernel, downsample=down)
            for i, down in enumerate(strided_layers(layers))
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.blocks[0](x)  # (N, hid_S, H, W): the first block never strides
        features = skip
        for block in self.blocks[1:]:
            features = block(features)
        return features, skip


class Decoder(nn.Module):
    """The encoder mirrored: features (N, hid_S, H/s, W/s) + skip (N, hid_S, H, W) -> frames (N, C, H, W)."""

    def __init__(self, out_channels: int, width: int, layers: int, kernel: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvBlock(width, width, kernel, upsample=up) for up in reversed(strided_layers(layers))
        )
        self.readout = nn.Conv2d(width, out_channels, 1)

    def forward(self, features: Tensor, skip: Tensor) -> Tensor:
        for block in self.blocks[:-1]:
            features = block(features)
        # The last block mirrors the encoder's first: full resolution, so the skip adds directly.
        return self.readout(self.blocks[-1](features + skip))  # (N, C, H, W)


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole video with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) < keep  # (B, 1, 1, 1)
        return x * mask / keep  # rescaled so the expectation is unchanged


def _large_kernel_convs(width: int, out_channels: int) -> nn.Sequential:
    """Depthwise (2d-1)^2 -> depthwise dilated (K//d, made odd)^2 -> 1x1: a K x K field for few weights."""
    local = 2 * ATTENTION_DILATION - 1
    dilated = ATTENTION_KERNEL // ATTENTION_DILATION
    dilated += dilated % 2 - 1  # odd, so 'same' padding is exact
    return nn.Sequential(
        nn.Conv2d(width, width, local, padding=local // 2, groups=width),
        nn.Conv2d(width, width, dilated, padding=ATTENTION_DILATION * (dilated // 2), groups=width,
                  dilation=ATTENTION_DILATION),
        nn.Conv2d(width, out_channels, 1),
    )


class GatedSpatiotemporalAttention(nn.Module):
    """SimVP-v2's gSTA core: the large-kernel convs make 2 x width channels, an attention half f and
    a gate half g; the output is sigmoid(g) * f (the gate replaces VAN's multiplication by the input)."""

    def __init__(self, width: int):
        super().__init__()
        self.convs = _large_kernel_convs(width, 2 * width)

    def forward(self, x: Tensor) -> Tensor:
        attention, gate = self.convs(x).chunk(2, dim=1)  # each (B, width, H', W')
        return torch.sigmoid(gate) * attention


class TemporalAttentionCore(nn.Module):
    """TAU's core: static attention (large-kernel convs, intra-frame) times dynamic attention (a
    squeeze-and-excitation over channels, i.e. over frames x features: inter-frame), times the input."""

    def __init__(self, width: int):
        super().__init__()
        self.convs = _large_kernel_convs(width, width)
        hidden = max(width // SE_REDUCTION, SE_MIN_HIDDEN)
        self.squeeze = nn.Linear(width, hidden, bias=False)
        self.excite = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        static = self.convs(x)  # (B, width, H', W')
        pooled = x.mean(dim=(2, 3))  # (B, width)
        dynamic = torch.sigmoid(self.excite(F.relu(self.squeeze(pooled))))  # (B, width)
        return dynamic[:, :, None, None] * static * x  # (B, width, H', W')


class AttentionUnit(nn.Module):
    """1x1 -> GELU -> core (gSTA or TAU) -> 1x1, plus the input (the papers' attention shortcut)."""

    def __init__(self, width: int, translator: str):
        super().__init__()
        self.proj_in = nn.Conv2d(width, width, 1)
        self.core = GatedSpatiotemporalAttention(width) if translator == "gsta" else TemporalAttentionCore(width)
        self.proj_out = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj_out(self.core(F.gelu(self.proj_in(x))))


class MixMLP(nn.Module):
    """1x1 up -> depthwise 3x3 -> GELU -> 1x1 down: the MLP with a local spatial mix of the papers."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.up = nn.Conv2d(width, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, MLP_DEPTHWISE_KERNEL, padding=MLP_DEPTHWISE_KERNEL // 2,
                                   groups=hidden)
        self.down = nn.Conv2d(hidden, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.depthwise(self.up(x))))


class MetaBlock(nn.Module):
    """One translator block at ``in_width``: x + drop(ls1 * attention(BN(x))), then
    x + drop(ls2 * MLP(BN(x))), then a 1x1 reduction to ``out_width`` if that differs."""

    def __init__(self, in_width: int, out_width: int, translator: str, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_width)
        self.attention = AttentionUnit(in_width, translator)
        self.norm2 = nn.BatchNorm2d(in_width)
        self.mlp = MixMLP(in_width, max(1, round(in_width * mlp_ratio)))
        # Per-channel scales of the two residual branches: small, so each block starts near identity.
        self.scale1 = nn.Parameter(torch.full((in_width,), LAYER_SCALE_INIT))
        self.scale2 = nn.Parameter(torch.full((in_width,), LAYER_SCALE_INIT))
        self.drop = DropPath(drop_path)
        self.reduction = nn.Conv2d(in_width, out_width, 1) if in_width != out_width else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.scale1[:, None, None] * self.attention(self.norm1(x)))  # (B, in_width, H', W')
        x = x + self.drop(self.scale2[:, None, None] * self.mlp(self.norm2(x)))
        return self.reduction(x)  # (B, out_width, H', W')


class Translator(nn.Module):
    """Stacked features (B, t_in*hid_S, H', W') -> the same shape, through ``layers`` meta-blocks."""

    def __init__(self, stacked_width: int, hidden_width: int, layers: int, translator: str,
                 mlp_ratio: float, drop_path: float):
        super().__init__()
        # Block i runs at widths[i] and hands widths[i + 1] on: in -> hid_T -> ... -> hid_T -> in.
        widths = [stacked_width] + [hidden_width] * (layers - 1) + [stacked_width]
        # Stochastic depth rising linearly to drop_path at the last block: drop_path * (i + 1) / layers
        # (plain floats, so building under torch.device("meta") works).
        rates = [drop_path * (i + 1) / layers for i in range(layers)]
        self.blocks = nn.Sequential(*(
            MetaBlock(widths[i], widths[i + 1], translator, mlp_ratio, rates[i]) for i in range(layers)
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


def published_init(model: "SimVP") -> None:
    """``model.simvp.init: published``: the initialisation of the SimVP reference code. Encoder and
    decoder block convs: truncated normal (std ``PUBLISHED_STD``), zero bias. The translator blocks'
    attention and MLP: convs normal with He's fan-out variance 2 / (k*k*out/groups), linears truncated
    normal (std ``PUBLISHED_STD``), zero biases. Everything else (readout, reductions, norms) keeps
    PyTorch's defaults, as there."""
    for block in (*model.encoder.blocks, *model.decoder.blocks):
        nn.init.trunc_normal_(block.conv.weight, std=PUBLISHED_STD)
        nn.init.zeros_(block.conv.bias)
    for meta in model.translator.blocks.children():
        for module in (*meta.attention.modules(), *meta.mlp.modules()):
            if isinstance(module, nn.Conv2d):
                k_h, k_w = module.kernel_size
                fan_out = k_h * k_w * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=PUBLISHED_STD)
            else:
                continue
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class SimVP(FamilyModel):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W)."""

    family = "simvp"
    warp_head = True
    title = "SimVP with a gSTA or TAU translator"

    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        cfg = self.cfg  # model.simvp
        self.encoder = Encoder(self.in_channels, cfg.spatial_channels, cfg.spatial_layers, cfg.spatial_kernel)
        self.translator = Translator(t_in * cfg.spatial_channels, cfg.temporal_channels, cfg.temporal_layers,
                                     cfg.translator, cfg.mlp_ratio, cfg.drop_path)
        self.decoder = Decoder(self.in_channels, cfg.spatial_channels, cfg.spatial_layers, cfg.spatial_kernel)
        if cfg.init == "published":
            published_init(self)
        self.warp = None
        if cfg.head == "warp":  # the decoder's features drive a warp of the last input frame instead
            self.decoder.readout = nn.Identity()
            self.warp = WarpHead(cfg.spatial_channels, self.in_channels)
        elif cfg.residual:
            start_at_copy_last(self.decoder.readout)

    @property
    def stride(self) -> int:
        return SPATIAL_STRIDE ** sum(strided_layers(self.cfg.spatial_layers))

    def stride_reason(self) -> str:
        return (f"model.simvp.spatial_layers={self.cfg.spatial_layers}: "
                f"every other encoder layer halves the frame")

    @property
    def passes(self) -> int:
        """Translator passes per forward: each predicts t_in frames, so ceil(t_out / t_in)."""
        return -(-self.t_out // self.t_in)

    @property
    def divergence_active(self) -> bool:
        """TAU's regulariser is trained only for the TAU translator, with a positive weight."""
        return self.cfg.translator == "tau" and self.cfg.divergence_weight > 0

    def summary(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        if self.divergence_active:
            divergence = f"weight {cfg.divergence_weight:g}, temperature {DIVERGENCE_TEMPERATURE:g}"
            if self.t_out < 3:
                divergence += " (always 0: needs t_out >= 3)"
        else:
            divergence = "off"
        rollout = "one pass" if self.passes == 1 else f"{self.passes} autoregressive passes of {self.t_in} frames"
        return [
            *super().summary(),
            ("translator", (f"{cfg.translator}, {cfg.temporal_layers} blocks, mlp ratio {cfg.mlp_ratio:g}, "
                            f"drop path {cfg.drop_path:g}")),
            ("widths", (f"spatial {cfg.spatial_channels}, stacked {self.t_in * cfg.spatial_channels}, "
                        f"temporal {cfg.temporal_channels}")),
            ("encoder/decoder", f"{cfg.spatial_layers} layers each, kernel {cfg.spatial_kernel}, stride {self.stride}"),
            ("rollout", f"{rollout} -> {self.t_out} frames"),
            ("divergence loss", divergence),
            ("output", "the last input frame warped (displacement, mask, residual)" if cfg.head == "warp"
                       else "change from the last input frame" if cfg.residual else "frames"),
            ("init", cfg.init),
        ]

    def _one_pass(self, x: Tensor) -> Tensor:
        """(B, t_in, C, H, W) -> the next t_in frames (B, t_in, C, H, W)."""
        batch, frames = x.shape[:2]
        features, skip = self.encoder(x.flatten(0, 1))  # (B*t_in, hid_S, H', W'), (B*t_in, hid_S, H, W)
        stacked = features.unflatten(0, (batch, frames)).flatten(1, 2)  # (B, t_in*hid_S, H', W')
        translated = self.translator(stacked).unflatten(1, (frames, -1)).flatten(0, 1)  # (B*t_in, hid_S, H', W')
        decoded = self.decoder(translated, skip)  # (B*t_in, C, H, W), or (B*t_in, hid_S, H, W) for the warp
        if self.warp is not None:  # each of the pass's frames: its last input frame moved
            last = x[:, -1].repeat_interleave(frames, dim=0)  # (B*t_in, C, H, W)
            return self.warp(decoded, last).unflatten(0, (batch, frames)).squeeze(2)  # (B, t_in, C, H, W)
        out = decoded.unflatten(0, (batch, frames))  # (B, t_in, C, H, W)
        return x[:, -1:] + out if self.cfg.residual else out  # residual: the change from the last frame

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        chunks = []
        current = x  # (B, t_in, C, H, W)
        for _ in range(self.passes):
            current = self._one_pass(current)  # each pass is fed the previous pass's t_in predictions
            chunks.append(current)
        return torch.cat(chunks, dim=1)[:, :self.t_out]  # (B, t_out, C, H, W)

    def training_forward(self, frames: Tensor, targets: Tensor, step: int) -> Forecast:
        """The forward pass, plus TAU's differential divergence (weighted) when it is active."""
        predicted = self(frames)  # (B, t_out, C, H, W)
        if not self.divergence_active:
            return Forecast(predicted, {})
        divergence = self.cfg.divergence_weight * differential_divergence(predicted, targets)
        return Forecast(predicted, {"divergence": divergence})
