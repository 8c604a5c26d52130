"""Training throughput and memory of one model configuration, printed as one JSON object.

    python benchmarks/bench_train.py                         # default 160x240 model, in-memory input
    python benchmarks/bench_train.py --cell lstm --batch 8 --compile
    python benchmarks/bench_train.py --with-loader datasets/shapes/packed/train.h5 --workers 4

It times ``training.step.train_step``, the very step ``stages/train.py`` runs (autocast, channels_last,
fused/foreach optimizer, clipping), on random uint8 videos that already sit on the device, so the
figure is the model's compute; ``--with-loader PACK`` feeds it from the real loader over an HDF5 pack
instead, which adds decoding, worker processes and host-to-device copies.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward on the
meta device (matrix products and convolutions; the optimizer and element-wise work are not counted),
without activation checkpointing: its recomputation is extra work, not useful FLOPs.
``saved_activations_mb`` is what autograd keeps for the backward pass of one step (not compiled; it
includes the conv weights, ~24 MiB in fp32, which autocast would save as bf16 copies).
``executed_gflops_per_video_step`` adds activation checkpointing's recomputation, as eager mode runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from core.distributed import pick_device  # noqa: E402
from models import build_model, count_parameters  # noqa: E402
from training.step import autocast_dtype, build_optimizer, train_step, use_channels_last, use_cudnn_autotune  # noqa: E402

# Dense peak TFLOP/s of common accelerators (vendor data sheets, SXM parts where both exist), by the
# arithmetic the step's convolutions run in: bf16 tensor cores with autocast; without autocast, TF32
# tensor cores where cuDNN may use them (torch's default), else plain fp32.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "V100": {"bf16": 125.0, "tf32": 15.7, "fp32": 15.7},  # no bf16 or TF32 units: fp16 / fp32 figures
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
}


def peak_tflops(device: torch.device, dtype_name: str, override: float | None) -> float | None:
    """Peak for this device: ``--peak-tflops`` when given, else the table (longest matching name)."""
    if override:
        return override
    if device.type != "cuda":
        return None  # CPUs vary too much to guess; pass --peak-tflops to get a fraction
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key][dtype_name]
    return None


def count_flops(model_cfg: ModelConfig, batch: int, frames: int, t_in: int, height: int, width: int,
                recompute: bool = False) -> int:
    """FLOPs of one forward + backward, counted on the meta device: shapes only, no memory, no time.

    ``recompute`` counts activation checkpointing's recomputation too (extra work, not useful FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(model_cfg, t_in, frames - t_in)
        video = torch.empty(batch, frames, 3, height, width)  # (B, T, C, H, W)
    model.set_activation_checkpointing(recompute)
    counter = FlopCounterMode(display=False)
    with counter:
        F.mse_loss(model(video[:, :t_in]), video[:, t_in:]).backward()
    return int(counter.get_total_flops())


