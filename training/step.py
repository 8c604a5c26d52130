"""One optimisation step and one validation pass, shared by the train stage and its benchmark.

Nothing here synchronises the host with the device: losses stay on the device as tensors and the
caller decides when to read them (``.item()`` only at log intervals).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from core.config import TrainConfig
from core.precision import Precision
from core.scores import ssim_per_frame
from data.datasets import to_model_input

# Binary cross-entropy needs probabilities strictly inside (0, 1): raw outputs are clipped this close.
BCE_EPS = 1e-4
# The optimisers torch has a fused CUDA kernel for (one kernel launch per step for all parameters).
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd")


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """``train.optimizer`` with its settings; the fused CUDA kernel on GPU where torch has one (Adam,
    AdamW, SGD), the multi-tensor (foreach) one elsewhere."""
    params, lr, decay = model.parameters(), cfg.lr, cfg.weight_decay
    fused = device.type == "cuda" and cfg.optimizer in FUSED_OPTIMIZERS
    fast = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer in ("adam", "adamw"):
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, betas=tuple(cfg.betas), weight_decay=decay, **fast)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.rho, momentum=cfg.momentum, weight_decay=decay, **fast)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=cfg.rho, weight_decay=decay, **fast)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=decay,
                               **fast)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def build_grad_scaler(precision: Precision) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 autocast (its state goes into the checkpoint); None otherwise."""
    if not precision.needs_grad_scaler:
        return None
    return torch.amp.GradScaler(precision.device.type)


def split_video(video: torch.Tensor, t_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, t_in + t_out, C, H, W) -> inputs (B, t_in, C, H, W), targets (B, t_out, C, H, W)."""
    return video[:, :t_in], video[:, t_in:]


@dataclass(frozen=True)
class FrameLoss:
    """The training loss between predicted and true frames: ``train.loss`` plus the weighted structure
    terms (SSIM, gradient difference), read from the config once."""

    kind: str = "mse"
    ssim_weight: float = 0.0
    gdl_weight: float = 0.0
    gdl_alpha: int = 1

    @classmethod
    def from_config(cls, tc: TrainConfig) -> "FrameLoss":
        return cls(tc.loss, tc.ssim_weight, tc.gdl_weight, tc.gdl_alpha)


def pixel_loss(kind: str, prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``train.loss`` alone, averaged over every value (fp32 scalar)."""
    if kind == "mse":
        return F.mse_loss(prediction, targets)
    if kind == "l1":
        return F.l1_loss(prediction, targets)
    if kind == "mse+l1":
        return F.mse_loss(prediction, targets) + F.l1_loss(prediction, targets)
    if kind == "bce":
        return F.binary_cross_entropy(prediction.clamp(BCE_EPS, 1 - BCE_EPS), targets)
    raise ValueError(f"unknown loss {kind!r}")


