"""Prediction throughput and memory: videos/s, and peak RSS as the number of videos grows.

    python -m benchmarks.bench_predict --preset tiny --videos 32 128 512
    python -m benchmarks.bench_predict --preset default --videos 4 --height 160 --width 240
    python -m benchmarks.bench_predict --family simvp --preset mmnist --videos 600 2000 --batch-size 16

Each N runs in a fresh process (so its peak RSS is its own) through the real predict path
(``training.inference.Predictor.load`` from a format-2 checkpoint, its loader,
``stages.predict.write_predictions``) on a synthetic source whose frames are generated on read, so
neither input nor output is ever held whole in memory: peak RSS should stay flat as N grows while
the output file grows linearly. ``--family``/``--preset``/``--cell`` and ``key=value`` settings
choose the model as in ``bench_train.py`` (``--model`` is the old name of ``--preset``; the preset's
frames unless ``--height`` etc. are given). Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# First, before torch: see its note on platform.uname and the children's peak RSS.
from benchmarks.common import (
    REPO,
    add_model_arguments,
    build_config,
    model_description,
    peak_rss_mb,
    resolve_geometry,
    setting,
)

import numpy as np
import torch

from core.checkpoint import save_checkpoint
from core.config import Config, config_to_dict
from core.errors import FramecastError
from data.datasets import VideoWindowDataset
from data.sources import VideoSource
from models import build_model, count_parameters
from training.inference import Predictor
from stages.predict import write_predictions


class SyntheticSource(VideoSource):
    """N random videos made on read (seeded by index): the input never exists whole anywhere."""

    def __init__(self, count: int, frames: int, height: int, width: int):
        self.names = [f"video_{i}" for i in range(count)]
        self.num_frames = frames
        self.frame_shape = (height, width, 3)

    def read(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop = self._range(index, start, stop)
        rng = np.random.default_rng(index)
        return rng.integers(0, 256, (stop - start, *self.frame_shape), dtype=np.uint8)  # (T, H, W, C)

    def describe(self) -> str:
        return "synthetic"


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process."""
    geometry = resolve_geometry(args)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        settings = [setting("run.device", args.device), setting("train.amp", args.amp),
                    setting("data.num_workers", args.workers), setting("predict.batch_size", args.batch_size),
                    setting("data.prefetch_factor", args.prefetch), setting("train.channels_last", args.channels_last),
                    setting("predict.checkpoint", str(checkpoint))]
        cfg = build_config(args.family, geometry, cell=args.cell, settings=settings, overrides=args.overrides)
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.data.t_in, cfg.data.t_out)
        # A format-2 checkpoint as the train stage writes it (the parts prediction reads).
        save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "progress": {"epoch": 0},
                         "parameters": count_parameters(model)}, checkpoint)
        del model
        predictor = Predictor.load(cfg)
        device = predictor.precision.device
        source = SyntheticSource(args.n, predictor.t_in, geometry.height, geometry.width)
        dataset = VideoWindowDataset(source, predictor.t_in, 0)
        # Warm-up (allocator, cuDNN autotuning) on one batch, outside the timing.
        warm = torch.zeros(min(args.batch_size, args.n), predictor.t_in, predictor.in_channels, geometry.height,
                           geometry.width, device=device)
        predictor(warm)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out = Path(tmp) / "preds.npy"
        start = time.perf_counter()
        write_predictions(predictor, dataset, out, {"videos": source.names, "frames": []})
        seconds = time.perf_counter() - start
        result = {
            "videos": args.n,
            "seconds": round(seconds, 3),
            "videos_per_s": round(args.n / seconds, 2),
            "output_mb": round(out.stat().st_size / 2**20, 1),
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_workers_mb": peak_rss_mb(children=True),
            "device": str(device),
            "dtype": predictor.precision.describe(),
            "channels_last": predictor.precision.channels_last,
            "parameters": count_parameters(predictor.model),
            **model_description(cfg),
        }
        if device.type == "cuda":
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            result["gpu"] = torch.cuda.get_device_name(device)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, preset="tiny", preset_aliases=("--model",))
    parser.add_argument("--videos", type=int, nargs="+", default=[32, 128, 512], help="N values, one process each")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="loader processes")
    parser.add_argument("--prefetch", type=int, default=Config().data.prefetch_factor,
                        help="batches each loader process keeps ready (data.prefetch_factor)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        default=Config().train.channels_last, help="channels_last layout on CUDA (train.channels_last)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)  # set in the child process
    args = parser.parse_args()
    if args.n is not None:
        try:
            print(json.dumps(child(args)))
        except FramecastError as exc:
            raise SystemExit(f"bench_predict.py: {exc}") from None
        return
    runs = []
    for n in args.videos:
        argv = sys.argv[1:]
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_predict", *argv, "--n", str(n)], cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"benchmark child for N={n} failed")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    shared = ("device", "dtype", "channels_last", "parameters", "family", "cell", "in_channels", "model", "gpu")
    common = {k: runs[0][k] for k in shared if k in runs[0]}
    geometry = resolve_geometry(args)
    setup = {"preset": args.preset, "overrides": list(args.overrides), "size": [geometry.height, geometry.width],
             "frames": [geometry.t_in, geometry.t_out], "batch_size": args.batch_size, "loader_workers": args.workers,
             "prefetch": args.prefetch, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    print(json.dumps({**common, **setup, "runs": [{k: v for k, v in r.items() if k not in common} for r in runs]},
                     indent=2))


if __name__ == "__main__":
    main()
