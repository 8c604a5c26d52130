"""Model-only compute benchmark: FLOPs and achieved FLOP/s of one training step, no data loading.

    python benchmarks/bench_model.py --cell gru                 # CPU, fp32, 3+3 frames of 160x240
    python benchmarks/bench_model.py --cell lstm --t-in 11 --t-out 11 --count-only
    python benchmarks/bench_model.py --device cuda --dtype bfloat16 --channels-last --compile --batch 8

Prints one JSON object. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over a forward
and backward pass (convolutions and matmuls; element-wise work is not counted), taken on the meta
device so counting costs no compute. A training step = forward, MSE loss, backward, AdamW step.
Extra ``model.key=value`` arguments override the default ModelConfig (e.g. model.patch_size=2).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from core.config import load_config  # noqa: E402
from models import build_model, count_parameters  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", choices=["gru", "lstm"], default=None, help="default: the config's")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--t-in", type=int, default=3, help="fewer than the real 11 keeps CPU runs short")
    parser.add_argument("--t-out", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, compile)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16 = autocast over fp32 weights, as training does")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last weights and frames laid out (B, T, H, W, C) as the loader gives")
    parser.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 keeps torch's default")
    parser.add_argument("--count-only", action="store_true", help="count FLOPs, skip the timing")
    parser.add_argument("overrides", nargs="*", help="model.key=value settings")
    return parser.parse_args(argv)


def make_frames(batch: int, t: int, channels: int, height: int, width: int, device, channels_last: bool):
    """Random frames in [0, 1], (B, T, C, H, W); channels_last ones are views of (B, T, H, W, C)."""
    if channels_last:
        return torch.rand(batch, t, height, width, channels, device=device).permute(0, 1, 4, 2, 3)
    return torch.rand(batch, t, channels, height, width, device=device)


def count_train_flops(model_cfg, args) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs for ONE video, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(model_cfg, args.t_in, args.t_out)
    x = make_frames(1, args.t_in, model_cfg.in_channels, args.height, args.width, "meta", False)
    with FlopCounterMode(display=False) as counter:
        y = model(x)
        forward = counter.get_total_flops()
        y.float().square().mean().backward()
    return forward, counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"model.cell={args.cell}"] if args.cell else [])
    model_cfg = load_config(None, overrides).model
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    forward_flops, train_flops = count_train_flops(model_cfg, args)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "cell": model_cfg.cell,
        "batch": args.batch,
        "frames": [args.t_in, args.t_out],
        "size": [args.height, args.width],
        "params": None,
        "flops_per_video_forward": forward_flops,
        "flops_per_video_train_step": train_flops,
    }
    torch.manual_seed(0)
    model = build_model(model_cfg, args.t_in, args.t_out).to(device)
    result["params"] = count_parameters(model)
    if args.count_only:
        print(json.dumps(result, indent=2))
        return result

    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if args.compile else model
    x = make_frames(args.batch, args.t_in, model_cfg.in_channels, args.height, args.width, device, args.channels_last)
    target = make_frames(args.batch, args.t_out, model_cfg.in_channels, args.height, args.width, device, args.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            prediction = step_model(x)  # (B, t_out, C, H, W)
        loss = F.mse_loss(prediction.float(), target)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        train_step()
    sync()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    result.update(
        seconds_per_step=round(seconds, 4),
        seconds_all_steps=[round(t, 4) for t in times],
        videos_per_second=round(args.batch / seconds, 3),
        achieved_gflops_per_second=round(train_flops * args.batch / seconds / 1e9, 1),
    )
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
