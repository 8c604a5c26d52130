"""``main.py demo``: the whole pipeline on a small generated data set, as submitit jobs.

Data preparation (generate, pack) runs here; train -> predict -> convert run as jobs: on Slurm
when ``sbatch`` is on the PATH, on this machine otherwise. Each step is skipped when its output
is already there, so a second run only re-submits the jobs (and training resumes from last.pt).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.config import Config, load_config
from data.layout import SPLITS
from data.pack import pack_dataset, pack_path
from data.synthetic import make_shapes_dataset
from jobs.submit import describe_submission, resolve_executor, submit_pipeline
from jobs.wait import wait_jobs
from stages.convert import png_dir
from stages.predict import output_path as npy_path


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["auto", "slurm", "local"], default=None,
                        help="where the jobs run (default: slurm.executor of the config)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--videos", type=int, default=48, help="videos in each of train/ and unlabeled/")
    parser.add_argument("--eval-videos", type=int, default=16, help="videos in each of val/ and hidden/")
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                        help="stop waiting for the jobs after this long")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _prepare_data(cfg: Config, args: argparse.Namespace) -> None:
    root = Path(cfg.data.root)
    frames = cfg.data.t_in + cfg.data.t_out
    if not (root / "train").is_dir():
        counts = {"train": args.videos, "val": args.eval_videos,
                  "unlabeled": args.videos, "hidden": args.eval_videos}
        print(f"[demo] generating {sum(counts.values())} videos of {frames} frames "
              f"({args.height}x{args.width}) in {root}", flush=True)
        make_shapes_dataset(root, counts, height=args.height, width=args.width, frames=frames,
                            hidden_frames=cfg.data.t_in, seed=cfg.train.seed)
    pack_dir = Path(cfg.data.pack_dir) if cfg.data.pack_dir else root / "packed"
    missing = [s for s in SPLITS if (root / s).is_dir() and not pack_path(pack_dir, s).exists()]
    if missing:
        print(f"[demo] packing {', '.join(missing)} into {pack_dir}", flush=True)
        pack_dataset(root, out_dir=pack_dir, splits=missing)


def run_demo(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, list(args.overrides))
    _prepare_data(cfg, args)
    executor = resolve_executor(args.executor, cfg)
    print(f"[demo] submitting train -> predict -> convert ({executor} executor)", flush=True)
    started = time.monotonic()
    jobs = submit_pipeline(cfg, executor, on_submit=lambda job: print(describe_submission(job), flush=True),
                           timeout_s=args.timeout)
    ends = wait_jobs(jobs, timeout_s=args.timeout, report=lambda end: print(end.describe(), flush=True))
    expected = 2 + cfg.predict.shards
    if len(jobs) != expected or not all(end.ok for end in ends):
        print("[demo] the pipeline did not complete; see the logs above", flush=True)
        return 1
    minutes = (time.monotonic() - started) / 60
    print(f"[demo] done in {minutes:.1f} min\n"
          f"  checkpoint:  {cfg.run_dir / 'best.pt'}  (python load_model.py {cfg.run_dir / 'best.pt'})\n"
          f"  loss curve:  {cfg.run_dir / 'loss_curve.png'}\n"
          f"  predictions: {npy_path(cfg)}\n"
          f"  PNG frames:  {png_dir(cfg)}", flush=True)
    return 0
