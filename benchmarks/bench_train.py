"""Training throughput and memory of one model configuration, printed as one JSON object.

    python -m benchmarks.bench_train                                      # default family, 160x240, 11 -> 11
    python -m benchmarks.bench_train --family convlstm --preset mmnist --amp bf16 --batch 16
    python -m benchmarks.bench_train --family simvp --preset mmnist model.simvp.translator=tau
    python -m benchmarks.bench_train --cell lstm --batch 8 --compile
    python -m benchmarks.bench_train --with-loader datasets/shapes/packed/train.h5 --workers 4

Any family (``--family``, default the config's) at a named reference size (``--preset``: ``default``
160x240 RGB 11 -> 11 with the family's config defaults, ``mmnist`` the published Moving-MNIST
configurations at 64x64 grey 10 -> 10, ``tiny``), with ``--height`` etc. and free ``key=value``
config settings (``model.predrnn.hidden_channels=[64,64]``, ``train.loss=l1``) on top, all validated
by ``core.config``.

It times ``training.step.train_step``, the very step ``stages/train.py`` runs (the family's training
pass with scheduled sampling and its extra losses, autocast, channels_last, fused/foreach optimizer,
clipping), on the objects built as the train stage builds them, on random uint8 videos that already
sit on the device, so the figure is the model's compute; ``--with-loader PACK`` feeds it from the
real loader over an HDF5 pack instead, which adds decoding, worker processes and host-to-device copies.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one training pass + backward
on the meta device (matrix products and convolutions; the optimizer and element-wise work are not
counted), without activation checkpointing: its recomputation is extra work, not useful FLOPs.
``saved_activations_mb`` is what autograd keeps for the backward pass of one step (not compiled; it
includes the weights, which autocast saves as bf16 copies).
``executed_gflops_per_video_step`` adds activation checkpointing's recomputation, as eager mode runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time


# First, before torch: see its note on platform.uname and the children's peak RSS.
from benchmarks.common import (
    SavedActivations,
    add_model_arguments,
    arithmetic,
    build_config,
    build_training,
    count_flops,
    device_name,
    model_description,
    peak_rss_mb,
    peak_tflops,
    random_videos,
    resolve_geometry,
    setting,
    synchronize,
    throughput,
)

import torch

from core.config import DataConfig
from core.distributed import pick_device
from core.errors import FramecastError
from models import count_parameters


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--batch", type=int, default=None, help="videos per step (train.batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (cuDNN autotune, compile)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training pass (train.compile)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute the recurrent steps in the backward pass (train.activation_checkpointing)")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=None, help="train.amp")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="train.channels_last (CUDA only, as in training)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the fraction")
    parser.add_argument("--with-loader", metavar="PACK", help="an HDF5 pack (<split>.h5) to read batches from")
    parser.add_argument("--workers", type=int, default=4, help="loader processes (with --with-loader)")
    parser.add_argument("--prefetch", type=int, default=DataConfig().prefetch_factor, help="batches each worker keeps ready")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or (args.batch is not None and args.batch < 1):
        parser.error("--warmup, --steps and --batch must be >= 1")
    return args


def train_settings(args: argparse.Namespace) -> list[str]:
    """The script's flags as the train.* settings they stand for (those not given keep the config's)."""
    flags = {"compile": args.compile, "activation_checkpointing": args.activation_checkpointing,
             "batch_size": args.batch, "amp": args.amp, "channels_last": args.channels_last}
    return [setting(f"train.{key}", value) for key, value in flags.items() if value is not None]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        return measure(args)
    except FramecastError as exc:  # a bad setting, or one the family refuses: one line, no traceback
        raise SystemExit(f"bench_train.py: {exc}") from None


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    geometry = resolve_geometry(args)
    cfg = build_config(args.family, geometry, cell=args.cell, settings=train_settings(args), overrides=args.overrides)
    tc = cfg.train
    t_in, t_out = cfg.data.t_in, cfg.data.t_out
    frames = t_in + t_out
    height, width = geometry.height, geometry.width
    device = pick_device(args.device)

    loader = None
    if args.with_loader:
        from data.datasets import VideoWindowDataset, make_loader
        from data.sources import H5VideoSource

        source = H5VideoSource(args.with_loader)
        height, width = source.frame_shape[:2]
        dataset = VideoWindowDataset(source, t_in, t_out)
        loader = make_loader(
            dataset, tc.batch_size, shuffle=True, num_workers=args.workers, prefetch_factor=args.prefetch,
            pin_memory=cfg.data.pin_memory and device.type == "cuda", drop_last=True, seed=tc.seed,
        )

    training = build_training(cfg, device)
    shape = (cfg, tc.batch_size, height, width)
    flops_per_step = count_flops(*shape)[1]
    executed_flops_per_step = count_flops(*shape, recompute=True)[1] if tc.activation_checkpointing else flops_per_step
    # Random frames already on the device: uint8 (B, T, H, W, C), as the loader would deliver them.
    fixed = random_videos(tc.batch_size, frames, height, width, device)

    def batches():
        while True:
            if loader is None:
                yield fixed
            else:
                yield from loader

    stream = batches()
    saved = SavedActivations()
    step = 0  # the global step, as the train stage counts it (scheduled sampling reads it)
    for index in range(args.warmup):
        # Counted in the first (eager) step; a compiled model's saved tensors live inside its graph.
        with saved if index == 0 and not tc.compile else contextlib.nullcontext():
            training.step(next(stream), step)
        step += 1
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = torch.zeros(2, device=device)  # (frame loss, extra loss) summed over the timed steps
    start = time.perf_counter()
    for _ in range(args.steps):
        losses += training.step(next(stream), step)
        step += 1
    synchronize(device)
    elapsed = time.perf_counter() - start
    loss, extra_loss = (float(v) / args.steps for v in losses)

    videos_per_s = args.steps * tc.batch_size / elapsed
    dtype_name = arithmetic(training.precision)
    flops_per_video = flops_per_step / tc.batch_size
    if loader is not None:
        loader.end_workers()  # joins the workers, so getrusage reports their peak RSS below
    result = {
        "device": device_name(device),
        "dtype": dtype_name,
        **model_description(cfg),
        "preset": args.preset,
        "overrides": list(args.overrides),
        "params": count_parameters(training.model),
        "batch": tc.batch_size,
        "frames": [t_in, t_out],
        "size": [height, width],
        "compile": tc.compile,
        "activation_checkpointing": tc.activation_checkpointing,
        "channels_last": training.precision.channels_last,
        "loss": tc.loss,
        "input": f"loader:{args.with_loader} ({args.workers} workers)" if args.with_loader else "synthetic in memory",
        "steps": args.steps,
        "seconds": round(elapsed, 3),
        "mean_loss": loss,
        "mean_extra_loss": extra_loss,  # the family's own terms (PredRNN decoupling, TAU divergence)
        "videos_per_s": round(videos_per_s, 3),
        "frames_per_s": round(videos_per_s * frames, 2),
        "gflops_per_video_step": round(flops_per_video / 1e9, 3),
        "executed_gflops_per_video_step": round(executed_flops_per_step / tc.batch_size / 1e9, 3),  # + recomputation
        **throughput(flops_per_video, videos_per_s, peak_tflops(device, dtype_name, args.peak_tflops)),
        "saved_activations_mb": saved.mb,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_children_mb": peak_rss_mb(children=True),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
