"""PhyDNet (Le Guen & Thome, "Disentangling Physical Dynamics from Unknown Factors for Unsupervised
Video Prediction", CVPR 2020), written from the paper's equations; sizes as OpenSTL's PhyDNet.

Every frame goes through a shared encoder E (conv blocks of strides 2, 1, 2: H/4 x W/4), then two
branch encoders, one per recurrent branch, on those features:

- PhyCell, the physical branch. Per layer, a prediction by a learned PDE, then a correction by the
  (encoded) observation, as a Kalman filter:
      h~ = h + F(h)                          F: conv k x k -> phycell_channels, GroupNorm, conv 1x1 back
      K  = sigmoid(W_K * [E_p(u_t), h~])     the gain, a 3x3 conv
      h  = h~ + K * (E_p(u_t) - h~)
  F's first conv is pushed to act as finite-difference operators: the moment matrix of its filter j
  (j < k*k), M(w) = A w A^T with A[p, i] = (i - centre)^p / p!, should be the one-hot matrix with its 1
  at (j // k, j % k), so the filter computes d^(p+q)/dy^p dx^q. ``training_forward`` returns that
  constraint as the loss term "moment" (MSE of the moments to their targets, times moment_weight).
- ConvLSTM, the branch for what no PDE explains: stacked ConvLSTM layers (models.cells).

Each branch's top state goes through its own branch decoder; the two are SUMMED (as the paper's
Fig. 3 and OpenSTL) and the shared decoder D (E mirrored) maps the sum to the next frame, raw (no
sigmoid: the family contract's outputs are unclipped).

The rollout runs t_in + t_out - 1 steps: step t reads frame t (the true frame while there is one,
then the model's own prediction, in training sometimes the true frame instead: scheduled sampling)
and predicts frame t + 1. Only steps t_in - 1 on are decoded. E, both branch encoders and the
ConvLSTM's bottom input conv run ONCE over every true input frame, (B*t_in, ...); the rest is per step.
Nothing here reads a tensor's value on the host: no host-device syncs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.base import Forecast, RolloutModel, mix_frames, start_at_copy_last
from models.cells import ConvLSTMCell, stack_time
from models.sampling import describe_schedule, draw_choices

if TYPE_CHECKING:
    from core.config import ModelConfig

# Architecture constants of the reference design (not tunables).
ENCODER_STRIDES = (2, 1, 2)  # the shared encoder's blocks (OpenSTL's encoder_E at patch size 4)
STRIDE = math.prod(ENCODER_STRIDES)  # 4: frames 64x64 -> features 16x16
BLOCK_KERNEL = 3  # every encoder / decoder conv
BRANCH_BLOCKS = 2  # stride-1 blocks of each branch's own encoder and decoder
ENCODER_NORM_GROUPS = 16  # GroupNorm groups of the encoder/decoder blocks (fewer where they don't divide)
LEAKY_SLOPE = 0.2  # the blocks' LeakyReLU (DCGAN blocks)
GATE_KERNEL = 3  # the PhyCell's gain conv
PHYSICS_NORM_GROUPS = 7  # GroupNorm groups between F's two convs (fewer where they don't divide)
FORECAST_LOSS_TERM = "moment"  # the Forecast.losses key of the moment constraint


def _groups(wanted: int, channels: int) -> int:
    """The GroupNorm group count: ``wanted`` where it divides ``channels``, else their largest common divisor."""
    return math.gcd(wanted, channels)


def _block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Conv 3x3 (stride 1 or 2) + GroupNorm + LeakyReLU: H and W divided by ``stride``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, BLOCK_KERNEL, stride=stride, padding=BLOCK_KERNEL // 2),
        nn.GroupNorm(_groups(ENCODER_NORM_GROUPS, out_channels), out_channels),
        nn.LeakyReLU(LEAKY_SLOPE),
    )


def _up_block(in_channels: int, out_channels: int, stride: int, norm: bool = True) -> nn.Module:
    """The mirror of ``_block``: a transposed conv multiplying H and W by ``stride`` (a plain conv at 1)."""
    if stride == 1:
        conv: nn.Module = nn.Conv2d(in_channels, out_channels, BLOCK_KERNEL, padding=BLOCK_KERNEL // 2)
    else:
        conv = nn.ConvTranspose2d(in_channels, out_channels, BLOCK_KERNEL, stride=stride,
                                  padding=BLOCK_KERNEL // 2, output_padding=stride - 1)
    if not norm:
        return conv
    return nn.Sequential(conv, nn.GroupNorm(_groups(ENCODER_NORM_GROUPS, out_channels), out_channels),
                         nn.LeakyReLU(LEAKY_SLOPE))


# -- moments of convolution kernels ------------------------------------------------------------------

def moment_basis(kernel_size: int, device: torch.device | None = None) -> Tensor:
    """A (k, k), A[p, i] = (i - centre)^p / p!: the Taylor weights of tap i for the p-th derivative (fp32)."""
    offsets = torch.arange(kernel_size, device=device, dtype=torch.float32) - (kernel_size - 1) // 2  # (k,)
    orders = torch.arange(kernel_size, device=device, dtype=torch.float32)  # (k,)
    # p! as a product on the device: torch.tensor of a host list would be a copy that waits for the stream.
    factorials = orders.clamp(min=1).cumprod(0)  # (k,) 0!, 1!, ..., (k-1)!
    return offsets.unsqueeze(0).pow(orders.unsqueeze(1)) / factorials.unsqueeze(1)  # (k, k)


def kernel_moments(kernels: Tensor) -> Tensor:
    """The K2M transform: kernels (..., k, k) -> their moment matrices M = A w A^T (..., k, k), fp32.

    A cross-correlation with w gives sum_{p,q} M[p, q] d^p/dy^p d^q/dx^q of the input (Taylor to order
    k - 1), so M[p, q] is how much of that derivative the kernel computes; rows are y (dim -2).
    Always fp32, autocast off: the constraint is a small least-squares fit that bf16 would not resolve.
    """
    size = kernels.shape[-1]
    with torch.autocast(device_type=kernels.device.type, enabled=False):
        basis = moment_basis(size, kernels.device)  # (k, k)
        return basis @ kernels.float() @ basis.T  # (..., k, k)


def moment_targets(kernel_size: int, filters: int | None = None, device: torch.device | None = None) -> Tensor:
    """The target moment matrices of the first ``filters`` (default k*k) constrained filters,
    (filters, k, k): filter j's is one-hot at (j // k, j % k), i.e. d^(j//k + j%k)/dy^(j//k) dx^(j%k)."""
    count = kernel_size**2 if filters is None else filters
    return torch.eye(kernel_size**2, device=device)[:count].view(count, kernel_size, kernel_size)  # (n, k, k)


