"""Checkpoints as plain dicts of plain types, written atomically, loadable with ``weights_only=True``."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_path
from core.errors import FramecastError

FORMAT_VERSION = 1
# The one name the saver, the resumer and the requeue handler all use.
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to a temporary file and rename it: a kill mid-write keeps the old file."""
    state = {**state, "format_version": FORMAT_VERSION}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FramecastError(f"{file}: checkpoint not found")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FramecastError(f"{file}: not a readable checkpoint ({first_line})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise FramecastError(f"{file}: not a framecast checkpoint (no model weights or config inside)")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise FramecastError(
            f"{file}: checkpoint format version {version!r}, this framecast reads {FORMAT_VERSION}"
        )
    return state


def config_from_checkpoint(path: str | Path, overrides: list[str] | None = None):
    """The run's own config, saved inside the checkpoint, with command-line overrides applied."""
    from core.config import apply_overrides, config_from_dict

    saved = load_checkpoint(path)["config"]
    values = apply_overrides(saved, [f"predict.checkpoint={path}", *(overrides or [])])
    try:
        return config_from_dict(values)
    except FramecastError as exc:
        raise FramecastError(f"{path}: saved config: {exc}") from None