class SavedActivations:
    """Counts what autograd keeps for the backward pass (unique storages) while active.

    Used around the first warm-up step itself: an extra forward just to count would leave its freed
    memory in the allocator and inflate the peak RSS this script reports.
    """

    def __init__(self):
        self.storages: dict[int, int] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._keep, lambda tensor: tensor)

    def _keep(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    @property
    def mb(self) -> float:
        return round(sum(self.storages.values()) / 2**20, 1)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    defaults_model, defaults_train = ModelConfig(), TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["gru", "lstm"], default=defaults_model.cell)
    parser.add_argument("--batch", type=int, default=defaults_train.batch_size, help="videos per step")
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--t-in", type=int, default=11)
    parser.add_argument("--t-out", type=int, default=11)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first (cuDNN autotune, compile)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute the recurrent steps in the backward pass (train.activation_checkpointing)")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], default=defaults_train.amp)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        default=defaults_train.channels_last, help="channels_last layout on CUDA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the fraction")
    parser.add_argument("--with-loader", metavar="PACK", help="an HDF5 pack (<split>.h5) to read batches from")
    parser.add_argument("--workers", type=int, default=4, help="loader processes (with --with-loader)")
    parser.add_argument("--prefetch", type=int, default=DataConfig().prefetch_factor, help="batches each worker keeps ready")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.batch < 1:
        parser.error("--warmup, --steps and --batch must be >= 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    use_cudnn_autotune(device)
    train_cfg = TrainConfig(
        batch_size=args.batch, amp=args.amp, compile=args.compile, channels_last=args.channels_last
    )
    model_cfg = ModelConfig(cell=args.cell)
    amp = autocast_dtype(train_cfg, device)
    channels_last = use_channels_last(train_cfg, device)
    frames = args.t_in + args.t_out

    loader = None
    if args.with_loader:
        from data.datasets import VideoWindowDataset, make_loader
        from data.sources import H5VideoSource

        source = H5VideoSource(args.with_loader)
        args.height, args.width = source.frame_shape[:2]
        dataset = VideoWindowDataset(source, args.t_in, args.t_out)
        loader = make_loader(
            dataset, args.batch, shuffle=True, num_workers=args.workers, prefetch_factor=args.prefetch,
            pin_memory=device.type == "cuda", drop_last=True,
        )

    torch.manual_seed(0)
    model = build_model(model_cfg, args.t_in, args.t_out).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train_cfg, device)
    # Random frames already on the device: uint8 (B, T, H, W, C), as the loader would deliver them.
    fixed = torch.randint(0, 256, (args.batch, frames, args.height, args.width, 3), dtype=torch.uint8, device=device)
    step_args = dict(t_in=args.t_in, device=device, amp_dtype=amp, channels_last=channels_last,
                     grad_clip=train_cfg.grad_clip)
    shape = (model_cfg, args.batch, frames, args.t_in, args.height, args.width)
    flops_per_step = count_flops(*shape)
    executed_flops_per_step = count_flops(*shape, recompute=True) if args.activation_checkpointing else flops_per_step
    model.set_activation_checkpointing(args.activation_checkpointing)
    step_model = torch.compile(model) if args.compile else model

    def batches():
        while True:
            if loader is None:
                yield fixed
            else:
                yield from loader

    stream = batches()
    saved = SavedActivations()
    for index in range(args.warmup):
        # Counted in the first (eager) step; a compiled model's saved tensors live inside its graph.
        with saved if index == 0 and not args.compile else contextlib.nullcontext():
            train_step(step_model, optimizer, next(stream), **step_args)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = torch.zeros((), device=device)
    start = time.perf_counter()
    for _ in range(args.steps):
        losses += train_step(step_model, optimizer, next(stream), **step_args)
    synchronize(device)
    elapsed = time.perf_counter() - start
    loss = float(losses) / args.steps

    videos_per_s = args.steps * args.batch / elapsed
    if amp == torch.bfloat16:
        dtype_name = "bf16"
    elif device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        dtype_name = "tf32"  # fp32 tensors, but cuDNN convolutions on TF32 tensor cores
    else:
        dtype_name = "fp32"
    flops_per_video = flops_per_step / args.batch
    achieved = flops_per_video * videos_per_s
    peak = peak_tflops(device, dtype_name, args.peak_tflops)
    if loader is not None:
        loader.end_workers()  # joins the workers, so getrusage reports their peak RSS below
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": dtype_name,
        "cell": args.cell,
        "params": count_parameters(model),
        "batch": args.batch,
        "frames": [args.t_in, args.t_out],
        "size": [args.height, args.width],
        "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "channels_last": channels_last,
        "input": f"loader:{args.with_loader} ({args.workers} workers)" if args.with_loader else "synthetic in memory",
        "steps": args.steps,
        "seconds": round(elapsed, 3),
        "mean_loss": loss,
        "videos_per_s": round(videos_per_s, 3),
        "frames_per_s": round(videos_per_s * frames, 2),
        "gflops_per_video_step": round(flops_per_video / 1e9, 3),
        "executed_gflops_per_video_step": round(executed_flops_per_step / args.batch / 1e9, 3),  # + recomputation
        "achieved_tflops": round(achieved / 1e12, 4),
        "peak_tflops": peak,
        "fraction_of_peak": round(achieved / (peak * 1e12), 4) if peak else None,
        "saved_activations_mb": saved.mb if saved.storages else None,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
