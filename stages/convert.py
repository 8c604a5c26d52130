"""The convert stage: the prediction ``.npy`` -> ``<convert.out>/video_<n>/image_<k>.png``.

    python np_to_png.py preds/hidden.npy --out DIR [--frames 21] [--workers 4] [--spread]
    python main.py convert --config ...                     # convert.spread: true for the heat maps

Video names and frame numbers ``k`` (those that follow each video's last input frame: 11..21 for
the reference data) come from the array's index (``data.predictions``). Runs after predict (or after
a job array of predict shards, which it merges first when the merged array is missing or older than
its shards), so one Slurm dependency chain covers the whole path.

With ``spread`` (``convert.spread``, ``np_to_png.py --spread``) it also draws an ensemble's spread
(``<stem>.std.npy``, ``predict.spread``) as ``video_<n>/spread_<k>.png``, one heat map per frame of
the frame's size: the per-pixel standard deviation across members, averaged over the three
channels, on a FIXED scale (``SPREAD_VMAX``) so maps of different frames, videos and runs compare:
std 0 (the members agree) is the colormap's darkest colour, ``SPREAD_VMAX`` = 0.25 (a quarter of
the intensity range) or more its brightest (``SPREAD_COLORMAP``, matplotlib's "inferno"), linear in
between. Predicted with ``predict.calibration``, the spread file holds each pixel's calibrated interval
half-width instead (its index says so), drawn on the same scale.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.atomic import atomic_path, os_error_text
from core.config import Config, ConvertConfig
from core.errors import FramecastError
from core.processes import die_with_parent
from data.layout import frame_name
from data.predictions import load_predictions, load_spread, merge_if_newer
from core.outputs import png_dir, predictions_path

# Rows per task handed to a worker: a few tasks per worker keep the bar moving and the pool busy.
TASKS_PER_WORKER = 8
# The spread heat maps' fixed scale: per-pixel std (mean over channels) 0 -> the colormap's first
# colour, SPREAD_VMAX or more -> its last, linear in between (256 levels).
SPREAD_VMAX = 0.25
SPREAD_COLORMAP = "inferno"


def spread_name(number: int) -> str:
    """The heat map of frame ``number``'s spread: ``spread_<k>.png`` beside ``image_<k>.png``."""
    return f"spread_{number}.png"


def spread_colours() -> np.ndarray:
    """The heat maps' 256 colours, uint8 (256, 3), darkest (std 0) first."""
    from matplotlib import colormaps

    rgba = colormaps[SPREAD_COLORMAP](np.linspace(0.0, 1.0, 256))  # (256, 4) float in [0, 1]
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def spread_heat_map(spread: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """float (H, W, 3) per-pixel std -> uint8 (H, W, 3) heat map on the fixed scale ``SPREAD_VMAX``."""
    level = np.clip(spread.astype(np.float32).mean(axis=-1) / SPREAD_VMAX, 0.0, 1.0)  # (H, W)
    return colours[np.round(level * 255).astype(np.uint8)]  # (H, W, 3)


def run(cfg: Config) -> Path:
    """Write the PNGs of ``predict.out`` (``convert.frames`` only, when set; with ``convert.spread``
    the spread heat maps too); returns the PNG folder."""
    npy = predictions_path(cfg)
    merge_if_newer(npy, cfg.predict.shards)
    out = png_dir(cfg)
    write_pngs(npy, out, frames=cfg.convert.frames or None, workers=cfg.convert.workers, spread=cfg.convert.spread)
    return out


def _write_rows(npy_path: str, rows: range, columns: list[int], frame_numbers: list[int],
                videos: list[str], out_dir: str, spread_path: str | None = None,
                colours: np.ndarray | None = None) -> int:
    """Write the PNGs of ``rows`` (only ``columns`` of each), and with ``spread_path`` their spread
    heat maps; opens the memmaps itself (in a worker)."""
    array = np.load(npy_path, mmap_mode="r")  # (N, T, H, W, 3) uint8, nothing read yet
    spread = np.load(spread_path, mmap_mode="r") if spread_path else None  # (N, T, H, W, 3) float16
    written = 0
    for row in rows:
        video_dir = Path(out_dir) / videos[row]
        for column in columns:
            frame = np.ascontiguousarray(array[row, column])  # (H, W, 3) uint8
            with atomic_path(video_dir / frame_name(frame_numbers[column])) as tmp:
                Image.fromarray(frame).save(tmp, format="PNG")
            written += 1
            if spread is not None:
                heat = spread_heat_map(spread[row, column], colours)  # (H, W, 3) uint8
                with atomic_path(video_dir / spread_name(frame_numbers[column])) as tmp:
                    Image.fromarray(heat).save(tmp, format="PNG")
                written += 1
    return written


def write_pngs(npy_path: str | os.PathLike, out_dir: str | os.PathLike, frames: list[int] | None = None,
               workers: int = ConvertConfig.workers, index_path: str | os.PathLike | None = None,
               spread: bool = False) -> int:
    """Write ``out_dir/video_<n>/image_<k>.png`` for every (or each requested) predicted frame, and
    with ``spread`` its heat map ``spread_<k>.png`` (the spread file the index names).

    ``frames`` are frame numbers as in the index (e.g. ``[21]`` for only the last one); ``workers``
    processes write in parallel (1 writes in this process). Returns the number of PNGs written.
    """
    array, index = load_predictions(npy_path, index_path)
    spread_path = colours = None
    if spread:
        load_spread(npy_path, index_path)  # refused here, in one line, when missing or not of the array's shape
        spread_path, colours = str(Path(npy_path).parent / index["spread"]["file"]), spread_colours()
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
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FramecastError(f"{out_dir}: cannot create the PNG folder ({os_error_text(exc)})") from None
    task_args = (str(npy_path), columns, frame_numbers, videos, str(out_dir), spread_path, colours)
    rows_per_task = max(1, -(-n_rows // (workers * TASKS_PER_WORKER)))
    chunks = [range(lo, min(lo + rows_per_task, n_rows)) for lo in range(0, n_rows, rows_per_task)]

    written = 0
    with tqdm(total=n_rows * len(columns) * (2 if spread else 1), desc="png", unit="frame", disable=None) as bar:
        if workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                done = _write_rows(task_args[0], chunk, *task_args[1:])
                written += done
                bar.update(done)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_write_rows, task_args[0], chunk, *task_args[1:]) for chunk in chunks]
                for future in as_completed(futures):
                    done = future.result()
                    written += done
                    bar.update(done)
    return written
