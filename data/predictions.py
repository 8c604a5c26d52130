"""The prediction hand-off: one ``.npy`` of uint8 (N, T_out, H, W, 3) and its JSON index.

This module is the format's one home: the writer (predict), the reader (convert, evaluate of a saved
array, ``np_to_png.py``), the index and the shard merge all live here.

- ``preds/hidden.npy``: a plain ``.npy`` (``numpy.load`` reads it anywhere), one row per video in
  numeric order, written under a temporary name and renamed when complete;
- ``preds/hidden.json`` (``index_path_for``): {"videos": [...], "frames": [...], "inputs": [...],
  "shape": [...], "dtype": "uint8", "checkpoint", "config", ...}. ``frames`` are the frame numbers
  the rows hold (those that follow each video's last input frame); an array that disagrees with
  its index is refused, since writing it out would give videos the wrong frames;
- shards ``preds/hidden.shard<i>of<n>.npy`` (+ index) are contiguous slices of the rows, joined by
  ``merge_shards`` file to file, never through memory;
- an ensemble's spread (``predict.spread``), ``preds/hidden.std.npy`` (``spread_path_for``): float16
  (N, T_out, H, W, 3), the per-pixel standard deviation across the members of their outputs clipped
  to [0, 1], row for row with the array; the index names it (``"spread": {"file": "hidden.std.npy",
  ...}``, ``null`` without one) and lists the members (``"members"``); ``load_spread`` reads it, and
  shards' spread files are merged with their arrays.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from core.atomic import atomic_path, write_json_atomic
from core.errors import FramecastError
from core.npyfile import map_npy
from data.layout import check_video_name

# Merge copies shard data in blocks of this size (bounded memory, large enough to stream fast).
COPY_BLOCK_BYTES = 16 << 20
# Index entries every shard of one prediction must share.
SHARED_KEYS = ("frames", "split", "source", "checkpoint", "epoch", "total_videos", "config", "members")
# The spread file: its name's ending, and its dtype (std in [0, 0.5]: float16 keeps 3 significant digits).
SPREAD_SUFFIX = ".std.npy"
SPREAD_DTYPE = np.float16
SPREAD_DEFINITION = ("per-pixel standard deviation (population, ddof=0) across the members of their "
                     "outputs clipped to [0, 1]; the mean over members is the .npy")


def index_path_for(npy_path: str | os.PathLike) -> Path:
    """The sidecar index of a prediction array: ``preds/hidden.npy`` -> ``preds/hidden.json``."""
    return Path(npy_path).with_suffix(".json")


def spread_path_for(npy_path: str | os.PathLike) -> Path:
    """The spread array of a prediction: ``preds/hidden.npy`` -> ``preds/hidden.std.npy``."""
    npy = Path(npy_path)
    return npy.with_name(f"{npy.stem}{SPREAD_SUFFIX}")


def spread_entry(npy_path: str | os.PathLike, definition: str = SPREAD_DEFINITION) -> dict[str, Any]:
    """The index's ``"spread"`` entry for the spread file of ``npy_path`` (its name, next to the .npy)."""
    return {"file": spread_path_for(npy_path).name, "dtype": np.dtype(SPREAD_DTYPE).name,
            "definition": definition}