def ssim_loss(prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM of (..., C, H, W) frames (the scores' default SSIM; differentiable)."""
    shape = (-1, 1, *prediction.shape[-3:])  # every frame its own (B, T) entry
    return 1 - ssim_per_frame(prediction.reshape(shape), targets.reshape(shape)).mean().float()


def gradient_difference_loss(prediction: torch.Tensor, targets: torch.Tensor, alpha: int = 1) -> torch.Tensor:
    """Mathieu et al.'s gradient-difference loss of (..., H, W) frames: the mean over pixels of
    | |dY| - |dY_hat| |^alpha for the vertical neighbour differences, plus the same horizontally."""
    total = prediction.new_zeros(())
    for dim in (-2, -1):
        true_edges = targets.diff(dim=dim).abs()
        predicted_edges = prediction.diff(dim=dim).abs()
        total = total + (true_edges - predicted_edges).abs().pow(alpha).mean()
    return total


def frame_loss(loss: FrameLoss | str, prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss between predicted and true (..., C, H, W) frames (fp32 scalar); a plain
    string is ``train.loss`` with no structure terms."""
    if isinstance(loss, str):
        loss = FrameLoss(loss)
    prediction = prediction.float()
    targets = targets.float()
    total = pixel_loss(loss.kind, prediction, targets)
    if loss.ssim_weight:
        total = total + loss.ssim_weight * ssim_loss(prediction, targets)
    if loss.gdl_weight:
        total = total + loss.gdl_weight * gradient_difference_loss(prediction, targets, loss.gdl_alpha)
    return total


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor | tuple, *, step: int,
               t_in: int, in_channels: int, precision: Precision, loss: FrameLoss | str, grad_clip: float,
               scaler: torch.amp.GradScaler | None = None, segmenter: nn.Module | None = None,
               mask_weight: float = 0.0) -> torch.Tensor:
    """Forward (the family's training pass), loss, backward, clip, update.

    ``model`` is a ``models.TrainingForward`` (or its DDP / compiled wrapper). With a (frozen)
    ``segmenter`` the batch is (frames, masks) and ``mask_weight`` times its cross-entropy on the
    predicted frames against the true future masks is added to the loss (train.task=joint).
    Returns, detached and on the device, (frame loss, the extra loss terms) as a float32 tensor (2,).
    """
    masks = None
    if isinstance(batch, (tuple, list)):
        batch, masks = batch  # uint8 (B, T, H, W, C), uint8 (B, T, H, W)
    video = to_model_input(batch, precision.device, precision.channels_last, in_channels)  # (B, T, C, H, W)
    inputs, targets = split_video(video, t_in)
    with precision.autocast():
        forecast = model(inputs, targets, step)  # frames (B, t_out, C, H, W)
        logits = segmenter(forecast.frames.clamp(0, 1).flatten(0, 1)) if segmenter is not None else None
    if forecast.inputs is None:
        main = frame_loss(loss, forecast.frames, targets)
    else:  # train.supervise_inputs: every next-frame prediction scored alike, the input phase's too
        main = frame_loss(loss, torch.cat([forecast.inputs, forecast.frames], dim=1),
                          torch.cat([inputs[:, 1:], targets], dim=1))
    extra = sum((term.float() for term in forecast.losses.values()), torch.zeros((), device=main.device))
    if logits is not None:
        future = masks[:, t_in:].to(precision.device, non_blocking=True).long().flatten(0, 1)  # (B*t_out, H, W)
        extra = extra + mask_weight * F.cross_entropy(logits.float(), future)
    apply_gradients(main + extra, model, optimizer, grad_clip, scaler)
    return torch.stack([main.detach(), extra.detach()])


def apply_gradients(total: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                    scaler: torch.amp.GradScaler | None) -> None:
    """Backward, clip, update: the second half of every training step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        total.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    else:
        optimizer.step()


# Called with each validation batch's (inputs, targets, prediction), all (B, T, C, H, W) on the device.
BatchObserver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def validation_sums(model: nn.Module, batches: Iterable[torch.Tensor], *, t_in: int, in_channels: int,
                    precision: Precision, loss: FrameLoss | str, max_batches: int = 0,
                    observe: BatchObserver | None = None) -> torch.Tensor:
    """Sum over videos of each video's ``loss`` (as at inference: no true future frames fed in), and
    the video count: tensor (2,) float64 on the device. ``observe`` sees every batch's predictions
    (per-lead-time scores, sample strips) without a second pass.

    Sums rather than a mean so processes holding different numbers of videos can add theirs up
    into the exact mean over the whole validation split.
    """
    totals = torch.zeros(2, dtype=torch.float64, device=precision.device)  # (sum of per-video loss, videos)
    for index, batch in enumerate(batches):
        if max_batches and index >= max_batches:
            break
        video = to_model_input(batch, precision.device, precision.channels_last, in_channels)  # (B, T, C, H, W)
        inputs, targets = split_video(video, t_in)
        with precision.autocast():
            prediction = model(inputs)  # (B, t_out, C, H, W)
        if observe is not None:
            observe(inputs, targets, prediction)
        per_video = torch.stack([frame_loss(loss, p, t) for p, t in zip(prediction, targets)])  # (B,)
        totals[0] += per_video.sum(dtype=torch.float64)
        totals[1] += per_video.numel()
    return totals
