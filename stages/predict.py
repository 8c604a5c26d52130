"""The predict stage: forecast the frames that follow every video of a split.

    python main.py predict --checkpoint runs/<name>/best.pt --split hidden --out preds/hidden.npy

A video's future is what follows its LAST frame: the model reads each video's last ``t_in`` frames
and the rows hold frames ``num_frames .. num_frames + t_out - 1`` (11..21 for the reference hidden
split of 11 frames). Output: the ``.npy`` + index of ``data.predictions`` (one row per video in
numeric order), streamed batch by batch, so RAM never holds the array and a killed job never leaves
half an array.

``run(cfg, shard=(i, n))`` predicts only the i-th of n contiguous slices of the split (one Slurm
array task each) into ``<stem>.shard<i>of<n>.npy``; ``data.predictions.merge_shards`` joins them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from core.config import Config, config_to_dict
from core.errors import FramecastError
from data.datasets import VideoWindowDataset, check_channels, to_model_input
from data.predictions import merge_shards, npy_rows, shard_path, shard_rows, write_index
from data.sources import open_split
from stages.inference import Predictor, to_uint8_frames


def output_path(cfg: Config) -> Path:
    """``predict.out``, or ``<run_dir>/preds/<predict.split>.npy``."""
    if cfg.predict.out:
        return Path(cfg.predict.out)
    return cfg.run_dir / "preds" / f"{Path(cfg.predict.split).stem}.npy"


def write_predictions(predictor: Predictor, dataset: VideoWindowDataset | Subset, out: Path,
                      index: dict[str, Any]) -> Path:
    """Predict every sample of ``dataset`` (uint8 (t_in, H, W, C) each) into ``out`` + its index.

    Rows are appended to the ``.npy`` in loader order as batches arrive, so the host holds one batch
    at a time whatever N is.
    """
    h, w, _ = (dataset.dataset if isinstance(dataset, Subset) else dataset).frame_shape
    shape = (len(dataset), predictor.t_out, h, w, 3)  # (N, t_out, H, W, 3)
    device = predictor.precision.device
    nonfinite = torch.zeros((), dtype=torch.int64, device=device)
    loader = predictor.loader(dataset)
    with npy_rows(out, shape) as handle:
        for batch in tqdm(loader, desc=f"predict {out.name}", unit="batch", disable=None):
            inputs = to_model_input(batch, device, predictor.precision.channels_last,
                                    predictor.in_channels)  # (B, t_in, C, H, W)
            raw = predictor(inputs)  # (B, t_out, C, H, W)
            nonfinite += (~torch.isfinite(raw)).sum()
            frames = to_uint8_frames(raw).cpu().numpy()  # (B, t_out, H, W, 3) uint8
            handle.write(frames)  # the array's buffer, no extra copy
        if nonfinite.item():
            raise FramecastError(
                f"{predictor.checkpoint}: the model produced {nonfinite.item()} NaN/infinite values; "
                f"nothing was written to {out}"
            )
    loader.end_workers()  # now, rather than at garbage collection
    write_index(out, index, shape)
    return out


def run(cfg: Config, shard: tuple[int, int] = (0, 1)) -> Path:
    """Predict ``predict.split`` (or shard ``i`` of ``n`` of it); returns the ``.npy`` written."""
    index_of, count = shard
    predictor = Predictor.load(cfg)
    t_in, t_out = predictor.t_in, predictor.t_out
    split = cfg.predict.split
    source = open_split(cfg.data, split)
    frames = source.num_frames
    if frames < t_in:
        raise FramecastError(
            f"{source.describe()}: videos have {frames} frames, but {predictor.checkpoint} needs its last "
            f"t_in={t_in} to predict what follows"
        )
    dataset = VideoWindowDataset(source, t_in, 0, from_end=True)  # the last t_in frames of each video
    check_channels(dataset, predictor.in_channels)
    rows = shard_rows(len(dataset), index_of, count)
    out = output_path(cfg) if count == 1 else shard_path(output_path(cfg), index_of, count)
    index = {
        "videos": [dataset.video_name(i) for i in rows],
        "frames": list(range(frames, frames + t_out)),  # what follows each video's last frame
        "inputs": list(range(frames - t_in, frames)),  # the frames the model read
        "split": split,
        "source": source.describe(),
        "checkpoint": str(predictor.checkpoint),
        "epoch": predictor.epoch,
        "shard": [index_of, count],
        "rows": [rows.start, rows.stop],
        "total_videos": len(dataset),
        "config": config_to_dict(predictor.cfg),
    }
    return write_predictions(predictor, Subset(dataset, rows), out, index)


def merge(cfg: Config) -> Path:
    """The merge stage: join the ``predict.shards`` shards of ``predict.out`` into it."""
    return merge_shards(output_path(cfg), cfg.predict.shards)
