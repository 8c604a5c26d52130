"""Convolutional recurrent cells (ConvLSTM, ConvGRU) with their real gate equations.

Every gate pre-activation is split into an input part ``W_x * x`` and a hidden part ``W_h * h``, each
ONE convolution that yields all gates at once. The input part does not depend on the recurrence, so
``ConvRNNCell.forward`` computes it for a whole sequence in one batched conv over (B*T, C, H, W);
only the hidden-to-state conv and the cheap gate arithmetic run once per step.

GroupNorm (``norm_groups`` groups, 0 disables it) normalises the gate pre-activations, as in the
reference encoder-forecaster, so the sigmoids and tanhs are not pushed into saturation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.families import CELL_NORM_BLOCKS

State = tuple[Tensor, ...]  # ConvLSTM: (h, c); ConvGRU: (h,). Each (B, hidden, H, W).

# The LSTM forget gate starts biased open (Jozefowicz et al. 2015) so early gradients flow through
# the cell state instead of being forgotten at every step.
FORGET_GATE_BIAS = 1.0


def stack_time(frames: list[Tensor]) -> Tensor:
    """Stack per-step (B, C, H, W) maps into (B, T, C, H, W), keeping channels_last when they have it.

    ``torch.stack`` of channels_last maps gives a layout whose (B*T) flatten is a copy in NCHW;
    stacking the (B, H, W, C) views instead keeps ``flatten(0, 1)`` a free channels_last view.
    """
    first = frames[0]
    if first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        nhwc = torch.stack([f.permute(0, 2, 3, 1) for f in frames], dim=1)  # (B, T, H, W, C)
        return nhwc.permute(0, 1, 4, 2, 3)  # (B, T, C, H, W) view, channels_last per frame
    return torch.stack(frames, dim=1)  # (B, T, C, H, W)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor:
    """Sum of the input and hidden parts; either may be absent (first step, input-less cell)."""
    if a is None:
        assert b is not None, "a recurrent step needs an input or a state"
        return b
    return a if b is None else a + b


class ConvRNNCell(nn.Module):
    """Shared machinery: the two fused gate convs, the sequence loop, the GroupNorms.

    Subclasses set ``GATES`` (gate blocks of ``hidden_channels`` each that the convs produce),
    ``NORM_BLOCKS`` (how many gate blocks each GroupNorm spans) and implement ``step``.
    """

    GATES: int
    NORM_BLOCKS: tuple[int, ...]
    # Keep only each step's inputs for the backward pass and recompute the step (its hidden conv and
    # gates) there: some more conv FLOPs for far fewer stored activations (``train.activation_checkpointing``;
    # the trade measured in benchmarks/RESULTS.md).
    checkpoint_steps: bool = False

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, norm_groups: int):
        super().__init__()
        if hidden_channels < 1 or in_channels < 0 or kernel_size % 2 == 0 or norm_groups < 0:
            raise ValueError(
                f"bad cell sizes: in {in_channels}, hidden {hidden_channels}, kernel {kernel_size}, "
                f"groups {norm_groups}"
            )
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        width = self.GATES * hidden_channels
        padding = kernel_size // 2
        use_norm = norm_groups > 0
        # GroupNorm's shift is the gates' bias; without it one conv carries the bias.
        self.input_conv = (
            nn.Conv2d(in_channels, width, kernel_size, padding=padding, bias=not use_norm)
            if in_channels > 0
            else None  # the forecaster's lowest level runs on its state alone
        )
        self.hidden_conv = nn.Conv2d(
            hidden_channels, width, kernel_size, padding=padding, bias=not use_norm and in_channels == 0
        )
        self.norms = nn.ModuleList(
            nn.GroupNorm(norm_groups, blocks * hidden_channels) for blocks in self.NORM_BLOCKS
        ) if use_norm else None

    @classmethod
    def norm_widths(cls, hidden_channels: int) -> list[int]:
        """Channel counts of this cell's GroupNorms (each must be divisible by the group count)."""
        return [blocks * hidden_channels for blocks in cls.NORM_BLOCKS]

    def _norm(self, index: int, x: Tensor) -> Tensor:
        return x if self.norms is None else self.norms[index](x)

    def gate_bias(self) -> Tensor:
        """The parameter that holds the gates' bias (GroupNorm shift, else a conv's bias)."""
        if self.norms is not None:
            return self.norms[0].bias
        return (self.input_conv if self.input_conv is not None else self.hidden_conv).bias

    def step(self, input_gates: Tensor | None, state: State | None) -> State:
        """One time step from this step's precomputed input gates (B, GATES*hidden, H, W)."""
        raise NotImplementedError

    def _step_of_tensors(self, input_gates: Tensor | None, *state: Tensor) -> State:
        return self.step(input_gates, state or None)

    def forward(
        self,
        x: Tensor | None,
        state: State | None = None,
        steps: int | None = None,
        keep_outputs: bool = True,
    ) -> tuple[Tensor | None, State]:
        """Run a sequence: x (B, T, in, H, W), or None with ``steps`` for an input-less cell.

        Returns the hidden maps of every step (B, T, hidden, H, W), or None when ``keep_outputs``
        is false (the encoder's last level needs only its final state), and the final state.
        """
        if x is not None:
            batch, steps = x.shape[0], x.shape[1]
            # The one batched input-to-state conv of the whole sequence.
            input_gates = self.input_conv(x.flatten(0, 1))  # (B*T, GATES*hidden, H, W)
            # unbind, not [:, t]: its backward is one stack, not a zero-filled full tensor per step.
            per_step = input_gates.unflatten(0, (batch, steps)).unbind(1)  # T x (B, GATES*hidden, H, W)
        else:
            assert steps is not None, "an input-less cell needs the number of steps"
            per_step = (None,) * steps
        outputs = []
        recompute = self.checkpoint_steps and torch.is_grad_enabled()
        for input_gates_t in per_step:
            if recompute:
                # State tensors passed one by one, so autograd saves them as tensors (a tuple argument
                # would be held aside, out of saved-tensor hooks); no random numbers to replay.
                state = checkpoint(self._step_of_tensors, input_gates_t, *(state or ()),
                                   use_reentrant=False, preserve_rng_state=False)
            else:
                state = self.step(input_gates_t, state)
            if keep_outputs:
                outputs.append(state[0])
        return (stack_time(outputs) if keep_outputs else None), state


