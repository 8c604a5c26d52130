"""Time to the first training step with ``train.compile=true``, cold and warm, printed as JSON.

    python -m benchmarks.bench_compile                       # tiny encoder-forecaster on the CPU
    python -m benchmarks.bench_compile --family simvp --preset mmnist --device cuda

Runs the REAL train stage twice in fresh processes that share one compile cache (a new, empty one
for the first run): the first compiles everything, the second is what a resumed or requeued job (or
a predict job of the same run) pays. Each run trains ``--steps`` steps and validates once, so the
validation pass's own compile is inside the measured time too. Reported per run: seconds from the
process start to the end of the first step, to the end of the first validation, and the whole run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The child: build the config, time the first step and the first validation from the trainer's log.
CHILD = textwrap.dedent("""
    import json, sys, time
    started = time.time()
    import torch
    torch.set_num_threads({threads})
    from benchmarks.common import PRESETS, build_config
    from stages.train import run
    from training.metrics import read_metrics
    cfg = build_config({family!r}, PRESETS[{preset!r}], overrides={overrides!r})
    summary = run(cfg)
    records = read_metrics(cfg.run_dir / "metrics.jsonl")
    first_train = min(r["time"] for r in records if r["kind"] == "train")
    first_val = min(r["time"] for r in records if r["kind"] == "val")
    print(json.dumps({{"first_step_s": first_train - started, "first_validation_s": first_val - started,
                       "total_s": time.time() - started, "steps": summary["steps"]}}))
""")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="encoder_forecaster")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--frames", type=int, default=4, help="t_in = t_out = this")
    args = parser.parse_args(argv)

    from data.synthetic import make_shapes_dataset

    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        root = make_shapes_dataset(Path(tmp) / "data", {"train": 8, "val": 4}, height=args.height, width=args.width,
                                   frames=2 * args.frames, hidden_frames=args.frames, seed=0, workers=1)
        cache = Path(tmp) / "cache"
        runs = []
        for attempt in ("cold", "warm"):
            overrides = [f"data.root={root}", "data.source=png", "data.train_splits=[train]", "data.num_workers=0",
                         f"data.t_in={args.frames}", f"data.t_out={args.frames}", f"run.out_dir={tmp}/runs",
                         f"run.name={attempt}", f"run.device={args.device}", "train.compile=true",
                         f"train.compile_cache={cache}", "train.epochs=1", f"train.max_steps_per_epoch={args.steps}",
                         "train.batch_size=2", "train.log_every_steps=1", "train.early_stop_patience=0"]
            code = CHILD.format(threads=args.threads, family=args.family, preset=args.preset,
                                overrides=overrides)
            began = time.time()
            done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                  timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"{attempt} run failed:\n{done.stderr[-4000:]}")
            runs.append({"run": attempt, "wall_s": round(time.time() - began, 2),
                         **{k: round(v, 2) if isinstance(v, float) else v
                            for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}})
    import torch

    result = {"benchmark": "compile", "family": args.family, "preset": args.preset, "device": args.device,
              "threads": args.threads, "torch": torch.__version__, "runs": runs,
              "warm_speedup_first_step": round(runs[0]["first_step_s"] / runs[1]["first_step_s"], 2)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
