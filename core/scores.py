"""Video-prediction scores per lead time, accumulated batch by batch so memory stays flat.

Conventions (the Moving MNIST literature's, as OpenSTL's benchmark tables report them):
- frames are float in [0, 1];
- ``mse_per_frame_sum`` / ``mae_per_frame_sum``: squared / absolute error SUMMED over every value of
  one frame (all pixels and all channels), then averaged over the frames of that lead time across
  sequences. This is the figure papers report as "MSE" and "MAE".
- ``mse_per_pixel`` / ``mae_per_pixel``: the same error averaged over every value of the frame
  (per pixel per channel), i.e. the frame sum divided by C * H * W.
- ``psnr``: 10 * log10(1 / mse_per_pixel) for each frame (data range 1), averaged over frames.
  A frame predicted exactly has PSNR +inf, and so does any mean that includes one.
- ``f1`` (grey data only): F1 score of the binarised frame (value > threshold) against the
  binarised truth, 2 TP / (2 TP + FP + FN) per frame (1 when both are empty), averaged over frames:
  whether the digits are where they should be, however blurred.
- ``ssim``: structural similarity with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  data range 1, computed on each channel separately over the "valid" window positions (no padding,
  as in Wang et al.'s reference ssim.m), averaged over channels and positions for each frame, then
  over frames. Implemented with ``torch.nn.functional.conv2d`` (float64) so it runs on the evaluation device.

The numbers of the SSIM definition are the metric's, not tunables, so they are fixed here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.errors import FramecastError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

METRIC_KEYS = ("mse_per_frame_sum", "mae_per_frame_sum", "mse_per_pixel", "mae_per_pixel", "psnr", "ssim")

DEFINITIONS = {
    "mse_per_frame_sum": "squared error summed over all pixels and channels of a frame in [0,1], "
    "averaged over frames of this lead time (the Moving MNIST literature's 'MSE')",
    "mae_per_frame_sum": "absolute error summed over all pixels and channels of a frame in [0,1], "
    "averaged over frames (the literature's 'MAE')",
    "mse_per_pixel": "squared error averaged over every pixel and channel of a frame in [0,1]",
    "mae_per_pixel": "absolute error averaged over every pixel and channel of a frame in [0,1]",
    "psnr": "10*log10(1/mse_per_pixel) per frame (data range 1), averaged over frames; inf if exact",
    "f1": "F1 score of the frame binarised at the threshold against the binarised truth, per frame "
    "(1 when both are empty), averaged over frames (grey data only)",
    "ssim": f"Gaussian-window SSIM ({SSIM_WINDOW}x{SSIM_WINDOW}, sigma {SSIM_SIGMA}, K1 {SSIM_K1}, "
    f"K2 {SSIM_K2}, data range 1, valid positions) per channel, averaged over channels and frames",
}


def gaussian_line(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float64,
                  device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,): the 2-D SSIM window is its outer product with itself."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_frame(pred: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """SSIM of each frame: pred/truth float (B, T, C, H, W) in [0, 1] -> (B, T).

    Scores use float64; the training loss's SSIM term uses float32 (differentiable, and a gradient
    does not need the eighth digit)."""
    b, t, c, h, w = pred.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise FramecastError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    # float64: the variances are differences of near-equal means, which float32 blurs by ~1e-8,
    # a visible error next to C2 = 9e-4 on flat regions.
    x = pred.reshape(b * t, c, h, w).to(dtype)  # (B*T, C, H, W)
    y = truth.reshape(b * t, c, h, w).to(dtype)
    # The 2-D Gaussian is the outer product of a 1-D one: blurring by rows, then by columns, is the
    # same filter for 2k instead of k*k multiplications a pixel (slow float64 convs add up in evaluate).
    line = gaussian_line(dtype=x.dtype, device=x.device)  # (k,)
    across = line.view(1, 1, 1, SSIM_WINDOW).expand(c, 1, 1, SSIM_WINDOW)  # (C, 1, 1, k): one filter per channel
    down = line.view(1, 1, SSIM_WINDOW, 1).expand(c, 1, SSIM_WINDOW, 1)  # (C, 1, k, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, across, groups=c), down, groups=c)  # (B*T, C, H-k+1, W-k+1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).reshape(b, t)  # (B, T) in dtype


def f1_per_frame(pred: torch.Tensor, truth: torch.Tensor, threshold: float) -> torch.Tensor:
    """F1 of binarised frames: pred/truth float (B, T, C, H, W) in [0, 1] -> (B, T) float64."""
    p, t = pred > threshold, truth > threshold
    tp = (p & t).sum(dim=(2, 3, 4), dtype=torch.float64)  # (B, T)
    wrong = (p ^ t).sum(dim=(2, 3, 4), dtype=torch.float64)  # FP + FN
    denominator = 2 * tp + wrong
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.ones_like(tp))


def frame_metrics(pred: torch.Tensor, truth: torch.Tensor, f1_threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Every metric for every frame: pred/truth float (B, T, C, H, W) in [0, 1] -> {key: (B, T)}.

    ``f1`` is included when ``f1_threshold`` is given (grey data)."""
    if pred.shape != truth.shape or pred.ndim != 5:
        raise ValueError(f"pred {tuple(pred.shape)} and truth {tuple(truth.shape)} must both be (B, T, C, H, W)")
    pred = pred.float()
    truth = truth.float()
    diff = pred - truth  # (B, T, C, H, W)
    values_per_frame = math.prod(pred.shape[2:])  # C * H * W
    mse_sum = diff.square().sum(dim=(2, 3, 4), dtype=torch.float64)  # (B, T)
    mae_sum = diff.abs().sum(dim=(2, 3, 4), dtype=torch.float64)  # (B, T)
    mse_pixel = mse_sum / values_per_frame
    psnr = 10 * torch.log10(1.0 / mse_pixel)  # +inf where a frame is exact
    metrics = {
        "mse_per_frame_sum": mse_sum,
        "mae_per_frame_sum": mae_sum,
        "mse_per_pixel": mse_pixel,
        "mae_per_pixel": mae_sum / values_per_frame,
        "psnr": psnr,
        "ssim": ssim_per_frame(pred, truth),
    }
    if f1_threshold is not None:
        metrics["f1"] = f1_per_frame(pred, truth, f1_threshold)
    return metrics


