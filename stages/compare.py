"""The compare stage: which settings trained the best model, and by how much more than seed noise?

    python main.py compare --runs 'runs/my-sweep/*'            # any run folders, a sweep's or not
    python main.py submit sweep --config ... --grid ... --seeds 3    # ends with a compare job

For every run folder matched by ``compare.runs`` (globs; a folder counts when it holds ``config.yaml``
or ``best.pt``) it scores ``best.pt`` on ``evaluate.split`` with the evaluate stage
(``stages.evaluate.run``; its report, plots and samples land in ``<run>/eval/<split>/`` as usual), or
reuses the report already there when it is of that checkpoint (newer than it) and of as many videos.

Runs are grouped by what was trained: their ``data``, ``model`` and ``train`` settings, except
``train.seed``.  The settings that differ between groups name each group ("grid point"); each point
gets the mean and the sample standard deviation (n - 1) over its seeds of the model's MSE (squared
error summed over a frame in [0, 1], mean over lead times: the Moving MNIST literature's "MSE") and
SSIM, with its parameter count and training time (wall time from the first to the last line of the
run's metrics.jsonl: validation included, start-up and queueing not).

Writes into ``compare.out`` (default ``<the folder holding the runs>/compare``):
- ``compare.csv`` and ``compare.md``: one row per point, mean +/- std over seeds (the Markdown file
  also lists every run);
- ``runs.csv``: one row per run;
- ``compare.png``: MSE and SSIM per point, mean +/- std, each seed a dot.
A run without ``best.pt`` (failed, or still training) is listed with its status and left out of the
means; so is a folder named by a plain path (not a glob) that holds no run, as a sweep's run that
failed before training began.
"""
from __future__ import annotations

import copy
import csv
import glob
import io
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_path, write_text_atomic
from core.checkpoint import BEST_NAME, load_checkpoint
from core.config import CONFIG_NAME, Config, config_from_dict, config_to_dict, load_config
from core.errors import FramecastError
from core.grid import SEED_KEY, format_value, short_names, trained_settings
from core.outputs import COMPARE_PLOT_NAME, REPORT_NAME, RUNS_CSV, TABLE_CSV, TABLE_MD, eval_dir
from core.scores import SSIM_KINDS
from stages import registry
from training.metrics import METRICS_NAME, read_metrics

log = logging.getLogger(__name__)

MSE_KEY = "mse_per_frame_sum"  # core.scores: the literature's MSE


# ----------------------------------------------------------------------------- one run


@dataclass
class RunScore:
    """One run folder: what it trained and how its best.pt scored."""

    path: Path
    status: str  # "ok", "no best.pt", or "error: ..."
    settings: dict[str, Any] = field(default_factory=dict)  # trained_settings, train.seed included
    mse: float | None = None
    ssim: float | None = None
    copy_last_mse: float | None = None
    copy_last_ssim: float | None = None
    mean_of_inputs_mse: float | None = None  # the other baseline (evaluate's mean_of_inputs)
    mean_of_inputs_ssim: float | None = None
    best_epoch: int | None = None
    parameters: int | None = None
    train_minutes: float | None = None
    report: str = ""
    reused: bool = False
    # The run of the same settings and seed already counted (a sweep that trained one thing twice):
    # its score is listed but not pooled again, as it is no independent sample.
    repeat_of: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def seed(self) -> Any:
        return self.settings.get(SEED_KEY)


def find_runs(patterns: list[str]) -> list[Path]:
    """The run folders ``patterns`` name, sorted: what a glob matches that holds config.yaml or best.pt
    (a sweep's code/, jobs/ or compare/ folder is not a run), and every plain path, also one that is
    not a run (yet): a sweep's run that failed before it began is listed as such, not left out."""
    found: set[Path] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if not glob.has_magic(pattern):
            found.add(Path(pattern))
            continue
        for match in glob.glob(pattern):
            path = Path(match)
            if path.is_dir() and ((path / CONFIG_NAME).is_file() or (path / BEST_NAME).is_file()):
                found.add(path)
    return sorted(found)


def training_minutes(run_dir: Path) -> float | None:
    """Wall minutes from the first to the last record of the run's metrics.jsonl."""
    times = [r["time"] for r in read_metrics(run_dir / METRICS_NAME) if isinstance(r.get("time"), (int, float))]
    return (max(times) - min(times)) / 60 if len(times) >= 2 else None


