"""Predictive intervals per pixel whose coverage holds, and the scores that say whether it does.

An interval is ``forecast +- factor[lead time][level] * scale`` where the scale is per pixel: an
ensemble's spread (its members' std plus ``calibrate.spread_floor``) or a ``models.ScaleHead``'s
output. The factors are fitted by split conformal prediction (Vovk et al.; Angelopoulos & Bates 2021)
on labeled videos the model did not train on: for the calibration pixels' scores
``|truth - forecast| / scale`` of one lead time, sorted, the factor of coverage ``p`` is the
``ceil((n + 1) p)``-th smallest of the n scores. For a new pixel exchangeable with the calibration
ones, the interval then holds the truth with probability at least ``p`` (and below ``p + 1/(n + 1)``
without ties): a finite-sample guarantee, whatever the scale's quality. A good scale gives narrower
intervals and ranks the errors: large where the forecast is wrong.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from core.atomic import atomic_path
from core.errors import FramecastError
from models.scale_head import ScaleHead

# Its version: what a calibration file holds, so a later framecast knows how to read it.
FORMAT = 1

# (inputs, forecast, ensemble std or None) -> per-pixel scale, all (B, T, C, H, W).
ScaleFunction = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


# ----------------------------------------------------------------------------- likelihoods


def negative_log_likelihood(kind: str, error: Tensor, scale: Tensor) -> Tensor:
    """Mean NLL of ``error`` under a zero-centred Laplace (scale b) or Gaussian (std sigma)."""
    if kind == "laplace":
        return (torch.log(2 * scale) + error.abs() / scale).mean()
    if kind == "gaussian":
        return (0.5 * math.log(2 * math.pi) + torch.log(scale) + 0.5 * (error / scale).square()).mean()
    raise ValueError(f"unknown likelihood {kind!r}")


def likelihood_factor(kind: str, level: float) -> float:
    """Half-width of the central ``level`` interval of the distribution, in units of its scale."""
    if kind == "laplace":
        return -math.log(1.0 - level)
    if kind == "gaussian":
        return NormalDist().inv_cdf(0.5 + level / 2)
    raise ValueError(f"unknown likelihood {kind!r}")


def conformal_factor(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) level)``-th smallest score (inf when that is
    past the n scores: too few calibration pixels for this coverage)."""
    n = len(scores)
    rank = math.ceil((n + 1) * level)
    if rank > n:
        return math.inf
    return float(np.partition(scores, rank - 1)[rank - 1])


# ----------------------------------------------------------------------------- a fitted calibration