class LeadTimeMetrics:
    """Running per-lead-time sums: ``update`` batch after batch, ``compute`` at the end.

    Only (T,) float64 sums live here, so evaluating a large split needs no more memory than a batch.
    """

    def __init__(self, t_out: int, f1_threshold: float | None = None):
        self.t_out = t_out
        self.f1_threshold = f1_threshold
        keys = METRIC_KEYS + (("f1",) if f1_threshold is not None else ())
        self.sums = {key: torch.zeros(t_out, dtype=torch.float64) for key in keys}
        self.count = 0  # sequences seen

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        """pred/truth float (B, T_out, C, H, W) in [0, 1]."""
        if pred.shape[1] != self.t_out:
            raise ValueError(f"expected {self.t_out} lead times, got {pred.shape[1]}")
        for key, per_frame in frame_metrics(pred, truth, self.f1_threshold).items():
            self.sums[key] += per_frame.sum(dim=0).cpu()  # (T,)
        self.count += pred.shape[0]

    def compute(self) -> dict:
        """{"per_lead_time": {key: [T floats]}, "mean": {key: float}} (mean over lead times too)."""
        if self.count == 0:
            raise ValueError("no sequences were accumulated")
        per_lead = {key: (s / self.count).tolist() for key, s in self.sums.items()}
        mean = {key: float(sum(v) / len(v)) for key, v in per_lead.items()}
        return {"sequences": self.count, "per_lead_time": per_lead, "mean": mean}
