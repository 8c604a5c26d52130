"""``main.py demo``: the whole pipeline on a small generated data set, as submitit jobs.

Data preparation (generate, pack) runs here; the pipeline's stages (``jobs.submit.PIPELINE``: train,
then predict and evaluate, then convert) run as jobs: on Slurm when ``sbatch`` is on the PATH, on
this machine otherwise. Each preparation step is skipped when its output is already there, so a
second run only re-submits the jobs (and training resumes from last.pt). It ends by printing where
everything is and the evaluation's scores against the baselines.

The data and stage modules are imported when the demo runs, not when its arguments are declared:
``main.py --help`` must not load torch.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.config import Config

def _prepare_data(cfg: Config, args: argparse.Namespace) -> None:
    from data.layout import SPLITS
    from data.pack import pack_dataset, pack_path
    from data.synthetic import make_shapes_dataset

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
    from core.config import load_config
    from core.paths import expand_config
    from jobs.submit import describe_pipeline, describe_submission, pipeline_job_count, resolve_executor, \
        snapshot_for, submit_pipeline
    from jobs.summary import print_outputs
    from jobs.wait import wait_jobs

    cfg = load_config(args.config, list(args.overrides))
    # The data is made and the outputs listed here, on this machine: its paths, with ${VAR}s expanded
    # (the jobs get the config as written and expand it themselves).
    local = expand_config(cfg)
    _prepare_data(local, args)
    executor = resolve_executor(args.executor, cfg)
    code = snapshot_for(cfg)
    print(f"[demo] submitting {describe_pipeline()} ({executor} executor; {code.describe()}, snapshot in "
          f"{code.root})", flush=True)
    started = time.monotonic()
    jobs = submit_pipeline(cfg, executor, on_submit=lambda job: print(describe_submission(job), flush=True),
                           timeout_s=args.timeout, code=code)
    ends = wait_jobs(jobs, timeout_s=args.timeout, report=lambda end: print(end.describe(), flush=True),
                     progress=lambda line: print(line, flush=True))
    if len(jobs) != pipeline_job_count(cfg) or not all(end.ok for end in ends):
        print("[demo] the pipeline did not complete; see the logs above", flush=True)
        return 1
    print(f"[demo] done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    print_outputs(local, prefix="[demo] ")
    return 0