class ConvLSTMCell(ConvRNNCell):
    """ConvLSTM: i, f, o = sigmoid, g = tanh; c = f*c + i*g; h = o*tanh(c).

    Gate blocks are ordered (i, f, o, g). The state carries the cell memory ``c`` next to ``h``.
    """

    GATES = 4
    NORM_BLOCKS = CELL_NORM_BLOCKS["lstm"]  # one GroupNorm over all four gates, as the reference

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, norm_groups: int):
        super().__init__(in_channels, hidden_channels, kernel_size, norm_groups)
        with torch.no_grad():
            self.gate_bias()[hidden_channels : 2 * hidden_channels].fill_(FORGET_GATE_BIAS)

    def step(self, input_gates: Tensor | None, state: State | None) -> State:
        hidden = self.hidden_channels
        hidden_gates = None if state is None else self.hidden_conv(state[0])  # (B, 4*hidden, H, W)
        pre = self._norm(0, _add(input_gates, hidden_gates))  # (B, 4*hidden, H, W)
        # split, not slicing: the backward of a split is one cat, of a slice a zero-filled copy each.
        pre_i, pre_f, pre_o, pre_g = pre.split(hidden, dim=1)  # 4 x (B, hidden, H, W)
        i, f, o, g = torch.sigmoid(pre_i), torch.sigmoid(pre_f), torch.sigmoid(pre_o), torch.tanh(pre_g)
        c = i * g if state is None else torch.addcmul(i * g, f, state[1])  # zero initial memory
        h = o * torch.tanh(c)
        return h, c


class ConvGRUCell(ConvRNNCell):
    """ConvGRU: r, z = sigmoid; n = tanh(W_n x + r * (U_n h)); h = (1 - z)*n + z*h.

    The reset gate scales the hidden conv's candidate part (the cuDNN form) rather than h itself,
    so all three hidden gate blocks come from one conv per step.
    """

    GATES = 3
    NORM_BLOCKS = CELL_NORM_BLOCKS["gru"]  # r and z together, then the candidate (it needs r first)

    def step(self, input_gates: Tensor | None, state: State | None) -> State:
        hidden = self.hidden_channels
        x_rz = x_n = h_rz = h_n = None
        if input_gates is not None:
            x_rz, x_n = input_gates.split([2 * hidden, hidden], dim=1)
        if state is not None:
            hidden_gates = self.hidden_conv(state[0])  # (B, 3*hidden, H, W)
            h_rz, h_n = hidden_gates.split([2 * hidden, hidden], dim=1)
        r, z = torch.sigmoid(self._norm(0, _add(x_rz, h_rz))).split(hidden, dim=1)  # 2 x (B, hidden, H, W)
        n = torch.tanh(self._norm(1, _add(x_n, None if h_n is None else r * h_n)))  # (B, hidden, H, W)
        if state is None:
            return ((1 - z) * n,)  # zero initial state
        return (torch.lerp(n, state[0].to(n.dtype), z),)  # n + z*(h - n) = (1 - z)*n + z*h


CELLS: dict[str, type[ConvRNNCell]] = {"lstm": ConvLSTMCell, "gru": ConvGRUCell}