def _evaluation_config(saved: dict, run_dir: Path, best: Path, cfg: Config) -> Config:
    """The run's own config, pointed at its folder and best.pt, with the comparison's evaluate and
    device settings (every run is scored on the same split, the same way)."""
    values = copy.deepcopy(saved)
    values.setdefault("run", {}).update(out_dir=str(run_dir.parent), name=run_dir.name, device=cfg.run.device)
    values.setdefault("predict", {})["checkpoint"] = str(best)
    values.setdefault("evaluate", {}).update(split=cfg.evaluate.split, max_videos=cfg.evaluate.max_videos,
                                             samples=cfg.evaluate.samples, ssim=cfg.evaluate.ssim, out="")
    return config_from_dict(values)


def _videos_to_score(run_cfg: Config) -> int:
    from data.sources import open_split

    split = run_cfg.evaluate.split or run_cfg.data.val_split
    count = len(open_split(run_cfg.data, split))
    return min(count, run_cfg.evaluate.max_videos) if run_cfg.evaluate.max_videos else count


def _reusable_report(run_cfg: Config, best: Path) -> dict | None:
    """The report already in ``<run>/eval/<split>/`` when it scored this best.pt on as many videos, with
    the same SSIM (a report from before ``evaluate.ssim`` existed used the Gaussian one)."""
    path = eval_dir(run_cfg) / REPORT_NAME
    try:
        report = json.loads(path.read_text())
        fresh = path.stat().st_mtime >= best.stat().st_mtime
    except (OSError, ValueError):
        return None
    split = run_cfg.evaluate.split or run_cfg.data.val_split
    same = (fresh and report.get("split") == split and Path(str(report.get("checkpoint"))).resolve() == best.resolve()
            and report.get("videos") == _videos_to_score(run_cfg)
            and report.get("ssim", "gaussian") == run_cfg.evaluate.ssim)
    return report if same else None


def score_run(run_dir: Path, cfg: Config) -> RunScore:
    """Evaluate (or reuse the report of) ``run_dir``'s best.pt; errors the user can fix become its status."""
    best = run_dir / BEST_NAME
    score = RunScore(run_dir, "ok", train_minutes=training_minutes(run_dir))
    try:
        if not best.is_file():
            if not (run_dir / CONFIG_NAME).is_file():
                score.status = "not trained (no config.yaml)" if run_dir.is_dir() else "no such folder"
                return score
            score.settings = trained_settings(config_to_dict(load_config(run_dir / CONFIG_NAME)))
            score.status = "no best.pt"
            return score
        state = load_checkpoint(best)
        saved = config_to_dict(config_from_dict(state["config"]))  # every setting, defaults filled in
        score.settings = trained_settings(saved)
        score.parameters, score.best_epoch = state.get("parameters"), state.get("progress", {}).get("epoch")
        del state
        run_cfg = _evaluation_config(saved, run_dir, best, cfg)
        report = _reusable_report(run_cfg, best)
        score.reused = report is not None
        if report is None:
            report = registry.run_stage("evaluate", run_cfg)
        score.report = report["files"]["report"]
    except FramecastError as exc:
        log.warning("compare: %s: %s", run_dir, exc)
        score.status = f"error: {exc}"
        return score
    model, copy_last = report["model"]["mean"], report["copy_last_frame"]["mean"]
    score.mse, score.ssim, score.copy_last_mse = model[MSE_KEY], model["ssim"], copy_last[MSE_KEY]
    score.copy_last_ssim = copy_last["ssim"]
    if "mean_of_inputs" in report:
        score.mean_of_inputs_mse = report["mean_of_inputs"]["mean"][MSE_KEY]
        score.mean_of_inputs_ssim = report["mean_of_inputs"]["mean"]["ssim"]
    return score


# ----------------------------------------------------------------------------- grid points


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std None for fewer than two values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Point:
    """The runs of one setting, seeds pooled."""

    values: dict[str, Any]  # the varying settings' values
    runs: list[RunScore]

    @property
    def scored(self) -> list[RunScore]:
        """The scored runs, one per seed: statistics are over distinct trainings only."""
        return [r for r in self.runs if r.ok and not r.repeat_of]

    @property
    def seeds(self) -> int:
        """Distinct seeds among the point's runs (a repeated training is no second seed)."""
        return len({json.dumps(r.seed, default=str) for r in self.runs})

    def stats(self, attribute: str) -> tuple[float | None, float | None]:
        return _mean_std([getattr(r, attribute) for r in self.scored])


def _sort_key(value: Any) -> tuple:
    if value is None:  # not a setting of this point's family: after the points that have it
        return (2, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, format_value(value))


