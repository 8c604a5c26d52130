"""Checkpoints as plain dicts of plain types, written atomically, loadable with ``weights_only=True``.

A checkpoint holds (format 2): ``model`` (state dict), ``config`` (the run's resolved config: the
model is described once, by its ``model`` section and ``data.t_in``/``t_out``), ``optimizer``,
``scheduler``, ``scaler`` (fp16 only), ``progress`` (the trainer's counters, one dict), ``rng``,
``parameters`` and ``frame_size`` (the training frames' (H, W)). Format 1 files (the flat encoder-forecaster ``model`` section,
``model_config``/``t_in``/``t_out`` and counters at the top level) are upgraded on load.
"""
from __future__ import annotations

import copy
import errno
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_path
from core.errors import FramecastError

FORMAT_VERSION = 2
# The one name the saver, the resumer and the requeue path all use.
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
# A write that failed with less than this free on its disk failed for want of space.
FULL_DISK_BYTES = 1 << 20
# The (H, W) of the frames the model was trained on (ensemble members must agree on it).
FRAME_SIZE_KEY = "frame_size"
# torch.save writes a zip archive; anything else is not a checkpoint of ours.
ZIP_MAGIC = b"PK\x03\x04"
# Trainer counters that format 1 kept at the top level of the checkpoint.
_V1_PROGRESS_KEYS = ("step", "epoch", "batches_done", "steps_per_epoch", "total_steps", "val_loss",
                     "best_val_loss", "best_epoch", "best_step", "bad_validations", "stopped", "world_size")

# The checkpoint read last, so one command that needs a file twice (its config, then its weights)
# reads it once: (path, inode, mtime, size) -> state. A replaced file has another key.
_last_read: tuple[tuple, dict[str, Any]] | None = None


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to a temporary file and rename it: a kill mid-write keeps the old file.

    A full disk (or any write error) is one line naming the file; the previous file stays intact.
    """
    state = {**state, "format_version": FORMAT_VERSION}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            # torch reports a full disk as "... unexpected pos ..." with no errno: say what it is.
            if shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise OSError(f"torch.save failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's state dict (upgraded to the current format).

    The last file read is kept, so a command that needs it twice (its config, then its weights)
    reads it once; each caller gets its own copy of the plain parts (config, progress), the tensors
    are shared.
    """
    global _last_read
    file = Path(path)
    if not file.is_file():
        raise FramecastError(f"{file}: checkpoint not found")
    stat = file.stat()
    key = (str(file.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size, str(map_location))
    if _last_read is not None and _last_read[0] == key:
        return _own_copy(_last_read[1])
    with open(file, "rb") as handle:
        if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise FramecastError(f"{file}: not a framecast checkpoint (not a file written by torch.save)")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError,
            KeyError) as exc:
        raise FramecastError(f"{file}: not a readable checkpoint (truncated or corrupt: {_first_line(exc)})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise FramecastError(f"{file}: not a framecast checkpoint (no model weights or config inside)")
    version = state.get("format_version")
    if version == 1:
        state = upgrade_v1(state)
    elif version != FORMAT_VERSION:
        raise FramecastError(
            f"{file}: checkpoint format version {version!r}, this framecast reads {FORMAT_VERSION} (and 1)"
        )
    _last_read = (key, state)
    return _own_copy(state)


def _own_copy(state: dict[str, Any]) -> dict[str, Any]:
    """A caller's copy: a new top-level dict, its own config and progress, the same tensors."""
    return {**state, "config": copy.deepcopy(state["config"]), "progress": copy.deepcopy(state.get("progress", {}))}


def upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A format 1 checkpoint (framecast before model families) in the format 2 layout.

    Format 1 had one model, today's ``encoder_forecaster`` family, configured by a flat ``model``
    section; its weights keep their names.
    """
    state = dict(state)
    config = copy.deepcopy(state["config"])
    flat = dict(state.pop("model_config", None) or config.get("model") or {})
    in_channels = flat.pop("in_channels", 3)
    config["model"] = {"family": "encoder_forecaster", "in_channels": in_channels, "encoder_forecaster": flat}
    data = config.setdefault("data", {})
    for key in ("t_in", "t_out"):
        if key in state:
            data[key] = state.pop(key)
    state["progress"] = {key: state.pop(key) for key in _V1_PROGRESS_KEYS if key in state}
    state["config"] = config
    state["format_version"] = FORMAT_VERSION
    return state


def model_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What fixes a model's architecture, from a config dict: family, its section, channels, frames
    (a segmenter: its section's architecture, channels and classes)."""
    model = config["model"]
    if config.get("train", {}).get("task") == "segment":
        return {"train.task": "segment", "model.in_channels": model["in_channels"],
                **{f"segment.{k}": v for k, v in config["segment"].items() if k in SEGMENTER_ARCHITECTURE},
                "data.num_classes": config["data"]["num_classes"]}
    family = model["family"]
    # A joint run's model is a frame forecaster like any other; a masks run's reads class maps.
    task = "masks" if config.get("train", {}).get("task") == "masks" else "forecast"
    classes = {"data.num_classes": config["data"]["num_classes"]} if task == "masks" else {}
    return {"train.task": task, **classes, "model.family": family, "model.in_channels": model["in_channels"],
            **{f"model.{family}.{k}": v for k, v in model[family].items()},
            "data.t_in": config["data"]["t_in"], "data.t_out": config["data"]["t_out"]}


# The segment settings that shape its weights (the rest say how it trains).
SEGMENTER_ARCHITECTURE = ("base_channels", "levels", "norm_groups")


def check_same_model(path: str | Path, saved_config: dict[str, Any], wanted_config: dict[str, Any], fix: str) -> None:
    """Refuse, in one line, a config whose model differs from the one whose weights ``path`` holds."""
    saved, wanted = model_settings(saved_config), model_settings(wanted_config)
    for key in [*wanted, *(k for k in saved if k not in wanted)]:
        if saved.get(key) != wanted.get(key):
            raise FramecastError(
                f"{path}: holds a model with {key}={saved.get(key)!r} but the config asks for "
                f"{key}={wanted.get(key)!r}; {fix}"
            )


def config_from_checkpoint(path: str | Path, overrides: list[str] | None = None):
    """The run's own config, saved inside the checkpoint, with command-line overrides applied.

    The model (``model.*``, ``data.t_in``, ``data.t_out``) is the checkpoint's: an override that
    changes it is refused, since the weights fit only the model they were trained as.
    """
    from core.config import apply_overrides, config_from_dict, config_to_dict

    saved = load_checkpoint(path)["config"]
    values = apply_overrides(saved, [f"predict.checkpoint={path}", *(overrides or [])])
    try:
        cfg = config_from_dict(values)
    except FramecastError as exc:
        raise FramecastError(f"{path}: saved config: {exc}") from None
    check_same_model(path, config_to_dict(config_from_dict(saved)), config_to_dict(cfg),
                     "a checkpoint's model cannot be changed when predicting from it")
    return cfg
