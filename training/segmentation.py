"""Masks from frames: the segmenter's training step and validation, and the Jaccard score.

The score is torchmetrics' ``JaccardIndex(task="multiclass", num_classes=C)`` over every mask given
at once (the competition's figure): per class IoU = |pred & true| / |pred | true| over all pixels
of all masks, then the mean over the classes present in either; a class absent from both counts in
neither. Per-class IoU is reported beside it (``None`` where a class is absent from both).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from core.precision import Precision
from data.datasets import to_model_input
from training.step import apply_gradients


class MaskScore:
    """Jaccard of predicted vs true class masks, accumulated over batches (integer (N, ...) each).

    Under DDP ``compute`` adds up every process's counts (torchmetrics syncs its state)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        # Imported here: torchmetrics loads all its domains (SciPy's signal module among them) on
        # import, a cost every forecasting job would otherwise pay for a score it never computes.
        from torchmetrics.classification import MulticlassJaccardIndex

        self.num_classes = num_classes
        self.metric = MulticlassJaccardIndex(num_classes=num_classes, average="macro").to(device)

    def update(self, predicted: torch.Tensor, true: torch.Tensor) -> None:
        self.metric.update(predicted.long(), true.long())

    def compute(self) -> dict[str, Any]:
        jaccard = float(self.metric.compute())
        confusion = self.metric.confmat.double()  # (C, C): rows true, columns predicted
        hits = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hits
        per_class = [None if u == 0 else float(h / u) for h, u in zip(hits.tolist(), union.tolist())]
        return {"jaccard": jaccard, "per_class_iou": per_class}


def jaccard(predicted: torch.Tensor, true: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """The Jaccard score of one set of masks (see ``MaskScore``)."""
    score = MaskScore(num_classes, predicted.device)
    score.update(predicted, true)
    return score.compute()


def segment(model: nn.Module, frames: torch.Tensor, precision: Precision | None = None) -> torch.Tensor:
    """Class ids (..., H, W) int64 of float frames (..., C, H, W) in [0, 1], any leading dimensions."""
    lead, image = frames.shape[:-3], frames.shape[-3:]
    with precision.autocast() if precision is not None else torch.autocast(frames.device.type, enabled=False):
        logits = model(frames.reshape(-1, *image).clamp(0, 1))  # (N, K, H, W)
    return logits.argmax(1).reshape(*lead, *image[1:])


def frames_of_step(window: int, count: int, step: int) -> list[int]:
    """``count`` frame indices of a ``window``-frame video, evenly spread and rotating with the step
    (a pure function of the step: resume stays exact)."""
    count = min(count, window)
    return sorted({(step + k * window // count) % window for k in range(count)})


def segment_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, *, step: int,
                       frames_per_video: int, in_channels: int, precision: Precision, grad_clip: float,
                       scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Cross-entropy of the segmenter on some frames of each window; returns (loss, 0) detached."""
    video, masks = batch  # uint8 (B, T, H, W, C), uint8 (B, T, H, W)
    picked = frames_of_step(video.shape[1], frames_per_video, step)
    frames = to_model_input(video[:, picked], precision.device, precision.channels_last, in_channels)
    target = masks[:, picked].to(precision.device, non_blocking=True).long().flatten(0, 1)  # (B*t, H, W)
    with precision.autocast():
        logits = model(frames.flatten(0, 1))  # (B*t, K, H, W)
    loss = F.cross_entropy(logits.float(), target)
    apply_gradients(loss, model, optimizer, grad_clip, scaler)
    return torch.stack([loss.detach(), torch.zeros((), device=loss.device)])


@torch.no_grad()
def segment_validation(model: nn.Module, batches: Iterable[Any], *, num_classes: int, in_channels: int,
                       precision: Precision, max_batches: int = 0) -> dict[str, Any]:
    """The Jaccard score of the segmenter over every frame of the validation windows."""
    score = MaskScore(num_classes, precision.device)
    for index, (video, masks) in enumerate(batches):
        if max_batches and index >= max_batches:
            break
        frames = to_model_input(video, precision.device, precision.channels_last, in_channels)  # (B, T, C, H, W)
        score.update(segment(model, frames, precision), masks.to(precision.device))
    return score.compute()
