"""Where each stage writes, one home for every reader: the prediction array, its PNGs, the evaluation
report and the comparison tables, by default inside the run folder ``<run.out_dir>/<run.name>/``.

Stages write these files and other stages, jobs and the demo read them: each name and default path is
declared here once, so no stage has to import another to find its files.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import Config

# An ensemble's outputs are named <split>.ensemble.*, so they never replace a member's own.
ENSEMBLE_TAG = ".ensemble"

# evaluate: <eval dir>/...
REPORT_NAME = "report.json"
PLOT_NAME = "metrics_vs_lead_time.png"
STRIP_NAME = "samples.png"
GIF_NAME = "samples.gif"

# calibrate: the fitted interval, by default in the run folder.
CALIBRATION_NAME = "calibration.pt"

# compare: <compare dir>/...
TABLE_CSV = "compare.csv"
TABLE_MD = "compare.md"
RUNS_CSV = "runs.csv"
COMPARE_PLOT_NAME = "compare.png"


def is_ensemble(cfg: Config) -> bool:
    """Whether ``predict.checkpoint`` asks for an ensemble (a list, or a glob), whatever it matches.

    Decided from the setting alone (no file system), so predict, convert and evaluate agree on the
    default output names of an ensemble (``<split>.ensemble.*``) before and after it is predicted.
    """
    value = cfg.predict.checkpoint
    return isinstance(value, list) or glob.has_magic(value)


def default_stem(cfg: Config, split: str) -> str:
    """``hidden`` for one model, ``hidden.ensemble`` for an ensemble."""
    return Path(split).stem + (ENSEMBLE_TAG if is_ensemble(cfg) else "")


def predictions_path(cfg: Config) -> Path:
    """``predict.out``, or ``<run_dir>/preds/<predict.split>.npy`` (``<split>.ensemble.npy``)."""
    if cfg.predict.out:
        return Path(cfg.predict.out)
    return cfg.run_dir / "preds" / f"{default_stem(cfg, cfg.predict.split)}.npy"


def png_dir(cfg: Config) -> Path:
    """``convert.out``, or ``<run_dir>/png/<predict.split>`` (``<split>.ensemble`` for an ensemble)."""
    return Path(cfg.convert.out) if cfg.convert.out else cfg.run_dir / "png" / default_stem(cfg, cfg.predict.split)


def calibration_path(cfg: Config) -> Path:
    """``calibrate.out``, or ``<run_dir>/calibration.pt``."""
    return Path(cfg.calibrate.out) if cfg.calibrate.out else cfg.run_dir / CALIBRATION_NAME


def eval_dir(cfg: Config, split: str | None = None) -> Path:
    """``evaluate.out``, or ``<run_dir>/eval/<split>`` (``split`` defaults to ``evaluate.split``)."""
    if cfg.evaluate.out:
        return Path(cfg.evaluate.out)
    return cfg.run_dir / "eval" / default_stem(cfg, split or cfg.evaluate.split or cfg.data.val_split)
