"""The lr-find stage: a learning-rate range test (Smith 2015; fastai's ``lr_find``) before training.

    python main.py lr-find --config configs/default.yaml [--steps 100] [--start-lr 1e-6] [--end-lr 1]
    python main.py submit lr-find --config ...            # the same, as a one-GPU job

From a freshly initialised model (``train.seed``), it trains ``lr_find.steps`` steps on the training
splits with the configured family, loss, batch size, optimizer, gradient clipping and precision, the
learning rate rising exponentially from ``lr_find.start_lr`` to ``lr_find.end_lr``; it stops early once
the smoothed loss exceeds ``lr_find.diverge_factor`` times its minimum (or turns non-finite).
The smoothed loss is fastai's: an exponential moving average (``lr_find.smoothing``) with its start-up
bias corrected.

It writes ``lr_find.png`` (loss against lr, log x) and ``lr_find.json`` (the curve, the settings and the
suggestions) to ``lr_find.out`` (default ``<run.out_dir>/lr-find/<run.name>/``), a folder of its own:
nothing in the run folder is read or written, no lock is taken, so it may run beside a training of
the same run.

The suggested lr is where the smoothed loss falls fastest (the steepest negative slope against
log lr, before the minimum), once the first ``lr_find.skip_start`` of the steps are left out as fastai
does (a fresh model's first losses would otherwise point at the sweep's first lr); ``lr_find.json``
also gives the minimum's lr / 10, the other common rule. Both are starting points for ``train.lr``
(with ``train.schedule: onecycle``, it is the peak lr). A curve that does not fall by
``lr_find.min_drop`` gets no suggestion, and one line saying so.

Without a terminal (a job's log, a pipe) there is no progress bar; a line is logged every
``train.log_every_steps`` steps instead.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from core.atomic import atomic_path, write_json_atomic
from core.config import Config
from core.distributed import pick_device
from core.errors import FramecastError
from core.paths import expand
from core.precision import Precision
from core.seeding import seed_everything
from data.datasets import VideoWindowDataset, check_channels, make_loader
from data.sources import open_split
from models import TrainingForward, build_model, count_parameters
from training.step import FrameLoss, build_grad_scaler, build_optimizer, train_step

log = logging.getLogger(__name__)

LR_FIND_DIR = "lr-find"  # <run.out_dir>/lr-find/<run.name>/
PLOT_NAME = "lr_find.png"
CURVE_NAME = "lr_find.json"


def out_dir_for(cfg: Config) -> Path:
    """``lr_find.out``, or ``<run.out_dir>/lr-find/<run.name>``."""
    if cfg.lr_find.out:
        return Path(expand("lr_find.out", cfg.lr_find.out))
    return Path(expand("run.out_dir", cfg.run.out_dir)) / LR_FIND_DIR / cfg.run.name


def learning_rates(start: float, end: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``start`` to ``end``, evenly spaced on a log scale."""
    if steps == 1:
        return [start]
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def suggest(lrs: list[float], smoothed: list[float], *, planned_steps: int, skip_start: float = 0.1,
            min_drop: float = 0.05) -> dict[str, Any]:
    """Where the smoothed loss falls fastest (against log lr), between the first step kept and its
    lowest point; also the lowest point's lr / 10, the other common rule.

    The first ``skip_start`` of the ``planned_steps`` (at least one step, so never the sweep's first
    lr) are not looked at, as fastai skips them. No suggestion (``suggested_lr`` None, ``rule`` says
    why in one line) when too few steps ran or the smoothed loss fell by less than ``min_drop`` of its
    value at the first step kept: a flat or rising curve has no descent to point at.
    """
    skip = max(1, int(skip_start * planned_steps))
    result: dict[str, Any] = {"suggested_lr": None, "steepest_lr": None, "min_loss_lr": None, "min_loss": None,
                              "min_lr_over_10": None, "skipped_steps": skip}
    if not smoothed:
        return {**result, "rule": "no finite loss was recorded; lower lr_find.start_lr"}
    if len(smoothed) < skip + 3:
        return {**result, "rule": f"only {len(smoothed)} steps ran, {skip} of them skipped (lr_find.skip_start="
                                  f"{skip_start:g}): too few to see a descent; lower lr_find.start_lr or run more "
                                  "lr_find.steps"}
    values = np.asarray(smoothed, dtype=np.float64)
    x = np.log10(np.asarray(lrs[:len(values)], dtype=np.float64))
    lowest = skip + int(np.argmin(values[skip:]))
    result.update(min_loss_lr=lrs[lowest], min_loss=float(values[lowest]), min_lr_over_10=lrs[lowest] / 10)
    drop = (values[skip] - values[lowest]) / abs(values[skip]) if values[skip] else 0.0
    slope = np.gradient(values, x)  # d smoothed loss / d log10 lr, central differences inside
    steepest = skip + int(np.argmin(slope[skip:lowest + 1]))
    if lowest == skip or drop < min_drop or slope[steepest] >= 0:
        return {**result, "rule": (
            f"no descent: from step {skip} (lr {lrs[skip]:.3g}) the smoothed loss fell {max(drop, 0.0):.1%} to its "
            f"lowest, less than lr_find.min_drop={min_drop:g}; widen the sweep (lr_find.start_lr, lr_find.end_lr) "
            "or check the data and the model")}
    return {**result, "suggested_lr": lrs[steepest], "steepest_lr": lrs[steepest],
            "steepest_slope": float(slope[steepest]), "drop": float(drop),
            "rule": f"steepest descent of the smoothed loss after the first {skip} steps"}


