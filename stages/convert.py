"""The convert stage: the prediction ``.npy`` -> ``<convert.out>/video_<n>/image_<k>.png``.

Runs after predict (or after a job array of predict shards, which it merges first when the merged
array is missing or older than its shards), so one Slurm dependency chain covers the whole path.
"""
from __future__ import annotations

from pathlib import Path

from core.config import Config
from np_to_png import convert
from stages.predict import merge_shards, output_path, shard_path


def png_dir(cfg: Config) -> Path:
    """``convert.out``, or ``<run_dir>/png/<predict.split>``."""
    return Path(cfg.convert.out) if cfg.convert.out else cfg.run_dir / "png" / Path(cfg.predict.split).stem


def run(cfg: Config) -> Path:
    """Write the PNGs of ``predict.out`` (``convert.frames`` only, when set); returns the PNG folder."""
    npy = output_path(cfg)
    shards = cfg.predict.shards
    if shards > 1:
        parts = [shard_path(npy, i, shards) for i in range(shards)]
        present = [p for p in parts if p.is_file()]
        if present and (not npy.is_file() or max(p.stat().st_mtime for p in present) > npy.stat().st_mtime):
            merge_shards(npy, shards)  # names any missing shard
    out = png_dir(cfg)
    convert(npy, out, frames=cfg.convert.frames or None, workers=cfg.convert.workers)
    return out
