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
from models.registry import build_model


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
    model = build_model(cfg.model, cfg.data.t_in, cfg.data.t_out)
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

    rows = [
        ("checkpoint", str(path)),
        *model.summary(),
        ("parameters", f"{count_parameters(model):,}"),
        ("channels", f"{model.in_channels} ({'grey' if model.in_channels == 1 else 'RGB'})"),
        ("frames", f"{model.t_in} in -> {model.t_out} out"),
        ("epoch", f"{progress.get('epoch')} (step {progress.get('step')})"),
        ("validation loss", loss(progress.get("val_loss"))),
        ("best val loss", f"{loss(progress.get('best_val_loss'))} (epoch {progress.get('best_epoch')})"),
        ("trained with", ", ".join([f"train.loss={cfg.train.loss}"]
                                   + [f"train.{key}={getattr(cfg.train, key):g}"
                                      for key in ("ssim_weight", "gdl_weight") if getattr(cfg.train, key)]
                                   + [f"train.amp={cfg.train.amp}"])),
        ("run", cfg.run.name),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label + ':':{width}s}{value}" for label, value in rows)


def inspect_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> str:
    """What ``framecast inspect`` (and load_model.py) print: the model rebuilt from ``path``, described."""
    model, cfg, state = load_model(path, device)
    return describe(path, model, cfg, state)
