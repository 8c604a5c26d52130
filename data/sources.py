"""Where a split's frames come from: an HDF5 pack, the PNG folders, or an in-memory/memory-mapped array.

Every source answers the same questions (``names``, ``num_frames``, ``frame_shape``, ``len``) and
reads a frame range of one video as uint8 (T, H, W, C). None of them ever holds a split in memory:
the pack is read one window at a time through a file handle opened in the process that reads it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from core.config import DataConfig
from core.errors import FramecastError
from core.paths import expand
from data.layout import CHANNELS, check_video_name, frame_name, frame_size, list_frames, list_videos, read_frame, video_name
from data.moving_mnist import read_toronto
from data.pack import PACKED_DIR, pack_path, source_record, stale_videos

# Video names a stale pack's error lists of each kind before saying how many more.
STALE_NAMES_SHOWN = 5


class VideoSource:
    """A split: ``len(source)`` videos named ``names``, each ``num_frames`` frames of ``frame_shape``."""

    names: list[str]
    num_frames: int
    frame_shape: tuple[int, int, int]  # (H, W, C)

    def __len__(self) -> int:
        return len(self.names)

    def _range(self, index: int, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.num_frames if stop is None else stop
        if not 0 <= index < len(self):
            raise IndexError(f"video index {index} out of range for {len(self)} videos")
        if not 0 <= start < stop <= self.num_frames:
            raise IndexError(f"frames {start}:{stop} out of range for {self.num_frames}-frame videos")
        return start, stop

    def read(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` of video ``index`` as uint8 (stop - start, H, W, C)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def open_pack(path: Path) -> h5py.File:
    """A pack opened read-only without HDF5's file locking, which fails on many NFS and Lustre mounts
    (a pack is never written in place: packing writes a new file and renames it)."""
    return h5py.File(path, "r", locking=False)


class H5VideoSource(VideoSource):
    """A pack written by ``data.pack``. The file is opened on first read in each process.

    DataLoader workers are forked copies: an HDF5 handle must never cross a fork, so the handle
    remembers the pid that opened it and is re-opened in any other process (and never pickled).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FramecastError(f"{self.path}: pack file not found")
        try:
            with open_pack(self.path) as h5:
                frames = h5["frames"]
                if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != CHANNELS:
                    raise FramecastError(f"{self.path}: 'frames' is {frames.dtype} {frames.shape}, expected uint8 (N, T, H, W, 3)")
                shape = frames.shape  # (N, T, H, W, C)
                self.names = [str(name) for name in h5["names"].asstr()[()]]
        except (OSError, KeyError) as exc:
            raise FramecastError(f"{self.path}: not a framecast pack ({exc})") from None
        if len(self.names) != shape[0]:
            raise FramecastError(f"{self.path}: {len(self.names)} names for {shape[0]} videos")
        for name in self.names:
            check_video_name(name, self.path)  # a crafted pack must not name folders elsewhere
        self.num_frames = shape[1]
        self.frame_shape = tuple(shape[2:])
        self._file = self._frames = self._pid = None  # opened lazily, per process

    def _dataset(self) -> h5py.Dataset:
        if self._pid != os.getpid():
            self._file = open_pack(self.path)
            self._frames = self._file["frames"]  # (N, T, H, W, C)
            self._pid = os.getpid()
        return self._frames

    def read(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop = self._range(index, start, stop)
        return self._dataset()[index, start:stop]  # one chunk read: (stop - start, H, W, C)

    def describe(self) -> str:
        return f"pack {self.path}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = state["_frames"] = state["_pid"] = None
        return state


class PngVideoSource(VideoSource):
    """A split folder read directly, frame by frame (slower than a pack; no packing step needed).

    The frame count and size come from the first video; any video that differs fails on read with a
    message naming its file.
    """

    def __init__(self, split_dir: str | os.PathLike):
        self.split_dir = Path(split_dir)
        self.names = [video.name for video in list_videos(self.split_dir)]
        if not self.names:
            raise FramecastError(f"{self.split_dir}: no video_<n> folders")
        frames = list_frames(self.split_dir / self.names[0])
        self.num_frames = len(frames)
        self.frame_shape = (*frame_size(frames[0]), CHANNELS)

    def read(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop = self._range(index, start, stop)
        folder = self.split_dir / self.names[index]
        window = np.empty((stop - start, *self.frame_shape), dtype=np.uint8)  # (T, H, W, C)
        for offset, k in enumerate(range(start, stop)):
            read_frame(folder / frame_name(k), self.frame_shape[:2], out=window[offset])
        return window

    def describe(self) -> str:
        return f"PNG folder {self.split_dir}"


class ArrayVideoSource(VideoSource):
    """Videos already in an array (or a memory map): uint8 (N, T, H, W, C), or (N, T, H, W) grey
    replicated to ``channels`` on read (the Toronto Moving MNIST file, for a 3-channel model)."""

    def __init__(self, array: np.ndarray, names: list[str] | None = None, channels: int = CHANNELS,
                 label: str = "array"):
        if array.dtype != np.uint8 or array.ndim not in (4, 5):
            raise FramecastError(f"{label}: expected uint8 (N, T, H, W[, C]) videos, found {array.dtype} {array.shape}")
        self.array = array
        self.names = list(names) if names is not None else [video_name(i) for i in range(len(array))]
        if len(self.names) != len(array):
            raise FramecastError(f"{label}: {len(self.names)} names for {len(array)} videos")
        self.num_frames = array.shape[1]
        self.frame_shape = tuple(array.shape[2:]) if array.ndim == 5 else (*array.shape[2:], channels)
        self.label = label

    def read(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop = self._range(index, start, stop)
        window = self.array[index, start:stop]  # (T, H, W[, C]) view
        if window.ndim == 3:
            return np.repeat(window[..., None], self.frame_shape[-1], axis=-1)  # (T, H, W) -> (T, H, W, C)
        return np.array(window)  # a private, writable copy (the array may be a read-only map)

    def describe(self) -> str:
        return self.label


def open_toronto(path: str | os.PathLike) -> ArrayVideoSource:
    """The standard Moving MNIST test file as a source (memory-mapped; grey frames served as RGB)."""
    return ArrayVideoSource(read_toronto(path), label=f"Moving MNIST file {path}")


def split_pack_path(data_cfg: DataConfig, split: str) -> Path:
    root = expand("data.root", data_cfg.root)
    pack_dir = expand("data.pack_dir", data_cfg.pack_dir)
    return pack_path(pack_dir or Path(root) / PACKED_DIR, split)


def _staged(data_cfg: DataConfig, path: Path) -> Path:
    """``path``, or its node-local copy when ``data.stage_to`` is set (copied once per node, verified)."""
    stage_to = expand("data.stage_to", data_cfg.stage_to)
    if not stage_to:
        return path
    from data.staging import stage_file

    return stage_file(path, stage_to)


def _repack_command(data_cfg: DataConfig, split: str) -> str:
    out = f" --out {data_cfg.pack_dir}" if data_cfg.pack_dir else ""
    return f"main.py pack --data {data_cfg.root} --split {split}{out}"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:STALE_NAMES_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > STALE_NAMES_SHOWN else "")


def check_pack_fresh(data_cfg: DataConfig, split: str, pack: Path) -> None:
    """Refuse a pack that no longer holds what its split's PNG folders hold (when they are there):
    videos added, removed or changed since it was packed, or a pack too old to tell."""
    split_dir = Path(expand("data.root", data_cfg.root)) / split
    if not split_dir.is_dir():
        return  # the pack travelled without its folders: nothing to check it against
    repack = (f"repack with `{_repack_command(data_cfg, split)}` (data.source=png reads the folders instead; "
              "data.source=h5 uses the pack unchecked)")
    try:
        with open_pack(pack) as h5:
            recorded = source_record(h5)
    except OSError as exc:
        raise FramecastError(f"{pack}: not a framecast pack ({exc})") from None
    if recorded is None:
        raise FramecastError(f"{pack}: does not record which frames it was packed from (made by an older "
                             f"framecast), so it cannot be checked against {split_dir}; {repack}")
    stale = stale_videos(recorded, split_dir)
    if any(stale.values()):
        count = sum(len(names) for names in stale.values())
        what = "; ".join(f"{kind}: {_names(names)}" for kind, names in stale.items() if names)
        raise FramecastError(f"{pack}: stale, {count} video(s) of {split_dir} differ from what was packed "
                             f"({what}); {repack}")


def open_split(data_cfg: DataConfig, split: str) -> VideoSource:
    """The source of ``split`` as ``data.source`` says: ``h5`` pack, ``png`` folder, or ``auto``
    (the pack when it exists, else the folder). A split ending in ``.npy`` is a Toronto-layout file.
    With ``auto`` the pack is first checked against the split's PNG folders when they exist
    (``check_pack_fresh``): a stale pack is refused, never read. ``h5`` trusts the pack unchecked.
    Packs and .npy files are read from their node-local copy when ``data.stage_to`` is set; PNG
    folders are always read where they are. ``${VAR}`` in the path settings is expanded here."""
    split = expand("split", split)
    if split.endswith(".npy"):
        return open_toronto(_staged(data_cfg, Path(split)) if Path(split).is_file() else split)
    pack = split_pack_path(data_cfg, split)
    if data_cfg.source == "h5" or (data_cfg.source == "auto" and pack.is_file()):
        if not pack.is_file():
            raise FramecastError(f"{pack}: pack not found (data.source=h5; run `main.py pack --data {data_cfg.root}`)")
        if data_cfg.source == "auto":
            check_pack_fresh(data_cfg, split, pack)
        return H5VideoSource(_staged(data_cfg, pack))
    if expand("data.stage_to", data_cfg.stage_to):
        logging.getLogger(__name__).warning(
            "%s: read from its PNG folders, which data.stage_to does not stage (only packs are: run "
            "`main.py pack --data %s`)", split, data_cfg.root)
    return PngVideoSource(Path(expand("data.root", data_cfg.root)) / split)
