"""The on-disk layout ``<root>/<split>/video_<n>/image_<k>.png``: numeric discovery and validation.

Names are not zero-padded, so every listing here sorts by the number, never by the string
(``video_2`` before ``video_10``). Everything a user's data can get wrong (a missing frame, a PNG that
does not decode, a frame of another size or colour mode) raises ``FramecastError`` naming the file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from core.errors import FramecastError
from data import png
from data.png import PngHeader

SPLITS = ("train", "val", "unlabeled", "hidden")
# Splits whose videos carry a per-pixel class mask.
LABELED_SPLITS = ("train", "val")
MASK_NAME = "mask.npy"
FRAME_MODE = "RGB"  # every frame is 8-bit RGB: (H, W, 3) uint8
CHANNELS = 3

_VIDEO_RE = re.compile(r"video_(\d+)")
_FRAME_RE = re.compile(r"image_(\d+)\.png")
FRAME_PATTERN = _FRAME_RE  # a frame file's name (data.pack stamps a video by its frames)


def video_name(number: int) -> str:
    return f"video_{number}"


def frame_name(number: int) -> str:
    return f"image_{number}.png"


def _number(path_or_name: str | os.PathLike, pattern: re.Pattern, what: str) -> int:
    name = Path(path_or_name).name
    match = pattern.fullmatch(name)
    if match is None:
        raise FramecastError(f"{path_or_name}: not a {what} name")
    return int(match.group(1))


def video_number(path_or_name: str | os.PathLike) -> int:
    """``video_15000`` (or a path ending in it) -> 15000."""
    return _number(path_or_name, _VIDEO_RE, "video_<n> folder")


def check_video_name(name: str, where: str | os.PathLike) -> None:
    """Names from files (a pack, an index) become folder names: exactly ``video_<n>``, nothing that
    could point elsewhere (``../x``, ``a/video_1``)."""
    if not isinstance(name, str) or Path(name).name != name or not _VIDEO_RE.fullmatch(name):
        raise FramecastError(f"{where}: {name!r} is not a video_<n> folder name")


def frame_number(path_or_name: str | os.PathLike) -> int:
    """``image_7.png`` (or a path ending in it) -> 7."""
    return _number(path_or_name, _FRAME_RE, "image_<k>.png frame")


def _numbered_entries(directory: Path, pattern: re.Pattern, want_dir: bool) -> list[tuple[int, str]]:
    """(number, name) of the entries matching ``pattern``, sorted by number; duplicates are an error."""
    found: dict[int, str] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is None or entry.is_dir() != want_dir:
                continue
            number = int(match.group(1))
            if number in found:
                raise FramecastError(
                    f"{directory / entry.name}: same number as {directory / found[number]} (names must be unique)"
                )
            found[number] = entry.name
    return sorted(found.items())


def list_videos(split_dir: str | os.PathLike) -> list[Path]:
    """The ``video_<n>`` folders of a split in numeric order (other entries are ignored)."""
    split = Path(split_dir)
    if not split.is_dir():
        raise FramecastError(f"{split}: split folder not found")
    return [split / name for _, name in _numbered_entries(split, _VIDEO_RE, want_dir=True)]


def list_frames(video_dir: str | os.PathLike, expected: int | None = None) -> list[Path]:
    """The frames ``image_0.png .. image_<T-1>.png`` of a video in numeric order.

    A gap names the first missing frame; with ``expected`` a short video names the first absent frame
    and a long one says how many it has, so the user knows exactly which file to look at.
    """
    video = Path(video_dir)
    if not video.is_dir():
        raise FramecastError(f"{video}: video folder not found")
    entries = _numbered_entries(video, _FRAME_RE, want_dir=False)
    if not entries:
        raise FramecastError(f"{video}: no image_<k>.png frames")
    for position, (number, _) in enumerate(entries):
        if number != position:
            raise FramecastError(f"{video / frame_name(position)}: frame missing (the video has frames up to {entries[-1][0]})")
    count = len(entries)
    if expected is not None and count != expected:
        if count < expected:
            raise FramecastError(f"{video / frame_name(count)}: frame missing (expected {expected} frames, found {count})")
        raise FramecastError(f"{video}: {count} frames, expected {expected}")
    return [video / name for _, name in entries]


def _checked_header(header: PngHeader, path: Path, expected_hw: tuple[int, int] | None) -> PngHeader:
    if header.mode != FRAME_MODE:
        raise FramecastError(f"{path}: colour mode {header.mode}, expected {FRAME_MODE}")
    if expected_hw is not None and (header.height, header.width) != tuple(expected_hw):
        raise FramecastError(
            f"{path}: frame is {header.height}x{header.width} (HxW), expected {expected_hw[0]}x{expected_hw[1]}"
        )
    return header


def frame_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a frame from its header alone (no decoding); validates format and mode."""
    header = _checked_header(png.read_header(path), Path(path), None)
    return header.height, header.width


def read_frame(path: str | os.PathLike, expected_hw: tuple[int, int] | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Decode one frame to uint8 (H, W, 3); ``out`` (a (H, W, 3) view) is filled in place when given."""
    file = Path(path)
    data = png.read_bytes(file)
    header = _checked_header(png.parse_header(data, file), file, expected_hw)
    pixels = png.decode_rgb(data, header, file)  # (H, W, 3) uint8
    if out is None:
        return pixels
    out[...] = pixels
    return out


def read_video(video_dir: str | os.PathLike, expected_frames: int | None = None,
               expected_hw: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """All frames of a video as uint8 (T, H, W, 3), validated: frames 0..T-1, one size, RGB.

    Without ``expected_hw`` the first frame sets the size every other frame must have. ``out``
    (uint8 (T, H, W, 3), matching the expected frames and size) receives the frames in place.
    """
    frames = list_frames(video_dir, expected_frames)
    if expected_hw is None:
        expected_hw = frame_size(frames[0])
    video = np.empty((len(frames), *expected_hw, CHANNELS), dtype=np.uint8) if out is None else out  # (T, H, W, 3)
    for index, path in enumerate(frames):
        read_frame(path, expected_hw, out=video[index])
    return video
