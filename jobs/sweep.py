"""Sweeps: train every point of a grid of settings with several seeds, then compare them.

    python main.py submit sweep --config configs/default.yaml --grid train.lr=1e-3,3e-4 \\
        --grid model.family=predrnn,simvp --seeds 3 [--executor auto|slurm|local] [--wait] [key=value ...]

The config (with its overrides) is the sweep's base; its ``run.name`` names the sweep folder
``<run.out_dir>/<run.name>/``, which holds one run folder per grid point and seed, named after them:
``lr=1e-3,family=predrnn,seed=0`` (each setting by the shortest tail of its key that tells it apart;
values as written on the command line, with ``[]`` dropped and ``,`` inside a value written ``+``).
Seed k trains with ``train.seed`` = the base config's ``train.seed`` + k.

On Slurm the runs are ONE job array of train jobs (split into several arrays only above the
cluster's MaxArraySize or ``slurm.max_array_size``), at most ``slurm.array_parallelism`` running at
once, then one ``compare`` job (stages/compare.py) with ``afterany`` on the array: it tabulates what
finished and lists the runs that did not (``afterok`` would leave the whole comparison waiting forever
on one diverged seed).  Each array task is a train job like any other: requeued at its time limit,
resumed from its own ``last.pt``.  The local executor has no arrays: the runs train one after another
on this machine, then the comparison (the command returns when it has been submitted).

Only ``data.*``, ``model.*`` and ``train.*`` settings can be swept (not ``train.seed``: use --seeds):
those define what is trained, and the compare stage groups runs by exactly those.

A grid over ``model.family`` gives each member its own family's section. ``model.*.KEY`` (in a
--grid or a plain override) means KEY of whichever family a run builds, so one grid can hold a
setting the families share: ``--grid model.family=convlstm,predrnn --grid model.*.sampling=linear,none
model.*.sampling_stop_step=200`` trains convlstm and predrnn with each schedule, the schedule ending at
step 200 in both. A family without KEY is an error naming it (``model.predrnn.KEY``), before anything
is submitted. ``model.<family>.KEY`` still sets that family's section alone.
``<sweep>/sweep.json`` records the grid, each run's folder and job id.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from core.atomic import write_json_atomic
from core.config import Config, config_from_dict, config_to_dict, load_config
from core.errors import FramecastError
from core.grid import SEED_KEY, TRAINED_SECTIONS, family_section, short_names, trained_settings
from core.outputs import TABLE_MD
from jobs import submit
from jobs.snapshot import CodeSnapshot
from jobs.stage_job import StageJob
from jobs.wait import JobEnd, wait_jobs
from stages import registry

MANIFEST_NAME = "sweep.json"
# A key starting so names the section of the family each run builds (model.family, swept or not).
ANY_FAMILY = "model.*."
# Run folder names are run.name values: core.config allows letters, digits and . _ - + = ,
NAME_MAX = 200  # characters, well below the 255 bytes of a file name
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class SweepRun:
    """One task of the sweep: a grid point (settings as written) and a seed, with its whole config."""

    name: str
    point: tuple[tuple[str, str], ...]  # ((key, value as written), ...)
    seed: int
    cfg: Config


@dataclass
class Sweep:
    base: Config  # the sweep's own config: run_dir is the sweep folder
    grid: list[tuple[str, list[str]]]
    seeds: int
    runs: list[SweepRun]
    compare: Config  # the compare job's config

    @property
    def folder(self) -> Path:
        return self.base.run_dir


def split_values(text: str) -> list[str]:
    """``1e-3,3e-4`` -> ["1e-3", "3e-4"]; commas inside [], {} or quotes belong to the value: ``[8,8],[16,16]``."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["train.lr=1e-3,3e-4", ...]`` -> [("train.lr", ["1e-3", "3e-4"]), ...], checked."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not sep or not key or not all(values):
            raise FramecastError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. train.lr=1e-3,3e-4)")
        if key == SEED_KEY:
            raise FramecastError(f"--grid {item!r}: seeds are swept with --seeds N (train.seed + 0 .. N-1)")
        if key.split(".")[0] not in TRAINED_SECTIONS:
            raise FramecastError(f"--grid {item!r}: only {', '.join(s + '.*' for s in TRAINED_SECTIONS)} settings "
                                 "can be swept (they define what is trained); set the others for the whole sweep")
        if any(key == known for known, _ in grid):
            raise FramecastError(f"--grid {key}: given twice; list all its values in one --grid")
        if len(set(values)) != len(values):
            raise FramecastError(f"--grid {item!r}: a value is listed twice")
        grid.append((key, values))
    return grid