def group_points(runs: list[RunScore]) -> tuple[list[str], list[Point]]:
    """(the settings that differ between points, the points sorted by them)."""
    groups: dict[str, list[RunScore]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for run in runs:
        if not run.settings:
            continue
        trained = {k: v for k, v in run.settings.items() if k != SEED_KEY}
        key = json.dumps(trained, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
        settings[key] = trained
    keys = sorted({k for s in settings.values() for k in s})
    # A setting varies when the points that have it differ in it: one of a family's section is missing
    # from the points of another family (core.grid.trained_settings), which model.family tells apart.
    varying = [k for k in keys
               if len({json.dumps(s[k], default=str) for s in settings.values() if k in s}) > 1]
    for members in groups.values():
        first_of_seed: dict[str, RunScore] = {}
        for run in members:
            if run.ok:
                seed = json.dumps(run.seed, default=str)
                run.repeat_of = first_of_seed[seed].name if seed in first_of_seed else ""
                first_of_seed.setdefault(seed, run)
    points = [Point({k: settings[g].get(k) for k in varying}, members) for g, members in groups.items()]
    points.sort(key=lambda p: tuple(_sort_key(p.values[k]) for k in varying))
    return varying, points


def point_label(point: Point, names: dict[str, str]) -> str:
    return ",".join(f"{names[k]}={format_value(v)}" for k, v in point.values.items() if v is not None) or "all runs"


# ----------------------------------------------------------------------------- output


def _num(value: float | None, digits: int = 5) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _pm(mean: float | None, std: float | None, digits: int = 5) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}g} ± {std:.2g}" if std is not None else f"{mean:.{digits}g}"


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _parameters(point: Point) -> int | None:
    counts = sorted({r.parameters for r in point.scored if r.parameters is not None})
    return counts[0] if counts else None


def point_rows(varying: list[str], points: list[Point], names: dict[str, str]) -> tuple[list[str], list[list[Any]]]:
    header = ["point", *varying, "seeds", "runs_scored", "runs_not_scored", "mse_mean", "mse_std", "ssim_mean",
              "ssim_std", "parameters", "train_minutes_mean", "train_minutes_std", "copy_last_mse", "runs"]
    rows = []
    for point in points:
        mse, ssim, minutes = point.stats("mse"), point.stats("ssim"), point.stats("train_minutes")
        copy_last = point.stats("copy_last_mse")[0]
        rows.append([point_label(point, names), *(format_value(point.values[k]) for k in varying),
                     " ".join(format_value(r.seed) for r in point.scored), len(point.scored),
                     sum(not r.ok for r in point.runs), _num(mse[0], 8), _num(mse[1], 8), _num(ssim[0], 8),
                     _num(ssim[1], 8), _parameters(point) or "", _num(minutes[0], 4), _num(minutes[1], 4),
                     _num(copy_last, 8), " ".join(r.name for r in point.runs)])
    return header, rows


