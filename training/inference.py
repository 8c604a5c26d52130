"""A trained model ready for inference, shared by predict and evaluate so both run it the same way.

Not a stage: the checkpoint's model on its device, with the run's precision policy, its frame
counts, and a loader for the split to run it on (``Predictor``); and the ensemble of one or more
such models that predict and evaluate run (``Ensemble``), each batch through every member.

``predict.checkpoint`` names the members, resolved here and nowhere else (``checkpoint_paths``):
empty means ``<run_dir>/best.pt``; a path is one model; a glob (``runs/sweep/*/best.pt``) or a list
of paths and globs is an ensemble, globs expanded in sorted order. One model is an ensemble of one
and gives exactly its own outputs. Members may be of different families but must agree on
``t_in``, ``t_out``, channels and (where their checkpoints record it) the frame size they were
trained on; the first member's config is the run's (the one ``--config`` or the checkpoint gives).
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import BEST_NAME, FRAME_SIZE_KEY, check_same_model
from core.config import Config, config_to_dict
from core.distributed import pick_device
from core.errors import FramecastError
from core.precision import Precision, compile_cache_dir, use_compile_cache
from data.datasets import VideoWindowDataset, WindowLoader, check_channels, make_loader
from data.sources import open_split
from models.base import FamilyModel
from models.loading import load_model

log = logging.getLogger(__name__)

# The parts of a checkpoint a Predictor drops once its model is built (weights, optimizer, scaler, rng).
_TENSOR_PARTS = ("model", "optimizer", "scheduler", "scaler", "rng")


def resolve_checkpoints(patterns: str | Sequence[str]) -> list[Path]:
    """The checkpoint files ``patterns`` name, in order: a plain path as given (a missing file is
    refused when it is loaded, naming it), a glob as its matches in sorted order; a glob matching
    nothing is one error naming the pattern. ``~`` is expanded; ``**`` spans folders."""
    found: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else list(patterns):
        text = os.path.expanduser(pattern)
        if not glob.has_magic(text):
            found.append(Path(text))
            continue
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise FramecastError(f"predict.checkpoint: {pattern!r} matches no file (cwd {Path.cwd()})")
        found.extend(Path(match) for match in matches)
    if not found:
        raise FramecastError("predict.checkpoint: no checkpoint given")
    seen: set[Path] = set()
    for path in found:
        if path in seen:
            log.warning("predict.checkpoint: %s is listed more than once; each listing is a member", path)
        seen.add(path)
    return found


def checkpoint_paths(cfg: Config) -> list[Path]:
    """The members of ``predict.checkpoint`` (``<run_dir>/best.pt`` when empty), resolved."""
    value = cfg.predict.checkpoint
    return resolve_checkpoints(value if value else [str(cfg.run_dir / BEST_NAME)])


def checkpoint_path(cfg: Config) -> Path:
    """The first (reference) member: ``predict.checkpoint`` for one model, or ``<run_dir>/best.pt``."""
    return checkpoint_paths(cfg)[0]


def trained_frame_size(state: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) a checkpoint records it was trained on, or None (not recorded)."""
    size = state.get(FRAME_SIZE_KEY)
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) and len(size) == 2 else None


@dataclasses.dataclass
class Predictor:
    """A checkpoint's model on the device with autocast dtype and layout chosen; frames in, frames out."""

    model: FamilyModel
    checkpoint: Path
    state: dict[str, Any]
    cfg: Config
    precision: Precision

    @classmethod
    def load(cls, cfg: Config, path: Path | None = None, like: "Predictor | None" = None) -> "Predictor":
        """The model of ``path`` (default ``checkpoint_path(cfg)``); ``cfg`` must describe that model
        (or leave it as the checkpoint's own config has it): a different model is one clear error,
        never silently replaced.

        With ``like`` (the first member of an ensemble) the model is another member: its own config
        describes it (any family), and it must take the frames ``like`` takes (``check_member``);
        ``cfg`` gives everything else (device, precision, batch size, data).
        """
        path = checkpoint_path(cfg) if path is None else Path(path)
        device = pick_device(cfg.run.device)
        model, saved_cfg, state = load_model(path, device)  # FramecastError naming the file
        if like is None:
            check_same_model(path, config_to_dict(saved_cfg), config_to_dict(cfg),
                             "predict with the config it was trained with, or without --config")
        else:
            check_member(like, path, model, state)
            cfg = copy.copy(cfg)  # a shallow copy: the run's sections, this member's model
            cfg.model = saved_cfg.model
        precision = Precision.for_run(cfg.train, device)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            use_compile_cache(compile_cache_dir(cfg))  # the graphs training compiled, when it shares the folder
            model = torch.compile(model)
        # The checkpoint's plain parts (progress, config, ...): its weights live on in the model, and
        # the optimizer state is not needed, so an ensemble's members do not each hold them in RAM.
        state = {key: value for key, value in state.items() if key not in _TENSOR_PARTS}
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

    def describe(self) -> dict[str, Any]:
        """What the index and the report say of this member."""
        return {"checkpoint": str(self.checkpoint), "epoch": self.epoch, "family": self.model.family}