def _forever(loader) -> Iterator[torch.Tensor]:
    """The loader's batches, epoch after epoch (each epoch shuffled anew)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def _check_out_dir(out: Path, run_dir: Path) -> None:
    out_abs, run_abs = out.resolve(), run_dir.resolve()
    if out_abs == run_abs or run_abs in out_abs.parents:
        raise FramecastError(f"lr_find.out={out}: inside the run folder {run_dir}; lr-find never writes there "
                             "(its one writer is the training); choose another folder")


def run(cfg: Config) -> Path:
    """Run the range test of ``cfg``; returns the folder holding ``lr_find.png`` and ``lr_find.json``."""
    lf, tc, data = cfg.lr_find, cfg.train, cfg.data
    out = out_dir_for(cfg)
    _check_out_dir(out, cfg.run_dir)
    device = pick_device(cfg.run.device)
    precision = Precision.for_run(tc, device)

    # The training splits only (build_datasets would also open, and stage, the validation split).
    if not data.train_splits:
        raise FramecastError("data.train_splits is empty: name at least one split to train on")
    train = VideoWindowDataset([open_split(data, s) for s in data.train_splits], data.t_in, data.t_out,
                               data.all_windows)
    check_channels(train, cfg.model.in_channels)
    if len(train) < tc.batch_size:
        raise FramecastError(f"{data.root}: the training splits {data.train_splits} hold {len(train)} windows, "
                             f"fewer than train.batch_size={tc.batch_size}")
    loader = make_loader(train, tc.batch_size, shuffle=True, num_workers=data.num_workers,
                         prefetch_factor=data.prefetch_factor, pin_memory=data.pin_memory and device.type == "cuda",
                         drop_last=True, seed=tc.seed)

    seed_everything(tc.seed)  # the weights a training of this config starts from
    model = build_model(cfg.model, data.t_in, data.t_out).to(device)
    model.set_activation_checkpointing(tc.activation_checkpointing)
    model.set_input_supervision(tc.supervise_inputs)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = TrainingForward(model).train()  # not compiled: minutes of compiling for a short sweep
    optimizer = build_optimizer(model, tc, device)
    scaler = build_grad_scaler(precision)

    lrs = learning_rates(lf.start_lr, lf.end_lr, lf.steps)
    curve: list[dict[str, float]] = []
    average, lowest = 0.0, math.inf
    stop = f"the sweep reached lr_find.end_lr={lf.end_lr:g}"
    started = time.perf_counter()
    batches = _forever(loader)
    bar = tqdm(lrs, desc="lr-find", unit="step", disable=None, dynamic_ncols=True)
    try:
        for step, lr in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches)  # uint8 (B, T, H, W, C)
            losses = train_step(forward, optimizer, batch, step=step, t_in=data.t_in,
                                in_channels=cfg.model.in_channels, precision=precision, loss=FrameLoss.from_config(tc),
                                grad_clip=tc.grad_clip, scaler=scaler)
            loss = float(losses.sum())  # frame loss + the family's extra terms, as training minimises
            if not math.isfinite(loss):
                stop = f"the loss became non-finite at lr {lr:.3g}"
                break
            average = lf.smoothing * average + (1 - lf.smoothing) * loss
            smoothed = average / (1 - lf.smoothing ** (step + 1))
            curve.append({"step": step, "lr": lr, "loss": loss, "smoothed_loss": smoothed})
            lowest = min(lowest, smoothed)
            bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smoothed:.4g}", refresh=False)
            if bar.disable and ((step + 1) % tc.log_every_steps == 0 or step + 1 == lf.steps):
                # No terminal (a job log, a pipe): no bar, so a line every train.log_every_steps steps.
                log.info("lr-find: step %d/%d, lr %.3g, smoothed loss %.5g, %.1f s", step + 1, lf.steps, lr,
                         smoothed, time.perf_counter() - started)
            if smoothed > lf.diverge_factor * lowest:
                stop = (f"the smoothed loss diverged at lr {lr:.3g} ({smoothed:.4g} > "
                        f"lr_find.diverge_factor={lf.diverge_factor:g} x its minimum {lowest:.4g})")
                break
    finally:
        bar.close()
        loader.end_workers()

    suggestion = suggest([p["lr"] for p in curve], [p["smoothed_loss"] for p in curve], planned_steps=lf.steps,
                         skip_start=lf.skip_start, min_drop=lf.min_drop)
    report = {
        "run": cfg.run.name,
        "family": cfg.model.family,
        "parameters": count_parameters(model),
        "device": str(device),
        "autocast": precision.describe(),
        "batch_size": tc.batch_size,
        "loss": tc.loss,
        "optimizer": tc.optimizer,
        "grad_clip": tc.grad_clip,
        "settings": {"start_lr": lf.start_lr, "end_lr": lf.end_lr, "steps": lf.steps,
                     "smoothing": lf.smoothing, "diverge_factor": lf.diverge_factor,
                     "skip_start": lf.skip_start, "min_drop": lf.min_drop},
        "steps_run": len(curve),
        "stopped": stop,
        "seconds": round(time.perf_counter() - started, 3),
        **suggestion,
        "files": {"plot": str(out / PLOT_NAME), "curve": str(out / CURVE_NAME)},
        "curve": curve,
    }
    _plot(curve, suggestion, out / PLOT_NAME, f"{cfg.run.name}: {cfg.model.family}, batch {tc.batch_size}, "
                                              f"{tc.loss}, {precision.describe()}")
    write_json_atomic(out / CURVE_NAME, report)
    _print_summary(report)
    return out


def _print_summary(report: dict[str, Any]) -> None:
    print(f"lr-find: {report['steps_run']} steps; stopped because {report['stopped']}", flush=True)
    if report["suggested_lr"] is None:
        print(f"lr-find: no suggestion: {report['rule']}", flush=True)
        return
    print(f"lr-find: suggested lr {report['suggested_lr']:.3g} ({report['rule']}); "
          f"the minimum's lr / 10: {report['min_lr_over_10']:.3g} (minimum at {report['min_loss_lr']:.3g})",
          flush=True)


def _plot(curve: list[dict[str, float]], suggestion: dict[str, Any], path: Path, title: str) -> None:
    """Loss and smoothed loss against lr (log x), the suggestion and the minimum marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if curve:
        lrs = [p["lr"] for p in curve]
        ax.plot(lrs, [p["loss"] for p in curve], lw=1, alpha=0.35, label="loss")
        ax.plot(lrs, [p["smoothed_loss"] for p in curve], lw=2, label="smoothed loss")
        if suggestion.get("suggested_lr"):
            ax.axvline(suggestion["suggested_lr"], color="tab:red", ls="--",
                       label=f"suggested {suggestion['suggested_lr']:.2g}")
        if suggestion.get("min_loss_lr"):
            ax.plot([suggestion["min_loss_lr"]], [suggestion["min_loss"]], "*", ms=12, color="tab:green",
                    label=f"minimum at {suggestion['min_loss_lr']:.2g}")
        ax.legend()
        # The divergence at the end would squash the curve: show the range before it.
        smoothed = [p["smoothed_loss"] for p in curve]
        shown = smoothed[:-1] or smoothed
        low = min(min(shown), min(p["loss"] for p in curve))
        ax.set_ylim(low - 0.05 * abs(low), 1.25 * max(shown))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