@dataclass
class Calibration:
    """What ``main.py calibrate`` fitted, as plain values (a ``weights_only`` torch file)."""

    method: str  # "spread" or "scale_head"
    levels: list[float]
    factors: list[list[float]]  # [lead time][level], in units of the scale
    t_in: int
    t_out: int
    in_channels: int
    checkpoints: list[str]  # the forecaster it was fitted for (one path, or an ensemble's members)
    split: str
    videos: int
    pixels: int  # calibration pixels per lead time
    spread_floor: float = 0.0
    likelihood: str = ""  # scale_head: the likelihood it was trained with
    head_settings: dict[str, Any] | None = None  # ScaleHead's constructor arguments
    head_state: dict[str, Tensor] | None = None

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, **asdict(self)}, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        if not path.is_file():
            raise FramecastError(f"{path}: calibration file not found (main.py calibrate writes it)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file, said in one line
            raise FramecastError(f"{path}: not a calibration file ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or state.pop("format", None) != FORMAT:
            raise FramecastError(f"{path}: not a calibration file of this framecast (format {FORMAT})")
        return cls(**state)

    def factor_table(self) -> Tensor:
        """(t_out, levels) float32."""
        return torch.tensor(self.factors, dtype=torch.float32)

    def likelihood_table(self) -> Tensor | None:
        """The scale head's own intervals (its likelihood's quantiles, before rescaling): (t_out, levels)."""
        if self.method != "scale_head":
            return None
        row = [likelihood_factor(self.likelihood, level) for level in self.levels]
        return torch.tensor([row] * self.t_out, dtype=torch.float32)

    def check_fits(self, path: str | Path, t_in: int, t_out: int, in_channels: int, members: int,
                   checkpoints: list[str]) -> None:
        """One line when this calibration cannot serve the forecaster at hand."""
        if (self.t_in, self.t_out, self.in_channels) != (t_in, t_out, in_channels):
            raise FramecastError(f"{path}: fitted for t_in={self.t_in}, t_out={self.t_out}, {self.in_channels} "
                                 f"channel(s); this forecaster has {t_in}, {t_out}, {in_channels}")
        if self.method == "spread" and members < 2:
            raise FramecastError(f"{path}: a calibration of an ensemble's spread needs the ensemble "
                                 f"(several predict.checkpoint); got one checkpoint")
        if sorted(self.checkpoints) != sorted(checkpoints):
            raise FramecastError(f"{path}: fitted for {self.checkpoints}, not for {checkpoints} (predict.checkpoint); "
                                 "calibrate this forecaster with main.py calibrate")

    def scale_function(self, device: torch.device) -> ScaleFunction:
        """The per-pixel scale the factors multiply, on ``device``."""
        if self.method == "spread":
            floor = self.spread_floor
            return lambda inputs, forecast, std: std + floor
        head = ScaleHead(**self.head_settings).to(device)
        head.load_state_dict(self.head_state)
        head.eval()

        def scale(inputs: Tensor, forecast: Tensor, std: Tensor | None) -> Tensor:
            with torch.inference_mode():
                return head(inputs, forecast)

        return scale


# ----------------------------------------------------------------------------- scoring intervals


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as Spearman and Mann-Whitney want them)."""
    order = np.argsort(values, kind="mergesort")
    _, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0  # of each distinct value
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def sample_pixels(values: list[Tensor], count: int, generator: torch.Generator) -> list[np.ndarray]:
    """The same ``count`` random pixels (with replacement) of each video and lead time of every tensor in
    ``values`` (each (B, T, C, H, W)): float64 arrays (T, B * count)."""
    batch, t_out = values[0].shape[:2]
    per_frame = values[0][0, 0].numel()
    index = torch.randint(per_frame, (batch, t_out, count), generator=generator)  # (B, T, count)
    out = []
    for tensor in values:
        flat = tensor.detach().flatten(2)  # (B, T, C*H*W), where it was computed
        picked = torch.gather(flat, 2, index.to(flat.device)).float().cpu()  # (B, T, count): only these move
        out.append(picked.transpose(0, 1).reshape(t_out, -1).double().numpy())
    return out


class IntervalScores:
    """Per lead time, accumulated batch by batch: each interval set's coverage and mean width at each
    level, and how well the scale ranks the pixel errors (on a random sample of pixels)."""

    def __init__(self, t_out: int, levels: list[float], factors: dict[str, Tensor], pixels_per_video: int,
                 large_error_fraction: float, seed: int = 0):
        self.t_out, self.levels, self.factors = t_out, list(levels), factors  # factors: name -> (t_out, L)
        self.pixels_per_video, self.large_error_fraction = pixels_per_video, large_error_fraction
        self.covered = {name: torch.zeros(t_out, len(levels), dtype=torch.float64) for name in factors}
        self.width = {name: torch.zeros(t_out, len(levels), dtype=torch.float64) for name in factors}
        self.values = torch.zeros(t_out, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.errors: list[np.ndarray] = []
        self.scales: list[np.ndarray] = []

    def update(self, forecast: Tensor, truth: Tensor, scale: Tensor) -> None:
        """forecast, truth, scale: (B, t_out, C, H, W)."""
        error = (truth.float() - forecast.float()).abs()
        scale = scale.float()
        per_frame = error[0, 0].numel()
        self.values += error.shape[0] * per_frame
        for name, table in self.factors.items():
            for k in range(len(self.levels)):
                half = scale * table[:, k].to(scale.device).view(1, -1, 1, 1, 1)  # (B, T, C, H, W)
                self.covered[name][:, k] += (error <= half).sum(dim=(0, 2, 3, 4)).double().cpu()
                self.width[name][:, k] += (2 * half).sum(dim=(0, 2, 3, 4)).double().cpu()
        errors, scales = sample_pixels([error, scale], self.pixels_per_video, self.generator)
        self.errors.append(errors)
        self.scales.append(scales)

    def compute(self) -> dict[str, Any]:
        errors, scales = np.concatenate(self.errors, axis=1), np.concatenate(self.scales, axis=1)  # (T, n)
        ranking_auroc, ranking_spearman = [], []
        for t in range(self.t_out):
            threshold = np.quantile(errors[t], 1 - self.large_error_fraction)
            ranking_auroc.append(auroc(scales[t], errors[t] > threshold))
            ranking_spearman.append(spearman(scales[t], errors[t]))
        intervals = {}
        for name in self.factors:
            coverage = (self.covered[name] / self.values.unsqueeze(1)).T.tolist()  # [level][lead time]
            width = (self.width[name] / self.values.unsqueeze(1)).T.tolist()
            intervals[name] = {f"{level:g}": {"coverage": cov, "mean_width": wid,
                                              "coverage_mean": sum(cov) / len(cov), "mean_width_mean": sum(wid) / len(wid)}
                               for level, cov, wid in zip(self.levels, coverage, width)}
        return {
            "levels": self.levels,
            "intervals": intervals,
            "auroc_large_errors": ranking_auroc,
            "auroc_large_errors_mean": _nanmean(ranking_auroc),
            "spearman": ranking_spearman,
            "spearman_mean": _nanmean(ranking_spearman),
            "ranked_pixels_per_lead_time": int(errors.shape[1]),
        }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
