"""Turn a prediction array into the reference PNG layout, one file per predicted frame.

    python np_to_png.py preds/hidden.npy --out DIR [--frames 21] [--workers 4]

writes ``DIR/video_<n>/image_<k>.png``, where ``video_<n>`` and the frame numbers ``k`` (continuing
after the input frames: 11..21 for the reference data) come from the array's sidecar index.

The index is ``<array without .npy>.json`` (``preds/hidden.npy`` -> ``preds/hidden.json``), written by
``stages/predict.py`` next to the array: {"videos": [...], "frames": [...], "shape": [...], ...}.
An array that disagrees with its index (shape, dtype, row or frame count) is refused, because writing
it would silently give videos the wrong frames.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.atomic import atomic_path
from core.config import ConvertConfig
from core.errors import FramecastError
from data.layout import frame_name, video_number

# Rows per task handed to a worker: a few tasks per worker keep the bar moving and the pool busy.
TASKS_PER_WORKER = 8


def index_path_for(npy_path: str | os.PathLike) -> Path:
    """The sidecar index of a prediction array: ``preds/hidden.npy`` -> ``preds/hidden.json``."""
    return Path(npy_path).with_suffix(".json")


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
        # Names become folder names: exactly video_<n>, nothing that could point elsewhere.
        if Path(name).name != name:
            raise FramecastError(f"{file}: {name!r} is not a video_<n> folder name")
        video_number(name)
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
    if not npy.is_file():
        raise FramecastError(f"{npy}: prediction array not found")
    index = read_index(index_file)
    try:
        array = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FramecastError(f"{npy}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise FramecastError(f"{npy}: holds {type(array).__name__}, not one array")
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


def _write_rows(npy_path: str, rows: range, columns: list[int], frame_numbers: list[int],
                videos: list[str], out_dir: str) -> int:
    """Worker: write the PNGs of ``rows`` (only ``columns`` of each); opens the memmap itself."""
    array = np.load(npy_path, mmap_mode="r")  # (N, T, H, W, 3) uint8, nothing read yet
    written = 0
    for row in rows:
        video_dir = Path(out_dir) / videos[row]
        for column in columns:
            frame = np.ascontiguousarray(array[row, column])  # (H, W, 3) uint8
            with atomic_path(video_dir / frame_name(frame_numbers[column])) as tmp:
                Image.fromarray(frame).save(tmp, format="PNG")
            written += 1
    return written


def convert(npy_path: str | os.PathLike, out_dir: str | os.PathLike, frames: list[int] | None = None,
            workers: int = ConvertConfig.workers, index_path: str | os.PathLike | None = None) -> int:
    """Write ``out_dir/video_<n>/image_<k>.png`` for every (or each requested) predicted frame.

    ``frames`` are frame numbers as in the index (e.g. ``[21]`` for only the last one); ``workers``
    processes write in parallel (1 writes in this process). Returns the number of PNGs written.
    """
    array, index = load_predictions(npy_path, index_path)
    frame_numbers: list[int] = index["frames"]
    if frames:
        missing = sorted(set(frames) - set(frame_numbers))
        if missing:
            raise FramecastError(f"{npy_path}: frame(s) {missing} were not predicted (it holds frames {frame_numbers})")
        columns = [frame_numbers.index(k) for k in sorted(set(frames))]
    else:
        columns = list(range(len(frame_numbers)))
    if workers < 1:
        raise FramecastError(f"convert.workers must be >= 1, got {workers}")

    videos: list[str] = index["videos"]
    n_rows = array.shape[0]
    del array  # workers open their own memmap
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    task_args = (str(npy_path), columns, frame_numbers, videos, str(out_dir))
    rows_per_task = max(1, -(-n_rows // (workers * TASKS_PER_WORKER)))
    chunks = [range(lo, min(lo + rows_per_task, n_rows)) for lo in range(0, n_rows, rows_per_task)]

    written = 0
    with tqdm(total=n_rows * len(columns), desc="png", unit="frame", disable=None) as bar:
        if workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                done = _write_rows(task_args[0], chunk, *task_args[1:])
                written += done
                bar.update(done)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                futures = [pool.submit(_write_rows, task_args[0], chunk, *task_args[1:]) for chunk in chunks]
                for future in as_completed(futures):
                    done = future.result()
                    written += done
                    bar.update(done)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a prediction .npy (N, T, H, W, 3) uint8 as DIR/video_<n>/image_<k>.png, "
        "using its sidecar index <name>.json for video names and frame numbers."
    )
    parser.add_argument("npy", help="prediction array, e.g. preds/hidden.npy")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--frames", type=int, nargs="+", metavar="K",
                        help="frame numbers to write (e.g. 21 for the last one); default all")
    parser.add_argument("--workers", type=int, default=ConvertConfig.workers,
                        help=f"parallel writer processes (default {ConvertConfig.workers})")
    parser.add_argument("--index", help="index JSON (default: the .npy path with .json)")
    args = parser.parse_args(argv)
    try:
        count = convert(args.npy, args.out, frames=args.frames, workers=args.workers, index_path=args.index)
    except FramecastError as exc:
        print(f"np_to_png: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} PNG frames under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
