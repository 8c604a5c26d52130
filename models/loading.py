"""Checkpoint -> model: rebuild a trained model from one checkpoint file, and say what it is.

The checkpoint holds the run's config (the model section and frame counts) next to its weights
(the nanoGPT way), so ``best.pt`` alone is enough: no config file, no guessing the family.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.checkpoint import load_checkpoint
from core.config import Config, config_from_dict
from core.distributed import pick_device
from core.errors import FramecastError
from models.base import FamilyModel, count_parameters
from models.registry import build_forecaster
from models.segmenter import Segmenter, build_segmenter


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FamilyModel, Config, dict[str, Any]]:
    """(model in eval mode on ``device``, its Config, the checkpoint dict).

    A missing or corrupt file, or weights that do not fit the model its config describes, raise
    ``FramecastError`` naming the file.
    """
    file = Path(path)
    state = load_checkpoint(file)  # weights_only; FramecastError when missing or unreadable
    try:
        cfg = config_from_dict(state["config"])
    except FramecastError as exc:
        raise FramecastError(f"{file}: its saved config does not fit this framecast ({exc})") from None
    if cfg.train.task == "segment":
        raise FramecastError(f"{file}: holds a segmenter (train.task=segment), not a forecaster; "
                             "give it where a segmenter is asked for (segment.checkpoint)")
    model = build_forecaster(cfg)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])
        raise FramecastError(
            f"{file}: weights do not fit the {cfg.model.family} model its config describes ({detail})"
        ) from None
    if isinstance(device, str):
        device = pick_device(device)
    model = model.to(device).eval()
    return model, cfg, state


def describe(path: str | Path, model: FamilyModel, cfg: Config, state: dict[str, Any]) -> str:
    """A few lines a person reads to know what the file holds; the model describes itself."""
    progress = state.get("progress", {})

    def loss(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.6g}"

    if cfg.train.task == "segment":
        best = progress.get("best_val_loss")
        rows = [("checkpoint", str(path)), *model.summary(), ("parameters", f"{count_parameters(model):,}"),
                ("epoch", f"{progress.get('epoch')} (step {progress.get('step')})"),
                ("best val Jaccard", f"{'n/a' if best is None else f'{1 - float(best):.4f}'} "
                                     f"(epoch {progress.get('best_epoch')})"),
                ("run", cfg.run.name)]
        width = max(len(label) for label, _ in rows) + 2
        return "\n".join(f"{label + ':':{width}s}{value}" for label, value in rows)
    channels = {1: "grey", 3: "RGB"}.get(model.in_channels, "class maps" if cfg.train.task == "masks" else "channels")
    rows = [
        ("checkpoint", str(path)),
        *model.summary(),
        ("parameters", f"{count_parameters(model):,}"),
        ("channels", f"{model.in_channels} ({channels})"),
        ("frames", f"{model.t_in} in -> {model.t_out} out"),
        ("epoch", f"{progress.get('epoch')} (step {progress.get('step')})"),
        ("validation loss", loss(progress.get("val_loss"))),
        ("best val loss", f"{loss(progress.get('best_val_loss'))} (epoch {progress.get('best_epoch')})"),
        ("trained with", ", ".join([f"train.task={cfg.train.task}", f"train.loss={cfg.train.loss}"]
                                   + [f"train.{key}={getattr(cfg.train, key):g}"
                                      for key in ("ssim_weight", "gdl_weight") if getattr(cfg.train, key)]
                                   + [f"train.amp={cfg.train.amp}"])),
        ("run", cfg.run.name),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label + ':':{width}s}{value}" for label, value in rows)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[Segmenter, Config, dict[str, Any]]:
    """(segmenter in eval mode on ``device``, its Config, the checkpoint dict), from its file alone."""
    file = Path(path)
    state = load_checkpoint(file)
    try:
        cfg = config_from_dict(state["config"])
    except FramecastError as exc:
        raise FramecastError(f"{file}: its saved config does not fit this framecast ({exc})") from None
    if cfg.train.task != "segment":
        raise FramecastError(f"{file}: holds a {cfg.model.family} forecaster, not a segmenter (train.task=segment)")
    model = build_segmenter(cfg.segment, cfg.model.in_channels, cfg.data.num_classes)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise FramecastError(f"{file}: weights do not fit the segmenter its config describes ({detail})") from None
    if isinstance(device, str):
        device = pick_device(device)
    return model.to(device).eval(), cfg, state


def load_any(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Config, dict[str, Any]]:
    """A forecaster or a segmenter, whichever the checkpoint holds (for ``load_model.py``)."""
    state = load_checkpoint(Path(path))
    if state.get("config", {}).get("train", {}).get("task") == "segment":
        return load_segmenter(path, device)
    return load_model(path, device)


def inspect_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> str:
    """What ``framecast inspect`` (and load_model.py) print: the model rebuilt from ``path`` (a
    forecaster or a segmenter), described."""
    model, cfg, state = load_any(path, device)
    return describe(path, model, cfg, state)
