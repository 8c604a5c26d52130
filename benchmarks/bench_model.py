"""Model-only compute benchmark: FLOPs and achieved FLOP/s of one training step, no data loading.

    python -m benchmarks.bench_model --t-in 3 --t-out 3                   # CPU, default family, 160x240
    python -m benchmarks.bench_model --family predrnn --preset mmnist --count-only
    python -m benchmarks.bench_model --family simvp --preset mmnist model.simvp.translator=tau --count-only
    python -m benchmarks.bench_model --device cuda --amp bf16 --compile --batch 8

Prints one JSON object. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over the
family's training pass (``TrainingForward``: scheduled sampling and extra loss terms included) and
its backward, taken on the meta device so counting costs no compute (convolutions and matmuls;
element-wise work is not counted). A timed step is ``training.step.train_step``, the train stage's
own (training pass, loss, backward, clipping, optimizer), on model and optimizer built as the train
stage builds them, each step synchronised and timed alone (the median is reported; ``bench_train.py``
times a run of steps instead and adds memory and the loader).
``--family``/``--preset``/``--cell`` and free ``key=value`` settings choose the model (see
``bench_train.py``); the preset's frames are used unless ``--height`` etc. are given (CPU runs of
the 160x240 presets are shorter with ``--t-in 3 --t-out 3``).
"""
from __future__ import annotations

import argparse
import json
import statistics


# First, before torch: see its note on platform.uname and the children's peak RSS.
from benchmarks.common import (
    add_model_arguments,
    arithmetic,
    build_config,
    build_training,
    count_flops,
    count_saved_activations,
    device_name,
    model_description,
    peak_tflops,
    per_step,
    random_videos,
    resolve_geometry,
    setting,
    synchronize,
    throughput,
)

import torch

from core.distributed import pick_device
from core.errors import FramecastError
from core.precision import Precision
from models import build_model, count_parameters


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, compile)")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="off",
                        help="train.amp; bf16 = autocast over fp32 weights, as training does")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training pass")
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last (CUDA only, as in training)")
    parser.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 keeps torch's default")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the fraction")
    parser.add_argument("--count-only", action="store_true", help="count FLOPs and parameters, skip the timing")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        return measure(args)
    except FramecastError as exc:
        raise SystemExit(f"bench_model.py: {exc}") from None


def measure(args: argparse.Namespace) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    geometry = resolve_geometry(args)
    settings = [setting("train.batch_size", args.batch), setting("train.amp", args.amp),
                setting("train.compile", args.compile), setting("train.channels_last", args.channels_last)]
    cfg = build_config(args.family, geometry, cell=args.cell, settings=settings, overrides=args.overrides)
    device = pick_device(args.device)
    precision = Precision.for_run(cfg.train, device)
    forward_flops, train_flops = count_flops(cfg, 1, geometry.height, geometry.width)  # ONE video
    with torch.device("meta"):
        params = count_parameters(build_model(cfg.model, cfg.data.t_in, cfg.data.t_out))
    dtype_name = arithmetic(precision)
    result = {
        "device": device_name(device),
        "dtype": dtype_name,
        "compile": args.compile,
        "channels_last": precision.channels_last,
        **model_description(cfg),
        "preset": args.preset,
        "overrides": list(args.overrides),
        "batch": args.batch,
        "frames": [cfg.data.t_in, cfg.data.t_out],
        "size": [geometry.height, geometry.width],
        "params": params,
        "flops_per_video_forward": forward_flops,
        "flops_per_video_train_step": train_flops,
        # what one video's training pass keeps for backward in fp32 (bf16 autocast keeps about half)
        "saved_activations_mb_per_video": count_saved_activations(cfg, 1, geometry.height, geometry.width),
    }
    if args.count_only:
        print(json.dumps(result, indent=2))
        return result

    training = build_training(cfg, device, seed=0)
    video = random_videos(args.batch, cfg.data.t_in + cfg.data.t_out, geometry.height, geometry.width, device)
    for step in range(args.warmup):
        training.step(video, step)
    synchronize(device)
    times = [per_step(lambda s=step: training.step(video, s), device)
             for step in range(args.warmup, args.warmup + args.steps)]
    seconds = statistics.median(times)
    result.update(
        seconds_per_step=round(seconds, 4),
        seconds_all_steps=[round(t, 4) for t in times],
        videos_per_second=round(args.batch / seconds, 3),
        achieved_gflops_per_second=round(train_flops * args.batch / seconds / 1e9, 1),
        **throughput(train_flops, args.batch / seconds, peak_tflops(device, dtype_name, args.peak_tflops)),
    )
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
