"""PredRNN-V2 (Wang et al., "PredRNN: A Recurrent Neural Network for Spatiotemporal Predictive
Learning", TPAMI 2022): stacked spatiotemporal LSTMs with a zigzag memory, the memory-decoupling
loss and reverse scheduled sampling.

Each ST-LSTM layer keeps two memories: the temporal cell ``c`` (per layer, carried from t-1 to t)
and the spatiotemporal memory ``m``, ONE map that zigzags up through the layers within a time
step and then from the top layer at t-1 to the bottom layer at t. Frames are cut into
patch x patch blocks stacked as channels (``to_patches``); a 1x1 conv maps the top hidden state to
the next frame in that patch space.

The rollout has t_in + t_out - 1 steps: step t reads frame t (the true one, or the model's own
prediction of it) and predicts frame t + 1. At inference steps 0..t_in-1 read the true inputs and
the later ones the previous prediction; the output is the predictions of frames t_in..t_in+t_out-1.

Batched work: the bottom layer's input conv of every step whose input is the true frame is ONE conv
over (B*T, C*p*p, H/p, W/p); the rest is recurrent (upper layers read the layer below at the same
step, and fed-back predictions exist only once the step before has run).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.base import (
    Forecast,
    RolloutModel,
    draw_true_tokens,
    from_patches,
    mix_frames,
    start_at_copy_last,
    to_patches,
)
from models.cells import FORGET_GATE_BIAS, stack_time
from models.heads import WarpHead
from models.sampling import describe_schedule, reverse_true_frame_probabilities, settings_probability

if TYPE_CHECKING:
    from core.config import ModelConfig

# Gate blocks (of hidden channels each) of the three gate convs, in the order their outputs are split:
X_GATES = 7  # conv_x(x): i, f, g (for c), i', f', g' (for m), o
H_GATES = 4  # conv_h(h): i, f, g, o
M_GATES = 3  # conv_m(m): i', f', g'
FORGET_BLOCKS = (1, 4)  # f and f' in conv_x's blocks: biased open (FORGET_GATE_BIAS) at init
# PredRNN normalises each gate conv's output with LayerNorm over (C, H, W); GroupNorm with ONE group
# is the same normalisation (statistics over C, H, W per sample) with a per-channel affine instead of
# a per-pixel one, so the model is not tied to one frame size.
NORM_GROUPS = 1
# Kernel of the memory-to-hidden conv, the frame head and the decoupling adapter (the reference's 1x1).
POINTWISE_KERNEL = 1

# Per rollout step, what the bottom layer reads: True = the true frame, False = the model's own
# previous prediction, a (B,) bool tensor = each video's scheduled-sampling draw.
Feed = bool | Tensor


def _gate_conv(in_channels: int, out_channels: int, kernel_size: int, layer_norm: bool, bias: bool) -> nn.Module:
    """A gate conv, followed by the gate normalisation when enabled (its shift is then the bias)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias and not layer_norm)
    if not layer_norm:
        return conv
    return nn.Sequential(conv, nn.GroupNorm(NORM_GROUPS, out_channels))


def _of_zero_state(gate_conv: nn.Module, like: Tensor) -> Tensor:
    """What ``gate_conv`` gives for the all-zero initial state, without running it.

    A bias-free conv of zeros is zero, and GroupNorm maps a constant map to its shift exactly;
    returned as (1, channels, 1, 1), which broadcasts in the gate sums.
    """
    if isinstance(gate_conv, nn.Sequential):
        return gate_conv[1].bias.view(1, -1, 1, 1)  # (1, gates*hidden, 1, 1)
    return like.new_zeros(1, gate_conv.out_channels, 1, 1)


