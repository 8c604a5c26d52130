"""One optimisation step and one validation pass, shared by the train stage and its benchmark.

Nothing here synchronises the host with the device: losses stay on the device as tensors and the
caller decides when to read them (``.item()`` only at log intervals).
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from core.config import TrainConfig
from data.datasets import to_model_input


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA unless ``train.amp=off``; fp32 on CPU unless ``train.amp=bf16``."""
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return None


def use_cudnn_autotune(device: torch.device) -> None:
    """On CUDA, let cuDNN time its kernels once for our fixed shapes and keep the fastest."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """channels_last on CUDA only, when asked (on the CPU it only costs conversions)."""
    return cfg.channels_last and device.type == "cuda"


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW; the fused CUDA kernel on GPU, the multi-tensor (foreach) one elsewhere."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return cls(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fast
    )


def split_video(video: torch.Tensor, t_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, t_in + t_out, C, H, W) -> inputs (B, t_in, C, H, W), targets (B, t_out, C, H, W)."""
    return video[:, :t_in], video[:, t_in:]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, *,
               t_in: int, device: torch.device, amp_dtype: torch.dtype | None,
               channels_last: bool, grad_clip: float) -> torch.Tensor:
    """Forward, MSE, backward, clip, update. Returns the batch's loss, detached, fp32, on the device."""
    video = to_model_input(batch, device, channels_last)  # uint8 (B, T, H, W, C) -> float (B, T, C, H, W)
    inputs, targets = split_video(video, t_in)
    with autocast(device, amp_dtype):
        prediction = model(inputs)  # (B, t_out, C, H, W)
    loss = F.mse_loss(prediction.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def validation_sums(model: nn.Module, batches: Iterable[torch.Tensor], *, t_in: int,
                    device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool,
                    max_batches: int = 0) -> torch.Tensor:
    """Sum over videos of each video's mean squared error, and the video count: tensor (2,) on device.

    Sums rather than a mean so processes holding different numbers of videos can add theirs up
    into the exact mean over the whole validation split.
    """
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of per-video MSE, videos)
    for index, batch in enumerate(batches):
        if max_batches and index >= max_batches:
            break
        video = to_model_input(batch, device, channels_last)  # (B, T, C, H, W)
        inputs, targets = split_video(video, t_in)
        with autocast(device, amp_dtype):
            prediction = model(inputs)  # (B, t_out, C, H, W)
        per_video = (prediction.float() - targets).pow(2).flatten(1).mean(1)  # (B,)
        totals[0] += per_video.sum(dtype=torch.float64)
        totals[1] += per_video.numel()
    return totals
