"""SSIM speed and agreement: core.scores against the dense float64 convolution it replaced, and
against scikit-image.

    python -m benchmarks.bench_ssim --videos 6 --frames 11 --height 64 --width 96 --repeats 5

Scores ``videos x frames`` generated shapes frames (data/synthetic.py) against the frames one step
later (each frame a "copy-last" forecast of the next), as the evaluate stage does: (B, T, C, H, W)
float in [0, 1] -> SSIM per frame. Times each way (median of ``--repeats``, one torch thread unless
``--threads``), and gives the largest per-frame difference between ways that should agree:
- ``dense_float64_conv`` (the implementation before 2026-12-07, kept here only as the reference:
  an 11x11 2-D ``conv2d`` in float64) against ``gaussian`` (``evaluate.ssim: gaussian``);
- scikit-image's ``structural_similarity`` (data_range 1 and 2, float64 frames, a loop over
  frames: how OpenSTL-style code computes it) against ``skimage`` and ``openstl``, when
  scikit-image is installed (requirements-test.txt).
Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.scores import SSIM_KINDS, ssim_per_frame
from data.synthetic import render_shapes_video


def dense_float64_ssim(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The SSIM framecast computed before: one dense 11x11 Gaussian conv2d per map, in float64.
    (B, T, C, H, W) -> (B, T) float64."""
    b, t, c, h, w = pred.shape
    kind = SSIM_KINDS["gaussian"]
    g = torch.tensor(kind.weights(), dtype=torch.float64)
    weight = torch.outer(g, g).expand(c, 1, kind.size, kind.size)  # (C, 1, k, k)
    x, y = pred.reshape(b * t, c, h, w).double(), truth.reshape(b * t, c, h, w).double()

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, weight, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).reshape(b, t)


def scikit_image_ssim(pred: torch.Tensor, truth: torch.Tensor, data_range: float) -> torch.Tensor:
    """scikit-image's structural_similarity with its defaults, one frame at a time, float64."""
    from skimage.metrics import structural_similarity

    p, q = pred.double().numpy(), truth.double().numpy()
    values = [[structural_similarity(p[i, j], q[i, j], channel_axis=0, data_range=data_range)
               for j in range(p.shape[1])] for i in range(p.shape[0])]
    return torch.tensor(values, dtype=torch.float64)


def frames(videos: int, count: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, truth) float (videos, count, 3, H, W): each frame forecast by the one before it."""
    rng = np.random.default_rng(seed)
    clips = np.stack([render_shapes_video(rng, height, width, count + 1)[0] for _ in range(videos)])
    x = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float().div(255)  # (N, count + 1, 3, H, W)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def timed(function, repeats: int) -> tuple[float, list[float], torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=11, help="scored frames per video")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pred, truth = frames(args.videos, args.frames, args.height, args.width, args.seed)
    ways = {
        "dense_float64_conv": lambda: dense_float64_ssim(pred, truth),
        **{f"framecast_{kind}": (lambda kind=kind: ssim_per_frame(pred, truth, kind)) for kind in SSIM_KINDS},
    }
    try:
        import skimage

        ways["scikit_image_range1"] = lambda: scikit_image_ssim(pred, truth, 1.0)
        ways["scikit_image_range2"] = lambda: scikit_image_ssim(pred, truth, 2.0)
        skimage_version = skimage.__version__
    except ImportError:
        skimage_version = None
    seconds, values = {}, {}
    for name, function in ways.items():
        median, times, result = timed(function, args.repeats)
        seconds[name] = {"median": median, "all": times}
        values[name] = result
    pairs = {"framecast_gaussian vs dense_float64_conv": ("framecast_gaussian", "dense_float64_conv"),
             "framecast_skimage vs scikit_image_range1": ("framecast_skimage", "scikit_image_range1"),
             "framecast_openstl vs scikit_image_range2": ("framecast_openstl", "scikit_image_range2")}
    differences = {label: float((values[a] - values[b]).abs().max()) for label, (a, b) in pairs.items()
                   if a in values and b in values}
    before, after = seconds["dense_float64_conv"]["median"], seconds["framecast_gaussian"]["median"]
    print(json.dumps({
        "frames": f"{args.videos} videos x {args.frames} frames = {args.videos * args.frames} frames of "
                  f"{args.height}x{args.width} RGB (shapes, seed {args.seed}), each against the next",
        "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "scikit_image": skimage_version, "cpu": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
        "seconds": seconds,
        "speedup_gaussian_vs_dense_float64": before / after,
        "max_abs_difference_per_frame": differences,
        "mean_ssim": {name: float(v.mean()) for name, v in values.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
