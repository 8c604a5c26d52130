"""Prediction throughput and memory: videos/s, and peak RSS as the number of videos grows.

    python benchmarks/bench_predict.py --model tiny --videos 32 128 512
    python benchmarks/bench_predict.py --model default --videos 4 --height 160 --width 240

Each N runs in a fresh process (so its peak RSS is its own) through the real predict path
(``Forecaster.load`` from a checkpoint, loader, ``write_predictions``) on a synthetic source whose
frames are generated on read, so neither input nor output is ever held whole in memory: peak RSS
should stay flat as N grows while the output file grows linearly. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.checkpoint import save_checkpoint  # noqa: E402
from core.config import Config, ModelConfig, config_to_dict  # noqa: E402
from data.datasets import VideoWindowDataset  # noqa: E402
from data.sources import VideoSource  # noqa: E402
from models import build_model, count_parameters  # noqa: E402
from stages.predict import Forecaster, write_predictions  # noqa: E402

MODELS = {
    "tiny": ModelConfig(cell="gru", hidden_channels=[8, 8], strides=[1, 2], kernel_size=3, stem_channels=8,
                        norm_groups=4),
    "default": ModelConfig(),
}


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
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config()
        cfg.model = dataclasses.replace(MODELS[args.model])
        cfg.run.device, cfg.train.amp = args.device, args.amp
        cfg.data.num_workers, cfg.predict.batch_size = args.workers, args.batch_size
        cfg.data.prefetch_factor, cfg.train.channels_last = args.prefetch, args.channels_last
        cfg.predict.checkpoint = str(Path(tmp) / "model.pt")
        model = build_model(cfg.model, args.t_in, args.t_out)
        save_checkpoint({"model": model.state_dict(), "model_config": dataclasses.asdict(cfg.model),
                         "t_in": args.t_in, "t_out": args.t_out, "config": config_to_dict(cfg), "epoch": 0}, cfg.predict.checkpoint)
        del model
        forecaster = Forecaster.load(cfg)
        source = SyntheticSource(args.n, args.t_in, args.height, args.width)
        dataset = VideoWindowDataset(source, args.t_in, 0)
        # Warm-up (allocator, cuDNN autotuning) on one batch, outside the timing.
        warm = torch.zeros(min(args.batch_size, args.n), args.t_in, 3, args.height, args.width, device=forecaster.device)
        forecaster(warm)
        if forecaster.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out = Path(tmp) / "preds.npy"
        start = time.perf_counter()
        write_predictions(forecaster, dataset, out, {"videos": source.names, "frames": []})
        seconds = time.perf_counter() - start
        result = {
            "videos": args.n,
            "seconds": round(seconds, 3),
            "videos_per_s": round(args.n / seconds, 2),
            "output_mb": round(out.stat().st_size / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "device": str(forecaster.device),
            "dtype": str(forecaster.amp_dtype).replace("torch.", "") if forecaster.amp_dtype else "float32",
            "channels_last": forecaster.channels_last,
            "parameters": count_parameters(forecaster.model),
        }
        if forecaster.device.type == "cuda":
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            result["gpu"] = torch.cuda.get_device_name(forecaster.device)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--videos", type=int, nargs="+", default=[32, 128, 512], help="N values, one process each")
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--t-in", type=int, default=11)
    parser.add_argument("--t-out", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="loader processes")
    parser.add_argument("--prefetch", type=int, default=Config().data.prefetch_factor,
                        help="batches each loader process keeps ready (data.prefetch_factor)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        default=Config().train.channels_last, help="channels_last layout on CUDA (train.channels_last)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)  # set in the child process
    args = parser.parse_args()
    if args.n is not None:
        print(json.dumps(child(args)))
        return
    runs = []
    for n in args.videos:
        argv = sys.argv[1:]
        proc = subprocess.run([sys.executable, __file__, *argv, "--n", str(n)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"benchmark child for N={n} failed")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    common = {k: runs[0][k] for k in ("device", "dtype", "channels_last", "parameters") + (("gpu",) if "gpu" in runs[0] else ())}
    setup = {"model": args.model, "frames": [args.height, args.width], "t_in": args.t_in, "t_out": args.t_out,
             "batch_size": args.batch_size, "loader_workers": args.workers, "prefetch": args.prefetch, "torch": torch.__version__,
             "torch_threads": torch.get_num_threads()}
    print(json.dumps({**common, **setup, "runs": [{k: v for k, v in r.items() if k not in common} for r in runs]},
                     indent=2))


if __name__ == "__main__":
    main()
