"""The evaluate stage: how good are the forecasts, lead time by lead time, against naive baselines?

    python main.py evaluate --checkpoint runs/<name>/best.pt --split val

For each of the ``t_out`` predicted frames of every video (the first ``t_in + t_out`` frames of a
labeled split), ``core.scores`` computes MSE and MAE (summed over a frame as the Moving MNIST
literature reports them, and per pixel), PSNR and SSIM, and for grey data (``model.in_channels``
1, scored as one channel) the F1 of the binarised frame, for the model and two baselines any useful
model must beat: copy-last (the last input frame repeated) and mean-of-inputs (no motion, blurred
where things move: a model that wins on MSE but loses on SSIM to it has learned to blur).

Predictions are scored as the model's output clipped to [0, 1], in float (not quantized to 8 bits).

An ensemble (several checkpoints, a glob or a list in ``predict.checkpoint``: ``training.inference``)
is scored like one model: "model" is the mean of the members' clipped outputs, as predict writes
it. The report also lists the members (``"members"``: each one's checkpoint, epoch, family and mean
metrics over lead times) and, for several, ``"ensemble_spread"``: the mean over pixels of the
members' per-pixel standard deviation per lead time, to hold against the ensemble's RMSE per pixel
(``sqrt(mse_per_pixel)``): a well-spread ensemble's are close. Its default folder is
``<run.out_dir>/ensembles/<name>/eval/<split>`` (core.outputs.output_dir).

Uncertainty (``"uncertainty"`` in the report): with ``evaluate.calibration`` (``main.py calibrate``),
per lead time each of its intervals' empirical coverage at every fitted level and mean width, and how
well its per-pixel scale ranks the errors (AUROC for the largest errors, Spearman); for an ensemble
without one, the same for its raw spread read as a Gaussian std. ``evaluate.skip_videos`` leaves
out the first videos of the split (those a calibration was fitted on).

Writes into ``out_dir`` (default ``<run_dir>/eval/<split>``):
- ``report.json``: per-lead-time metrics and their means for the model and each baseline;
- ``metrics_vs_lead_time.png``: model vs baselines per lead time, one panel per metric;
- ``samples.png``: rows input / truth / prediction for the first few videos;
- ``samples.gif``: the same videos animated, truth and prediction side by side.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch.utils.data import Subset
from tqdm import tqdm

from core.atomic import atomic_path, write_json_atomic
from core.errors import FramecastError
from core.outputs import (GIF_NAME, MASKS_PLOT_NAME, MASKS_REPORT_NAME, MASKS_STRIP_NAME, PLOT_NAME, REPORT_NAME,
                          STRIP_NAME, eval_dir)
from core.scores import LeadTimeMetrics, definitions
from data.datasets import VideoWindowDataset, to_model_input
from training.calibration import Calibration, IntervalScores, ScaleFunction, likelihood_factor
from training.inference import Ensemble, to_uint8_frames
from training.figures import mask_strip, sample_strip, write_gif
from training.routes import score_routes
from training.step import split_video

log = logging.getLogger(__name__)

# Presentation only: how the sample strip and GIF are laid out.
# Forecasts any useful model must beat: inputs (B, t_in, C, H, W) -> (B, t_out, C, H, W).
BASELINES = {
    "copy_last_frame": lambda inputs, t_out: inputs[:, -1:].expand(-1, t_out, -1, -1, -1),
    # No motion at all, but blurred where things move: it shows what MSE alone rewards.
    "mean_of_inputs": lambda inputs, t_out: inputs.mean(dim=1, keepdim=True).expand(-1, t_out, -1, -1, -1),
}
BASELINE_LABELS = {"model": "model", "copy_last_frame": "copy-last", "mean_of_inputs": "mean-of-inputs"}
PLOTTED = (("mse_per_frame_sum", "MSE (sum over frame)"), ("mae_per_frame_sum", "MAE (sum over frame)"),
           ("psnr", "PSNR (dB)"), ("ssim", "SSIM"))


def run(cfg, split: str | None = None, out_dir: str | Path | None = None, max_videos: int | None = None,
        samples: int | None = None, gif_frame_ms: int = 400) -> dict[str, Any]:
    """Evaluate the checkpoint (``predict.checkpoint`` or ``<run_dir>/best.pt``), or the ensemble
    ``predict.checkpoint`` names, on ``split``.

    ``max_videos`` evaluates only the first videos of the split (numeric order); ``samples`` videos
    are drawn in the strip and GIF. Each defaults to its ``evaluate.*`` setting. Returns the report
    (as written to ``report.json``).
    """
    ec = cfg.evaluate
    split = split or ec.split or cfg.data.val_split
    out = Path(out_dir) if out_dir is not None else eval_dir(cfg, split)
    max_videos = max_videos if max_videos is not None else (ec.max_videos or None)
    samples = samples if samples is not None else ec.samples
    ensemble = Ensemble.load(cfg)
    t_in, t_out = ensemble.t_in, ensemble.t_out
    dataset, rows, described = ensemble.labeled_windows(split, ec.skip_videos, max_videos)
    count = len(rows)
    names = [dataset.video_name(i) for i in rows[:samples]]
    several = len(ensemble.members) > 1
    uncertainty = uncertainty_scores(cfg, ensemble, split)

    grey = ensemble.in_channels == 1
    f1_threshold = ec.f1_threshold if grey else None
    scores = {name: LeadTimeMetrics(t_out, f1_threshold, ec.ssim) for name in ("model", *BASELINES)}
    # Each member's own scores (one member's are the model's); the spread's per-lead-time sums.
    member_scores = [LeadTimeMetrics(t_out, f1_threshold, ec.ssim) for _ in ensemble.members] if several else []
    spread_sum = torch.zeros(t_out, dtype=torch.float64)
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # uint8 sample videos
    kept_count = 0
    device, channels_last = ensemble.precision.device, ensemble.precision.channels_last
    for batch in tqdm(ensemble.loader(Subset(dataset, rows)), desc=f"evaluate {split}", unit="batch",
                      disable=None):
        video = to_model_input(batch, device, channels_last, ensemble.in_channels)  # (B, T, C, H, W)
        inputs, truth = split_video(video, t_in)  # (B, t_in, C, H, W), (B, t_out, C, H, W)
        each = (lambda k, clipped, truth=truth: member_scores[k].update(clipped, truth)) if several else None
        forecast, std = ensemble(inputs, spread=several, each=each)  # mean, std of the clipped outputs; (B, t_out, C, H, W)
        scores["model"].update(forecast, truth)
        if uncertainty is not None:
            scores_of_intervals, scale_of, _ = uncertainty
            scores_of_intervals.update(forecast, truth, scale_of(inputs, forecast, std))
        if std is not None:
            spread_sum += std.double().mean(dim=(2, 3, 4)).sum(dim=0).cpu()  # (t_out,)
        for name, baseline in BASELINES.items():
            scores[name].update(baseline(inputs, t_out), truth)
        if kept_count < len(names):
            take = len(names) - kept_count
            kept.append(tuple(to_uint8_frames(t[:take]).cpu() for t in (inputs, truth, forecast)))
            kept_count += len(kept[-1][0])

    files = {"report": out / REPORT_NAME, "plot": out / PLOT_NAME}
    if names:
        files.update(strip=out / STRIP_NAME, gif=out / GIF_NAME)
    frames = list(range(t_in, t_in + t_out))
    results = {name: metrics.compute() for name, metrics in scores.items()}
    member_means = [m.compute()["mean"] for m in member_scores] if several else [results["model"]["mean"]]
    members = [{**member.describe(), "mean": mean} for member, mean in zip(ensemble.members, member_means)]
    spread = {}
    if several:
        per_lead = (spread_sum / count).tolist()
        spread = {"ensemble_spread": {
            "per_lead_time": per_lead, "mean": sum(per_lead) / len(per_lead),
            "definition": "mean over pixels of the per-pixel standard deviation (ddof=0) across members of "
                          "their outputs clipped to [0, 1]; compare with sqrt(model mse_per_pixel)"}}
    report = {
        "checkpoint": ensemble.checkpoint,  # the path, or (an ensemble of several) every member's
        "epoch": ensemble.epoch,
        "family": ensemble.family,
        "split": split,
        "source": described,
        "skipped_videos": ec.skip_videos,
        "videos": count,
        "t_in": t_in,
        "t_out": t_out,
        "frames": frames,
        "channels": ensemble.in_channels,
        "device": str(device),
        "autocast": ensemble.precision.describe(),
        "scored": ("mean of the members' outputs clipped to [0, 1]" if several else "model output clipped to [0, 1]")
                  + ", float (not quantized to 8 bits)" + ("; grey data: one channel" if grey else ""),
        "ssim": ec.ssim,  # which SSIM (evaluate.ssim; "definitions" says what it is)
        "definitions": {k: v for k, v in definitions(ec.ssim).items() if grey or k != "f1"},
        **({"f1_threshold": f1_threshold} if grey else {}),
        **results,
        "members": members,
        **spread,
        **({"uncertainty": {**uncertainty[0].compute(), **uncertainty[2]}}
           if uncertainty is not None else {}),
        "files": {key: str(path) for key, path in files.items()},
    }
    report = _json_safe(report)
    write_json_atomic(files["report"], report)
    plot_metrics(results, frames, files["plot"], title=f"{split}: {count} videos, {ensemble.title}")
    if names:
        inputs_u8, truth_u8, pred_u8 = (torch.cat(parts).numpy() for parts in zip(*kept))  # (S, T, H, W, C) each
        sample_strip(inputs_u8, truth_u8, pred_u8, names, t_in).save_to(files["strip"])
        write_gif(inputs_u8, truth_u8, pred_u8, names, t_in, files["gif"], gif_frame_ms)
    print_summary(report)
    if ec.routes:
        report["masks"] = evaluate_masks(cfg, ensemble, dataset.sources[0], rows, out, samples)
    return report


def uncertainty_scores(cfg, ensemble: Ensemble, split: str
                       ) -> tuple[IntervalScores, ScaleFunction, dict[str, Any]] | None:
    """The intervals scored, the per-pixel scale they multiply, and what they are: ``evaluate.calibration``'s,
    else an ensemble's raw spread with Gaussian intervals (what reading the spread as a std would
    claim); None for one model without a calibration."""
    ec = cfg.evaluate
    if ec.calibration:
        calibration = Calibration.load(ec.calibration)
        calibration.check_fits(ec.calibration, ensemble.t_in, ensemble.t_out, ensemble.in_channels,
                               len(ensemble.members), [str(m.checkpoint) for m in ensemble.members])
        if calibration.split == split and ec.skip_videos < calibration.videos:
            log.warning("%s was fitted on the first %d videos of %s, and evaluate.skip_videos=%d: its coverage "
                        "is measured on videos it was fitted on", ec.calibration, calibration.videos, split,
                        ec.skip_videos)
        factors = {"conformal": calibration.factor_table()}
        sets = {"conformal": f"forecast +- factor * scale, the factor per lead time and level fitted split-conformally "
                             f"on {calibration.videos} videos of {calibration.split} ({ec.calibration})"}
        if calibration.method == "scale_head":
            factors["likelihood"] = calibration.likelihood_table()
            sets["likelihood"] = f"the head's own {calibration.likelihood} intervals, before rescaling"
            scale_text = f"the scale head's per-pixel scale ({calibration.likelihood} likelihood)"
        else:
            scale_text = f"the ensemble's per-pixel std + {calibration.spread_floor:g}"
        method, levels = calibration.method, calibration.levels
        scale = calibration.scale_function(ensemble.precision.device)
    elif len(ensemble.members) > 1:
        levels, method, scale_text = cfg.calibrate.levels, "raw spread", "the ensemble's per-pixel std (raw)"
        factors = {"gaussian": torch.tensor([[likelihood_factor("gaussian", p) for p in levels]] * ensemble.t_out)}
        sets = {"gaussian": "forecast +- z * std, as if the spread were a Gaussian std (uncalibrated)"}
        scale = lambda inputs, forecast, std: std  # noqa: E731
    else:
        return None
    description = {
        "method": method, "scale": scale_text, "interval_sets": sets,
        "definition": "coverage: share of pixel values (every channel) inside the interval; mean_width: its "
                      "mean full width in [0, 1] units; auroc_large_errors: how well the scale tells the pixels "
                      f"whose |error| is in the top {ec.large_error_fraction:g} of the lead time's from the others "
                      "(0.5 = chance), and spearman its rank correlation with |error|, both on "
                      f"{ec.rank_pixels_per_video} random pixels per video and lead time"}
    scores = IntervalScores(ensemble.t_out, levels, factors, ec.rank_pixels_per_video, ec.large_error_fraction)
    return scores, scale, description


def evaluate_masks(cfg, ensemble: Ensemble, source, rows: list[int], out: Path, samples: int) -> dict[str, Any]:
    """``evaluate.routes``' future masks scored against copy-last and the oracle: the report (also in
    ``masks_report.json``), a Jaccard-vs-lead-time plot and a strip of masks of the target frame."""
    if not source.has_masks:
        raise FramecastError(f"{source.describe()}: holds no masks to score evaluate.routes against; use a "
                             "labeled split")
    dataset = VideoWindowDataset(source, cfg.data.t_in, cfg.data.t_out, masks=True)
    names = [dataset.video_name(i) for i in rows[:samples]]
    report = score_routes(cfg, list(cfg.evaluate.routes), ensemble.loader(Subset(dataset, rows)), samples=len(names))
    shown = report.pop("_samples", None)
    files = {"report": out / MASKS_REPORT_NAME, "plot": out / MASKS_PLOT_NAME}
    if shown is not None:
        files["strip"] = out / MASKS_STRIP_NAME
        mask_strip(shown["last_inputs"], shown["truth"], shown["routes"], names, report["num_classes"],
                   report["target_frame"]).save_to(files["strip"])
    report = _json_safe({**report, "split": source.describe(), "videos": len(rows),
                         "files": {key: str(path) for key, path in files.items()}})
    write_json_atomic(files["report"], report)
    plot_jaccard(report, files["plot"])
    print_masks_summary(report)
    return report


def print_masks_summary(report: dict[str, Any]) -> None:
    """The target frame's Jaccard of each route, copy-last and the oracle, and each against copy-last."""
    print(f"Jaccard of frame {report['target_frame']}'s mask ({report['videos']} videos of {report['split']}):")
    for name in report["routes"]:
        change = report["vs_copy_last"][name]
        note = "" if name == "copy_last" or change is None else f"  ({change:+.1%} vs copy-last)"
        print(f"  {name:10s} {report['scores'][name]['target']:.4f}{note}")
    print(f"masks report: {report['files']['report']}")


