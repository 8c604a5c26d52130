"""The run's ``metrics.jsonl`` (one JSON object a line) and its ``loss_curve.png``.

``metrics.jsonl`` is an append-only log, flushed line by line so it can be followed while a run goes
on; it is the one file not rewritten through ``core.atomic`` on every write, because that would copy
the whole log at each log interval. A kill can at worst leave a torn last line: readers skip it and
a resumed run rewrites the file atomically, keeping only what precedes its checkpoint, so the log of
a resumed run reads exactly like that of an uninterrupted one.

With ``run.tensorboard`` the same records also go to TensorBoard event files in
``<run_dir>/tensorboard/`` (``SCALAR_TAGS`` says which field becomes which tag), flushed with each
record, plus a sample strip image per validation. ``metrics.jsonl`` stays the record: the event files
hold nothing that is not in it but the images. A resumed run opens its writer with
``purge_step = <checkpoint step> + 1``, so TensorBoard's reader drops the events an interrupted run
wrote after its checkpoint, and the events read like those of an uninterrupted run.

With ``run.hparams`` (a sweep sets its grid's settings) the TensorBoard events also hold those
settings as hparams (the HParams plugin's session), whose metrics are the validation scalars
(``HPARAM_METRICS``): the HParams tab of ``tensorboard --logdir <sweep folder>`` sets the members
side by side.

With ``run.wandb`` the same records go to a Weights & Biases run (``WANDB_RUN_DIR`` under the run
folder; ``WANDB_MODE=offline`` keeps it there until ``wandb sync``), with the whole config as its
config, the record's step as its x-axis, the sample strip as an image, and the best validation's
scores in its summary. A resumed run logs to the same W&B run (its id is kept in ``WANDB_ID_NAME``).

The per-lead-time validation scores TensorBoard and W&B show need the predictions themselves, not
only the loss: ``scored_validation`` computes them in the same pass as the loss; the trainer uses it
only when one of them is on.
"""
from __future__ import annotations

import json
import math
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import atomic_path, os_error_text, write_text_atomic
from core.errors import FramecastError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from core.distributed import DistContext
    from core.scores import LeadTimeMetrics
    from core.precision import Precision

METRICS_NAME = "metrics.jsonl"
CURVE_NAME = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"
# Record kind -> {metrics.jsonl field: TensorBoard scalar tag}. A list field (one value per lead time)
# becomes one tag per lead time: <tag>/lead_time_01, ... (zero-padded so TensorBoard sorts them).
SCALAR_TAGS = {
    "train": {"train_loss": "train/loss", "train_extra_loss": "train/extra_loss", "lr": "train/lr",
              "videos_per_s": "train/videos_per_s"},
    "val": {"val_loss": "val/loss", "best_val_loss": "val/best_loss",
            "val_mse_per_frame_sum": "val/mse_per_frame_sum", "val_ssim": "val/ssim",
            "val_mse_per_lead_time": "val_mse_per_frame_sum_by_lead_time",
            "val_ssim_per_lead_time": "val_ssim_by_lead_time"},
}
SAMPLES_TAG = "val/samples"
# The scalar tags the HParams plugin shows as each run's metrics (their last values).
HPARAM_METRICS = ("val/best_loss", "val/mse_per_frame_sum", "val/ssim")
WANDB_RUN_DIR = "wandb"  # <run_dir>/wandb/: W&B's own files (offline runs until synced)
WANDB_ID_NAME = "wandb_id.txt"  # <run_dir>/wandb_id.txt: the W&B run a resumed run continues
# The per-lead-time scores in validation records: core.scores key -> (record field of the list, one
# value per lead time; record field of their mean). MSE summed over a frame (the literature's), SSIM.
LEAD_TIME_FIELDS = {"mse_per_frame_sum": ("val_mse_per_lead_time", "val_mse_per_frame_sum"),
                    "ssim": ("val_ssim_per_lead_time", "val_ssim")}


