"""Pack a split's PNG folders into one HDF5 file: uint8 ``frames`` (N, T, H, W, 3), one video per chunk.

Worker processes decode and validate whole videos (and gzip them, when asked, so compression runs in
parallel too); the parent only writes finished chunks, in numeric video order. At most a few videos
per worker are in flight, so memory stays flat however many videos the split holds. The file is
written under a temporary name and renamed at the end: an interrupted pack leaves no half file.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import mmap
import multiprocessing
import os
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from core.atomic import WritebackAhead, atomic_path
from core.errors import FramecastError
from core.processes import die_with_parent
from data.layout import CHANNELS, FRAME_PATTERN, SPLITS, frame_size, list_frames, list_videos, read_video

# 2: the pack records what it was made from (SOURCE_NAMES, SOURCE_STAMPS), so readers can tell it is stale.
FORMAT_VERSION = 2
# Datasets of every video folder the split held when packed (skipped ones too) and each one's stamp.
SOURCE_NAMES = "source_videos"
SOURCE_STAMPS = "source_stamps"
# Where packs go by default: <data root>/packed/<split>.h5.
PACKED_DIR = "packed"
COMPRESSIONS = ("none", "gzip", "lzf")
GZIP_LEVEL = 4  # zlib level for compression="gzip": most of level 9's size at a fraction of the time
# Videos per worker kept in flight: keeps every worker busy while bounding the parent's memory.
IN_FLIGHT_PER_WORKER = 4
# Videos whose frame count and size are polled to agree on the split's geometry (a majority vote,
# so one bad first video cannot make every good one look wrong).
GEOMETRY_SAMPLE = 9
# Threads stamping a split's videos when a reader checks a pack: stat calls wait on the file system
# (a network one above all), not on the CPU, so several in flight finish a large split sooner.
STAMP_THREADS = 8
# Bytes written between background flushes of the pack to disk: large enough to write sequentially,
# small enough that the final fsync finds little left to write.
WRITEBACK_BYTES = 128 << 20


def pack_path(pack_dir: str | os.PathLike, split: str) -> Path:
    return Path(pack_dir) / f"{split}.h5"


def video_stamp(video_dir: str | os.PathLike) -> int:
    """A video folder's frame files as one number: a hash of each frame's name, size and mtime.

    From directory entries only (no file is read), so checking a whole split costs one stat per frame.
    Adding, removing, rewriting or replacing a frame changes it; copying the folder without keeping
    mtimes (``cp -r`` without ``-p``) changes it too, which errs on the side of repacking.
    """
    digest = hashlib.blake2b(digest_size=8)
    entries = []
    with os.scandir(video_dir) as found:
        for entry in found:
            if FRAME_PATTERN.fullmatch(entry.name):
                stat = entry.stat()
                entries.append(f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8", "surrogateescape") + b"\n")
    return int.from_bytes(digest.digest(), "little")


def _reference_geometry(videos: Sequence[Path]) -> tuple[int, int, int]:
    """(T, H, W) shared by most of the first few videos, from directory listings and PNG headers only."""
    votes: collections.Counter = collections.Counter()
    first_error = None
    for video in videos[:GEOMETRY_SAMPLE]:
        try:
            frames = list_frames(video)
            votes[(len(frames), *frame_size(frames[0]))] += 1
        except FramecastError as exc:
            first_error = first_error or exc
    if not votes:
        raise first_error
    return votes.most_common(1)[0][0]


# The worker processes' view of the parent's shared ring of video slots (set when they start).
_ring: mmap.mmap | None = None


def _attach_ring(ring: mmap.mmap | None, parent_pid: int | None = None) -> None:
    global _ring
    _ring = ring
    if parent_pid is not None:  # a pool worker: end with the packing process
        die_with_parent(parent_pid)


def _slot(ring: mmap.mmap | bytearray, index: int, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    return np.frombuffer(ring, dtype=np.uint8, count=size, offset=index * size).reshape(shape)


def _decode_task(task: tuple[int, Path, tuple[int, int, int], str]) -> tuple[bytes | None, str | None, int]:
    """Worker: decode and validate one video straight into its ring slot (uint8 (T, H, W, 3)).

    Returns (zlib bytes of the video when packing with gzip, else None; the error message or None;
    the folder's ``video_stamp``, taken before reading, so a frame changed meanwhile reads as stale).
    """
    slot, video_dir, (num_frames, height, width), compression = task
    video = _slot(_ring, slot, (num_frames, height, width, CHANNELS))  # (T, H, W, 3) view
    try:
        stamp = video_stamp(video_dir)
        read_video(video_dir, num_frames, (height, width), out=video)
    except OSError as exc:
        return None, f"{video_dir}: cannot read ({exc.strerror or exc})", 0
    except FramecastError as exc:
        return None, str(exc), stamp
    if compression == "gzip":
        # HDF5's deflate filter stores plain zlib streams, so the chunk can be compressed here.
        return zlib.compress(video, GZIP_LEVEL), None, stamp
    return None, None, stamp


def _decoded_videos(videos: Sequence[Path], geometry: tuple[int, int, int], compression: str,
                    workers: int) -> Iterator[tuple[np.ndarray | bytes | None, str | None, int]]:
    """Decode ``videos`` in order: yields (the video, or None with the error message; its stamp).

    The video is a view of a slot in a ring shared with the workers (forked, so they inherit it):
    it stays valid until the next item is requested. Nothing is pickled but paths and messages, and
    at most ``workers * IN_FLIGHT_PER_WORKER`` videos are in flight, so memory stays flat however
    fast the workers are (``Pool.imap`` would buffer finished videos without limit).
    """
    shape = (*geometry, CHANNELS)
    slots = workers * IN_FLIGHT_PER_WORKER if workers > 1 else 1
    ring = mmap.mmap(-1, slots * int(np.prod(shape)))  # anonymous, MAP_SHARED: visible across fork

    def outcome(slot: int, packed: bytes | None, error: str | None,
                stamp: int) -> tuple[np.ndarray | bytes | None, str | None, int]:
        if error is not None:
            return None, error, stamp
        return (_slot(ring, slot, shape) if packed is None else packed), None, stamp

    if workers <= 1:
        _attach_ring(ring)
        try:
            for video in videos:
                yield outcome(0, *_decode_task((0, video, geometry, compression)))
        finally:
            _attach_ring(None)
        return
    free = collections.deque(range(slots))
    pending: collections.deque = collections.deque()
    todo = iter(videos)
    # A worker killed outright (out of memory) fails the pack with BrokenProcessPool instead of hanging.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_attach_ring, initargs=(ring, os.getpid()))
    try:

        def submit() -> None:
            video = next(todo, None)
            if video is not None:
                slot = free.popleft()
                pending.append((slot, pool.submit(_decode_task, (slot, video, geometry, compression))))

        for _ in range(slots):
            submit()
        while pending:
            slot, future = pending.popleft()
            yield outcome(slot, *future.result())
            free.append(slot)
            submit()
    finally:
        pool.shutdown(cancel_futures=True)  # a bad video ends the pack without decoding the rest


class PackWriter:
    """Appends videos to a new pack file (already open under its temporary name) and finalises it."""

    def __init__(self, h5: h5py.File, capacity: int, num_frames: int, height: int, width: int, compression: str):
        self.h5 = h5
        self.compression = compression
        chunk = (1, num_frames, height, width, CHANNELS)
        options = {"gzip": dict(compression="gzip", compression_opts=GZIP_LEVEL), "lzf": dict(compression="lzf")}
        self.frames = h5.create_dataset(
            "frames", shape=(capacity, *chunk[1:]), maxshape=(None, *chunk[1:]), chunks=chunk, dtype=np.uint8,
            **options.get(compression, {}),
        )  # (N, T, H, W, 3)
        self.video_shape, self.capacity = chunk[1:], capacity
        self.count = 0
        self.names: list[str] = []

    def append(self, name: str, video: np.ndarray | bytes) -> None:
        """Write one video: uint8 (T, H, W, 3), or its zlib-compressed bytes when the pack is gzip."""
        if self.count == self.capacity:
            self.capacity += 1
            self.frames.resize(self.capacity, axis=0)
        if isinstance(video, bytes) or self.compression == "none":
            # The chunk is the video's bytes as they are (gzip: already deflated by the worker): writing
            # it directly skips HDF5's selection and copy path, about 6x faster than item assignment.
            if not isinstance(video, bytes):
                if video.shape != self.video_shape or video.dtype != np.uint8:
                    raise ValueError(f"video {name}: {video.dtype} {video.shape}, expected uint8 {self.video_shape}")
                video = np.ascontiguousarray(video)
            self.frames.id.write_direct_chunk((self.count, 0, 0, 0, 0), video)
        else:
            self.frames[self.count] = video
        self.names.append(name)
        self.count += 1

    def finish(self, source: str, skipped: list[dict], stamps: dict[str, int] | None = None) -> None:
        """``stamps``: {video folder name: ``video_stamp``} of every folder packed or skipped; without
        them (a pack not made from folders) readers cannot check the pack against any folder."""
        self.frames.resize(self.count, axis=0)
        self.h5.create_dataset("names", data=np.array(self.names, dtype=object), dtype=h5py.string_dtype())
        if stamps is not None:
            self.h5.create_dataset(SOURCE_NAMES, data=np.array(list(stamps), dtype=object), dtype=h5py.string_dtype())
            self.h5.create_dataset(SOURCE_STAMPS, data=np.array(list(stamps.values()), dtype=np.uint64))
        _, num_frames, height, width, _ = self.frames.shape
        attrs = self.h5.attrs
        attrs["num_frames"], attrs["height"], attrs["width"] = num_frames, height, width
        attrs["skipped"] = json.dumps(skipped)
        # Where it was packed from, for people to read: bytes that are not UTF-8 (a path from another
        # system's encoding) are written as \\x escapes, which HDF5's UTF-8 strings can hold.
        attrs["source"] = source.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        attrs["format_version"] = FORMAT_VERSION


def open_pack_for_writing(tmp: Path) -> h5py.File:
    # v110 file format: the extensible-array chunk index, O(1) lookups of a video's chunk.
    return h5py.File(tmp, "w", libver=("v110", "v110"))


def pack_split(split_dir: str | os.PathLike, out_file: str | os.PathLike, workers: int | None = None,
               compression: str = "none", skip_bad: bool = False) -> Path:
    """Pack one split folder into ``out_file`` (HDF5); returns its path.

    Every video must have frames 0..T-1 of one size and RGB mode, T and size being those most of the
    split's first videos have. A bad video stops the pack with a one-line error naming the file;
    with ``skip_bad`` it is left out and listed in the file's ``skipped`` attribute instead.
    """
    split = Path(split_dir)
    if compression not in COMPRESSIONS:
        raise FramecastError(f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    videos = list_videos(split)
    if not videos:
        raise FramecastError(f"{split}: no video_<n> folders to pack")
    num_frames, height, width = _reference_geometry(videos)
    skipped: list[dict] = []
    stamps: dict[str, int] = {}
    with atomic_path(out_file) as tmp:
        with open_pack_for_writing(tmp) as h5:
            writer = PackWriter(h5, len(videos), num_frames, height, width, compression)
            bar = tqdm(total=len(videos), desc=f"pack {split.name}", unit="video", disable=None)
            # closing(): the worker pool stops as soon as a bad video ends the pack.
            results = _decoded_videos(videos, (num_frames, height, width), compression, min(workers, len(videos)))
            with bar, contextlib.closing(results), WritebackAhead(tmp, WRITEBACK_BYTES) as writeback:
                for video, (result, error, stamp) in zip(videos, results):
                    bar.update()
                    stamps[video.name] = stamp
                    if error is None:
                        writer.append(video.name, result)
                        writeback.wrote(len(result) if isinstance(result, bytes) else result.nbytes)
                    elif skip_bad:
                        skipped.append({"video": video.name, "error": error})
                        tqdm.write(f"skipped {error}", file=sys.stderr)
                    else:
                        raise FramecastError(error)
            if not writer.count:
                raise FramecastError(f"{split}: every video is bad, nothing to pack (first: {skipped[0]['error']})")
            writer.finish(str(split), skipped, stamps)
    return Path(out_file)


def source_record(h5: h5py.File) -> dict[str, int] | None:
    """{video folder name: stamp} the pack was made from, or None for a pack that does not record it."""
    if SOURCE_NAMES not in h5 or SOURCE_STAMPS not in h5:
        return None
    names = [str(name) for name in h5[SOURCE_NAMES].asstr()[()]]
    stamps = h5[SOURCE_STAMPS][()]
    if len(names) != len(stamps):
        return None
    return dict(zip(names, (int(s) for s in stamps)))


def stale_videos(recorded: dict[str, int], split_dir: Path) -> dict[str, list[str]]:
    """The videos of ``split_dir`` that differ from what a pack recorded: {"added", "removed", "changed"}."""
    now = {video.name: video for video in list_videos(split_dir)}

    def differs(name: str) -> bool:
        try:
            return video_stamp(now[name]) != recorded[name]
        except OSError:  # gone (or unreadable) since it was listed
            return True

    common = sorted(recorded.keys() & now.keys())
    with ThreadPoolExecutor(STAMP_THREADS) as pool:
        changed = [name for name, stale in zip(common, pool.map(differs, common)) if stale]
    order = lambda names: sorted(names, key=lambda n: (len(n), n))  # noqa: E731 - numeric for video_<n>
    return {"added": order(now.keys() - recorded.keys()), "removed": order(recorded.keys() - now.keys()),
            "changed": order(changed)}


def pack_dataset(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 splits: Sequence[str] | None = None, workers: int | None = None, compression: str = "none",
                 skip_bad: bool = False) -> list[Path]:
    """Pack each split of a data set into ``<out_dir>/<split>.h5`` (default ``<root>/packed``).

    ``splits`` defaults to those of train, val, unlabeled, hidden that exist under ``root``.
    """
    base = Path(root)
    if not base.is_dir():
        raise FramecastError(f"{base}: data folder not found")
    if splits is None:
        splits = [s for s in SPLITS if (base / s).is_dir()]
        if not splits:
            raise FramecastError(f"{base}: no split folders ({', '.join(SPLITS)}) to pack")
    target = Path(out_dir) if out_dir is not None else base / PACKED_DIR
    return [
        pack_split(base / split, pack_path(target, split), workers=workers, compression=compression,
                   skip_bad=skip_bad)
        for split in splits
    ]
