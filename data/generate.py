"""Shared machinery of the data-set generators: numbering, validation, parallel PNG writing.

A generator supplies only a *renderer*: ``render(rng) -> (video uint8 (T, H, W, 3), mask uint8 (T, H, W))``.
Each video gets its own random generator seeded from ``(seed, video number)``, so the output is the
same whatever the number of worker processes and whichever order they finish in.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import FramecastError
from core.processes import die_with_parent
from core.atomic import atomic_dir
from data.pack import PACKED_DIR
from data.layout import LABELED_SPLITS, MASK_NAME, SPLITS, frame_name, video_name

Renderer = Callable[[np.random.Generator], "tuple[np.ndarray, np.ndarray]"]

# zlib level of the PNGs written: 1 writes much faster than Pillow's default 6, for larger files that
# take longer to decode. Fast generation matters more for the demo and tests; ``make-data --png-level 6``
# writes typical files.
PNG_COMPRESS_LEVEL = 1
# Videos handed to a worker at a time: enough to hide the hand-off, small enough to balance load.
TASK_CHUNK = 4

_worker_render: Renderer | None = None


def video_rng(seed: int, number: int) -> np.random.Generator:
    """The random stream of one video: a function of (seed, number) only."""
    return np.random.default_rng([seed, number])


def bounce(position: float, velocity: float, low: float, high: float) -> tuple[float, float]:
    """One step of constant-velocity motion reflected off the walls [low, high]."""
    position += velocity
    if position < low:
        position, velocity = 2 * low - position, -velocity
    elif position > high:
        position, velocity = 2 * high - position, -velocity
    return min(max(position, low), high), velocity


def check_counts(counts: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise FramecastError(f"video counts: unknown split {unknown[0]!r} (known: {', '.join(SPLITS)})")
    for split, count in counts.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise FramecastError(f"video counts: {split} must be a whole number >= 0, got {count!r}")
    if not any(counts.values()):
        raise FramecastError("video counts: every split is empty; nothing to generate")
    return {split: counts.get(split, 0) for split in SPLITS}


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FramecastError(f"{name} must be a whole number >= 1, got {value!r}")


def existing_dataset(out: Path) -> list[Path]:
    """The parts of a data set already in ``out`` (split folders, packs) that a new one would replace."""
    return [path for path in (*(out / s for s in SPLITS), out / PACKED_DIR) if path.exists()]


def _init_worker(render: Renderer | None, parent_pid: int | None = None) -> None:
    global _worker_render
    _worker_render = render
    if parent_pid is not None:  # a pool worker: end with the generating process
        die_with_parent(parent_pid)


def _write_video(task: tuple[Path, int, int, int, bool, int]) -> int:
    """Render one video and write its first ``keep`` frames (and the mask when ``labeled``)."""
    split_dir, number, seed, keep, labeled, compress_level = task
    video, mask = _worker_render(video_rng(seed, number))  # (T, H, W, 3) uint8, (T, H, W) uint8
    folder = split_dir / video_name(number)
    folder.mkdir()
    for k in range(keep):
        Image.fromarray(video[k]).save(folder / frame_name(k), format="PNG", compress_level=compress_level)
    if labeled:
        np.save(folder / MASK_NAME, mask[:keep])
    return number


def write_dataset(out: str | os.PathLike, counts: dict[str, int], render: Renderer, *, frames: int,
                  hidden_frames: int, seed: int, workers: int | None, overwrite: bool,
                  compress_level: int = PNG_COMPRESS_LEVEL, desc: str = "make-data") -> Path:
    """Write ``<out>/<split>/video_<n>/image_<k>.png`` (+ ``mask.npy`` in train/val) for every split.

    Videos are numbered consecutively across splits in the order train, val, unlabeled, hidden.
    Hidden videos keep only their first ``hidden_frames`` frames. Each split is built in a temporary
    folder and renamed into place at the end, so an interrupted run leaves the old data set (or none).
    """
    root = Path(out)
    counts = check_counts(counts)
    check_positive(frames=frames, hidden_frames=hidden_frames)
    if hidden_frames > frames:
        raise FramecastError(f"hidden_frames ({hidden_frames}) must not exceed frames ({frames})")
    if not isinstance(seed, int) or seed < 0:
        raise FramecastError(f"seed must be a whole number >= 0, got {seed!r}")
    existing = existing_dataset(root)
    if existing and not overwrite:
        raise FramecastError(
            f"{root}: already holds a data set ({existing[0].name}/); pass overwrite=True (--overwrite) to replace it"
        )
    workers = (os.cpu_count() or 1) if workers is None else workers

    with contextlib.ExitStack() as stack:
        tasks = []
        first = 0
        for split in SPLITS:
            count = counts[split]
            if count:
                tmp = stack.enter_context(atomic_dir(root / split, replace=True))
                keep = hidden_frames if split == "hidden" else frames
                labeled = split in LABELED_SPLITS
                tasks += [(tmp, n, seed, keep, labeled, compress_level) for n in range(first, first + count)]
            first += count
        bar = tqdm(total=len(tasks), desc=desc, unit="video", disable=None)
        with bar:
            if workers <= 1:
                _init_worker(render)
                try:
                    for task in tasks:
                        _write_video(task)
                        bar.update()
                finally:
                    _init_worker(None)
            else:
                # (A worker killed outright fails the run with BrokenProcessPool instead of hanging.)
                with ProcessPoolExecutor(min(workers, len(tasks)), initializer=_init_worker,
                                         initargs=(render, os.getpid())) as pool:
                    for _ in pool.map(_write_video, tasks, chunksize=TASK_CHUNK):
                        bar.update()
    # The new splits are in place; drop what would mix with them: splits not regenerated, stale packs.
    for path in existing:
        if path.name == PACKED_DIR or not counts[path.name]:
            shutil.rmtree(path)
    return root