def shard_path(out: str | os.PathLike, index: int, count: int) -> Path:
    """``preds/hidden.npy`` -> ``preds/hidden.shard<i>of<n>.npy`` (its index: ``.shard<i>of<n>.json``)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{index}of{count}.npy")


def shard_rows(num_videos: int, index: int, count: int) -> range:
    """Rows of shard ``index`` of ``count``: contiguous, sizes differing by at most one (np.array_split)."""
    if not 0 <= index < count:
        raise FramecastError(f"shard {index}/{count}: expected 0 <= i < n")
    base, extra = divmod(num_videos, count)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


# ----------------------------------------------------------------------------- reading


def read_index(index_path: str | os.PathLike) -> dict[str, Any]:
    """The index JSON, checked for the keys every reader relies on."""
    file = Path(index_path)
    if not file.is_file():
        raise FramecastError(f"{file}: prediction index not found (predict writes it next to the .npy)")
    try:
        index = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FramecastError(f"{file}: not a valid JSON index ({exc})") from None
    if not isinstance(index, dict):
        raise FramecastError(f"{file}: expected a JSON object with 'videos' and 'frames'")
    videos, frames = index.get("videos"), index.get("frames")
    if not isinstance(videos, list) or not all(isinstance(v, str) for v in videos):
        raise FramecastError(f"{file}: 'videos' must be a list of video_<n> names")
    if not isinstance(frames, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in frames):
        raise FramecastError(f"{file}: 'frames' must be a list of frame numbers")
    for name in videos:
        check_video_name(name, file)  # names become folder names: exactly video_<n>
    if len(set(videos)) != len(videos):
        raise FramecastError(f"{file}: a video is named twice in 'videos'")
    return index


def load_predictions(npy_path: str | os.PathLike, index_path: str | os.PathLike | None = None
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """(memory-mapped uint8 (N, T, H, W, 3) array, its index), after checking they agree.

    Nothing is read into memory: the array is opened with ``mmap_mode="r"``.
    """
    npy = Path(npy_path)
    index_file = Path(index_path) if index_path is not None else index_path_for(npy)
    array = map_npy(npy, "prediction array")  # a missing array is named before its index
    index = read_index(index_file)
    if array.ndim != 5 or array.shape[-1] != 3:
        raise FramecastError(f"{npy}: shape {list(array.shape)}, expected (videos, frames, height, width, 3)")
    if array.dtype != np.uint8:
        raise FramecastError(f"{npy}: dtype {array.dtype}, expected uint8")
    if array.shape[0] != len(index["videos"]):
        raise FramecastError(
            f"{npy}: {array.shape[0]} rows, but its index {index_file} names {len(index['videos'])} videos"
        )
    if array.shape[1] != len(index["frames"]):
        raise FramecastError(
            f"{npy}: {array.shape[1]} frames per video, but its index {index_file} lists "
            f"{len(index['frames'])} frame numbers"
        )
    if "shape" in index and list(index["shape"]) != list(array.shape):
        raise FramecastError(f"{npy}: shape {list(array.shape)}, but its index {index_file} says {index['shape']}")
    return array, index


def load_spread(npy_path: str | os.PathLike, index_path: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(memory-mapped float16 (N, T, H, W, 3) spread of the prediction ``npy_path``, its index).

    The index must name a spread file (predict an ensemble with ``predict.spread: true``); it lies
    next to the ``.npy`` and must have the array's shape.
    """
    array, index = load_predictions(npy_path, index_path)
    index_file = Path(index_path) if index_path is not None else index_path_for(npy_path)
    entry = index.get("spread")
    if not entry:
        raise FramecastError(f"{index_file}: names no spread file (predict an ensemble with predict.spread: true)")
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise FramecastError(f"{index_file}: 'spread' must name a file next to the .npy, got {entry!r}")
    file = Path(npy_path).parent / name
    spread = map_npy(file, f"spread array (its index {index_file} names it)")
    if spread.dtype != SPREAD_DTYPE:
        raise FramecastError(f"{file}: expected a {np.dtype(SPREAD_DTYPE).name} array, got {spread.dtype}")
    if spread.shape != array.shape:
        raise FramecastError(f"{file}: shape {list(spread.shape)}, but the prediction {npy_path} has {list(array.shape)}")
    return spread, index


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def npy_rows(out: Path, shape: tuple[int, ...], dtype: Any = np.uint8, drop_index: bool = True
             ) -> Iterator[BinaryIO]:
    """A ``.npy`` of ``shape`` and ``dtype`` (uint8: a prediction; ``SPREAD_DTYPE``: its spread)
    opened for writing its rows in order; renamed onto ``out`` at the end.

    ``open_memmap`` writes the header and sizes the file; the rows then go through the file handle
    (page cache) rather than the mapping, because every page written through a mapping stays in the
    process's resident set until the kernel reclaims it, so RSS would grow with N. Just before the
    new array replaces ``out``, the older index is removed (``drop_index``; a spread file, written
    around its array's ``npy_rows``, keeps it: the array's removes it first): until the new index is
    written, readers find no index and refuse, rather than pairing new rows with old names. A full
    disk is one line naming the file, and the previous array stays.
    """
    with atomic_path(out, suffix=".npy") as tmp:
        header = open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        offset, size = header.offset, header.nbytes
        del header
        with open(tmp, "r+b") as handle:
            handle.seek(offset)
            yield handle
            if handle.tell() != offset + size:
                raise RuntimeError(f"{out}: wrote {handle.tell() - offset} of {size} bytes")
        if drop_index:
            index_path_for(out).unlink(missing_ok=True)


def write_index(out: Path, index: dict[str, Any], shape: tuple[int, ...]) -> None:
    write_json_atomic(index_path_for(out), {**index, "shape": list(shape), "dtype": "uint8"})


def _copy_bytes(src: BinaryIO, dst: BinaryIO, count: int) -> int:
    copied = 0
    while copied < count:
        block = src.read(min(COPY_BLOCK_BYTES, count - copied))
        if not block:
            break
        dst.write(block)
        copied += len(block)
    return copied


