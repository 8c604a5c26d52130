"""Where each stage writes, one home for every reader: the prediction array, its PNGs, the evaluation
report and the comparison tables, by default inside the run folder ``<run.out_dir>/<run.name>/``; an
ensemble's in a folder of its own, ``<run.out_dir>/ensembles/<name>/`` (``ensemble_dir``), never inside
a member's run folder.

Stages write these files and other stages, jobs and the demo read them: each name and default path is
declared here once, so no stage has to import another to find its files.
"""
from __future__ import annotations

import glob
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import Config

# An ensemble's outputs: <run.out_dir>/ensembles/<name>/{preds,png,eval}/, name from its checkpoints.
ENSEMBLES_DIR = "ensembles"
ENSEMBLE_NAME_MAX = 100  # characters of the folder name; longer ones end in a hash of the whole
CHECKPOINT_STEMS = ("best", "last")  # a member named by its run folder rather than by these file names

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
    default output folder of an ensemble (``output_dir``) before and after it is predicted.
    """
    value = cfg.predict.checkpoint
    return isinstance(value, list) or glob.has_magic(value)


def ensemble_name(cfg: Config) -> str:
    """The ensemble's folder name, from ``predict.checkpoint`` as written: each member's run folder (the
    file's own name when it is not best/last), glob characters as words (``seed=*`` -> ``seed=all``),
    joined with ``+``: ``lr=3e-4,family=simvp,seed=all``."""
    value = cfg.predict.checkpoint
    parts = []
    for pattern in (value if isinstance(value, list) else [value]):
        path = Path(str(pattern))
        part = path.parent.name if path.stem in CHECKPOINT_STEMS and path.parent.name else path.stem
        part = re.sub(r"\[[^]]*\]", "x", part).replace("**", "all").replace("*", "all").replace("?", "x")
        parts.append(re.sub(r"[^A-Za-z0-9._+=,-]", "_", part) or "_")
    name = "+".join(dict.fromkeys(parts))
    if len(name) > ENSEMBLE_NAME_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[:ENSEMBLE_NAME_MAX - 13]}-{digest}"
    return name


def output_dir(cfg: Config) -> Path:
    """Where a stage's default outputs go: the run folder, or for an ensemble ``<run.out_dir>/ensembles/<name>``
    (beside the run folders, so a member's own predictions and report are never replaced)."""
    if is_ensemble(cfg):
        return cfg.run_dir.parent / ENSEMBLES_DIR / ensemble_name(cfg)
    return cfg.run_dir


def predictions_path(cfg: Config) -> Path:
    """``predict.out``, or ``<output_dir>/preds/<predict.split>.npy``."""
    if cfg.predict.out:
        return Path(cfg.predict.out)
    return output_dir(cfg) / "preds" / f"{Path(cfg.predict.split).stem}.npy"


def png_dir(cfg: Config) -> Path:
    """``convert.out``, or ``<output_dir>/png/<predict.split>``."""
    return Path(cfg.convert.out) if cfg.convert.out else output_dir(cfg) / "png" / Path(cfg.predict.split).stem


def calibration_path(cfg: Config) -> Path:
    """``calibrate.out``, or ``<output_dir>/calibration.pt`` (an ensemble's beside its predictions)."""
    return Path(cfg.calibrate.out) if cfg.calibrate.out else output_dir(cfg) / CALIBRATION_NAME


def eval_dir(cfg: Config, split: str | None = None) -> Path:
    """``evaluate.out``, or ``<output_dir>/eval/<split>`` (``split`` defaults to ``evaluate.split``)."""
    if cfg.evaluate.out:
        return Path(cfg.evaluate.out)
    return output_dir(cfg) / "eval" / Path(split or cfg.evaluate.split or cfg.data.val_split).stem
