"""The contract every model family follows, so train, predict, evaluate and load_model need no
family-specific code.

- ``forward(frames)``: float (B, t_in, C, H, W) in [0, 1] -> raw (B, t_out, C, H, W) (not clipped).
  That is inference: a recurrent family feeds back its own predictions.
- ``training_forward(frames, targets, step)``: the training pass. A family may use the targets
  (scheduled sampling: some true frames fed instead of its own predictions) and the global step
  (the sampling probabilities are pure functions of it, so resume stays exact), and may add loss
  terms of its own (PredRNN's memory-decoupling loss), already weighted. The default is ``forward``.
- ``summary()``: (label, value) pairs ``load_model.py`` prints: the model says what it is.

Each family is built from ``ModelConfig`` (its own section, ``model.<family>``) and frame counts only,
so ``best.pt`` (which holds the config) alone rebuilds it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import FramecastError

if TYPE_CHECKING:
    from core.config import ModelConfig


class Forecast(NamedTuple):
    frames: Tensor  # (B, t_out, C, H, W) raw predicted frames
    losses: dict[str, Tensor]  # extra training loss terms, already weighted; summed into the loss
    # With train.supervise_inputs, a frame-by-frame family's next-frame predictions of the input
    # phase: input frames 1..t_in-1, each predicted from the frames before it (B, t_in - 1, C, H, W).
    inputs: Tensor | None = None


class FamilyModel(nn.Module):
    """Base of every family: frame counts, input checks, the training pass and the summary."""

    family: ClassVar[str]  # the model.family name this class is registered under
    title: ClassVar[str]  # what a person calls it, for summaries
    warp_head: ClassVar[bool] = False  # whether model.<family>.head=warp is built (models/heads.py)

    def __init__(self, model_cfg: ModelConfig, t_in: int, t_out: int):
        super().__init__()
        if t_in < 1 or t_out < 1:
            raise FramecastError(f"data.t_in and data.t_out must be >= 1 (got {t_in}, {t_out})")
        self.model_cfg = model_cfg
        self.cfg = getattr(model_cfg, self.family)  # this family's own section
        if getattr(self.cfg, "head", "residual") == "warp" and not self.warp_head:
            raise FramecastError(f"model.{self.family}.head=warp is not available for this family "
                                 "(unet, simvp, convlstm and predrnn have it); use head=residual")
        self.t_in, self.t_out = t_in, t_out
        self.in_channels = model_cfg.in_channels

    @property
    def stride(self) -> int:
        """Frame height and width must be divisible by this."""
        return 1

    def stride_reason(self) -> str:
        """The settings that make up ``stride``, for the error message."""
        return f"model.{self.family}"

    def check_input(self, x: Tensor, targets: Tensor | None = None) -> None:
        """Shape errors the user can cause (frame size, channel count, frames per window); with
        ``targets``, that they are the t_out frames that follow ``x``."""
        if targets is not None and (targets.shape[0] != x.shape[0] or targets.shape[1:] != (self.t_out, *x.shape[2:])):
            raise FramecastError(
                f"targets must be (batch, t_out={self.t_out}, channels, height, width) like the frames, "
                f"got {tuple(targets.shape)} for frames {tuple(x.shape)}"
            )
        if x.dim() != 5:
            raise FramecastError(f"model input must be (batch, frames, channels, height, width), got {tuple(x.shape)}")
        _, frames, channels, height, width = x.shape
        if height % self.stride or width % self.stride:
            raise FramecastError(
                f"frame size {height}x{width} is not divisible by the model's total stride {self.stride} "
                f"({self.stride_reason()})"
            )
        if channels != self.in_channels:
            raise FramecastError(f"frames have {channels} channels but model.in_channels is {self.in_channels}")
        if frames != self.t_in:
            raise FramecastError(f"the model takes t_in={self.t_in} input frames, got {frames}")

    def forward(self, frames: Tensor) -> Tensor:  # pragma: no cover - every family defines it
        raise NotImplementedError

    def training_forward(self, frames: Tensor, targets: Tensor, step: int) -> Forecast:
        """frames (B, t_in, C, H, W), targets (B, t_out, C, H, W), global step -> Forecast."""
        return Forecast(self(frames), {})

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Families with recurrent steps recompute them in backward; others refuse, naming the setting."""
        if enabled:
            raise FramecastError(f"train.activation_checkpointing is not available for model.family={self.family}")

    def set_input_supervision(self, enabled: bool) -> None:
        """Families rolled out frame by frame also return their input phase's next-frame predictions
        (``train.supervise_inputs``); the others have none and refuse, naming the setting."""
        if enabled:
            raise FramecastError(
                f"train.supervise_inputs is for the frame-by-frame families (convlstm, predrnn, phydnet); "
                f"model.family={self.family} makes no next-frame predictions of its inputs"
            )

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) lines describing the architecture, for ``load_model.py``."""
        return [("family", f"{self.family} ({self.title})")]


class RolloutModel(FamilyModel):
    """A family rolled out frame by frame (each step reads a frame and predicts the next).

    With ``train.activation_checkpointing`` each rollout step keeps only its inputs for the backward
    pass and is recomputed there; what a step covers is the family's own (``_rollout``).
    """

    checkpoint_steps: bool = False
    # Training passes also return the input steps' predictions of the next input frame (Forecast.inputs).
    supervise_inputs: bool = False

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.checkpoint_steps = enabled

    def set_input_supervision(self, enabled: bool) -> None:
        self.supervise_inputs = enabled

    def recomputing(self) -> bool:
        """Whether this pass recomputes its steps in backward (only when there is a backward)."""
        return self.checkpoint_steps and torch.is_grad_enabled()


class TrainingForward(nn.Module):
    """Makes ``training_forward`` a module's ``forward``, so DDP and torch.compile wrap the training pass.

    It holds the family model as its only child: its parameters are the model's.
    """

    def __init__(self, model: FamilyModel):
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, targets: Tensor, step: int) -> Forecast:
        return self.model.training_forward(frames, targets, step)


def to_patches(x: Tensor, patch: int) -> Tensor:
    """Space-to-depth: (B, T, C, H, W) -> (B, T, C*p*p, H/p, W/p)."""
    if patch == 1:
        return x
    return F.pixel_unshuffle(x.flatten(0, 1), patch).unflatten(0, x.shape[:2])


def from_patches(x: Tensor, patch: int) -> Tensor:
    """Depth-to-space, the inverse of ``to_patches``: (B, T, C*p*p, H/p, W/p) -> (B, T, C, H, W)."""
    if patch == 1:
        return x
    return F.pixel_shuffle(x.flatten(0, 1), patch).unflatten(0, x.shape[:2])


def mix_frames(true: Tensor, predicted: Tensor, use_true: Tensor) -> Tensor:
    """Scheduled sampling's choice per video: ``true`` where ``use_true`` (B,) is set, else ``predicted``.

    true/predicted (B, C, H, W); the result keeps the predicted frame's gradient where it is used.
    """
    keep = use_true.to(predicted.dtype).view(-1, *([1] * (predicted.dim() - 1)))  # (B, 1, 1, 1)
    return keep * true + (1 - keep) * predicted


def start_at_copy_last(readout: nn.Conv2d) -> None:
    """Zero the conv that outputs a residual model's change from the last frame: untrained, the model
    is exactly copy-last (it starts from the baseline, not from grey frames)."""
    nn.init.zeros_(readout.weight)
    nn.init.zeros_(readout.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in the model's parameters (a torch.compile wrapper counts as its model)."""
    return sum(p.numel() for p in model.parameters())


def draw_true_tokens(probability: float, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Bernoulli(probability) booleans from torch's global generator (its state is in the checkpoint)."""
    if probability >= 1.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if probability <= 0.0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return torch.rand(shape, device=device) < probability
