"""The evaluate stage: how good are the forecasts, lead time by lead time, against a naive baseline?

    python main.py evaluate --checkpoint runs/<name>/best.pt --split val

For each of the ``t_out`` predicted frames of every video (the first ``t_in + t_out`` frames of a
labeled split), ``core.metrics`` computes MSE and MAE (summed over a frame as the Moving MNIST
literature reports them, and per pixel), PSNR and SSIM, for the model and for the copy-last-frame
baseline (the last input frame repeated), which any useful model must beat.

Predictions are scored as the model's output clipped to [0, 1], in float (not quantized to 8 bits).

Writes into ``out_dir`` (default ``<run_dir>/eval/<split>``):
- ``report.json``: both sets of per-lead-time metrics and their means, definitions, checkpoint, split;
- ``metrics_vs_lead_time.png``: model vs baseline per lead time (MSE, MAE, PSNR, SSIM panels);
- ``samples.png``: rows input / truth / prediction for the first few videos;
- ``samples.gif``: the same videos animated, truth and prediction side by side.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw
from torch.utils.data import Subset
from tqdm import tqdm

from core.atomic import atomic_path, write_json_atomic
from core.errors import FramecastError
from core.metrics import DEFINITIONS, LeadTimeMetrics
from data.datasets import VideoWindowDataset, to_model_input
from data.sources import open_split
from stages.predict import Forecaster, to_uint8_frames
from training.step import split_video

REPORT_NAME = "report.json"
PLOT_NAME = "metrics_vs_lead_time.png"
STRIP_NAME = "samples.png"
GIF_NAME = "samples.gif"
# Presentation only: how the sample strip and GIF are laid out.
GUTTER_PX = 96  # label column of the strip
GAP_PX = 2  # between frames
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
PLOTTED = (("mse_per_frame_sum", "MSE (sum over frame)"), ("mae_per_frame_sum", "MAE (sum over frame)"),
           ("psnr", "PSNR (dB)"), ("ssim", "SSIM"))


def default_out_dir(cfg, split: str) -> Path:
    return cfg.run_dir / "eval" / Path(split).stem


def run(cfg, split: str | None = None, out_dir: str | Path | None = None, max_videos: int | None = None,
        samples: int = 2, gif_frame_ms: int = 400) -> dict[str, Any]:
    """Evaluate the checkpoint (``predict.checkpoint`` or ``<run_dir>/best.pt``) on ``split``.

    ``max_videos`` evaluates only the first videos of the split (numeric order); ``samples`` videos
    are drawn in the strip and GIF. Returns the report (as written to ``report.json``).
    """
    split = split or cfg.data.val_split
    forecaster = Forecaster.load(cfg)
    t_in, t_out = forecaster.t_in, forecaster.t_out
    source = open_split(cfg.data, split)
    if source.num_frames < t_in + t_out:
        raise FramecastError(
            f"{source.describe()}: videos have {source.num_frames} frames, but evaluating "
            f"{forecaster.checkpoint} needs t_in + t_out = {t_in} + {t_out} (targets); use a labeled split such as val"
        )
    if max_videos is not None and max_videos < 1:
        raise FramecastError(f"max_videos must be >= 1, got {max_videos}")
    dataset = VideoWindowDataset(source, t_in, t_out)  # the first t_in + t_out frames of each video
    count = len(dataset) if max_videos is None else min(len(dataset), max_videos)
    names = [dataset.video_name(i) for i in range(min(samples, count))]

    model_metrics, baseline_metrics = LeadTimeMetrics(t_out), LeadTimeMetrics(t_out)
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # uint8 sample videos
    kept_count = 0
    for batch in tqdm(forecaster.loader(Subset(dataset, range(count))), desc=f"evaluate {split}", unit="batch",
                      disable=None):
        video = to_model_input(batch, forecaster.device, forecaster.channels_last)  # (B, T, C, H, W)
        inputs, truth = split_video(video, t_in)  # (B, t_in, C, H, W), (B, t_out, C, H, W)
        raw = forecaster(inputs)  # (B, t_out, C, H, W)
        prediction = raw.clamp(0, 1)
        model_metrics.update(prediction, truth)
        baseline_metrics.update(inputs[:, -1:].expand_as(truth), truth)  # copy the last input frame
        if kept_count < len(names):
            take = len(names) - kept_count
            kept.append(tuple(to_uint8_frames(t[:take]).cpu() for t in (inputs, truth, raw)))
            kept_count += len(kept[-1][0])

    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg, split)
    files = {"report": out / REPORT_NAME, "plot": out / PLOT_NAME}
    if names:
        files.update(strip=out / STRIP_NAME, gif=out / GIF_NAME)
    frames = list(range(t_in, t_in + t_out))
    model_result, baseline_result = model_metrics.compute(), baseline_metrics.compute()
    report = {
        "checkpoint": str(forecaster.checkpoint),
        "epoch": forecaster.state.get("epoch"),
        "split": split,
        "source": source.describe(),
        "videos": count,
        "t_in": t_in,
        "t_out": t_out,
        "frames": frames,
        "device": str(forecaster.device),
        "autocast": str(forecaster.amp_dtype).replace("torch.", "") if forecaster.amp_dtype else "fp32",
        "scored": "model output clipped to [0, 1], float (not quantized to 8 bits)",
        "definitions": DEFINITIONS,
        "model": model_result,
        "copy_last_frame": baseline_result,
        "files": {key: str(path) for key, path in files.items()},
    }
    report = _json_safe(report)
    write_json_atomic(files["report"], report)
    plot_metrics(model_result, baseline_result, frames, files["plot"], title=f"{split}: {count} videos")
    if names:
        inputs_u8, truth_u8, pred_u8 = (torch.cat(parts).numpy() for parts in zip(*kept))  # (S, T, H, W, C) each
        sample_strip(inputs_u8, truth_u8, pred_u8, names, t_in).save_to(files["strip"])
        write_gif(inputs_u8, truth_u8, pred_u8, names, t_in, files["gif"], gif_frame_ms)
    _print_summary(report)
    return report


def _json_safe(value: Any) -> Any:
    """JSON has no infinity: a PSNR of an exact prediction is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _print_summary(report: dict[str, Any]) -> None:
    print(f"{report['split']}: {report['videos']} videos, frames {report['frames'][0]}..{report['frames'][-1]}")
    print(f"{'mean over lead times':22s} {'model':>12s} {'copy-last':>12s}")
    for key in DEFINITIONS:
        model, base = report["model"]["mean"][key], report["copy_last_frame"]["mean"][key]
        print(f"{key:22s} {_fmt(model):>12s} {_fmt(base):>12s}")
    print(f"report: {report['files']['report']}")


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def plot_metrics(model: dict, baseline: dict, frames: list[int], path: Path, title: str) -> None:
    """Model vs copy-last-frame baseline, one panel per metric, lead time (frame number) on x."""
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, label) in zip(axes, PLOTTED):
        ax.plot(frames, model["per_lead_time"][key], marker="o", label="model")
        ax.plot(frames, baseline["per_lead_time"][key], marker="s", linestyle="--", label="copy last frame")
        ax.set_xlabel("predicted frame")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


