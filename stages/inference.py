"""A trained model ready for inference, shared by predict and evaluate so both run it the same way.

Not a stage: the checkpoint's model on its device, with the run's precision policy, its frame
counts, and a loader for the split to run it on.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import BEST_NAME, check_same_model
from core.config import Config, config_to_dict
from core.distributed import pick_device
from core.precision import Precision
from data.datasets import WindowLoader, make_loader
from models.base import FamilyModel
from models.loading import load_model


def checkpoint_path(cfg: Config) -> Path:
    """``predict.checkpoint``, or ``<run_dir>/best.pt``."""
    return Path(cfg.predict.checkpoint) if cfg.predict.checkpoint else cfg.run_dir / BEST_NAME


@dataclasses.dataclass
class Predictor:
    """A checkpoint's model on the device with autocast dtype and layout chosen; frames in, frames out."""

    model: FamilyModel
    checkpoint: Path
    state: dict[str, Any]
    cfg: Config
    precision: Precision

    @classmethod
    def load(cls, cfg: Config) -> "Predictor":
        """The model of ``checkpoint_path(cfg)``; ``cfg`` must describe that model (or leave it as the
        checkpoint's own config has it): a different model is one clear error, never silently replaced."""
        path = checkpoint_path(cfg)
        device = pick_device(cfg.run.device)
        model, saved_cfg, state = load_model(path, device)  # FramecastError naming the file
        check_same_model(path, config_to_dict(saved_cfg), config_to_dict(cfg),
                         "predict with the config it was trained with, or without --config")
        precision = Precision.for_run(cfg.train, device)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(model, path, state, cfg, precision)

    @property
    def t_in(self) -> int:
        return self.model.t_in

    @property
    def t_out(self) -> int:
        return self.model.t_out

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def epoch(self) -> int | None:
        return self.state.get("progress", {}).get("epoch")

    def loader(self, dataset) -> WindowLoader:
        data = self.cfg.data
        return make_loader(
            dataset, self.cfg.predict.batch_size, shuffle=False, num_workers=data.num_workers,
            prefetch_factor=data.prefetch_factor,
            pin_memory=data.pin_memory and self.precision.device.type == "cuda", drop_last=False,
        )

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """float (B, t_in, C, H, W) in [0, 1] on the device -> raw float32 (B, t_out, C, H, W)."""
        with torch.inference_mode(), self.precision.autocast():
            return self.model(inputs).float()


def to_uint8_frames(raw: torch.Tensor) -> torch.Tensor:
    """Raw model output float (B, T, C, H, W) -> uint8 (B, T, H, W, 3), on the same device.

    Clip to [0, 1] first so out-of-range values saturate (a bare cast would wrap 1.2 to 50), then
    scale and round to nearest (a cast alone truncates 254.9 to 254). Grey (C = 1) frames are written
    as grey RGB, as the hand-off format and the PNGs are RGB. Doing it on the device means the host
    copies uint8, a quarter of the float32 bytes.
    """
    frames = raw.float().clamp(0, 1).mul_(255).round_().to(torch.uint8)  # (B, T, C, H, W)
    if frames.shape[2] == 1:
        frames = frames.expand(-1, -1, 3, -1, -1)  # (B, T, 3, H, W)
    return frames.permute(0, 1, 3, 4, 2).contiguous()  # (B, T, H, W, 3)