def check_member(first: Predictor, path: Path, model: FamilyModel, state: dict[str, Any]) -> None:
    """Refuse, in one line naming both files, a member that takes other frames than the first."""
    pairs = [("data.t_in", first.t_in, model.t_in), ("data.t_out", first.t_out, model.t_out),
             ("model.in_channels", first.in_channels, model.in_channels)]
    sizes = trained_frame_size(first.state), trained_frame_size(state)
    if None not in sizes:
        pairs.append(("frame size", "x".join(map(str, sizes[0])), "x".join(map(str, sizes[1]))))
    for label, want, got in pairs:
        if want != got:
            raise FramecastError(
                f"{path}: ensemble member with {label}={got}, but {first.checkpoint} has {label}={want}; "
                "every member must take the same t_in, t_out, channels and frame size"
            )


@dataclasses.dataclass
class Ensemble:
    """One or more members run on every batch; their mean (and spread) is the forecast.

    Memory stays one batch: each batch goes through every member in turn, the running mean and sum
    of squared deviations (Welford) accumulated in float32 on the device. One member gives exactly
    its own clipped output.
    """

    members: list[Predictor]

    def __post_init__(self) -> None:
        # NaN/infinite outputs per member, counted on the device (read once, at the end).
        self.nonfinite = torch.zeros(len(self.members), dtype=torch.int64, device=self.precision.device)

    @classmethod
    def load(cls, cfg: Config) -> "Ensemble":
        """The members of ``predict.checkpoint`` (``checkpoint_paths``), the first checked against ``cfg``."""
        paths = checkpoint_paths(cfg)
        first = Predictor.load(cfg, paths[0])
        return cls([first, *(Predictor.load(cfg, path, like=first) for path in paths[1:])])

    @property
    def first(self) -> Predictor:
        return self.members[0]

    @property
    def cfg(self) -> Config:
        return self.first.cfg

    @property
    def precision(self) -> Precision:
        return self.first.precision

    @property
    def t_in(self) -> int:
        return self.first.t_in

    @property
    def t_out(self) -> int:
        return self.first.t_out

    @property
    def in_channels(self) -> int:
        return self.first.in_channels

    @property
    def checkpoint(self) -> str | list[str]:
        """The member's path (one member), or every member's (several), as the index and report say it."""
        paths = [str(m.checkpoint) for m in self.members]
        return paths[0] if len(paths) == 1 else paths

    @property
    def epoch(self) -> int | None | list[int | None]:
        epochs = [m.epoch for m in self.members]
        return epochs[0] if len(epochs) == 1 else epochs

    @property
    def family(self) -> str | list[str]:
        families = [m.model.family for m in self.members]
        return families[0] if len(families) == 1 else families

    @property
    def title(self) -> str:
        if len(self.members) == 1:
            return self.first.model.title
        families = sorted({m.model.family for m in self.members})
        return f"ensemble of {len(self.members)} ({', '.join(families)})"

    def describe(self) -> list[dict[str, Any]]:
        """One entry per member (checkpoint, epoch, family), for the index and the report."""
        return [m.describe() for m in self.members]

    def loader(self, dataset) -> WindowLoader:
        return self.first.loader(dataset)

    def check_frames(self, height: int, width: int, where: str) -> None:
        """Every member can run on frames of ``height`` x ``width`` (of ``where``), or one line naming it."""
        for member in self.members:
            stride = member.model.stride
            if height % stride or width % stride:
                raise FramecastError(
                    f"{member.checkpoint}: {where} has frames of {height}x{width}, not divisible by the "
                    f"model's total stride {stride} ({member.model.stride_reason()})"
                )

    def labeled_windows(self, split: str, skip: int = 0, limit: int | None = None, doing: str = "evaluating"
                        ) -> tuple[VideoWindowDataset, list[int], str]:
        """The first t_in + t_out frames of each video of a labeled ``split`` (the targets included),
        checked against the members: (dataset, the indices of the videos after the first ``skip``, at
        most ``limit`` of them, the split's description)."""
        source = open_split(self.cfg.data, split)
        if source.num_frames < self.t_in + self.t_out:
            raise FramecastError(
                f"{source.describe()}: videos have {source.num_frames} frames, but {doing} "
                f"{self.first.checkpoint} needs t_in + t_out = {self.t_in} + {self.t_out} (targets); use a labeled "
                "split such as val"
            )
        if limit is not None and limit < 1:
            raise FramecastError(f"max_videos must be >= 1, got {limit}")
        dataset = VideoWindowDataset(source, self.t_in, self.t_out)  # the first t_in + t_out frames of each video
        check_channels(dataset, self.in_channels)
        self.check_frames(*dataset.frame_shape[:2], source.describe())
        end = len(dataset) if limit is None else min(len(dataset), skip + limit)
        if skip >= end:
            raise FramecastError(f"{source.describe()}: {len(dataset)} videos, none left after skipping {skip}")
        return dataset, list(range(skip, end)), source.describe()

    def __call__(self, inputs: torch.Tensor, spread: bool = False,
                 each: Callable[[int, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float (B, t_in, C, H, W) in [0, 1] on the device -> (mean, std or None), float32
        (B, t_out, C, H, W) each: the mean over members of their outputs clipped to [0, 1], and with
        ``spread`` their per-pixel standard deviation (population, ddof=0). ``each(k, clipped)`` sees
        member ``k``'s clipped output as it is made (evaluate scores the members with it)."""
        count = len(self.members)
        with torch.inference_mode():
            mean = m2 = None
            for k, member in enumerate(self.members):
                raw = member(inputs)  # (B, t_out, C, H, W) float32
                self.nonfinite[k] += (~torch.isfinite(raw)).sum()
                clipped = raw.clamp(0, 1)
                if each is not None:
                    each(k, clipped)
                if mean is None:
                    mean = clipped if count == 1 else clipped.clone()
                    m2 = torch.zeros_like(clipped) if spread else None
                    continue
                delta = clipped - mean
                mean.add_(delta.div(k + 1))  # Welford: exact for identical members
                if m2 is not None:
                    m2.addcmul_(delta, clipped - mean)
            std = m2.div_(count).clamp_min_(0).sqrt_() if m2 is not None else None
        return mean, std

    def raise_if_nonfinite(self, out: Path) -> None:
        """One line naming the first member that produced NaN/infinite values (nothing is written)."""
        counts = self.nonfinite.tolist()
        for member, bad in zip(self.members, counts):
            if bad:
                raise FramecastError(
                    f"{member.checkpoint}: the model produced {bad} NaN/infinite values; nothing was written to {out}"
                )


def to_uint8_frames(raw: torch.Tensor) -> torch.Tensor:
    """Raw model output float (B, T, C, H, W) -> uint8 (B, T, H, W, 3), on the same device.

    Clip to [0, 1] first so out-of-range values saturate (a bare cast would wrap 1.2 to 50), then
    scale and round to nearest (a cast alone truncates 254.9 to 254). Grey (C = 1) frames are written
    as grey RGB, as the hand-off format and the PNGs are RGB. Doing it on the device means the host
    copies uint8, a quarter of the float32 bytes.
    """
    return to_hand_off_layout(raw.float().clamp(0, 1).mul_(255).round_().to(torch.uint8))


def to_spread_frames(std: torch.Tensor) -> torch.Tensor:
    """Per-pixel std float (B, T, C, H, W) -> float16 (B, T, H, W, 3) on the same device, laid out
    as ``to_uint8_frames`` lays out the frames (grey repeated as RGB)."""
    return to_hand_off_layout(std.to(torch.float16))


def to_hand_off_layout(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> contiguous (B, T, H, W, 3), the .npy's layout; grey (C = 1) repeated as RGB."""
    if frames.shape[2] == 1:
        frames = frames.expand(-1, -1, 3, -1, -1)  # (B, T, 3, H, W)
    return frames.permute(0, 1, 3, 4, 2).contiguous()