class _Canvas:
    """A white RGB image with frames pasted in and labels written, saved atomically."""

    def __init__(self, width: int, height: int):
        self.image = Image.new("RGB", (width, height), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def paste(self, frame: np.ndarray, x: int, y: int) -> None:
        self.image.paste(Image.fromarray(frame), (x, y))

    def text(self, x: int, y: int, text: str) -> None:
        self.draw.text((x, y), text, fill=TEXT)

    def save_to(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.image.save(tmp, format="PNG")


def sample_strip(inputs: np.ndarray, truth: np.ndarray, prediction: np.ndarray, names: list[str],
                 t_in: int) -> _Canvas:
    """Rows input / truth / prediction per sample video; uint8 (S, T, H, W, C) arrays in."""
    _, _, h, w, _ = inputs.shape
    columns = max(inputs.shape[1], truth.shape[1])
    row_h = h + GAP_PX
    canvas = _Canvas(GUTTER_PX + columns * (w + GAP_PX), len(names) * 3 * row_h)
    t_out = truth.shape[1]
    for s, name in enumerate(names):
        rows = ((f"input 0-{t_in - 1}", inputs[s]), (f"truth {t_in}-{t_in + t_out - 1}", truth[s]),
                (f"prediction {t_in}-{t_in + t_out - 1}", prediction[s]))
        for r, (label, frames) in enumerate(rows):
            y = (3 * s + r) * row_h
            canvas.text(4, y + 4, name)
            canvas.text(4, y + 18, label)
            for c, frame in enumerate(frames):  # frame: (H, W, C)
                canvas.paste(frame, GUTTER_PX + c * (w + GAP_PX), y)
    return canvas


def write_gif(inputs: np.ndarray, truth: np.ndarray, prediction: np.ndarray, names: list[str], t_in: int,
              path: Path, frame_ms: int) -> None:
    """Animated GIF: per sample video a row [truth | prediction]; the input frames play first on both sides."""
    _, _, h, w, _ = inputs.shape
    header = 28  # two text lines
    images = []
    for t in range(inputs.shape[1] + truth.shape[1]):
        canvas = _Canvas(2 * w + GAP_PX, header + len(names) * (h + GAP_PX))
        is_input = t < t_in
        canvas.text(2, 2, f"frame {t}")
        canvas.text(2, 14, "input" if is_input else "truth | pred")
        for s in range(len(names)):
            left = inputs[s, t] if is_input else truth[s, t - t_in]  # (H, W, C)
            right = inputs[s, t] if is_input else prediction[s, t - t_in]
            y = header + s * (h + GAP_PX)
            canvas.paste(left, 0, y)
            canvas.paste(right, w + GAP_PX, y)
        images.append(canvas.image)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