def family_of(config: str | Path, overrides: list[str]) -> str:
    """The ``model.family`` that ``config`` with ``overrides`` builds (its ``model.*.`` ones aside)."""
    return load_config(config, [o for o in overrides if not o.startswith(ANY_FAMILY)]).model.family


def for_family(overrides: list[str], family: str) -> list[str]:
    """``model.*.KEY=V`` -> ``model.<family>.KEY=V``; other overrides as they are."""
    return [f"model.{family}.{o[len(ANY_FAMILY):]}" if o.startswith(ANY_FAMILY) else o for o in overrides]


def value_text(raw: str) -> str:
    """A value as written, fit for a run folder name: ``1e-3`` stays, ``[8,8]`` -> ``8+8``, ``a b`` -> ``a_b``."""
    text = raw.strip().strip("'\"")
    text = re.sub(r"[\[\]{}()'\" ]", "", text).replace(",", "+").replace(":", "-")
    return _UNSAFE.sub("_", text) or "_"


def run_name(point: tuple[tuple[str, str], ...], seed: int, names: dict[str, str]) -> str:
    return ",".join([*(f"{names[key]}={value_text(value)}" for key, value in point), f"seed={seed}"])


def plan_sweep(config: str | Path, overrides: list[str], grid_items: list[str], seeds: int) -> Sweep:
    """Every run of the sweep, each config loaded and checked now, before anything is submitted."""
    if seeds < 1:
        raise FramecastError(f"--seeds must be >= 1, got {seeds}")
    grid = parse_grid(grid_items)
    if not grid and seeds == 1:
        raise FramecastError("nothing to sweep: give --grid KEY=V1,V2 and/or --seeds N with N > 1")
    # The base names the sweep and configures its jobs; model.*. settings are each run's, resolved there.
    base = load_config(config, [o for o in overrides if not o.startswith(ANY_FAMILY)])
    names = short_names([key for key, _ in grid])
    # The sweep folder as written (a ${VAR} in run.out_dir stays one), and each run folder inside it.
    out_dir = f"{base.run.out_dir.rstrip('/')}/{base.run.name}"
    runs: list[SweepRun] = []
    seen: dict[str, tuple] = {}
    points = []
    for values in itertools.product(*(vals for _, vals in grid)):
        point = tuple(zip((key for key, _ in grid), values))
        point_overrides = [*overrides, *(f"{key}={value}" for key, value in point)]
        points.append((point, load_config(config, for_family(point_overrides, family_of(config, point_overrides)))))
    _check_families(grid, [cfg for _, cfg in points])
    for point, point_cfg in _distinct_points(points):
        for k in range(seeds):
            seed = base.train.seed + k
            name = run_name(point, seed, names)
            if name in seen:
                raise FramecastError(f"--grid: {dict(seen[name])} and {dict(point)} give the same run folder "
                                     f"name {name!r}; write the values differently")
            if len(name) > NAME_MAX:
                raise FramecastError(f"sweep run folder name {name[:60]}... is {len(name)} characters "
                                     f"(at most {NAME_MAX}); sweep fewer settings at once")
            seen[name] = point
            values_dict = config_to_dict(point_cfg)
            # The grid's settings and the seed are what this member's hparams are (TensorBoard, W&B).
            swept = for_family([key for key, _ in grid], point_cfg.model.family)  # model.*.KEY: this run's family
            hparams = [*values_dict["run"]["hparams"], *swept, SEED_KEY]
            values_dict["run"].update(out_dir=out_dir, name=name, hparams=list(dict.fromkeys(hparams)))
            values_dict["train"]["seed"] = seed
            runs.append(SweepRun(name, point, seed, config_from_dict(values_dict)))
    compare_values = config_to_dict(base)
    compare_values["compare"] = {"runs": [str(r.cfg.run_dir) for r in runs],
                                 "out": base.compare.out or str(base.run_dir / "compare")}
    return Sweep(base, grid, seeds, runs, config_from_dict(compare_values))


