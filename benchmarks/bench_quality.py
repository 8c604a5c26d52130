"""Forecast quality for a fixed training budget: train a family with the real train stage, score it
with the real evaluate stage against the copy-last and mean-of-inputs baselines, print ONE JSON object.

    python -m benchmarks.bench_quality --family convlstm --steps 300
    python -m benchmarks.bench_quality --family simvp --data mnist --minutes 20 --reuse-data datasets/bq-mnist
    python -m benchmarks.bench_quality --family predrnn --preset tiny train.lr=5e-4 --out runs/bq-predrnn

Data: ``--data shapes`` (``data.synthetic.make_shapes_dataset``: bouncing, occluding shapes on a
textured background, RGB) or ``--data mnist`` (``data.moving_mnist.make_moving_mnist_dataset``:
Moving Fashion-MNIST from Debian's ``dataset-fashion-mnist`` idx file, two items on a black square
canvas, trained and scored as grey, ``model.in_channels=1``), ``--train-videos`` + ``--val-videos``
videos of ``t_in + t_out`` frames, generated and packed into ``OUT/data`` (or into ``--reuse-data
DIR``, where a data set made by an earlier run with the same arguments is used as it is; one
without this script's ``bench_quality.json`` stamp, e.g. from ``main.py make-data``, is used as
found). Frames default to 48x64 for shapes and 64x64 for Moving MNIST (its canvas is square).
Real footage: ``--reuse-data`` a set made by ``benchmarks/make_real_set.sh`` (or ``main.py make-data
--from-video``) with ``--height``/``--width``/``--t-in``/``--t-out`` matching it, and
``data.train_splits=[train,unlabeled]`` to train on both of its training splits.

Model: ``--family`` at its config defaults, or the sizes of ``--preset`` (see ``bench_train.py``;
only the model settings of the preset are used here, the frames are this script's), plus any
``key=value`` config settings (``train.lr=5e-4``, ``model.convlstm.hidden_channels=[64,64]``),
validated by ``core.config``.

Budget: ``--steps N`` optimizer steps, as ``train.epochs`` x ``train.max_steps_per_epoch`` (the
smallest number of epochs that holds N steps, evenly split, so the run takes N rounded up to a
multiple of the epochs; the one-cycle LR schedule spans exactly the run), or ``--minutes M`` of
training (``train.max_minutes``; the LR schedule is then ``constant``, since its length is unknown).
The train stage validates once per epoch and keeps ``best.pt``, which evaluate scores on val.

The JSON has the family and its settings, the data set, sizes, parameters, steps, epochs, the train
wall time and videos/s (steps x batch / wall time, validation and checkpoints included; the median
of the train stage's own interval figures as ``step_videos_per_s``), per-lead-time and mean MSE
(summed over a frame, frames in [0, 1]) and SSIM (Gaussian 11x11) of the model and both baselines,
the model/copy-last MSE ratio and SSIM difference (and the same against mean-of-inputs), the
machine and the date. Everything else (logs, progress) goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


# First, before torch: see its note on platform.uname and the children's peak RSS.
from benchmarks.common import PRESETS, Preset, build_config, model_description, setting

import torch

from core.atomic import write_json_atomic
from core.families import family_names
from core.errors import FramecastError
from data.pack import pack_dataset
from data.sources import open_split
from training.metrics import METRICS_NAME, read_metrics

FASHION_MNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"  # dpkg -L dataset-fashion-mnist
STAMP_NAME = "bench_quality.json"  # what generated a data folder, so a reuse can check it fits
SIZES = {"shapes": (48, 64), "mnist": (64, 64)}
SCORED = ("mse_per_frame_sum", "ssim")
SPLITS = ("train", "val")
# --minutes: as many epochs as could ever run; train.max_minutes ends the run.
UNBOUNDED_EPOCHS = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=family_names(), default=family_names()[0],
                        help="model.family (default: %(default)s)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="model sizes of this preset (default: the family's config defaults)")
    parser.add_argument("--cell", choices=["gru", "lstm"], default=None, help="model.<family>.cell")
    parser.add_argument("--data", choices=sorted(SIZES), default="shapes")
    parser.add_argument("--height", type=int, default=None, help="default: 48 (shapes), 64 (mnist)")
    parser.add_argument("--width", type=int, default=None, help="default: 64")
    parser.add_argument("--t-in", type=int, default=10)
    parser.add_argument("--t-out", type=int, default=10)
    parser.add_argument("--train-videos", type=int, default=320)
    parser.add_argument("--val-videos", type=int, default=64)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--mnist", default=FASHION_MNIST, help="MNIST-format idx images file (--data mnist)")
    parser.add_argument("--digits", type=int, default=2, help="items per Moving MNIST video")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="optimizer steps (default 300)")
    budget.add_argument("--minutes", type=float, default=None, help="minutes of training (train.max_minutes)")
    parser.add_argument("--out", help="folder for the data (unless --reuse-data) and the run; default: a "
                                      "temporary folder, removed at the end")
    parser.add_argument("--reuse-data", metavar="DIR", help="data folder: used when it holds a data set, "
                                                            "generated there (and kept) otherwise")
    parser.add_argument("--device", default="auto", help="run.device")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config settings (validated)")
    args = parser.parse_args(argv)
    if args.steps is None and args.minutes is None:
        args.steps = 300
    if (args.steps is not None and args.steps < 1) or (args.minutes is not None and not args.minutes > 0):
        parser.error("--steps must be >= 1 and --minutes > 0")
    default_height, default_width = SIZES[args.data]
    args.height = args.height or default_height
    args.width = args.width or default_width
    return args


def generation_parameters(args: argparse.Namespace) -> dict:
    """What the generated data set depends on (written as its stamp, compared on reuse)."""
    parameters = {"kind": args.data, "height": args.height, "width": args.width, "frames": args.t_in + args.t_out,
                  "train": args.train_videos, "val": args.val_videos, "seed": args.data_seed}
    if args.data == "mnist":
        parameters.update(mnist=str(Path(args.mnist).resolve()), digits=args.digits)
    return parameters


def prepare_data(root: Path, args: argparse.Namespace) -> dict | None:
    """Make sure ``root`` holds a packed train/val data set; returns the stamp it was made with (None
    for a data set this script did not generate)."""
    wanted = generation_parameters(args)
    stamp = root / STAMP_NAME
    if stamp.is_file():
        found = json.loads(stamp.read_text())
        if found != wanted:
            changed = ", ".join(f"{k} {found.get(k)!r} -> {v!r}" for k, v in wanted.items() if found.get(k) != v)
            raise FramecastError(f"{stamp}: the data there were generated with other arguments ({changed}); "
                                 "pass the same arguments or another --reuse-data folder")
        return found
    if all((root / split).is_dir() for split in SPLITS):
        logging.info("%s: using the data set found there as it is (no %s)", root, STAMP_NAME)
        return None
    counts = {"train": args.train_videos, "val": args.val_videos}
    common = dict(counts=counts, frames=args.t_in + args.t_out, hidden_frames=args.t_in, seed=args.data_seed)
    if args.data == "shapes":
        from data.synthetic import make_shapes_dataset

        make_shapes_dataset(root, height=args.height, width=args.width, **common)
    else:
        from data.moving_mnist import make_moving_mnist_dataset

        if args.height != args.width:
            raise FramecastError(f"Moving MNIST frames are square: give --height equal to --width "
                                 f"(got {args.height}x{args.width})")
        if not Path(args.mnist).is_file():
            raise FramecastError(f"{args.mnist}: MNIST-format idx file not found "
                                 "(Debian: apt-get install dataset-fashion-mnist)")
        make_moving_mnist_dataset(root, args.mnist, size=args.height, digits=args.digits, **common)
    pack_dataset(root, splits=list(SPLITS))
    write_json_atomic(stamp, wanted)
    return wanted


def budget_settings(args: argparse.Namespace, train_videos: int, batch_size: int) -> list[str]:
    """train.* settings that make the run's budget ``--steps`` or ``--minutes``."""
    if args.minutes is not None:
        return [setting("train.epochs", UNBOUNDED_EPOCHS), setting("train.max_minutes", args.minutes),
                setting("train.schedule", "constant")]
    steps_per_epoch = train_videos // batch_size
    if steps_per_epoch < 1:
        raise FramecastError(f"{train_videos} training videos hold no batch of train.batch_size={batch_size}")
    epochs = math.ceil(args.steps / steps_per_epoch)
    return [setting("train.epochs", epochs), setting("train.max_steps_per_epoch", math.ceil(args.steps / epochs))]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def scores(report: dict) -> dict:
    """Per-lead-time and mean MSE (sum over a frame) and SSIM of the model and both baselines."""
    return {name: {"per_lead_time": {key: report[name]["per_lead_time"][key] for key in SCORED},
                   "mean": {key: report[name]["mean"][key] for key in SCORED}}
            for name in ("model", "copy_last_frame", "mean_of_inputs")}


