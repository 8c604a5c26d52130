"""The predict stage: forecast the frames that follow every video of a split.

    python main.py predict --checkpoint runs/<name>/best.pt --split hidden --out preds/hidden.npy
    python main.py predict --checkpoint 'runs/sweep/*/best.pt' --out preds/hidden.npy predict.spread=true

A video's future is what follows its LAST frame: the model reads each video's last ``t_in`` frames
and the rows hold frames ``num_frames .. num_frames + t_out - 1`` (11..21 for the reference hidden
split of 11 frames). Output: the ``.npy`` + index of ``data.predictions`` (one row per video in
numeric order), streamed batch by batch, so RAM never holds the array and a killed job never leaves
half an array.

Several checkpoints (``--checkpoint`` given more than once, a glob, or a list in
``predict.checkpoint``: ``training.inference``) predict as an ensemble: each batch goes through every
member and the ``.npy`` holds the mean of their outputs clipped to [0, 1] (rounded to uint8 as one
model's are); with ``predict.spread`` a second array ``<stem>.std.npy`` holds their per-pixel
standard deviation, float16 (N, T_out, H, W, 3). The index lists the members and names the spread
file. An ensemble's default output is ``<run.out_dir>/ensembles/<name>/preds/<split>.npy``, beside the
run folders (core.outputs.output_dir): never inside a member's run, whose own predictions it must not replace.

``run(cfg, shard=(i, n))`` predicts only the i-th of n contiguous slices of the split (one Slurm
array task each) into ``<stem>.shard<i>of<n>.npy`` (and ``.std.npy``); ``data.predictions.merge_shards``
joins them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch.utils.data import Subset
from tqdm import tqdm

from core.config import Config, config_to_dict
from core.errors import FramecastError
from core.processes import signals_stop
from data.datasets import VideoWindowDataset, check_channels, to_model_input
from data.predictions import (SPREAD_DTYPE, merge_shards, npy_rows, shard_path, shard_rows, spread_entry,
                              spread_path_for, write_index)
from data.sources import open_split
from core.outputs import predictions_path
from training.calibration import Calibration, ScaleFunction
from training.inference import Ensemble, Predictor, to_spread_frames, to_uint8_frames

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Interval:
    """``predict.calibration``'s interval of coverage ``predict.interval_level``: its per-pixel half-width."""

    factors: Any  # (t_out,) float32 tensor: the level's factor per lead time
    scale: ScaleFunction
    definition: str

    @classmethod
    def of(cls, cfg: Config, ensemble: Ensemble) -> "Interval":
        path, level = cfg.predict.calibration, cfg.predict.interval_level
        calibration = Calibration.load(path)
        calibration.check_fits(path, ensemble.t_in, ensemble.t_out, ensemble.in_channels, len(ensemble.members),
                               [str(m.checkpoint) for m in ensemble.members])
        matches = [k for k, fitted in enumerate(calibration.levels) if abs(fitted - level) < 1e-9]
        if not matches:
            raise FramecastError(f"predict.interval_level={level:g}: {path} was fitted for the levels "
                                 f"{calibration.levels} (calibrate.levels)")
        definition = (f"per-pixel half-width of the calibrated {level:.0%} interval around the .npy's forecast "
                      f"({calibration.method}, split-conformal per lead time on {calibration.videos} videos of "
                      f"{calibration.split}; {path})")
        return cls(calibration.factor_table()[:, matches[0]].to(ensemble.precision.device),
                   calibration.scale_function(ensemble.precision.device), definition)

    def half_width(self, inputs, forecast, std):
        return self.scale(inputs, forecast, std) * self.factors.view(1, -1, 1, 1, 1)