def _check_families(grid: list[tuple[str, list[str]]], configs: list[Config]) -> None:
    """A family's setting swept while no run builds that family would train the same model again."""
    for key, _ in grid:
        family = family_section(key)
        if family and not any(cfg.model.family == family for cfg in configs):
            chosen = sorted({cfg.model.family for cfg in configs})
            raise FramecastError(f"--grid {key}: a setting of the {family} family, but every run builds "
                                 f"model.family={','.join(chosen)}, so it changes nothing; select {family} "
                                 f"(model.family={family}) or sweep model.family to include it")


def _distinct_points(points: list[tuple[tuple, Config]]) -> list[tuple[tuple, Config]]:
    """The grid points that train different things, compared as parsed settings, not as written.

    Two spellings of one value (``3e-3`` and ``0.003``) are an error naming both. A point that differs
    from an earlier one only in the settings of a family it does not build (``model.family`` swept with
    ``model.convlstm.*``) trains the same model: it is left out, and the log says so.
    """
    kept: dict[str, tuple] = {}
    distinct = []
    for point, cfg in points:
        settings = trained_settings(config_to_dict(cfg))
        settings.pop(SEED_KEY, None)
        key = repr(sorted(settings.items(), key=lambda item: item[0]))
        if key not in kept:
            kept[key] = point
            distinct.append((point, cfg))
            continue
        earlier = kept[key]
        differing = [(k, a, b) for (k, a), (_, b) in zip(earlier, point) if a != b]
        if all(family_section(k) not in (None, cfg.model.family) for k, _, _ in differing):
            logging.getLogger(__name__).info(
                "sweep: %s trains the same model as %s (model.family=%s ignores %s): trained once",
                dict(point), dict(earlier), cfg.model.family, ", ".join(k for k, _, _ in differing))
            continue
        same = "; ".join(f"{k}={a} and {k}={b}" for k, a, b in differing)
        raise FramecastError(f"--grid: {same} are the same setting (values are compared as read, not as "
                             "written); list each value once")
    return distinct


def _calls(stage: str, configs: list[Config], code: CodeSnapshot) -> list[StageJob]:
    workdir = os.getcwd()
    return [StageJob(stage, config_to_dict(cfg), workdir, registry.WHOLE, code) for cfg in configs]


def submit_sweep(sweep: Sweep, executor: str | None = None, *, code: CodeSnapshot | None = None,
                 on_submit: Any = None, timeout_s: float | None = None) -> tuple[list[submitit.Job], submitit.Job]:
    """Submit the sweep's train runs and its compare job: (train jobs in ``sweep.runs`` order, compare job).

    Slurm: one array (several above the array size limit), the compare job afterany on all of it.
    Local: each run is submitted when the one before it ended (``timeout_s``: how long to wait for
    each), then the compare job.
    """
    kind = submit.resolve_executor(executor, sweep.base)
    code = code or submit.snapshot_for(sweep.base)
    calls = _calls("train", [r.cfg for r in sweep.runs], code)

    if kind == "local":
        jobs = []
        for call in calls:
            [job] = submit.announced(submit.submit_calls("train", sweep.base, [call], kind, code=code), on_submit)
            jobs.append(job)
            wait_jobs([job], timeout_s=timeout_s)
        after: list[submitit.Job] = []
    else:
        jobs = submit.announced(submit.submit_calls("train", sweep.base, calls, kind, code=code), on_submit)
        after = jobs
    compare_calls = _calls("compare", [sweep.compare], code)
    [compare_job] = submit.announced(submit.submit_calls("compare", sweep.compare, compare_calls, kind, code=code,
                                                         after=after, dependency="afterany"), on_submit)
    _write_manifest(sweep, jobs, compare_job)
    return jobs, compare_job


def _write_manifest(sweep: Sweep, jobs: list[submitit.Job], compare_job: submitit.Job) -> None:
    write_json_atomic(sweep.folder / MANIFEST_NAME, {
        "grid": {key: values for key, values in sweep.grid},
        "seeds": sweep.seeds,
        "runs": [{"name": r.name, "folder": str(r.cfg.run_dir), "point": dict(r.point), "seed": r.seed,
                  "job_id": str(job.job_id)} for r, job in zip(sweep.runs, jobs)],
        "compare": {"job_id": str(compare_job.job_id), "out": sweep.compare.compare.out},
    })


def describe_sweep(sweep: Sweep) -> str:
    points = len(sweep.runs) // sweep.seeds
    return (f"sweep {sweep.folder}: {len(sweep.runs)} train runs ({points} grid point(s) x {sweep.seeds} seed(s)), "
            f"then compare -> {Path(sweep.compare.compare.out) / TABLE_MD}")