def versus(model: dict, baseline: dict) -> dict:
    mse, base_mse = model["mean"]["mse_per_frame_sum"], baseline["mean"]["mse_per_frame_sum"]
    return {"mse_ratio": mse / base_mse if base_mse else None,
            "ssim_difference": model["mean"]["ssim"] - baseline["mean"]["ssim"]}


def run(args: argparse.Namespace, work: Path, keep: bool) -> dict:
    from core.outputs import REPORT_NAME
    from stages import evaluate, train

    data_root = Path(args.reuse_data) if args.reuse_data else work / "data"
    stamp = prepare_data(data_root, args)
    model_items = PRESETS[args.preset].models.get(args.family, ()) if args.preset else ()
    geometry = Preset("bench_quality", args.height, args.width, args.t_in, args.t_out,
                      1 if args.data == "mnist" else 3, {args.family: model_items})
    base = [setting("data.root", str(data_root)), "data.train_splits=[train]", setting("data.val_split", "val"),
            setting("data.num_workers", 1), setting("run.out_dir", str(work / "runs")),
            setting("run.name", f"quality-{args.family}"), setting("run.device", args.device)]
    # First without the budget, to learn the batch size and the data the settings give.
    cfg = build_config(args.family, geometry, cell=args.cell, settings=base, overrides=args.overrides)
    train_source, val_source = (open_split(cfg.data, split) for split in SPLITS)
    cfg = build_config(args.family, geometry, cell=args.cell,
                       settings=[*base, *budget_settings(args, len(train_source), cfg.train.batch_size)],
                       overrides=args.overrides)
    run_dir = cfg.run_dir
    if any((run_dir / name).exists() for name in ("last.pt", "best.pt")):
        raise FramecastError(f"{run_dir}: already holds a run (it would resume, not train the budget); "
                             "choose another --out or remove it")

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the one JSON object
        start = time.perf_counter()
        summary = train.run(cfg)
        wall = time.perf_counter() - start
        report = evaluate.run(cfg, split="val", out_dir=run_dir / "eval" / "val")
    intervals = [r["videos_per_s"] for r in read_metrics(run_dir / METRICS_NAME) if r.get("kind") == "train"]
    result_scores = scores(report)
    device = torch.device(summary["device"])
    height, width, _ = val_source.frame_shape
    return {
        "benchmark": "bench_quality",
        **model_description(cfg),
        "preset": args.preset,
        "overrides": list(args.overrides),
        "data": {"kind": args.data, "root": str(data_root), "generated_with": stamp,
                 "train_videos": len(train_source), "val_videos": len(val_source), "source": val_source.describe()},
        "size": [height, width],
        "frames": [cfg.data.t_in, cfg.data.t_out],
        "parameters": summary["parameters"],
        "budget": {"steps": args.steps, "minutes": args.minutes},
        "steps": summary["steps"],
        "epochs": summary["epochs_run"],
        "stopped": summary["stopped"],
        "batch_size": cfg.train.batch_size,
        "train_settings": {key: getattr(cfg.train, key) for key in ("optimizer", "lr", "schedule", "loss", "ssim_weight",
                                                                       "gdl_weight", "gdl_alpha", "supervise_inputs",
                                                                       "amp", "grad_clip", "seed")},
        "train_wall_seconds": round(wall, 2),
        "train_videos_per_s": round(summary["steps"] * cfg.train.batch_size / wall, 3),
        "step_videos_per_s": round(statistics.median(intervals), 3) if intervals else None,
        "best_val_loss": summary["best_val_loss"],
        "best_epoch": summary["best_epoch"],
        "evaluated": {"checkpoint": "best.pt", "epoch": report["epoch"], "split": report["split"],
                      "videos": report["videos"], "autocast": report["autocast"], "ssim": report["ssim"]},
        "scores": result_scores,
        "model_vs_copy_last": versus(result_scores["model"], result_scores["copy_last_frame"]),
        "model_vs_mean_of_inputs": versus(result_scores["model"], result_scores["mean_of_inputs"]),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run_dir) if keep else None,
        "report": str(run_dir / "eval" / "val" / REPORT_NAME) if keep else None,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    keep = args.out is not None
    work = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="bench_quality_"))
    try:
        result = run(args, work, keep)
    except FramecastError as exc:
        raise SystemExit(f"bench_quality.py: {exc}") from None
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
