"""Stacked ConvLSTM (Shi et al. 2015), or ConvGRU, layers on space-to-depth patches, rolled out
frame by frame: OpenSTL's ConvLSTM recipe with scheduled sampling.

Frames are cut into ``patch_size`` x ``patch_size`` patches stacked as channels. At every step
layer 0 takes the (patched) frame, layer l > 0 the hidden state of layer l - 1, and a 1x1 conv maps
the top hidden state to the next frame. The rollout runs t_in + t_out - 1 steps: the true frame is
the input while there is one, then the model's own previous prediction (in training, with scheduled
sampling, sometimes the true frame instead). Only the steps from t_in - 1 on predict a returned
frame, so the head runs there only (every step with ``train.supervise_inputs``).

Layer 0's input conv over the true input frames does not depend on the recurrence: it is ONE call
over the (B*t_in, C*p*p, H/p, W/p) batch. Everything else is per step, since each layer's input is
the step's output of the layer below and the fed-back prediction comes from the step before.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core.errors import FramecastError
from models.base import Forecast, RolloutModel, from_patches, mix_frames, start_at_copy_last, to_patches
from models.cells import CELLS, ConvRNNCell, State, stack_time
from models.heads import WarpHead
from models.sampling import describe_schedule, draw_choices

if TYPE_CHECKING:
    from core.config import ModelConfig

# Architecture constant of the reference design (not a tunable): the head mapping the top hidden
# state to the next frame's patches is a 1x1 conv.
HEAD_KERNEL = 1
# State tensors per layer of each cell: ConvLSTM (h, c), ConvGRU (h). The rollout passes states to
# the checkpointed step as one flat tuple of tensors and cuts it back into layers with this.
STATE_TENSORS = {"lstm": 2, "gru": 1}


def between_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """The ``model.convlstm.norm`` module for a (B, channels, h, w) hidden state."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "layer":  # GroupNorm with one group: LayerNorm over (C, h, w), free of the frame size
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class ConvLSTMStack(RolloutModel):
    """Maps t_in frames (B, t_in, C, H, W) in [0, 1] to t_out raw predicted frames (B, t_out, C, H, W)."""

    family = "convlstm"
    warp_head = True
    title = "stacked ConvLSTM/ConvGRU with scheduled sampling"

    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__(model_cfg, t_in, t_out)
        cfg = self.cfg  # model.convlstm
        cell = CELLS[cfg.cell]
        patch = cfg.patch_size
        self.frame_channels = self.in_channels * patch * patch  # after space-to-depth
        hidden = cfg.hidden_channels
        self.cells = nn.ModuleList(
            cell(self.frame_channels if layer == 0 else hidden[layer - 1], width, cfg.kernel_size, cfg.norm_groups)
            for layer, width in enumerate(hidden)
        )
        # Between layer l and l + 1: what normalises layer l's hidden state on its way up.
        self.between = nn.ModuleList(between_norm(cfg.norm, width, cfg.norm_between_groups) for width in hidden[:-1])
        if cfg.head == "warp":  # the frame read at each step, moved, in patch space
            self.head = WarpHead(hidden[-1], self.in_channels, scale=patch)
        else:
            self.head = nn.Conv2d(hidden[-1], self.frame_channels, HEAD_KERNEL)
            if cfg.residual:
                start_at_copy_last(self.head)
        self.state_tensors = STATE_TENSORS[cfg.cell]

    @property
    def stride(self) -> int:
        return self.cfg.patch_size

    def set_activation_checkpointing(self, enabled: bool) -> None:
        if enabled and self.cfg.norm == "batch":
            # A recomputed step would update batch norm's running statistics a second time.
            raise FramecastError("train.activation_checkpointing=true does not go with model.convlstm.norm=batch "
                                 "(recomputed steps would update its running statistics twice); use norm group "
                                 "or layer, or turn activation checkpointing off")
        super().set_activation_checkpointing(enabled)

    def stride_reason(self) -> str:
        return f"model.convlstm.patch_size={self.cfg.patch_size}"


    def summary(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        cells = sorted({type(m).__name__ for m in self.modules() if isinstance(m, ConvRNNCell)})
        sampling = describe_schedule(cfg)
        return [
            *super().summary(),
            ("cell", f"{cfg.cell} (modules: {', '.join(cells)})"
                     + (f", GroupNorm {cfg.norm_groups} groups" if cfg.norm_groups else "")),
            ("layers", str(len(cfg.hidden_channels))
                       + ("" if cfg.norm == "none" else f", {cfg.norm} norm between them")),
            ("hidden", str(cfg.hidden_channels)),
            ("kernel", str(cfg.kernel_size)),
            ("patch", f"{cfg.patch_size} ({self.frame_channels} channels per patch)"),
            ("sampling", sampling),
            ("output", "the frame fed in, warped (displacement, mask, residual)" if cfg.head == "warp"
                       else "change from the frame fed in" if cfg.residual else "frames"),
        ]

    def forward(self, frames: Tensor) -> Tensor:
        self.check_input(frames)
        return self._rollout(frames, None, None, False)[0]

    def training_forward(self, frames: Tensor, targets: Tensor, step: int) -> Forecast:
        """Scheduled sampling on the predicted steps: per video and step, the true frame with the
        step's probability (a pure function of ``step``), else the model's own prediction."""
        self.check_input(frames, targets)
        cfg = self.cfg
        use_true = draw_choices(cfg, step, frames.shape[0], self.t_out, frames.device)  # (B, t_out-1) or None
        predicted, warmup = self._rollout(frames, targets if use_true is not None else None, use_true,
                                          self.supervise_inputs)
        return Forecast(predicted, {}, warmup)

    def _rollout(self, frames: Tensor, targets: Tensor | None, use_true: Tensor | None,
                 warmup: bool) -> tuple[Tensor, Tensor | None]:
        """The t_in + t_out - 1 recurrent steps; ``targets`` with ``use_true`` (B, t_out - 1) feed true
        frames on the predicted steps (scheduled sampling), without them the own predictions.

        Returns the t_out predictions (B, t_out, C, H, W) and, with ``warmup``, the input steps'
        predictions of input frames 1..t_in-1 (B, t_in - 1, C, H, W), else None."""
        batch, patch = frames.shape[0], self.cfg.patch_size
        patches = to_patches(frames, patch)  # (B, t_in, C*p*p, H/p, W/p)
        # Layer 0's input-to-state conv over every true input frame at once.
        input_gates = self.cells[0].input_conv(patches.flatten(0, 1))  # (B*t_in, G*hidden_0, H/p, W/p)
        # unbind, not [:, t]: its backward is one stack, not a zero-filled full tensor per step.
        input_gates = input_gates.unflatten(0, (batch, self.t_in)).unbind(1)  # t_in x (B, G*hidden_0, H/p, W/p)
        true_next = chosen = None
        if targets is not None and use_true is not None:
            true_next = to_patches(targets[:, :-1], patch).unbind(1)  # (t_out-1) x (B, C*p*p, H/p, W/p)
            chosen = use_true.unbind(1)  # (t_out-1) x (B,)

        recompute = self.recomputing()
        state: tuple[Tensor, ...] = ()  # flat states of every layer; empty = zero initial state
        predictions: list[Tensor] = []  # t_out x (B, C*p*p, H/p, W/p)
        warm: list[Tensor] = []  # with warmup: (t_in - 1) x (B, C*p*p, H/p, W/p)
        for t in range(self.t_in + self.t_out - 1):
            if t < self.t_in:
                gates, frame = input_gates[t], patches[:, t]
            else:
                gates, frame = None, predictions[-1]  # (B, C*p*p, H/p, W/p) the model's own last prediction
                if true_next is not None and chosen is not None:
                    frame = mix_frames(true_next[t - self.t_in], frame, chosen[t - self.t_in])
            if recompute:
                # Tensors passed one by one (not as a tuple) so autograd saves them as tensors; the
                # step draws no random numbers, so there is no RNG state to replay.
                state = checkpoint(self._step, gates, frame, *state, use_reentrant=False, preserve_rng_state=False)
            else:
                state = self._step(gates, frame, *state)
            if warmup or t >= self.t_in - 1:
                top_hidden = state[-self.state_tensors]  # (B, hidden_L, H/p, W/p) h of the top layer
                if isinstance(self.head, WarpHead):
                    predicted = self.head.in_patches(top_hidden, frame)  # (B, C*p*p, H/p, W/p)
                else:
                    change = self.head(top_hidden)  # (B, C*p*p, H/p, W/p)
                    predicted = frame + change if self.cfg.residual else change
                (predictions if t >= self.t_in - 1 else warm).append(predicted)
        stacked = stack_time(predictions)  # (B, t_out, C*p*p, H/p, W/p)
        inputs = from_patches(stack_time(warm), patch) if warm else None  # (B, t_in - 1, C, H, W)
        return from_patches(stacked, patch), inputs  # (B, t_out, C, H, W)

    def _step(self, gates: Tensor | None, frame: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """One step of every layer: layer 0 from its precomputed input gates, else from ``frame``
        (B, C*p*p, H/p, W/p); flat states in and out, each layer's ``state_tensors`` in a row."""
        if gates is None:
            gates = self.cells[0].input_conv(frame)  # (B, G*hidden_0, H/p, W/p)
        new_state: list[Tensor] = []
        n = self.state_tensors
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                below = self.between[layer - 1](new_state[-n])  # h of the layer below, normalised
                gates = cell.input_conv(below)  # (B, G*hidden_l, H/p, W/p)
            layer_state: State | None = tuple(state[layer * n : (layer + 1) * n]) or None
            new_state.extend(cell.step(gates, layer_state))
        return tuple(new_state)
