"""The calibrate stage: a per-pixel predictive interval for a trained forecaster whose coverage holds.

    python main.py calibrate --checkpoint runs/<name>/best.pt --split val          # scale head
    python main.py calibrate --checkpoint 'runs/sweep/*/best.pt' calibrate.method=spread

``calibrate.method`` picks the per-pixel scale: ``spread``, an ensemble's per-pixel std across its
members (plus ``calibrate.spread_floor``); ``scale_head``, a ``models.ScaleHead`` trained for
``calibrate.head_steps`` steps on ``calibrate.fit_split`` with the Laplace or Gaussian negative
log-likelihood of the (frozen) forecaster's errors, for one model of any family or an ensemble's mean.
Then, on the first ``calibrate.max_videos`` videos of ``calibrate.split`` (labeled, not trained on),
the factor of each lead time and ``calibrate.levels`` coverage is the split-conformal quantile of
``|error| / scale`` (training/calibration.py): the interval ``forecast +- factor * scale`` then covers
at least that share of held-out pixels. Writes ``calibrate.out`` (default ``<run_dir>/calibration.pt``,
an ensemble's in its folder ``<run.out_dir>/ensembles/<name>/``);
``main.py evaluate ... evaluate.calibration=<it>`` scores its intervals, ``main.py predict ...
predict.calibration=<it>`` writes their half-widths as the spread file.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from core.errors import FramecastError
from core.outputs import calibration_path
from data.datasets import to_model_input
from models.scale_head import ScaleHead
from training.calibration import Calibration, conformal_factor, negative_log_likelihood, sample_pixels
from training.inference import Ensemble
from training.step import split_video

log = logging.getLogger(__name__)


def run(cfg) -> Path:
    cc = cfg.calibrate
    ensemble = Ensemble.load(cfg)
    several = len(ensemble.members) > 1
    if cc.method == "spread" and not several:
        raise FramecastError("calibrate.method=spread needs an ensemble (several predict.checkpoint, or a glob); "
                             "for one model use calibrate.method=scale_head")
    calibration = Calibration(
        method=cc.method, levels=list(cc.levels), factors=[], t_in=ensemble.t_in, t_out=ensemble.t_out,
        in_channels=ensemble.in_channels, checkpoints=[str(m.checkpoint) for m in ensemble.members],
        split=cc.split, videos=0, pixels=0, spread_floor=cc.spread_floor if cc.method == "spread" else 0.0,
    )
    if cc.method == "scale_head":
        calibration.likelihood = cc.likelihood
        calibration.head_settings = dict(channels=ensemble.in_channels, t_in=ensemble.t_in, t_out=ensemble.t_out,
                                         hidden=cc.head_channels, layers=cc.head_layers, kernel=cc.head_kernel,
                                         min_scale=cc.min_scale)
        calibration.head_state = train_head(cfg, ensemble, calibration.head_settings)
    scale_of = calibration.scale_function(ensemble.precision.device)

    dataset, rows, described = ensemble.labeled_windows(cc.split, 0, cc.max_videos or None, doing="calibrating")
    generator = torch.Generator().manual_seed(cc.seed)
    scores: list[np.ndarray] = []  # (t_out, pixels) per batch
    device, channels_last = ensemble.precision.device, ensemble.precision.channels_last
    for batch in ensemble.loader(Subset(dataset, rows)):
        inputs, truth = split_video(to_model_input(batch, device, channels_last, ensemble.in_channels), ensemble.t_in)
        forecast, std = ensemble(inputs, spread=several)
        scale = scale_of(inputs, forecast, std)
        [normalised] = sample_pixels([(truth - forecast).abs() / scale], cc.pixels_per_video, generator)
        scores.append(normalised)
    pooled = np.concatenate(scores, axis=1)  # (t_out, videos * pixels_per_video)
    calibration.factors = [[conformal_factor(pooled[t], level) for level in cc.levels] for t in range(ensemble.t_out)]
    calibration.videos, calibration.pixels = len(rows), int(pooled.shape[1])
    if any(not np.isfinite(f) for row in calibration.factors for f in row):
        raise FramecastError(f"calibrate: {pooled.shape[1]} pixels per lead time of {described} are too few for the "
                             f"coverage {max(cc.levels)}; raise calibrate.pixels_per_video or calibrate.max_videos")
    out = calibration_path(cfg)
    calibration.save(out)
    print(f"calibration of {calibration.method} on {len(rows)} videos of {described} ({calibration.pixels} pixels per "
          f"lead time): factors at {', '.join(f'{p:.0%}' for p in cc.levels)} per lead time")
    for t, row in enumerate(calibration.factors):
        print(f"  lead {t + 1:3d}: " + "  ".join(f"{f:.4g}" for f in row))
    return out


def train_head(cfg, ensemble: Ensemble, settings: dict) -> dict[str, torch.Tensor]:
    """A ScaleHead trained on ``calibrate.fit_split`` against the frozen forecaster's errors: its state."""
    cc = cfg.calibrate
    device, channels_last = ensemble.precision.device, ensemble.precision.channels_last
    dataset, rows, _ = ensemble.labeled_windows(cc.fit_split, doing="fitting a scale head for")
    generator = torch.Generator().manual_seed(cc.seed)
    torch.manual_seed(cc.seed)
    head = ScaleHead(**settings).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=cc.head_lr)
    step, losses = 0, []
    while step < cc.head_steps:
        order = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]  # a new pass, shuffled
        for batch in ensemble.loader(Subset(dataset, order)):
            inputs, truth = split_video(to_model_input(batch, device, channels_last, ensemble.in_channels),
                                        ensemble.t_in)
            forecast, _ = ensemble(inputs)
            forecast, inputs = forecast.clone(), inputs.clone()  # out of inference mode: inputs to a trained net
            loss = negative_log_likelihood(cc.likelihood, truth - forecast, head(inputs, forecast))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step >= cc.head_steps:
                break
    head_of = len(losses) // 10 or 1
    log.info("scale head: %s NLL %.4f over its first %d steps, %.4f over its last %d", cc.likelihood,
             sum(losses[:head_of]) / head_of, head_of, sum(losses[-head_of:]) / head_of, head_of)
    return {k: v.detach().cpu() for k, v in head.state_dict().items()}