def _copy_arrays(parts: list[tuple[Path, np.ndarray]], handle: BinaryIO, desc: str) -> None:
    """Append the data of each ``(path, memmap)`` to ``handle``, file to file (page cache), in order."""
    for path, array in tqdm(parts, desc=desc, unit="shard", disable=None):
        if not array.flags.c_contiguous:
            raise FramecastError(f"{path}: stored in Fortran order, expected a C-order .npy from predict")
        with open(path, "rb") as shard_file:
            shard_file.seek(array.offset)
            copied = _copy_bytes(shard_file, handle, array.nbytes)
        if copied != array.nbytes:
            raise FramecastError(f"{path}: truncated ({copied} of {array.nbytes} data bytes)")


def merge_shards(out: str | os.PathLike, shards: int) -> Path:
    """Join ``<stem>.shard<i>of<n>.npy`` for i = 0..n-1 into ``out`` (+ index), in order.

    Every shard must exist, come from the same checkpoint(s), split and config, and cover its slice
    of the split; the data is copied file to file in blocks, never held in RAM. Shards with a spread
    file (``<stem>.shard<i>of<n>.std.npy``) are all required to have one, and their spread files are
    joined into ``<out stem>.std.npy`` the same way.
    """
    out = Path(out)
    if shards < 1:
        raise FramecastError(f"predict.shards must be >= 1, got {shards}")
    paths = [shard_path(out, i, shards) for i in range(shards)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FramecastError(f"{missing[0]}: shard missing ({len(missing)} of {shards} not written yet: "
                             f"run predict --shard i/{shards} for each)")
    parts = [load_predictions(p) for p in paths]  # (memmap, index), each checked against itself
    first_path, (first, first_index) = paths[0], parts[0]
    total = first_index.get("total_videos")
    with_spread = bool(first_index.get("spread"))
    for i, (path, (array, index)) in enumerate(zip(paths, parts)):
        if index.get("shard") != [i, shards]:
            raise FramecastError(f"{path}: its index says shard {index.get('shard')}, expected [{i}, {shards}]")
        if bool(index.get("spread")) != with_spread:
            has, lacks = (first_path, path) if with_spread else (path, first_path)
            raise FramecastError(f"{lacks}: has no spread file but {has} has one (shards of different predictions)")
        for key in SHARED_KEYS:
            if index.get(key) != first_index.get(key):
                raise FramecastError(f"{path}: '{key}' differs from {first_path} (shards of different predictions)")
        if array.shape[1:] != first.shape[1:]:
            raise FramecastError(f"{path}: frames of shape {list(array.shape[1:])}, {first_path} has {list(first.shape[1:])}")
        expected = shard_rows(total, i, shards)
        if index.get("rows") != [expected.start, expected.stop] or array.shape[0] != len(expected):
            raise FramecastError(f"{path}: holds rows {index.get('rows')}, expected [{expected.start}, {expected.stop}]")
    shape = (sum(a.shape[0] for a, _ in parts), *first.shape[1:])  # (N, t_out, H, W, C)
    spreads = []
    if with_spread:
        for path in paths:
            spread, _ = load_spread(path)  # (rows, t_out, H, W, 3) float16, as its shard
            spreads.append((spread_path_for(path), spread))
    # Each shard's data is its rows in C order, so the merged data is the shards' bytes end to end:
    # copy them file to file (page cache), never through memory maps or arrays. The spread file is
    # renamed into place after the array (whose rename drops the old index first).
    with contextlib.ExitStack() as stack:
        if with_spread:
            spread_handle = stack.enter_context(npy_rows(spread_path_for(out), shape, SPREAD_DTYPE, drop_index=False))
            _copy_arrays(spreads, spread_handle, f"merge {spread_path_for(out).name}")
        handle = stack.enter_context(npy_rows(out, shape))
        _copy_arrays([(path, array) for path, (array, _) in zip(paths, parts)], handle, f"merge {out.name}")
        if not with_spread:
            spread_path_for(out).unlink(missing_ok=True)  # a former ensemble's, which the new index won't name
    index = {key: first_index.get(key) for key in SHARED_KEYS}
    for key in ("inputs",):
        if key in first_index:
            index[key] = first_index[key]
    index.update(videos=[v for _, ix in parts for v in ix["videos"]], shard=None, shards=shards, rows=[0, shape[0]],
                 spread=spread_entry(out) if with_spread else None)
    write_index(out, index, shape)
    return out


def merge_if_newer(out: str | os.PathLike, shards: int) -> None:
    """Merge the shards when the merged array is missing or older than any of them."""
    if shards <= 1:
        return
    npy = Path(out)
    present = [p for p in (shard_path(npy, i, shards) for i in range(shards)) if p.is_file()]
    if present and (not npy.is_file() or max(p.stat().st_mtime for p in present) > npy.stat().st_mtime):
        merge_shards(npy, shards)  # names any missing shard
