"""The predict stage: forecast the frames after the first ``t_in`` of every video of a split.

    python main.py predict --checkpoint runs/<name>/best.pt --split hidden --out preds/hidden.npy

Output: ``preds/hidden.npy``, uint8 (N, t_out, H, W, 3), one row per video in numeric order, plus its
index ``preds/hidden.json`` ({"videos", "frames", "checkpoint", "config", "shape", ...}; see
``np_to_png.index_path_for``). The array is created with ``open_memmap`` under a temporary name, its
rows streamed in batch by batch, and renamed when complete, so RAM never holds it and a killed job
never leaves half an array; the index is written (atomically) after it. It is a plain ``.npy``:
``numpy.load`` reads it anywhere.

``run(cfg, shard=(i, n))`` predicts only the i-th of n contiguous slices of the split (one Slurm
array task each) into ``<stem>.shard<i>of<n>.npy``; ``merge_shards`` joins them in order.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import Subset
from tqdm import tqdm

from core.atomic import atomic_path, write_json_atomic
from core.checkpoint import BEST_NAME
from core.config import Config, config_to_dict
from core.distributed import pick_device
from core.errors import FramecastError
from data.datasets import VideoWindowDataset, WindowLoader, make_loader, to_model_input
from data.sources import VideoSource, open_split
from load_model import load_model
from np_to_png import index_path_for, load_predictions
from training.step import autocast, autocast_dtype, use_channels_last, use_cudnn_autotune


# ----------------------------------------------------------------------------- paths


def checkpoint_path(cfg: Config) -> Path:
    """``predict.checkpoint``, or ``<run_dir>/best.pt``."""
    return Path(cfg.predict.checkpoint) if cfg.predict.checkpoint else cfg.run_dir / BEST_NAME


def output_path(cfg: Config) -> Path:
    """``predict.out``, or ``<run_dir>/preds/<predict.split>.npy``."""
    if cfg.predict.out:
        return Path(cfg.predict.out)
    return cfg.run_dir / "preds" / f"{Path(cfg.predict.split).stem}.npy"


def shard_path(out: str | Path, index: int, count: int) -> Path:
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


# ----------------------------------------------------------------------------- inference


@dataclasses.dataclass
class Forecaster:
    """A checkpoint's model ready for inference: device, autocast dtype and layout already chosen.

    Shared by predict and evaluate so both run the model exactly the same way.
    """

    model: torch.nn.Module
    checkpoint: Path
    state: dict[str, Any]
    cfg: Config  # the caller's config with the checkpoint's model section and frame counts
    t_in: int
    t_out: int
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def load(cls, cfg: Config) -> "Forecaster":
        path = checkpoint_path(cfg)
        device = pick_device(cfg.run.device)
        use_cudnn_autotune(device)  # as in training
        model, saved_cfg, state = load_model(path, device)  # FramecastError naming the file
        t_in, t_out = model.t_in, model.t_out  # what load_model built it with, from the checkpoint
        # Data location and loader settings are the caller's; model and frame counts the checkpoint's.
        used = dataclasses.replace(cfg, model=saved_cfg.model,
                                   data=dataclasses.replace(cfg.data, t_in=t_in, t_out=t_out))
        channels_last = use_channels_last(cfg.train, device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(model, path, state, used, t_in, t_out, device, autocast_dtype(cfg.train, device), channels_last)

    def loader(self, dataset) -> WindowLoader:
        data = self.cfg.data
        return make_loader(
            dataset, self.cfg.predict.batch_size, shuffle=False, num_workers=data.num_workers,
            prefetch_factor=data.prefetch_factor, pin_memory=data.pin_memory and self.device.type == "cuda",
            drop_last=False,
        )

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """float (B, t_in, C, H, W) in [0, 1] on the device -> raw float32 (B, t_out, C, H, W)."""
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            return self.model(inputs).float()


def to_uint8_frames(raw: torch.Tensor) -> torch.Tensor:
    """Raw model output float (B, T, C, H, W) -> uint8 (B, T, H, W, C), on the same device.

    Clip to [0, 1] first so out-of-range values saturate (a bare cast would wrap 1.2 to 50), then
    scale and round to nearest (a cast alone truncates 254.9 to 254). Doing it on the device means
    the host copies uint8, a quarter of the float32 bytes.
    """
    frames = raw.float().clamp(0, 1).mul_(255).round_().to(torch.uint8)  # (B, T, C, H, W)
    return frames.permute(0, 1, 3, 4, 2).contiguous()  # (B, T, H, W, C)


def check_frames(source: VideoSource, t_in: int, checkpoint: Path) -> None:
    if source.num_frames < t_in:
        raise FramecastError(
            f"{source.describe()}: videos have {source.num_frames} frames, but {checkpoint} needs t_in={t_in}"
        )


@contextlib.contextmanager
def npy_rows(out: Path, shape: tuple[int, ...]) -> Iterator[BinaryIO]:
    """A uint8 ``.npy`` of ``shape`` opened for writing its rows in order; renamed onto ``out`` at the end.

    ``open_memmap`` writes the header and sizes the file; the rows then go through the file handle
    (page cache) rather than the mapping, because every page written through a mapping stays in the
    process's resident set until the kernel reclaims it, so RSS would grow with N.
    """
    with atomic_path(out, suffix=".npy") as tmp:
        header = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        offset, size = header.offset, header.nbytes
        del header
        with open(tmp, "r+b") as handle:
            handle.seek(offset)
            yield handle
            if handle.tell() != offset + size:
                raise RuntimeError(f"{out}: wrote {handle.tell() - offset} of {size} bytes")


def _drop_stale_index(out: Path) -> None:
    """Remove an older run's index just before the new array replaces ``out``: until the new index
    is written, readers find no index and refuse, rather than pairing new rows with old names."""
    index_path_for(out).unlink(missing_ok=True)


def write_predictions(forecaster: Forecaster, dataset: VideoWindowDataset | Subset, out: Path,
                      index: dict[str, Any]) -> Path:
    """Predict every sample of ``dataset`` (uint8 (t_in, H, W, C) each) into ``out`` + its index.

    Rows are appended to the ``.npy`` in loader order as batches arrive, so the host holds one batch
    at a time whatever N is.
    """
    h, w, c = (dataset.dataset if isinstance(dataset, Subset) else dataset).frame_shape
    shape = (len(dataset), forecaster.t_out, h, w, c)  # (N, t_out, H, W, C)
    nonfinite = torch.zeros((), dtype=torch.int64, device=forecaster.device)
    loader = forecaster.loader(dataset)
    with npy_rows(out, shape) as handle:
        for batch in tqdm(loader, desc=f"predict {out.name}", unit="batch", disable=None):
            inputs = to_model_input(batch, forecaster.device, forecaster.channels_last)  # (B, t_in, C, H, W)
            raw = forecaster(inputs)  # (B, t_out, C, H, W)
            nonfinite += (~torch.isfinite(raw)).sum()
            frames = to_uint8_frames(raw).cpu().numpy()  # (B, t_out, H, W, C) uint8
            handle.write(frames)  # the array's buffer, no extra copy
        if nonfinite.item():
            raise FramecastError(
                f"{forecaster.checkpoint}: the model produced {nonfinite.item()} NaN/infinite values; "
                f"nothing was written to {out}"
            )
        _drop_stale_index(out)
    loader.end_workers()  # now, rather than at garbage collection
    write_json_atomic(index_path_for(out), {**index, "shape": list(shape), "dtype": "uint8"})
    return out


def run(cfg: Config, shard: tuple[int, int] = (0, 1)) -> Path:
    """Predict ``predict.split`` (or shard ``i`` of ``n`` of it); returns the ``.npy`` written."""
    index_of, count = shard
    forecaster = Forecaster.load(cfg)
    split = cfg.predict.split
    source = open_split(cfg.data, split)
    check_frames(source, forecaster.t_in, forecaster.checkpoint)
    dataset = VideoWindowDataset(source, forecaster.t_in, 0)  # the first t_in frames of each video
    rows = shard_rows(len(dataset), index_of, count)
    out = output_path(cfg) if count == 1 else shard_path(output_path(cfg), index_of, count)
    index = {
        "videos": [dataset.video_name(i) for i in rows],
        "frames": list(range(forecaster.t_in, forecaster.t_in + forecaster.t_out)),
        "split": split,
        "source": source.describe(),
        "checkpoint": str(forecaster.checkpoint),
        "epoch": forecaster.state.get("epoch"),
        "shard": [index_of, count],
        "rows": [rows.start, rows.stop],
        "total_videos": len(dataset),
        "config": config_to_dict(forecaster.cfg),
    }
    return write_predictions(forecaster, Subset(dataset, rows), out, index)


# ----------------------------------------------------------------------------- merge

# Merge copies shard data in blocks of this size (bounded memory, large enough to stream fast).
COPY_BLOCK_BYTES = 16 << 20
# Index entries every shard of one prediction must share.
_SHARED_KEYS = ("frames", "split", "source", "checkpoint", "epoch", "total_videos", "config")


def _copy_bytes(src: BinaryIO, dst: BinaryIO, count: int) -> int:
    copied = 0
    while copied < count:
        block = src.read(min(COPY_BLOCK_BYTES, count - copied))
        if not block:
            break
        dst.write(block)
        copied += len(block)
    return copied


def merge_shards(out: str | Path, shards: int) -> Path:
    """Join ``<stem>.shard<i>of<n>.npy`` for i = 0..n-1 into ``out`` (+ index), in order.

    Every shard must exist, come from the same checkpoint, split and config, and cover its slice of
    the split; the data is copied file to file in blocks, never held in RAM.
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
    for i, (path, (array, index)) in enumerate(zip(paths, parts)):
        if index.get("shard") != [i, shards]:
            raise FramecastError(f"{path}: its index says shard {index.get('shard')}, expected [{i}, {shards}]")
        for key in _SHARED_KEYS:
            if index.get(key) != first_index.get(key):
                raise FramecastError(f"{path}: '{key}' differs from {first_path} (shards of different predictions)")
        if array.shape[1:] != first.shape[1:]:
            raise FramecastError(f"{path}: frames of shape {list(array.shape[1:])}, {first_path} has {list(first.shape[1:])}")
        expected = shard_rows(total, i, shards)
        if index.get("rows") != [expected.start, expected.stop] or array.shape[0] != len(expected):
            raise FramecastError(f"{path}: holds rows {index.get('rows')}, expected [{expected.start}, {expected.stop}]")
    shape = (sum(a.shape[0] for a, _ in parts), *first.shape[1:])  # (N, t_out, H, W, C)
    # Each shard's data is its rows in C order, so the merged data is the shards' bytes end to end:
    # copy them file to file (page cache), never through memory maps or arrays.
    with npy_rows(out, shape) as handle:
        for path, (array, _) in tqdm(list(zip(paths, parts)), desc=f"merge {out.name}", unit="shard", disable=None):
            if not array.flags.c_contiguous:
                raise FramecastError(f"{path}: stored in Fortran order, expected a C-order .npy from predict")
            with open(path, "rb") as shard_file:
                shard_file.seek(array.offset)
                copied = _copy_bytes(shard_file, handle, array.nbytes)
            if copied != array.nbytes:
                raise FramecastError(f"{path}: truncated ({copied} of {array.nbytes} data bytes)")
        _drop_stale_index(out)
    index = {key: first_index.get(key) for key in _SHARED_KEYS}
    index.update(videos=[v for _, ix in parts for v in ix["videos"]], shard=None, shards=shards, rows=[0, shape[0]])
    write_json_atomic(index_path_for(out), {**index, "shape": list(shape), "dtype": "uint8"})
    return out
