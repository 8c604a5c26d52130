"""The three routes to a future mask on the demo's data: frame-22 Jaccard of each against copy-last
and the oracle, for a fixed step budget per model; prints ONE JSON object (also written to --json).

    python -m benchmarks.bench_routes --out /tmp/bench-routes --json benchmarks/results/<date>/routes/shapes.json

Data: the demo's (``main.py demo``): shapes at 48x64, 11 + 11 frames, ``--videos`` in train and in
unlabeled, ``--eval-videos`` in val (scored) and hidden; generated and packed into ``OUT/data``
(reused when already there). Models, all from ``configs/demo.yaml`` plus ``key=value`` overrides given
after ``--``: the forecaster (the demo's residual UNet, train + unlabeled), the segmenter (train),
the masks forecaster (the same UNet on one-hot class maps, train) and the joint fine-tune (from the
forecaster, with the frozen segmenter's loss, train). Budget: ``train.epochs`` per model, given in
steps (``--*-steps``) and converted with the split's steps per epoch. Scoring: the evaluate stage
with ``evaluate.routes`` on val.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from core.atomic import write_json_atomic
from core.config import load_config
from data.pack import pack_dataset
from data.synthetic import make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--eval-videos", type=int, default=32)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--forecast-steps", type=int, default=1280)
    parser.add_argument("--segment-steps", type=int, default=640)
    parser.add_argument("--masks-steps", type=int, default=640)
    parser.add_argument("--joint-steps", type=int, default=320)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from stages import evaluate
    from stages.train import run as train

    root = args.out / "data"
    if not (root / "packed" / "val.h5").is_file():
        counts = {"train": args.videos, "val": args.eval_videos, "unlabeled": args.videos, "hidden": args.eval_videos}
        make_shapes_dataset(root, counts, height=args.height, width=args.width, frames=22, hidden_frames=11,
                            seed=0, overwrite=True)
        pack_dataset(root)
    base = [f"data.root={root}", f"run.out_dir={args.out / 'runs'}", "run.name=routes", "data.num_workers=0",
            *args.overrides]
    batch = load_config(args.config, base).train.batch_size
    budgets = {"forecast": (args.forecast_steps, 2 * args.videos), "segment": (args.segment_steps, args.videos),
               "masks": (args.masks_steps, args.videos), "joint": (args.joint_steps, args.videos)}
    timings = {}
    for task, (steps, videos) in budgets.items():
        epochs = max(1, math.ceil(steps / (videos // batch)))
        cfg = load_config(args.config, [*base, f"train.task={task}", f"train.epochs={epochs}"])
        started = time.perf_counter()
        summary = train(cfg)
        timings[task] = {"steps": summary["steps"], "epochs": epochs, "seconds": round(time.perf_counter() - started, 1),
                         "best_val_loss": summary["best_val_loss"]}
        print(f"[bench_routes] {task}: {timings[task]}", file=sys.stderr, flush=True)
    cfg = load_config(args.config, [*base, "evaluate.routes=[frames, masks, joint]", "evaluate.samples=4"])
    report = evaluate.run(cfg)
    masks = report["masks"]
    result = {
        "benchmark": "routes",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
        "command": " ".join(sys.argv),
        "data": {"kind": "shapes", "height": args.height, "width": args.width, "frames": "11 + 11",
                 "train": args.videos, "unlabeled": args.videos, "val": args.eval_videos},
        "training": timings,
        "target_frame": masks["target_frame"],
        "jaccard_target": {name: masks["scores"][name]["target"] for name in masks["routes"]},
        "jaccard_per_lead_time": {name: masks["scores"][name]["per_lead_time"] for name in masks["routes"]},
        "vs_copy_last": masks["vs_copy_last"],
        "frames_report": {k: report[k]["mean"] for k in ("model", "copy_last_frame")},
        "masks_report": masks["files"]["report"],
    }
    text = json.dumps(result, indent=1)
    if args.json:
        write_json_atomic(args.json, result)
    print(text)


if __name__ == "__main__":
    main()