class PhyCellLayer(nn.Module):
    """One PhyCell layer: h~ = h + F(h); K = sigmoid(conv([x, h~])); h' = h~ + K * (x - h~)."""

    def __init__(self, channels: int, physics_channels: int, kernel_size: int):
        super().__init__()
        # F: the learned PDE. ``physics`` is the conv whose filters the moment loss constrains.
        self.physics = nn.Conv2d(channels, physics_channels, kernel_size, padding=kernel_size // 2)
        self.physics_norm = nn.GroupNorm(_groups(PHYSICS_NORM_GROUPS, physics_channels), physics_channels)
        self.project = nn.Conv2d(physics_channels, channels, 1)
        self.gain = nn.Conv2d(2 * channels, channels, GATE_KERNEL, padding=GATE_KERNEL // 2)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        """x: the encoded observation (B, C, h, w); h: the state (B, C, h, w) -> the corrected state."""
        predicted = h + self.project(self.physics_norm(self.physics(h)))  # (B, C, h, w) h~
        gain = torch.sigmoid(self.gain(torch.cat([x, predicted], dim=1)))  # (B, C, h, w) K
        return torch.addcmul(predicted, gain, x - predicted)  # h~ + K * (x - h~)


class PhyDNet(RolloutModel):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W)."""

    family = "phydnet"
    title = "PhyDNet, a moment-constrained PhyCell beside a ConvLSTM"
    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        cfg = self.cfg  # model.phydnet
        features = cfg.encoder_channels
        stem = max(1, features // 2)  # the full- and half-resolution blocks' width (OpenSTL: 32 of 64)
        widths = [stem] * (len(ENCODER_STRIDES) - 1) + [features]
        ins = [self.in_channels, *widths[:-1]]
        self.encoder = nn.Sequential(*(_block(i, o, s) for i, o, s in zip(ins, widths, ENCODER_STRIDES)))
        # The decoder mirrors it: strides reversed, widths back down to the frame's channels (last: no norm).
        up_ins, up_outs = widths[::-1], [*widths[::-1][1:], self.in_channels]
        self.decoder = nn.Sequential(*(
            _up_block(i, o, s, norm=layer < len(ENCODER_STRIDES) - 1)
            for layer, (i, o, s) in enumerate(zip(up_ins, up_outs, ENCODER_STRIDES[::-1]))
        ))
        if cfg.residual:
            start_at_copy_last(self.decoder[-1])  # the frame readout (a plain conv, no norm)
        self.phys_encoder = nn.Sequential(*(_block(features, features, 1) for _ in range(BRANCH_BLOCKS)))
        self.lstm_encoder = nn.Sequential(*(_block(features, features, 1) for _ in range(BRANCH_BLOCKS)))
        self.phycell = nn.ModuleList(
            PhyCellLayer(features, cfg.phycell_channels, cfg.kernel_size) for _ in range(cfg.phycell_layers)
        )
        hidden = cfg.convlstm_channels
        self.lstm = nn.ModuleList(
            ConvLSTMCell(features if layer == 0 else hidden[layer - 1], width, cfg.convlstm_kernel, 0)
            for layer, width in enumerate(hidden)
        )
        self.phys_decoder = nn.Sequential(*(_up_block(features, features, 1) for _ in range(BRANCH_BLOCKS)))
        self.lstm_decoder = nn.Sequential(*(
            _up_block(hidden[-1] if block == 0 else features, features, 1) for block in range(BRANCH_BLOCKS)
        ))

    @property
    def stride(self) -> int:
        return STRIDE

    def stride_reason(self) -> str:
        return f"model.family=phydnet: its encoder's strides {list(ENCODER_STRIDES)} are fixed"


    def summary(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        k = cfg.kernel_size
        constrained = min(cfg.phycell_channels, k * k)
        moment = (f"weight {cfg.moment_weight:g}: the first {constrained} of {cfg.phycell_channels} filters of F "
                  f"~ d^(p+q)/dy^p dx^q, p, q < {k}" if cfg.moment_weight > 0 else "off (weight 0)")
        sampling = describe_schedule(cfg)
        return [
            *super().summary(),
            ("encoder", (f"conv blocks strides {list(ENCODER_STRIDES)} (total {STRIDE}) -> {cfg.encoder_channels} "
                         f"channels; {BRANCH_BLOCKS} more blocks per branch; decoder mirrored")),
            ("phycell", (f"{cfg.phycell_layers} layer(s), F: {k}x{k} conv -> {cfg.phycell_channels} channels "
                         f"+ GroupNorm + 1x1, gain {GATE_KERNEL}x{GATE_KERNEL}")),
            ("moment loss", moment),
            ("convlstm", f"hidden {cfg.convlstm_channels}, kernel {cfg.convlstm_kernel}"),
            ("merge", "sum of the two branch decoders' outputs, then the shared decoder"),
            ("sampling", sampling),
            ("output", "change from the frame read" if cfg.residual else "frames"),
        ]

    # -- the moment constraint --------------------------------------------------------------------

    def constrained_moments(self) -> list[tuple[Tensor, Tensor]]:
        """Per PhyCell layer: the moment matrices of F's constrained filters and their targets, both
        (n, C, k, k) for n = min(phycell_channels, k*k) filters and each of the C input channels."""
        pairs = []
        for layer in self.phycell:
            weight = layer.physics.weight  # (phycell_channels, C, k, k)
            size = weight.shape[-1]
            count = min(weight.shape[0], size * size)
            moments = kernel_moments(weight[:count])  # (n, C, k, k)
            targets = moment_targets(size, count, weight.device).unsqueeze(1).expand_as(moments)  # (n, C, k, k)
            pairs.append((moments, targets))
        return pairs

    def moment_loss(self) -> Tensor:
        """The unweighted constraint: MSE of the moments to their targets, averaged over layers (fp32)."""
        terms = [F.mse_loss(moments, targets) for moments, targets in self.constrained_moments()]
        return torch.stack(terms).mean()

    # -- the rollout ------------------------------------------------------------------------------

    def forward(self, frames: Tensor) -> Tensor:
        self.check_input(frames)
        return self._rollout(frames, None, None)[0]

    def training_forward(self, frames: Tensor, targets: Tensor, step: int) -> Forecast:
        """Scheduled sampling on the predicted steps (per video and step the true frame with the
        step's probability, a pure function of ``step``), plus the weighted moment loss."""
        self.check_input(frames, targets)
        cfg = self.cfg
        use_true = draw_choices(cfg, step, frames.shape[0], self.t_out, frames.device)  # (B, t_out-1) or None
        predicted, warm = self._rollout(frames, targets if use_true is not None else None, use_true,
                                        self.supervise_inputs)
        losses = {FORECAST_LOSS_TERM: cfg.moment_weight * self.moment_loss()} if cfg.moment_weight > 0 else {}
        return Forecast(predicted, losses, warm)

    def _encode(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames (N, C, H, W) -> the PhyCell's input (N, F, H/4, W/4) and the ConvLSTM's bottom input
        gates (N, 4*hidden_0, H/4, W/4)."""
        features = self.encoder(frames)  # (N, F, H/4, W/4)
        return self.phys_encoder(features), self.lstm[0].input_conv(self.lstm_encoder(features))

    def _rollout(self, frames: Tensor, targets: Tensor | None, use_true: Tensor | None,
                 warmup: bool = False) -> tuple[Tensor, Tensor | None]:
        """The t_in + t_out - 1 steps; ``targets`` with ``use_true`` (B, t_out - 1) feed true frames
        on the predicted steps (scheduled sampling), without them the own predictions. Returns the
        t_out predictions (B, t_out, C, H, W) and, with ``warmup``, the input steps' predictions of
        input frames 1..t_in-1 (B, t_in - 1, C, H, W), else None."""
        batch = frames.shape[0]
        phys_in, lstm_gates = self._encode(frames.flatten(0, 1))  # (B*t_in, F, h, w), (B*t_in, 4*hidden_0, h, w)
        # unbind, not [:, t]: its backward is one stack, not a zero-filled full tensor per step.
        phys_in = phys_in.unflatten(0, (batch, self.t_in)).unbind(1)  # t_in x (B, F, h, w)
        lstm_gates = lstm_gates.unflatten(0, (batch, self.t_in)).unbind(1)  # t_in x (B, 4*hidden_0, h, w)
        true_next = chosen = None
        if targets is not None and use_true is not None:
            true_next = targets[:, :-1].unbind(1)  # (t_out-1) x (B, C, H, W)
            chosen = use_true.unbind(1)  # (t_out-1) x (B,)

        recompute = self.recomputing()
        state: tuple[Tensor, ...] = ()  # PhyCell h per layer, then ConvLSTM (h, c) per layer; () = zeros
        predictions: list[Tensor] = []  # t_out x (B, C, H, W)
        warm: list[Tensor] = []  # with warmup: (t_in - 1) x (B, C, H, W)
        for t in range(self.t_in + self.t_out - 1):
            if t < self.t_in:
                inputs: tuple[Tensor | None, ...] = (phys_in[t], lstm_gates[t], None)
                read = frames[:, t]  # (B, C, H, W) the frame this step reads
            else:
                frame = predictions[-1]  # (B, C, H, W) the model's own last prediction
                if true_next is not None and chosen is not None:
                    frame = mix_frames(true_next[t - self.t_in], frame, chosen[t - self.t_in])
                inputs, read = (None, None, frame), frame
            decode = warmup or t >= self.t_in - 1
            step_fn = partial(self._step, decode)
            if recompute:
                # Tensors passed one by one so autograd saves them as tensors; nothing random to replay.
                result = checkpoint(step_fn, *inputs, *state, use_reentrant=False, preserve_rng_state=False)
            else:
                result = step_fn(*inputs, *state)
            if decode:
                # residual: the change from the frame this step read
                (predictions if t >= self.t_in - 1 else warm).append(
                    read + result[-1] if self.cfg.residual else result[-1])
                result = result[:-1]
            state = tuple(result)
        return stack_time(predictions), (stack_time(warm) if warm else None)  # (B, t_out, C, H, W), ...

    def _step(self, decode: bool, phys_in: Tensor | None, lstm_gates: Tensor | None, frame: Tensor | None,
              *state: Tensor) -> tuple[Tensor, ...]:
        """One step of both branches: from the precomputed encodings of a true frame, or from ``frame``
        (B, C, H, W) encoded here. Flat state in and out; with ``decode``, the predicted next frame
        (B, C, H, W) appended."""
        if frame is not None:
            phys_in, lstm_gates = self._encode(frame)  # (B, F, h, w), (B, 4*hidden_0, h, w)
        assert phys_in is not None and lstm_gates is not None, "a step reads a true or a fed-back frame"
        layers = len(self.phycell)
        new_state: list[Tensor] = []
        x = phys_in
        for index, layer in enumerate(self.phycell):
            h = state[index] if state else torch.zeros_like(x)  # (B, F, h, w); zero initial state
            x = layer(x, h)  # the layer above reads this layer's corrected state
            new_state.append(x)
        gates = lstm_gates
        for index, cell in enumerate(self.lstm):
            if index > 0:
                gates = cell.input_conv(new_state[-2])  # h of the layer below -> (B, 4*hidden_l, h, w)
            start = layers + 2 * index
            new_state.extend(cell.step(gates, tuple(state[start : start + 2]) if state else None))
        if not decode:
            return tuple(new_state)
        merged = self.phys_decoder(new_state[layers - 1]) + self.lstm_decoder(new_state[-2])  # (B, F, h, w)
        return (*new_state, self.decoder(merged))  # ..., (B, C, H, W)
