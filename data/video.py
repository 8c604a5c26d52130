"""Real videos (.mp4, .avi, ... anything FFmpeg reads) cut into windows in the reference layout.

Each video is decoded with PyAV (its wheels carry FFmpeg), every ``frame_step``-th frame kept, scaled
to cover ``height x width`` and centre-cropped. The split is in time, per video: windows from the
early part of a video go to train/unlabeled, windows from its late part to val/hidden, and no
training window shares a frame with a validation one, so validation measures forecasting footage the
model has not seen. ``windows.json`` in the data set records which source frames each video_<n> holds.

Real footage has no class masks: train/ and val/ get frames only (nothing in training reads masks).
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.atomic import atomic_dir, write_json_atomic
from core.errors import FramecastError
from data.generate import PNG_COMPRESS_LEVEL, check_positive, existing_dataset
from data.layout import SPLITS, frame_name, video_name

# The record of what was cut from where, beside the split folders.
WINDOWS_NAME = "windows.json"
# Default shares: a quarter of each video's time held out (val/hidden); half the early windows go to
# unlabeled/ (both train and unlabeled are trained on by default), a quarter of the late ones to hidden/.
HOLDOUT = 0.25
UNLABELED_SHARE = 0.5
HIDDEN_SHARE = 0.25
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Window:
    split: str
    source: str  # the video file
    first: int  # index of its first frame among the source's decoded frames
    frames: int  # frames kept (hidden windows keep fewer)


def expand_sources(patterns: list[str]) -> list[Path]:
    """Files named or matched by ``patterns`` (globs expanded in sorted order, duplicates dropped)."""
    found: list[Path] = []
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
            if not matches:
                raise FramecastError(f"{pattern}: no video file matches")
            found += [Path(p) for p in matches]
        else:
            path = Path(pattern).expanduser()
            if not path.is_file():
                raise FramecastError(f"{path}: video file not found")
            found.append(path)
    return list(dict.fromkeys(found))


def fit_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale (H0, W0, 3) uint8 to cover height x width, keeping its aspect, and crop the centre."""
    h0, w0 = frame.shape[:2]
    scale = max(height / h0, width / w0)
    size = (max(width, round(w0 * scale)), max(height, round(h0 * scale)))  # PIL's (W, H)
    image = Image.fromarray(frame)
    if size != (w0, h0):
        image = image.resize(size, Image.Resampling.BILINEAR)  # antialiased when shrinking
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def decode_video(path: Path, height: int, width: int, frame_step: int = 1) -> np.ndarray:
    """Every ``frame_step``-th frame of ``path`` fitted to height x width: uint8 (T, H, W, 3).

    A file FFmpeg cannot read, or one without a video stream, is one FramecastError naming it.
    """
    import av

    kept = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FramecastError(f"{path}: no video stream in the file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index % frame_step == 0:
                    kept.append(fit_frame(frame.to_ndarray(format="rgb24"), height, width))
    except (av.FFmpegError, OSError, ValueError) as exc:
        # FFmpeg's errors carry the file name and code; the first line says what it could not do.
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FramecastError(f"{path}: not a readable video ({text})") from None
    if not kept:
        raise FramecastError(f"{path}: no frames decoded")
    return np.stack(kept)


def _interleave(count: int, share: float) -> list[bool]:
    """Which of ``count`` windows go to the second split: a ``share`` of them, spread evenly."""
    return [math.floor((i + 1) * share) > math.floor(i * share) for i in range(count)]


def plan_windows(source: str, length: int, *, frames: int, stride: int, hidden_frames: int,
                 holdout: float, unlabeled_share: float, hidden_share: float) -> list[Window]:
    """The windows of one video of ``length`` (kept) frames, split in time at the holdout boundary.

    Training windows lie wholly before the boundary, held-out ones wholly after it. A video too
    short for a window on each side is an error naming it (and how long it would have to be).
    """
    cut = length - math.ceil(length * holdout)
    early = list(range(0, cut - frames + 1, stride))
    late = list(range(cut, length - frames + 1, stride))
    if not early or not late:
        need = math.ceil(frames / min(holdout, 1 - holdout))
        raise FramecastError(
            f"{source}: {length} frames (after the frame step) are too few for a {frames}-frame window on "
            f"each side of the time split (holdout {holdout:g}): about {need} needed"
        )
    windows = [Window("unlabeled" if second else "train", source, start, frames)
               for start, second in zip(early, _interleave(len(early), unlabeled_share))]
    windows += [Window("hidden", source, start, hidden_frames) if second else Window("val", source, start, frames)
                for start, second in zip(late, _interleave(len(late), hidden_share))]
    return windows


def make_video_dataset(sources: list[str], out: str | os.PathLike, *, frames: int = 22, stride: int | None = None,
                       height: int = 160, width: int = 240, frame_step: int = 1, hidden_frames: int = 11,
                       holdout: float = HOLDOUT, unlabeled_share: float = UNLABELED_SHARE,
                       hidden_share: float = HIDDEN_SHARE, overwrite: bool = False,
                       compress_level: int = PNG_COMPRESS_LEVEL) -> Path:
    """Cut ``sources`` (files or globs) into windows under ``out`` in the reference layout; returns ``out``.

    ``stride`` frames between window starts (default ``frames``: windows do not overlap). Videos are
    numbered consecutively across splits in the order train, val, unlabeled, hidden; each split is
    built in a temporary folder and renamed into place, so an interrupted run leaves no half split.
    """
    stride = frames if stride is None else stride
    check_positive(frames=frames, stride=stride, height=height, width=width, frame_step=frame_step,
                   hidden_frames=hidden_frames)
    if hidden_frames > frames:
        raise FramecastError(f"hidden_frames ({hidden_frames}) must not exceed frames ({frames})")
    if not 0 < holdout < 1:
        raise FramecastError(f"holdout must be in (0, 1) (the share of each video held out), got {holdout}")
    for name, share in (("unlabeled_share", unlabeled_share), ("hidden_share", hidden_share)):
        if not 0 <= share < 1:
            raise FramecastError(f"{name} must be in [0, 1), got {share}")
    root = Path(out)
    existing = existing_dataset(root)
    if existing and not overwrite:
        raise FramecastError(
            f"{root}: already holds a data set ({existing[0].name}/); pass --overwrite to replace it"
        )
    paths = expand_sources(sources)
    clips, records, windows = {}, [], []
    for path in paths:
        clip = decode_video(path, height, width, frame_step)  # (T, H, W, 3)
        windows += plan_windows(str(path), len(clip), frames=frames, stride=stride, hidden_frames=hidden_frames,
                                holdout=holdout, unlabeled_share=unlabeled_share, hidden_share=hidden_share)
        clips[str(path)] = clip
        records.append({"source": str(path), "frames_kept": len(clip)})

    cut = []
    with contextlib.ExitStack() as stack:
        number = 0
        for split in SPLITS:
            members = [w for w in windows if w.split == split]
            if not members:
                continue
            tmp = stack.enter_context(atomic_dir(root / split, replace=True))
            for window in members:
                folder = tmp / video_name(number)
                folder.mkdir()
                for k in range(window.frames):
                    Image.fromarray(clips[window.source][window.first + k]).save(
                        folder / frame_name(k), format="PNG", compress_level=compress_level)
                cut.append({"video": video_name(number), "split": split, "source": window.source,
                            # source frame numbers (as decoded, from 0) of its first and last frames
                            "first_frame": window.first * frame_step,
                            "last_frame": (window.first + window.frames - 1) * frame_step,
                            "frames": window.frames})
                number += 1
    write_json_atomic(root / WINDOWS_NAME, {
        "settings": {"frames": frames, "stride": stride, "frame_step": frame_step, "height": height,
                     "width": width, "hidden_frames": hidden_frames, "holdout": holdout,
                     "unlabeled_share": unlabeled_share, "hidden_share": hidden_share},
        "sources": records, "windows": cut,
    })
    # The new splits are in place; drop splits of an older set that this one has no windows for.
    written = {entry["split"] for entry in cut}
    for path in existing:
        if path.name not in written:
            shutil.rmtree(path)
    return root