class SpatioTemporalLSTMCell(nn.Module):
    """One ST-LSTM layer (PredRNN-V2 eqs.):

        i, f, g     = sigmoid, sigmoid, tanh of conv_x(x) + conv_h(h)      (blocks i, f, g)
        i', f', g'  = sigmoid, sigmoid, tanh of conv_x(x) + conv_m(m)      (blocks i', f', g')
        c' = f*c + delta_c,  delta_c = i*g;   m' = f'*m + delta_m,  delta_m = i'*g'
        o  = sigmoid(o_x + o_h + conv_o([c', m']));   h' = o * tanh(conv_1x1([c', m']))

    ``conv_x`` is applied by the caller (the bottom layer's is batched over steps); ``forward`` takes
    its output. The gate biases live in conv_x (or its norm); the other gate convs have none of their own.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, layer_norm: bool):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.conv_x = _gate_conv(in_channels, X_GATES * hidden_channels, kernel_size, layer_norm, bias=True)
        self.conv_h = _gate_conv(hidden_channels, H_GATES * hidden_channels, kernel_size, layer_norm, bias=False)
        self.conv_m = _gate_conv(hidden_channels, M_GATES * hidden_channels, kernel_size, layer_norm, bias=False)
        self.conv_o = _gate_conv(2 * hidden_channels, hidden_channels, kernel_size, layer_norm, bias=False)
        self.conv_memory = nn.Conv2d(2 * hidden_channels, hidden_channels, POINTWISE_KERNEL)
        bias = self.conv_x[1].bias if layer_norm else self.conv_x.bias  # (7*hidden,)
        with torch.no_grad():
            for block in FORGET_BLOCKS:
                bias[block * hidden_channels : (block + 1) * hidden_channels].fill_(FORGET_GATE_BIAS)

    def forward(
        self, x_gates: Tensor, h: Tensor | None, c: Tensor | None, m: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x_gates = conv_x(x) (B, 7*hidden, H, W); h, c, m (B, hidden, H, W), None for zeros.

        Returns h', c', m', delta_c, delta_m, each (B, hidden, H, W).
        """
        hidden = self.hidden_channels
        h_gates = self.conv_h(h) if h is not None else _of_zero_state(self.conv_h, x_gates)  # (B, 4*hidden, H, W)
        m_gates = self.conv_m(m) if m is not None else _of_zero_state(self.conv_m, x_gates)  # (B, 3*hidden, H, W)
        # split, not slicing: the backward of a split is one cat, of a slice a zero-filled copy each.
        i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = x_gates.split(hidden, dim=1)  # 7 x (B, hidden, H, W)
        i_h, f_h, g_h, o_h = h_gates.split(hidden, dim=1)  # 4 x (B, hidden, H, W)
        i_m, f_m, g_m = m_gates.split(hidden, dim=1)  # 3 x (B, hidden, H, W)

        delta_c = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        c_new = delta_c if c is None else torch.addcmul(delta_c, torch.sigmoid(f_x + f_h), c)
        delta_m = torch.sigmoid(i_xm + i_m) * torch.tanh(g_xm + g_m)
        m_new = delta_m if m is None else torch.addcmul(delta_m, torch.sigmoid(f_xm + f_m), m)

        memory = torch.cat([c_new, m_new], dim=1)  # (B, 2*hidden, H, W)
        o = torch.sigmoid(o_x + o_h + self.conv_o(memory))
        h_new = o * torch.tanh(self.conv_memory(memory))
        return h_new, c_new, m_new, delta_c, delta_m


def _feeds(probability: float, batch: int, steps: int, device: torch.device) -> list[Feed]:
    """What ``steps`` consecutive rollout steps read when each video takes the true frame with
    ``probability``: plain bools when the probability decides it (0 or 1: no tensor, no RNG draw,
    as ``draw_true_tokens``), else each video's draw, one (B, steps) draw for the whole span."""
    if probability >= 1.0 or probability <= 0.0 or steps == 0:
        return [probability >= 1.0] * steps
    return list(draw_true_tokens(probability, (batch, steps), device).unbind(1))  # steps x (B,)


