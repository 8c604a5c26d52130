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
- ``ssim``: structural similarity, per channel over the "valid" window positions (no padding),
  averaged over channels and positions for each frame, then over frames; K1 = 0.01, K2 = 0.03.
  ``evaluate.ssim`` picks the window (``SSIM_KINDS``):
  ``gaussian`` (default): 11x11 Gaussian window (sigma 1.5), population covariance, data range 1,
  as in Wang et al.'s reference ssim.m;
  ``skimage``: scikit-image's ``structural_similarity`` defaults: 7x7 uniform window, sample
  covariance (49/48), with ``data_range=1``;
  ``openstl``: the same window with data range 2, what OpenSTL's published tables computed: its
  ``metric()`` passes float frames in [0, 1] without ``data_range`` to scikit-image <= 0.19.3 (the
  version it pins), which then took float images to span [-1, 1]; its SSIMs read higher than
  ``skimage``'s.
  The windows are separable, so each is two 1-D passes of shifted sums in float32, after
  subtracting each frame and channel's mean (SSIM's variances do not change under a shift, and the
  float32 cancellation in E[x^2] - E[x]^2 shrinks with the magnitude): the same values as float64
  to well under 1e-6, much faster than a dense 2-D convolution in float64 (benchmarks/RESULTS.md,
  "SSIM"; tests/test_scores.py holds the agreement).

The numbers of each SSIM definition are the metric's, not tunables, so they are fixed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.errors import FramecastError

SSIM_K1 = 0.01
SSIM_K2 = 0.03


@dataclass(frozen=True)
class SSIMKind:
    """One SSIM definition: its window (separable: the same 1-D weights along H and W) and constants."""

    window: str  # "gaussian" or "uniform"
    size: int  # window side, pixels
    sample_covariance: bool  # variances and covariance times size^2 / (size^2 - 1)
    data_range: float  # C1 = (K1 * data_range)^2, C2 = (K2 * data_range)^2
    sigma: float = 0.0  # the Gaussian's, in pixels

    def describe(self) -> str:
        shape = f"Gaussian sigma {self.sigma}" if self.window == "gaussian" else "uniform"
        covariance = "sample" if self.sample_covariance else "population"
        return (f"{self.size}x{self.size} {shape} window, {covariance} covariance, K1 {SSIM_K1}, K2 {SSIM_K2}, "
                f"data range {self.data_range:g}, valid positions, per channel, averaged over channels and frames")

    def weights(self) -> list[float]:
        """The 1-D window, normalised to sum 1 (computed in float64)."""
        if self.window == "uniform":
            return [1.0 / self.size] * self.size
        coords = torch.arange(self.size, dtype=torch.float64) - (self.size - 1) / 2
        g = torch.exp(-(coords**2) / (2 * self.sigma**2))
        return (g / g.sum()).tolist()


SSIM_KINDS = {
    "gaussian": SSIMKind("gaussian", 11, sample_covariance=False, data_range=1.0, sigma=1.5),
    "skimage": SSIMKind("uniform", 7, sample_covariance=True, data_range=1.0),
    "openstl": SSIMKind("uniform", 7, sample_covariance=True, data_range=2.0),
}
DEFAULT_SSIM = "gaussian"
# Values (images x 5 maps x H x W) filtered at once on the CPU: ~2 MB of float32 stays in cache over
# the window's 2 x size shifted passes; all images at once was several times slower (benchmarks/RESULTS.md, "SSIM").
SSIM_CPU_CHUNK_VALUES = 2**19

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
}


def definitions(ssim: str = DEFAULT_SSIM) -> dict[str, str]:
    """What each score means, SSIM as ``ssim`` (an ``SSIM_KINDS`` key) defines it."""
    return {**DEFINITIONS, "ssim": f"SSIM '{ssim}' ({SSIM_KINDS[ssim].describe()})"}