def write_predictions(predictor: Predictor | Ensemble, dataset: VideoWindowDataset | Subset, out: Path,
                      index: dict[str, Any], spread: bool = False, interval: Interval | None = None) -> Path:
    """Predict every sample of ``dataset`` (uint8 (t_in, H, W, C) each) into ``out`` + its index,
    and with ``spread`` the members' per-pixel std into ``spread_path_for(out)`` (with ``interval``
    instead its calibrated half-width per pixel).

    Rows are appended to the ``.npy`` in loader order as batches arrive, so the host holds one batch
    at a time whatever N is.
    """
    ensemble = predictor if isinstance(predictor, Ensemble) else Ensemble([predictor])
    h, w, _ = (dataset.dataset if isinstance(dataset, Subset) else dataset).frame_shape
    shape = (len(dataset), ensemble.t_out, h, w, 3)  # (N, t_out, H, W, 3)
    device = ensemble.precision.device
    channels_last = ensemble.precision.channels_last
    loader = ensemble.loader(dataset)
    ensemble.nonfinite.zero_()
    spread = spread or interval is not None
    several = len(ensemble.members) > 1
    spread_out = spread_path_for(out)
    with contextlib.ExitStack() as stack:
        # The spread file is renamed into place after the array, whose rename drops the old index first.
        spread_handle = (stack.enter_context(npy_rows(spread_out, shape, SPREAD_DTYPE, drop_index=False))
                         if spread else None)
        handle = stack.enter_context(npy_rows(out, shape))
        for batch in tqdm(loader, desc=f"predict {out.name}", unit="batch", disable=None):
            inputs = to_model_input(batch, device, channels_last, ensemble.in_channels)  # (B, t_in, C, H, W)
            mean, std = ensemble(inputs, spread=spread and (interval is None or several))  # (B, t_out, C, H, W) each
            handle.write(to_uint8_frames(mean).cpu().numpy())  # (B, t_out, H, W, 3) uint8, no extra copy
            if interval is not None:
                std = interval.half_width(inputs, mean, std)  # (B, t_out, C, H, W)
            if spread_handle is not None:
                spread_handle.write(to_spread_frames(std).cpu().numpy())  # (B, t_out, H, W, 3) float16
        ensemble.raise_if_nonfinite(out)
        if not spread:
            spread_out.unlink(missing_ok=True)  # a former ensemble's, which the new index won't name
    loader.end_workers()  # now, rather than at garbage collection
    index = {**index, "members": index.get("members", ensemble.describe()),
             "spread": (spread_entry(out, *([interval.definition] if interval is not None else [])) if spread
                        else None)}
    write_index(out, index, shape)
    return out


def run(cfg: Config, shard: tuple[int, int] = (0, 1)) -> Path:
    """Predict ``predict.split`` (or shard ``i`` of ``n`` of it); returns the ``.npy`` written."""
    index_of, count = shard
    ensemble = Ensemble.load(cfg)
    t_in, t_out = ensemble.t_in, ensemble.t_out
    split = cfg.predict.split
    source = open_split(cfg.data, split)
    frames = source.num_frames
    if frames < t_in:
        raise FramecastError(
            f"{source.describe()}: videos have {frames} frames, but {ensemble.first.checkpoint} needs its last "
            f"t_in={t_in} to predict what follows"
        )
    dataset = VideoWindowDataset(source, t_in, 0, from_end=True)  # the last t_in frames of each video
    check_channels(dataset, ensemble.in_channels)
    height, width, _ = dataset.frame_shape
    ensemble.check_frames(height, width, source.describe())
    if cfg.predict.spread and len(ensemble.members) == 1:
        log.warning("predict.spread with one checkpoint (%s): its spread is zero everywhere", ensemble.first.checkpoint)
    rows = shard_rows(len(dataset), index_of, count)
    out = predictions_path(cfg) if count == 1 else shard_path(predictions_path(cfg), index_of, count)
    index = {
        "videos": [dataset.video_name(i) for i in rows],
        "frames": list(range(frames, frames + t_out)),  # what follows each video's last frame
        "inputs": list(range(frames - t_in, frames)),  # the frames the model read
        "split": split,
        "source": source.describe(),
        "checkpoint": ensemble.checkpoint,  # the path, or (an ensemble of several) every member's
        "epoch": ensemble.epoch,
        "members": ensemble.describe(),
        "shard": [index_of, count],
        "rows": [rows.start, rows.stop],
        "total_videos": len(dataset),
        "config": config_to_dict(ensemble.cfg),
    }
    interval = Interval.of(cfg, ensemble) if cfg.predict.calibration else None
    with signals_stop(f"predict {out}"):
        return write_predictions(ensemble, Subset(dataset, rows), out, index, spread=cfg.predict.spread,
                                 interval=interval)


def merge(cfg: Config) -> Path:
    """The merge stage: join the ``predict.shards`` shards of ``predict.out`` into it (and their spread)."""
    return merge_shards(predictions_path(cfg), cfg.predict.shards)