def scalar_values(record: dict[str, Any]) -> dict[str, Any]:
    """A record's scalars under their TensorBoard / W&B tags; a list gives one per lead time."""
    values: dict[str, Any] = {}
    for field, tag in SCALAR_TAGS.get(record.get("kind"), {}).items():
        value = record.get(field)
        if isinstance(value, list):
            values.update({f"{tag}/lead_time_{lead:02d}": item for lead, item in enumerate(value, start=1)})
        elif value is not None:
            values[tag] = value
    return values


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or one clear error when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard imports it too; this names the package)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FramecastError(
            "run.tensorboard is true but the tensorboard package is not installed (torch.utils.tensorboard "
            "needs it): pip install tensorboard (requirements.txt pins the version), or set run.tensorboard=false"
        ) from None
    return SummaryWriter


def wandb_module() -> Any:
    """The ``wandb`` package, or one clear error when it is missing."""
    try:
        import wandb
    except ImportError:
        raise FramecastError(
            "run.wandb is true but the wandb package is not installed: pip install 'framecast[wandb]' "
            "(or pip install wandb), or set run.wandb=false"
        ) from None
    return wandb


def hparam_values(config: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """{dotted setting: its value} of ``keys`` in a config dict, as TensorBoard hparams take them (a
    list or mapping as its text); an unknown setting is an error naming ``run.hparams``."""
    from core.grid import format_value

    values: dict[str, Any] = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise FramecastError(f"run.hparams: {key!r} is not a setting of this config")
            node = node[part]
        values[key] = node if isinstance(node, (bool, int, float, str)) else format_value(node)
    return values


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics file (a torn or garbled line, bytes that are not UTF-8
    included, is skipped)."""
    records = []
    file = Path(path)
    if not file.is_file():
        return records
    for line in file.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Writes the run's records (only on the main process: ``enabled=False`` elsewhere).

    ``tensorboard`` / ``wandb``: also write them as TensorBoard events / to a W&B run (each package
    checked on every process, so a missing one stops all of them at once). ``config``: the run's config
    as a dict (W&B's config; where ``hparams``, its dotted settings, are read). A context manager:
    leaving it closes the event file and ends the W&B run.
    """

    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = False, wandb: bool = False,
                 config: dict[str, Any] | None = None, hparams: list[str] | None = None,
                 wandb_project: str = "framecast"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_NAME
        self.curve_path = self.run_dir / CURVE_NAME
        self.tensorboard_dir = self.run_dir / TENSORBOARD_DIR
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self.config = config or {}
        self.hparams = hparam_values(self.config, hparams or [])
        self.wandb_project = wandb_project
        self._writer_class = summary_writer_class() if tensorboard else None
        self._writer: Any = None  # the SummaryWriter, from start() to close()
        self._wandb = wandb_module() if wandb else None
        self._wandb_run: Any = None  # the W&B run, from start() to close()

    def start(self, resume_step: int | None) -> None:
        """Fresh run (``None``): drop any old log. Resumed run: keep the records up to its step."""
        if not self.enabled:
            return
        kept = []
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", math.inf) <= resume_step]
        self.records = kept
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if self._writer_class is not None:
            self.close()
            if resume_step is None:
                shutil.rmtree(self.tensorboard_dir, ignore_errors=True)  # an old run's events
            # purge_step: the reader drops every event from that step on written before this writer
            # started (an interrupted run's events after its checkpoint); the kept ones end at resume_step.
            self._writer = self._writer_class(
                log_dir=str(self.tensorboard_dir), purge_step=None if resume_step is None else resume_step + 1
            )
            if self.hparams:
                self._write_hparams()
        if self._wandb is not None:
            self._start_wandb(resumed=resume_step is not None)

    def _write_hparams(self) -> None:
        """The HParams plugin's experiment and session records, in this run's own event file: its
        metrics are the validation scalars this run logs anyway (their last values)."""
        from torch.utils.tensorboard.summary import hparams

        experiment, session_start, session_end = hparams(self.hparams, {tag: 0.0 for tag in HPARAM_METRICS})
        for summary in (experiment, session_start, session_end):
            self._writer.file_writer.add_summary(summary)

    def _start_wandb(self, resumed: bool) -> None:
        """A new W&B run (a fresh training), or the one this run logged to before (a resumed one)."""
        id_file = self.run_dir / WANDB_ID_NAME
        run_id = id_file.read_text().strip() if resumed and id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(6)  # W&B run ids: letters and digits
            write_text_atomic(id_file, run_id + "\n")
        (self.run_dir / WANDB_RUN_DIR).mkdir(parents=True, exist_ok=True)
        self._wandb_run = self._wandb.init(
            project=self.wandb_project, dir=str(self.run_dir), id=run_id, resume="allow",
            name=self.run_dir.name, group=self.run_dir.parent.name if self.hparams else None,
            config=self.config)
        self._wandb_run.define_metric("step")
        self._wandb_run.define_metric("*", step_metric="step")

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
        if self._writer is not None:
            for tag, value in scalar_values(record).items():
                self._writer.add_scalar(tag, value, record["step"])
            # On disk with the jsonl line: a kill after the next checkpoint loses no event before it.
            self._writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({"step": record["step"], **scalar_values(record)})
            if record.get("kind") == "val" and record.get("val_loss") == record.get("best_val_loss"):
                # The summary: the scores of the best validation (what best.pt holds), not the last.
                self._wandb_run.summary.update({f"best/{k}": v for k, v in record.items()
                                                if isinstance(v, (int, float)) and k != "time"})

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """A uint8 (H, W, 3) image as a TensorBoard image at ``step`` (nothing without TensorBoard)."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")
            self._writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({"step": step, tag: self._wandb.Image(image)})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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


# ----------------------------------------------------------------------------- per-lead-time validation


def scored_validation(model: Any, batches: Any, *, t_in: int, t_out: int, in_channels: int,
                      precision: Precision, loss: str, max_batches: int = 0, samples: int = 0,
                      ssim: str = "gaussian") -> tuple[torch.Tensor, LeadTimeMetrics, list[torch.Tensor]]:
    """``training.step.validation_sums`` and, from the same predictions, per-lead-time scores.

    Returns (the loss sums exactly as ``validation_sums`` computes them: tensor (2,) float64 on the
    device; ``core.scores.LeadTimeMetrics`` of the predictions clipped to [0, 1], as the evaluate stage
    scores them, SSIM as ``ssim`` (evaluate.ssim) defines it; the first ``samples`` videos as [inputs (S, t_in, C, H, W), truth (S, t_out, C, H, W),
    prediction (S, t_out, C, H, W)], float on the CPU, empty when ``samples`` is 0).
    """
    import torch

    from core.scores import LeadTimeMetrics
    from training.step import validation_sums

    scores = LeadTimeMetrics(t_out, ssim=ssim)
    kept: list[list[torch.Tensor]] = []

    def observe(inputs: torch.Tensor, targets: torch.Tensor, prediction: torch.Tensor) -> None:
        clipped = prediction.float().clamp(0, 1)  # (B, t_out, C, H, W), as the evaluate stage scores it
        scores.update(clipped, targets)
        have = sum(len(part[0]) for part in kept)
        if have < samples:
            kept.append([t[:samples - have].float().cpu() for t in (inputs, targets, clipped)])

    totals = validation_sums(model, batches, t_in=t_in, in_channels=in_channels, precision=precision, loss=loss,
                             max_batches=max_batches, observe=observe)
    shown = [torch.cat(parts) for parts in zip(*kept)] if kept else []
    return totals, scores, shown


def lead_time_record(scores: LeadTimeMetrics, ctx: DistContext) -> dict[str, Any]:
    """The validation record's per-lead-time fields, summed over every process (all must call it):
    ``val_mse_per_lead_time`` / ``val_ssim_per_lead_time`` (lists, lead time 1 first) and their means
    ``val_mse_per_frame_sum`` / ``val_ssim``."""
    import torch

    from core.distributed import all_reduce_sum

    t = scores.t_out
    count = torch.tensor([float(scores.count)], dtype=torch.float64)
    packed = torch.cat([scores.sums[key] for key in LEAD_TIME_FIELDS] + [count]).to(ctx.device)  # (keys * T + 1,)
    values = all_reduce_sum(packed, ctx).cpu()
    videos = max(values[-1].item(), 1.0)
    record: dict[str, Any] = {}
    for i, (per_lead_field, mean_field) in enumerate(LEAD_TIME_FIELDS.values()):
        per_lead = (values[i * t:(i + 1) * t] / videos).tolist()
        record[per_lead_field] = per_lead
        record[mean_field] = sum(per_lead) / len(per_lead)
    return record