def _window_sums(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Separable valid filtering: z (..., H, W) -> (..., H-k+1, W-k+1), the 1-D ``weights`` along W then H."""
    k = len(weights)
    w_out, h_out = z.shape[-1] - k + 1, z.shape[-2] - k + 1
    along_w = z[..., 0:w_out] * weights[0]
    for j in range(1, k):
        along_w += z[..., j:j + w_out] * weights[j]
    out = along_w[..., 0:h_out, :] * weights[0]
    for j in range(1, k):
        out += along_w[..., j:j + h_out, :] * weights[j]
    return out


def ssim_per_frame(pred: torch.Tensor, truth: torch.Tensor, ssim: str = DEFAULT_SSIM) -> torch.Tensor:
    """SSIM of each frame: pred/truth float (B, T, C, H, W) in [0, 1] -> (B, T) float64.

    ``ssim``: which definition (an ``SSIM_KINDS`` key)."""
    kind = SSIM_KINDS[ssim]
    b, t, c, h, w = pred.shape
    if h < kind.size or w < kind.size:
        raise FramecastError(f"SSIM '{ssim}' needs frames of at least {kind.size}x{kind.size} pixels, got {h}x{w}")
    x = pred.reshape(b * t * c, h, w).float()  # (N, H, W), one image per frame and channel
    y = truth.reshape(b * t * c, h, w).float()
    weights = kind.weights()
    # On the CPU, a few images at a time, so the maps stay in cache across the shifted passes; on
    # a GPU all at once (fewer kernel launches).
    chunk = max(1, SSIM_CPU_CHUNK_VALUES // (5 * h * w)) if x.device.type == "cpu" else len(x)
    per_image = torch.cat([_ssim_per_image(xs, ys, kind, weights) for xs, ys in zip(x.split(chunk), y.split(chunk))])
    return per_image.reshape(b, t, c).mean(dim=2)  # (B, T)


def _ssim_per_image(x: torch.Tensor, y: torch.Tensor, kind: SSIMKind, weights: list[float]) -> torch.Tensor:
    """Mean SSIM over the valid positions of each image: x, y float32 (N, H, W) -> (N,) float64."""
    # Shift both by one constant per image: variances and covariance are unchanged, and E[x^2] -
    # E[x]^2 then cancels far less in float32 (the means get the shift back below).
    shift = (x.mean(dim=(1, 2), keepdim=True) + y.mean(dim=(1, 2), keepdim=True)) / 2  # (N, 1, 1)
    x, y = x - shift, y - shift
    sums = _window_sums(torch.stack([x, y, x * x, y * y, x * y], dim=1), weights)  # (N, 5, h', w')
    mu_x, mu_y, xx, yy, xy = sums.unbind(dim=1)  # each (N, h', w')
    norm = kind.size**2 / (kind.size**2 - 1) if kind.sample_covariance else 1.0
    var_x, var_y, cov = norm * (xx - mu_x * mu_x), norm * (yy - mu_y * mu_y), norm * (xy - mu_x * mu_y)
    mu_x, mu_y = mu_x + shift, mu_y + shift
    c1, c2 = (SSIM_K1 * kind.data_range) ** 2, (SSIM_K2 * kind.data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2), dtype=torch.float64)  # (N,)


def f1_per_frame(pred: torch.Tensor, truth: torch.Tensor, threshold: float) -> torch.Tensor:
    """F1 of binarised frames: pred/truth float (B, T, C, H, W) in [0, 1] -> (B, T) float64."""
    p, t = pred > threshold, truth > threshold
    tp = (p & t).sum(dim=(2, 3, 4), dtype=torch.float64)  # (B, T)
    wrong = (p ^ t).sum(dim=(2, 3, 4), dtype=torch.float64)  # FP + FN
    denominator = 2 * tp + wrong
    return torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.ones_like(tp))


def frame_metrics(pred: torch.Tensor, truth: torch.Tensor, f1_threshold: float | None = None,
                  ssim: str = DEFAULT_SSIM) -> dict[str, torch.Tensor]:
    """Every metric for every frame: pred/truth float (B, T, C, H, W) in [0, 1] -> {key: (B, T)}.

    ``f1`` is included when ``f1_threshold`` is given (grey data); ``ssim`` names the SSIM definition."""
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
        "ssim": ssim_per_frame(pred, truth, ssim),
    }
    if f1_threshold is not None:
        metrics["f1"] = f1_per_frame(pred, truth, f1_threshold)
    return metrics


class LeadTimeMetrics:
    """Running per-lead-time sums: ``update`` batch after batch, ``compute`` at the end.

    Only (T,) float64 sums live here, so evaluating a large split needs no more memory than a batch.
    """

    def __init__(self, t_out: int, f1_threshold: float | None = None, ssim: str = DEFAULT_SSIM):
        self.t_out = t_out
        self.f1_threshold = f1_threshold
        self.ssim = ssim  # the SSIM definition (SSIM_KINDS)
        keys = METRIC_KEYS + (("f1",) if f1_threshold is not None else ())
        self.sums = {key: torch.zeros(t_out, dtype=torch.float64) for key in keys}
        self.count = 0  # sequences seen

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        """pred/truth float (B, T_out, C, H, W) in [0, 1]."""
        if pred.shape[1] != self.t_out:
            raise ValueError(f"expected {self.t_out} lead times, got {pred.shape[1]}")
        for key, per_frame in frame_metrics(pred, truth, self.f1_threshold, self.ssim).items():
            self.sums[key] += per_frame.sum(dim=0).cpu()  # (T,)
        self.count += pred.shape[0]

    def compute(self) -> dict:
        """{"per_lead_time": {key: [T floats]}, "mean": {key: float}} (mean over lead times too)."""
        if self.count == 0:
            raise ValueError("no sequences were accumulated")
        per_lead = {key: (s / self.count).tolist() for key, s in self.sums.items()}
        mean = {key: float(sum(v) / len(v)) for key, v in per_lead.items()}
        return {"sequences": self.count, "per_lead_time": per_lead, "mean": mean}