def plot_jaccard(report: dict[str, Any], path: Path) -> None:
    """Jaccard per lead time, one line per route and baseline."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for name in report["routes"]:
        style = dict(linestyle="--") if name in ("copy_last", "oracle") else dict(marker="o")
        ax.plot(report["frames"], report["scores"][name]["per_lead_time"], label=name, **style)
    ax.set_xlabel("predicted frame")
    ax.set_ylabel("Jaccard")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _json_safe(value: Any) -> Any:
    """JSON has no infinity: a PSNR of an exact prediction is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def print_summary(report: dict[str, Any]) -> None:
    """The mean over lead times of every metric, for the model and each baseline, and the verdict."""
    columns = ("model", *BASELINES)
    print(f"{report['split']}: {report['videos']} videos, frames {report['frames'][0]}..{report['frames'][-1]}")
    print(f"{'mean over lead times':22s}" + "".join(f"{BASELINE_LABELS.get(c, c):>16s}" for c in columns))
    for key in report["definitions"]:
        print(f"{key:22s}" + "".join(f"{_fmt(report[c]['mean'][key]):>16s}" for c in columns))
    model, copy = report["model"]["mean"], report["copy_last_frame"]["mean"]
    change = model["mse_per_frame_sum"] / copy["mse_per_frame_sum"] - 1 if copy["mse_per_frame_sum"] else math.nan
    # A report written before evaluate.ssim existed holds the Gaussian SSIM.
    print(f"vs copy-last: MSE {change:+.1%}, SSIM ({report.get('ssim', 'gaussian')}) {_fmt(model['ssim'])} vs {_fmt(copy['ssim'])}")
    members = report.get("members", [])
    if len(members) > 1:
        print(f"ensemble of {len(members)} members (model = their mean); each member alone:")
        for member in members:
            mean = member["mean"]
            print(f"  MSE {_fmt(mean['mse_per_frame_sum']):>10s}  SSIM {_fmt(mean['ssim']):>8s}  "
                  f"{member['family']}  {member['checkpoint']}")
        if "ensemble_spread" in report:
            print(f"mean spread (std) {_fmt(report['ensemble_spread']['mean'])} vs RMSE per pixel "
                  f"{_fmt(math.sqrt(model['mse_per_pixel']))}")
    if "uncertainty" in report:
        unc = report["uncertainty"]
        print(f"uncertainty ({unc['method']}): AUROC of the scale for large errors {_fmt(unc['auroc_large_errors_mean'])}, "
              f"Spearman {_fmt(unc['spearman_mean'])}")
        for name, levels in unc["intervals"].items():
            print(f"  {name:12s}" + "  ".join(f"{float(level):.0%}: covers {_fmt(v['coverage_mean'])}, width "
                                             f"{_fmt(v['mean_width_mean'])}" for level, v in levels.items()))
    print(f"report: {report['files']['report']}")


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def plot_metrics(results: dict[str, dict], frames: list[int], path: Path, title: str) -> None:
    """Model vs the baselines, one panel per metric, lead time (frame number) on x."""
    panels = PLOTTED + ((("f1", "F1 (binarised)"),) if "f1" in results["model"]["per_lead_time"] else ())
    fig = Figure(figsize=(10, 3.5 * ((len(panels) + 1) // 2)), layout="constrained")
    axes = fig.subplots((len(panels) + 1) // 2, 2).ravel()
    for ax, (key, label) in zip(axes, panels):
        for name, style in (("model", dict(marker="o")), ("copy_last_frame", dict(marker="s", linestyle="--")),
                            ("mean_of_inputs", dict(marker="^", linestyle=":"))):
            ax.plot(frames, results[name]["per_lead_time"][key], label=BASELINE_LABELS.get(name, name), **style)
        ax.set_xlabel("predicted frame")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend()
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