def markdown(varying: list[str], points: list[Point], runs: list[RunScore], names: dict[str, str],
             split: str, ssim: str = "gaussian") -> str:
    scored = [r for r in runs if r.ok]
    copy_last = _mean_std([r.copy_last_mse for r in scored])[0]
    lines = [
        f"# {len(runs)} runs, {len(points)} settings, scored on {split}",
        "",
        ("MSE: squared error summed over a frame in [0, 1], mean over lead times (lower is better); SSIM "
         f"(evaluate.ssim={ssim}: {SSIM_KINDS[ssim].describe()}): higher is better. Each cell: mean ± sample standard deviation over seeds. Train time: minutes "
         "from the first to the last line of metrics.jsonl."),
        "",
        "| " + " | ".join([*(names[k] for k in varying), "seeds", "MSE", "SSIM", "parameters",
                          "train time (min)"]) + " |",
        "|" + "---|" * (len(varying) + 5),
    ]
    for point in points:
        params = _parameters(point)
        lines.append("| " + " | ".join([
            *(format_value(point.values[k]) for k in varying), f"{len(point.scored)}/{point.seeds}",
            _pm(*point.stats("mse")), _pm(*point.stats("ssim"), digits=4), f"{params:,}" if params else "",
            _pm(*point.stats("train_minutes"), digits=3)]) + " |")
    baselines = {name: tuple(_mean_std([getattr(r, f"{name}_{metric}") for r in scored])[0] for metric in ("mse", "ssim"))
                 for name in ("copy_last", "mean_of_inputs")}
    lines += ["", f"Copy-last baseline MSE: {_num(copy_last)}, SSIM {_num(baselines['copy_last'][1], 4)}; "
                  f"mean-of-inputs baseline MSE: {_num(baselines['mean_of_inputs'][0])}, SSIM "
                  f"{_num(baselines['mean_of_inputs'][1], 4)} (the same videos).", "", "## Runs", "",
              "| run | status | seed | MSE | SSIM | best epoch | train time (min) | report |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        status = " ".join(run.status.replace("|", "/").split()) + (" (report reused)" if run.reused else "")
        if run.repeat_of:
            status += f" (same settings and seed as {run.repeat_of}: counted once)"
        lines.append(f"| {run.name} | {status} | {format_value(run.seed) if run.settings else ''} | "
                     f"{_num(run.mse)} | {_num(run.ssim, 4)} | {run.best_epoch or ''} | "
                     f"{_num(run.train_minutes, 3)} | {run.report} |")
    return "\n".join(lines) + "\n"


def plot_points(points: list[Point], names: dict[str, str], path: Path, title: str) -> None:
    """MSE and SSIM per point: mean +/- std over seeds (error bars), each seed a dot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [point_label(p, names) for p in points]
    fig = Figure(figsize=(max(6.0, 1.2 * len(points) + 3), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, (attribute, label) in zip(axes, (("mse", "MSE (sum over frame), lower is better"),
                                             ("ssim", "SSIM, higher is better"))):
        for x, point in enumerate(points):
            mean, std = point.stats(attribute)
            if mean is None:
                continue
            ax.errorbar([x], [mean], yerr=[std or 0.0], fmt="o", capsize=5, color="tab:blue", ms=7)
            seeds = [getattr(r, attribute) for r in point.scored]
            ax.plot([x + 0.12] * len(seeds), seeds, ".", color="tab:gray", ms=5)
        ax.set_xticks(range(len(points)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(points) - 0.5)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def out_folder(cfg: Config, runs: list[Path]) -> Path:
    if cfg.compare.out:
        return Path(cfg.compare.out)
    return Path(os.path.commonpath([str(p.resolve().parent) for p in runs])) / "compare"


def run(cfg: Config) -> Path:
    """Score and tabulate the runs of ``compare.runs``; returns the Markdown table's path."""
    if not cfg.compare.runs:
        raise FramecastError("compare.runs is empty: name the run folders, e.g. main.py compare --runs 'runs/sweep/*'")
    run_dirs = find_runs(cfg.compare.runs)
    if not run_dirs:
        raise FramecastError(f"compare.runs={cfg.compare.runs}: no run folder (holding {CONFIG_NAME} or "
                             f"{BEST_NAME}) matches")
    if not any(d.is_dir() for d in run_dirs):
        raise FramecastError(f"compare.runs={cfg.compare.runs}: none of these folders exists")
    out = out_folder(cfg, run_dirs)
    scores = []
    for i, run_dir in enumerate(run_dirs, start=1):
        log.info("compare: run %d of %d: %s", i, len(run_dirs), run_dir)
        scores.append(score_run(run_dir, cfg))
    if not any(s.ok for s in scores):
        log.warning("compare: none of the %d runs could be scored", len(scores))
    varying, points = group_points(scores)
    names = short_names(varying)
    split = cfg.evaluate.split or cfg.data.val_split
    header, rows = point_rows(varying, points, names)
    write_text_atomic(out / TABLE_CSV, _csv_text(header, rows))
    run_header = ["run", "path", "status", "seed", *varying, "mse", "ssim", "copy_last_mse", "best_epoch",
                  "parameters", "train_minutes", "report", "report_reused"]
    run_rows = [[r.name, str(r.path), r.status, format_value(r.seed) if r.settings else "",
                 *(format_value(r.settings.get(k)) if r.settings else "" for k in varying), _num(r.mse, 8),
                 _num(r.ssim, 8), _num(r.copy_last_mse, 8), r.best_epoch or "", r.parameters or "",
                 _num(r.train_minutes, 4), r.report, r.reused] for r in scores]
    write_text_atomic(out / RUNS_CSV, _csv_text(run_header, run_rows))
    table = markdown(varying, points, scores, names, split, cfg.evaluate.ssim)
    write_text_atomic(out / TABLE_MD, table)
    plot_points(points, names, out / COMPARE_PLOT_NAME,
                f"{len(scores)} runs on {split}, mean ± std over seeds, SSIM {cfg.evaluate.ssim}")
    print(table, end="")
    return out / TABLE_MD