class PredRNN(RolloutModel):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W)."""

    family = "predrnn"
    warp_head = True
    title = "PredRNN-V2, stacked spatiotemporal LSTMs"
    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        cfg = self.cfg  # model.predrnn
        hidden = cfg.hidden_channels
        width = hidden[0]
        frame_channels = self.in_channels * cfg.patch_size**2  # after space-to-depth
        self.cells = nn.ModuleList(
            SpatioTemporalLSTMCell(frame_channels if layer == 0 else width, width, cfg.kernel_size, cfg.layer_norm)
            for layer in range(len(hidden))
        )
        if cfg.head == "warp":  # the frame read at each step, moved, in patch space
            self.head = WarpHead(width, self.in_channels, scale=cfg.patch_size)
        else:
            self.head = nn.Conv2d(width, frame_channels, POINTWISE_KERNEL)  # top hidden -> next frame's patches
            if cfg.residual:
                start_at_copy_last(self.head)
        # The memory-decoupling loss compares delta_c and delta_m after this shared map (no bias: a
        # bias would make two zero increments look alike). Absent without the loss, so no parameter
        # goes without a gradient (DDP would stop at it).
        self.adapter = (nn.Conv2d(width, width, POINTWISE_KERNEL, bias=False)
                        if cfg.decouple_weight > 0 else None)

    @property
    def stride(self) -> int:
        return self.cfg.patch_size

    def stride_reason(self) -> str:
        return f"model.predrnn.patch_size={self.cfg.patch_size}"


    def summary(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        norm = f"GroupNorm({NORM_GROUPS}) on each gate conv" if cfg.layer_norm else "no gate norm"
        if cfg.sampling == "reverse":
            sampling = (f"reverse (true input frames 1/2 -> 1 from step {cfg.reverse_start_step}, "
                        f"alpha {cfg.reverse_exp_alpha}; true predicted-step frames 1/2 -> 0 "
                        f"by step {cfg.reverse_stop_step})")
        else:
            sampling = describe_schedule(cfg) + ("" if cfg.sampling == "none" else " (on the predicted steps)")
        return [
            *super().summary(),
            ("layers", (f"{len(self.cells)} ST-LSTM, hidden {cfg.hidden_channels}, kernel {cfg.kernel_size}, "
                        f"patch {cfg.patch_size}, {norm}")),
            ("sampling", sampling),
            ("decouple weight", f"{cfg.decouple_weight}" + (" (off)" if cfg.decouple_weight == 0 else "")),
            ("output", "the frame read, warped (displacement, mask, residual)" if cfg.head == "warp"
                       else "change from the frame read" if cfg.residual else "frames"),
        ]

    # -- the rollout ------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Rollout steps: step t reads frame t and predicts frame t + 1, up to the last target."""
        return self.t_in + self.t_out - 1

    def inference_feeds(self) -> list[Feed]:
        """The true frame on the input steps, the model's own prediction after."""
        return [t < self.t_in for t in range(self.steps)]

    def training_feeds(self, step: int, batch: int, device: torch.device) -> list[Feed]:
        """Scheduled sampling at global ``step``: per rollout step, what the bottom layer reads.

        Step 0 always reads the true first frame (nothing is predicted yet). The draws follow the
        reference's mask layout: one (B, t_in - 1) draw for input steps 1..t_in-1, then one
        (B, t_out - 1) draw for steps t_in..t_in+t_out-2 (those read the targets).
        """
        cfg = self.cfg
        if cfg.sampling == "none":
            return self.inference_feeds()
        if cfg.sampling != "reverse":  # linear, exponential, sigmoid: on the predicted steps only
            p_input, p_predicted = 1.0, settings_probability(cfg, step)
        else:
            p_input, p_predicted = reverse_true_frame_probabilities(
                step, cfg.reverse_start_step, cfg.reverse_stop_step, cfg.reverse_exp_alpha
            )
        return [
            True,
            *_feeds(p_input, batch, self.t_in - 1, device),
            *_feeds(p_predicted, batch, self.t_out - 1, device),
        ]

    def _step(self, decouple: bool, x_gates: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """One time step through every layer, the memory m zigzagging up them.

        x_gates: the bottom layer's conv_x of this step's frame (B, 7*hidden, h, w); state: h of each
        layer, c of each layer, then m of the top layer at the previous step, each (B, hidden, h, w),
        or nothing at step 0 (zeros). Returns the new state in that layout, then, when ``decouple``,
        this step's decoupling term (a scalar): computed here so a recomputed step stores none of it.
        """
        layers = len(self.cells)
        if state:
            hs, cs, m = state[:layers], state[layers : 2 * layers], state[2 * layers]
        else:
            hs, cs, m = (None,) * layers, (None,) * layers, None
        new_h, new_c, deltas_c, deltas_m = [], [], [], []
        for layer, cell in enumerate(self.cells):
            gates = x_gates if layer == 0 else cell.conv_x(new_h[-1])  # (B, 7*hidden, h, w)
            h, c, m, delta_c, delta_m = cell(gates, hs[layer], cs[layer], m)
            new_h.append(h)
            new_c.append(c)
            deltas_c.append(delta_c)
            deltas_m.append(delta_m)
        out = (*new_h, *new_c, m)
        if decouple:
            out += (self._decouple_term(deltas_c + deltas_m),)
        return out

    def _decouple_term(self, deltas: list[Tensor]) -> Tensor:
        """Mean over layers, videos and channels of |cos| between adapter(delta_c) and adapter(delta_m),
        each channel's map taken as one vector over the pixels (PredRNN-V2's decoupling loss).

        deltas: L delta_c then L delta_m maps, each (B, hidden, h, w).
        """
        assert self.adapter is not None, "the decoupling loss is computed only when its weight is > 0"
        mapped = self.adapter(torch.cat(deltas, dim=0))  # (2*L*B, hidden, h, w): ONE conv for all layers
        unit = F.normalize(mapped.flatten(2).float(), dim=2)  # (2*L*B, hidden, h*w), unit per channel
        unit_c, unit_m = unit.chunk(2, dim=0)  # 2 x (L*B, hidden, h*w)
        return (unit_c * unit_m).sum(dim=2).abs().mean()  # cos per (layer, video, channel) -> scalar

    def _rollout(self, seq: Tensor, feeds: list[Feed], decouple: bool,
                 warmup: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Run every step; seq: the true frames in patch space (B, S, C*p*p, h, w), read at the steps
        ``feeds`` marks true or drawn. Returns the t_out predictions (B, t_out, C*p*p, h, w), the
        decoupling loss (mean over steps) when ``decouple``, and with ``warmup`` the input steps'
        predictions of input frames 1..t_in-1 (B, t_in - 1, C*p*p, h, w)."""
        batch = seq.shape[0]
        bottom = self.cells[0].conv_x
        # The bottom layer's gates of every step that reads a true frame: ONE conv over all of them.
        true_steps = [t for t, feed in enumerate(feeds) if feed is True]
        known = seq[:, : len(true_steps)] if true_steps == list(range(len(true_steps))) else seq[:, true_steps]
        known_gates = bottom(known.flatten(0, 1)).unflatten(0, (batch, len(true_steps)))  # (B, n, 7*hidden, h, w)
        precomputed = dict(zip(true_steps, known_gates.unbind(1)))  # t -> (B, 7*hidden, h, w)

        step_fn = partial(self._step, decouple)
        recompute = self.recomputing()
        top = len(self.cells) - 1
        state: tuple[Tensor, ...] = ()
        prediction: Tensor | None = None  # the previous step's predicted frame (B, C*p*p, h, w)
        outputs, terms, warm = [], [], []
        for t, feed in enumerate(feeds):
            if feed is True:
                x_gates, frame = precomputed[t], seq[:, t]
            else:
                assert prediction is not None, "only a step after one that predicted reads a prediction"
                frame = prediction if feed is False else mix_frames(seq[:, t], prediction, feed)  # (B, C*p*p, h, w)
                x_gates = bottom(frame)  # (B, 7*hidden, h, w)
            if recompute:
                # Tensors passed one by one so autograd saves them as tensors; nothing random to replay.
                result = checkpoint(step_fn, x_gates, *state, use_reentrant=False, preserve_rng_state=False)
            else:
                result = step_fn(x_gates, *state)
            if decouple:
                terms.append(result[-1])
                result = result[:-1]
            state = tuple(result)
            is_output = t >= self.t_in - 1
            fed_back = t + 1 < len(feeds) and feeds[t + 1] is not True
            prediction = None
            if is_output or fed_back or warmup:
                if isinstance(self.head, WarpHead):
                    prediction = self.head.in_patches(state[top], frame)  # the frame this step read, moved
                else:
                    prediction = self.head(state[top])  # (B, C*p*p, h, w)
                    if self.cfg.residual:
                        prediction = frame + prediction  # the change from the frame this step read
            if is_output:
                outputs.append(prediction)
            elif warmup:
                warm.append(prediction)
        loss = torch.stack(terms).mean() if decouple else None
        return stack_time(outputs), loss, (stack_time(warm) if warm else None)  # (B, t_out, C*p*p, h, w), ...

    def forward(self, frames: Tensor) -> Tensor:
        self.check_input(frames)
        patch = self.cfg.patch_size
        seq = to_patches(frames, patch)  # (B, t_in, C*p*p, H/p, W/p)
        predicted, _, _ = self._rollout(seq, self.inference_feeds(), decouple=False)
        return from_patches(predicted, patch)  # (B, t_out, C, H, W)

    def training_forward(self, frames: Tensor, targets: Tensor, step: int) -> Forecast:
        """Scheduled sampling from ``step`` (torch's global RNG draws) plus the decoupling loss.

        Returns the same t_out predictions as ``forward``; the predictions made on the input steps
        feed the next step (reverse sampling) and, with ``train.supervise_inputs``, are returned to be
        scored too (Forecast.inputs).
        """
        self.check_input(frames, targets)
        patch = self.cfg.patch_size
        # The true frame each step can read: the inputs, then every target but the last.
        video = torch.cat([frames, targets[:, :-1]], dim=1)  # (B, t_in + t_out - 1, C, H, W)
        seq = to_patches(video, patch)  # (B, steps, C*p*p, H/p, W/p)
        feeds = self.training_feeds(step, frames.shape[0], frames.device)
        weight = self.cfg.decouple_weight
        predicted, decouple, warm = self._rollout(seq, feeds, decouple=weight > 0, warmup=self.supervise_inputs)
        losses = {"decouple": weight * decouple} if decouple is not None else {}
        inputs = from_patches(warm, patch) if warm is not None else None  # (B, t_in - 1, C, H, W)
        return Forecast(from_patches(predicted, patch), losses, inputs)  # frames (B, t_out, C, H, W)
