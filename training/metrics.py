"""The run's ``metrics.jsonl`` (one JSON object a line) and its ``loss_curve.png``.

``metrics.jsonl`` is an append-only log, flushed line by line so it can be followed while a run goes
on; it is the one file not rewritten through ``core.atomic`` on every write, because that would copy
the whole log at each log interval. A kill can at worst leave a torn last line: readers skip it and
a resumed run rewrites the file atomically, keeping only what precedes its checkpoint, so the log of
a resumed run reads exactly like that of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from core.atomic import atomic_path, os_error_text, write_text_atomic
from core.errors import FramecastError

METRICS_NAME = "metrics.jsonl"
CURVE_NAME = "loss_curve.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics file (a torn or garbled line is skipped)."""
    records = []
    file = Path(path)
    if not file.is_file():
        return records
    for line in file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Writes the run's records (only on the main process: ``enabled=False`` elsewhere)."""

    def __init__(self, run_dir: str | Path, enabled: bool):
        self.path = Path(run_dir) / METRICS_NAME
        self.curve_path = Path(run_dir) / CURVE_NAME
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []

    def start(self, resume_step: int | None) -> None:
        """Fresh run (``None``): drop any old log. Resumed run: keep the records up to its step."""
        if not self.enabled:
            return
        kept = []
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", math.inf) <= resume_step]
        self.records = kept
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        try:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        except OSError as exc:
            raise FramecastError(f"{self.path}: could not append ({os_error_text(exc)})") from None

    def plot(self) -> None:
        """Redraw ``loss_curve.png``: training loss per log interval, validation loss, the best point."""
        if not self.enabled:
            return
        # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        train = [(r["step"], r["train_loss"]) for r in self.records if r.get("kind") == "train"]
        val = [(r["step"], r["val_loss"]) for r in self.records if r.get("kind") == "val"]
        fig = Figure(figsize=(7, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if train:
            ax.plot(*zip(*train), lw=1, alpha=0.8, label="train loss")
        if val:
            ax.plot(*zip(*val), "o-", ms=4, label="validation loss")
            best_step, best = min(val, key=lambda sv: sv[1])
            ax.plot([best_step], [best], "*", ms=14, color="tab:red", label=f"best {best:.4g}")
        values = [v for _, v in train + val]
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("MSE per pixel")
        ax.grid(True, alpha=0.3)
        if train or val:
            ax.legend()
        fig.tight_layout()
        with atomic_path(self.curve_path) as tmp:
            fig.savefig(tmp, format="png")
