"""``main.py runs [DIR]``: one line per run folder: name, family, state, epochs, best val loss, parameters.

The run folders directly under DIR and one level further down (``<sweep>/<member>``, or any folder of
run folders); a sweep folder (``sweep.json``) lists every member it submitted, also those whose job
has not started yet (no folder yet). A run submitted as a train job that waits in the queue has only
``jobs/`` and ``code/`` so far: it is listed too, as queued, with the scheduler's pending reason.

Read-only: nothing in a run folder is written, locked or resumed. What each run is made of:
``config.yaml`` (family, epochs asked for), ``last.pt`` (or ``best.pt``; its progress: epochs done, best
validation loss and its epoch, the stop reason, the parameter count; read memory-mapped, so a large
checkpoint costs little), ``metrics.jsonl`` (when there is no checkpoint yet), ``run.lock`` (who
trains it now) and, for runs submitted as jobs, the Slurm queue and the job logs in ``<run>/jobs/``.

What the states mean (``STATES``; printed under the table):
- running: a live process holds ``run.lock``: on this host its pid exists (and started before the
  lock was taken); elsewhere Slurm lists its job as running, or, without Slurm, the lock was refreshed
  within ``run.lock_stale_s``.
- queued: no live holder, but a train job of this run waits in the Slurm queue (submitted and not
  started yet, or requeued); the detail gives Slurm's pending reason (Priority, Resources, BeginTime, ...).
- finished: every epoch done (``train.epochs``).
- stopped: ended early on purpose: ``early_stop`` (train.early_stop_patience) or ``time_budget``
  (train.max_minutes).
- failed: no live holder, no queued job, and it ended before its epochs without a stop reason: killed
  (a lock left by a dead process says so), crashed, cancelled, out of time without a requeue, or
  stopped by a signal outside submitit. Running the same train command resumes it from ``last.pt``.
  The detail column adds what a job log says when there is one (its last error line).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.checkpoint import BEST_NAME, LAST_NAME
from core.config import CONFIG_NAME
from core.errors import FramecastError
from core.processes import pid_alive
from core.runlock import LOCK_NAME, Holder, lock_holder
from training.metrics import METRICS_NAME, read_metrics

RUN_FILES = (CONFIG_NAME, LAST_NAME, BEST_NAME, LOCK_NAME, METRICS_NAME)
JOBS_DIR = "jobs"  # submitit's folders of the run's jobs (jobs.submit.job_folder)
TRAIN_JOB_PREFIX = "framecast-train-"  # the Slurm job name of a train job (jobs.submit.make_executor)
SWEEP_MANIFEST = "sweep.json"  # what jobs.sweep writes in a sweep folder: its members and their job ids
# Slurm states of a job that has not started yet / runs now.
WAITING_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED")
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING")
DEFAULT_STALE_S = 600  # run.lock_stale_s's default, for a run whose config cannot be read
SQUEUE_TIMEOUT_S = 15
LOG_TAIL_BYTES = 64 << 10
STATES = {
    "running": "a live process holds run.lock",
    "queued": "a train job of the run waits in the Slurm queue (the detail: Slurm's pending reason)",
    "finished": "all epochs done",
    "stopped": "ended early on purpose (early_stop or time_budget)",
    "failed": "no live holder and ended before its epochs without a stop reason (killed, crashed, cancelled); "
              "the same train command resumes it",
}


@dataclass
class RunStatus:
    name: str
    path: str
    family: str = "?"
    state: str = "?"
    detail: str = ""
    epochs_done: int | None = None
    epochs_total: int | None = None
    steps: int | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    parameters: int | None = None
    checkpoint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("extra")
        return values


def is_run_folder(path: Path) -> bool:
    """Holds a run's files, or (submitted, not started yet) a train job's submission."""
    if not path.is_dir() or (path / SWEEP_MANIFEST).is_file():
        return False
    return any((path / name).exists() for name in RUN_FILES) or bool(_train_job_dirs(path))


def _read_yaml(path: Path) -> tuple[dict, str]:
    """(the file's mapping, or {}; why it could not be read, or "" when it could or is absent)."""
    try:
        values = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return {}, f"{path.name} unreadable ({exc.strerror or exc})"
    except UnicodeDecodeError:
        return {}, f"{path.name} unreadable (not UTF-8 text)"
    except yaml.YAMLError as exc:
        return {}, f"{path.name} unreadable (not valid YAML: {str(exc).splitlines()[0]})"
    if values is not None and not isinstance(values, dict):
        return {}, f"{path.name} unreadable (not a mapping of sections)"
    return values or {}, ""


def _section(config: dict, name: str) -> dict:
    section = config.get(name)
    return section if isinstance(section, dict) else {}


def _read_checkpoint(path: Path) -> tuple[dict | None, str]:
    """(the checkpoint's config, progress and parameter count; or None, why not)."""
    import torch

    from core.checkpoint import upgrade_v1

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never raised
        text = str(exc).strip().splitlines()
        return None, f"{path.name} unreadable ({text[0] if text else type(exc).__name__})"
    if not isinstance(state, dict) or "config" not in state:
        return None, f"{path.name} is not a framecast checkpoint"
    if state.get("format_version") == 1:
        state = upgrade_v1(state)
    return {"config": state.get("config") or {}, "progress": state.get("progress") or {},
            "parameters": state.get("parameters")}, ""


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch; Linux /proc), or None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _squeue(job_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """{job id: (state, job name, pending reason)} of the jobs Slurm still lists (ended ones for a few
    minutes: MinJobAge); {} without Slurm. Array tasks by their ``<array>_<task>`` ids."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%j|%r"],
                              capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            found[parts[0]] = (parts[1], parts[2], "" if parts[3] == "None" else parts[3])
    return found


def _in_queue(job_id: str, info: tuple[str, str, str]) -> tuple[str, str] | None:
    """(runs' state, detail) of a job Slurm lists as waiting or running; None once it has ended."""
    state, _, reason = info
    if state in WAITING_STATES:
        return "queued", f"Slurm job {job_id} {state.lower()}" + (f": {reason}" if reason else "")
    if state in RUNNING_STATES:
        return "running", f"Slurm job {job_id} {state.lower()} (starting: no lock taken yet)"
    return None


def _holder_alive(holder: Holder, lock: Path, stale_s: float) -> tuple[bool, str]:
    """Whether the lock's holder still trains, and how that was told (for the detail column)."""
    if holder.host == socket.gethostname() and holder.pid > 0:
        if not pid_alive(holder.pid):
            return False, f"lock left by pid {holder.pid} on {holder.host}, which no longer runs (killed?)"
        started = _process_start(holder.pid)
        if started is not None and started > holder.since + 1:
            return False, f"lock left by pid {holder.pid} on {holder.host}; that pid is now another process"
        return True, f"pid {holder.pid} on {holder.host}"
    if holder.slurm_job and shutil.which("squeue"):
        state = _squeue([holder.slurm_job]).get(holder.slurm_job)
        if state is not None and state[0] in RUNNING_STATES:
            return True, f"Slurm job {holder.slurm_job} on {holder.host}"
        if state is None or state[0] not in WAITING_STATES:
            return False, f"lock left by Slurm job {holder.slurm_job}, which has ended"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False, ""
    if age <= stale_s:
        return True, f"pid {holder.pid} on {holder.host}, lock refreshed {age:.0f} s ago"
    return False, f"lock of pid {holder.pid} on {holder.host} not refreshed for {age:.0f} s (its node died?)"


def _train_job_dirs(run_dir: Path) -> list[Path]:
    """The submitit folders of the run's train jobs, newest first."""
    jobs = run_dir / JOBS_DIR
    if not jobs.is_dir():
        return []
    found = []
    for folder in jobs.iterdir():
        scripts = list(folder.glob("*_submission.sh")) if folder.is_dir() else []
        try:
            if scripts and TRAIN_JOB_PREFIX in scripts[0].read_text(errors="replace"):
                found.append(folder)
        except OSError:
            continue
    return sorted(found, key=lambda f: f.stat().st_mtime, reverse=True)


def _last_error_line(job_dirs: list[Path]) -> str:
    """The last line of the newest train job's stderr that reports an error, or ""."""
    for folder in job_dirs[:1]:
        for log in sorted(folder.glob("*_log.err"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                with open(log, "rb") as handle:
                    handle.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
                    lines = handle.read().decode(errors="replace").splitlines()
            except OSError:
                continue
            for line in reversed(lines):
                text = line.strip()
                if any(word in text for word in ("Error", "error:", "CANCELLED", "TIME LIMIT", "oom", "Killed")):
                    return f"job log {log.name}: {text[:160]}"
    return ""


def _last_record(path: Path) -> dict | None:
    """The last complete record of ``metrics.jsonl`` (read from its tail: the log can be long)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _last_logged(run_dir: Path) -> str:
    """``last logged: epoch 3, step 1200, 5 min ago`` from metrics.jsonl, or ""."""
    record = _last_record(run_dir / METRICS_NAME)
    if not record or "step" not in record:
        return ""
    when = f", {_ago(time.time() - float(record['time']))}" if isinstance(record.get("time"), (int, float)) else ""
    return f"last logged: epoch {record.get('epoch', '?')}, step {record['step']}{when}"


def _submitted_config(job_dirs: list[Path]) -> dict:
    """The config a train job was submitted with (its pickled StageJob), for a run that has not started."""
    from submitit.core.utils import pickle_load

    for folder in job_dirs[:1]:
        for pickled in folder.glob("*_submitted.pkl"):
            try:
                config = getattr(pickle_load(pickled).function, "config", None)
            except Exception:  # noqa: BLE001 - an unreadable pickle only loses the family column
                continue
            if isinstance(config, dict):
                return config
    return {}


def run_status(run_dir: str | os.PathLike, name: str | None = None, job_ids: list[str] | None = None) -> RunStatus:
    """What can be told about one run folder (see the module docstring).

    ``name``: how the table names it (``<sweep>/<member>``); ``job_ids``: train jobs of the run submitted
    by its sweep (array tasks whose submitit folders are the sweep's, ``<sweep>/jobs/<id>``).
    """
    run_dir = Path(run_dir)
    status = RunStatus(name=name or run_dir.name, path=str(run_dir))
    job_dirs = _train_job_dirs(run_dir) + [d for d in (run_dir.parent / JOBS_DIR / i for i in job_ids or [])
                                           if d.is_dir()]
    job_dirs.sort(key=lambda f: f.stat().st_mtime, reverse=True)
    config, config_problem = _read_yaml(run_dir / CONFIG_NAME)
    config = config or _submitted_config(job_dirs)
    checkpoint = next((run_dir / n for n in (LAST_NAME, BEST_NAME) if (run_dir / n).is_file()), None)
    progress: dict[str, Any] = {}
    notes: list[str] = [config_problem] if config_problem else []
    if checkpoint is not None:
        state, why = _read_checkpoint(checkpoint)
        status.checkpoint = checkpoint.name
        if state is None:
            notes.append(why)
        else:
            config = config or state["config"]
            progress = state["progress"]
            status.parameters = state["parameters"]
    status.family = str(_section(config, "model").get("family", "?"))
    total = _section(config, "train").get("epochs")
    status.epochs_total = int(total) if isinstance(total, int) else None
    stale_s = _section(config, "run").get("lock_stale_s")
    stale_s = float(stale_s) if isinstance(stale_s, (int, float)) and stale_s > 0 else DEFAULT_STALE_S

    if progress:
        epoch, batches, per_epoch = (int(progress.get(k) or 0) for k in ("epoch", "batches_done", "steps_per_epoch"))
        status.epochs_done = epoch if per_epoch and batches >= per_epoch else max(epoch - 1, 0)
        status.steps = int(progress.get("step") or 0)
        best = progress.get("best_val_loss")
        if progress.get("best_epoch") and best is not None and math.isfinite(float(best)):
            status.best_val_loss, status.best_epoch = float(best), int(progress["best_epoch"])
    else:
        vals = [r for r in read_metrics(run_dir / METRICS_NAME) if r.get("kind") == "val" and "val_loss" in r]
        if vals:
            best = min(vals, key=lambda r: r["val_loss"])
            status.best_val_loss, status.best_epoch = float(best["val_loss"]), int(best.get("epoch", 0))
            status.epochs_done = max(int(r.get("epoch", 0)) for r in vals)
        else:
            status.epochs_done = 0  # no validation yet: no epoch is done

    holder = lock_holder(run_dir)
    holder_note = ""
    if holder is not None and holder.problem:
        notes.append(holder.problem)  # nobody can be told to hold it: not shown as running
    elif holder is not None:
        alive, holder_note = _holder_alive(holder, run_dir / LOCK_NAME, stale_s)
        if alive:
            status.state = "running"
            status.detail = "; ".join(d for d in [holder_note, _last_logged(run_dir), *notes] if d)
            return status
    stopped = str(progress.get("stopped") or "")
    done, total = status.epochs_done, status.epochs_total
    ids = list(dict.fromkeys([*(f.name for f in job_dirs), *(job_ids or [])]))  # the newest job first
    listed = {i: s for i, s in _squeue(ids).items() if s[1].startswith(TRAIN_JOB_PREFIX)}
    active = next((found for i in ids if i in listed and (found := _in_queue(i, listed[i]))), None)
    if stopped:
        status.state, status.detail = "stopped", stopped
    elif progress and done is not None and total is not None and done >= total:
        status.state = "finished"
    elif active:
        status.state, status.detail = active
    else:
        status.state = "failed"
        ended = next(((i, listed[i]) for i in ids if i in listed), None)
        if ended:  # Slurm still remembers how it ended (for MinJobAge seconds)
            job_id, (slurm_state, _, reason) = ended
            notes.append(f"Slurm job {job_id} {slurm_state.lower()}" + (f" ({reason})" if reason else ""))
        if not run_dir.is_dir():
            notes.insert(0, "its train job ended before it made the run folder")
        elif not progress:
            notes.insert(0, "ended before its first checkpoint")
        else:
            where = f"epoch {done}/{total}" if total is not None else f"epoch {done}"
            notes.insert(0, f"ended after {where}, step {status.steps}, without a stop reason")
        if holder_note:
            notes.append(holder_note)
        notes.append(_last_logged(run_dir))
        error = _last_error_line(job_dirs)
        if error:
            notes.append(error)
    status.detail = "; ".join([d for d in [status.detail, *notes] if d])
    return status


def _sweep_members(sweep: Path, prefix: str) -> list[RunStatus]:
    """Every run a sweep submitted (its manifest), started or not, then any other run folder in it."""
    try:
        manifest = json.loads((sweep / SWEEP_MANIFEST).read_text())
        members = [(str(r["name"]), str(r.get("job_id") or "")) for r in manifest.get("runs", [])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        members = []
    named = {name for name, _ in members}
    statuses = [run_status(sweep / name, f"{prefix}{name}", [job_id] if job_id else [])
                for name, job_id in members]
    return statuses + [run_status(p, f"{prefix}{p.name}") for p in _children(sweep)
                       if p.name not in named and is_run_folder(p)]


def _children(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
    except OSError:
        return []


def list_runs(folder: str | os.PathLike = "runs") -> list[RunStatus]:
    """Every run folder directly under ``folder`` or one level further down (a sweep's members, named
    ``<sweep>/<member>``), by name; ``folder`` itself when it is a run folder or a sweep folder."""
    folder = Path(folder)
    if (folder / SWEEP_MANIFEST).is_file():
        return _sweep_members(folder, "")
    if is_run_folder(folder):
        return [run_status(folder)]
    if not folder.is_dir():
        raise FramecastError(f"{folder}: no such folder (give the folder holding the run folders, e.g. runs)")
    statuses: list[RunStatus] = []
    for child in _children(folder):
        if (child / SWEEP_MANIFEST).is_file():
            statuses += _sweep_members(child, f"{child.name}/")
        elif is_run_folder(child):
            statuses.append(run_status(child))
        else:
            statuses += [run_status(p, f"{child.name}/{p.name}") for p in _children(child) if is_run_folder(p)]
    return statuses


def _loss(status: RunStatus) -> str:
    if status.best_val_loss is None:
        return "-"
    return f"{status.best_val_loss:.5g} (epoch {status.best_epoch})"


def _epochs(status: RunStatus) -> str:
    done = "?" if status.epochs_done is None else str(status.epochs_done)
    total = "?" if status.epochs_total is None else str(status.epochs_total)
    return f"{done}/{total}"


def format_runs(statuses: list[RunStatus], folder: str | os.PathLike) -> str:
    """The table ``main.py runs`` prints, with what the states mean under it."""
    if not statuses:
        return f"no run folders in {folder} (a run folder holds {', '.join(RUN_FILES)})"
    header = ("run", "family", "state", "epochs", "best val loss", "parameters", "detail")
    rows = [(s.name, s.family, s.state, _epochs(s), _loss(s),
             f"{s.parameters:,}" if s.parameters is not None else "-", s.detail) for s in statuses]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1]
             for row in [header, *rows]]
    lines.append("")
    lines += [f"{state}: {meaning}" for state, meaning in STATES.items() if any(s.state == state for s in statuses)]
    return "\n".join(line.rstrip() for line in lines)


def run(folder: str | os.PathLike = "runs", as_json: bool = False) -> str:
    """The report for ``folder``: the table, or JSON (one object per run) with ``as_json``."""
    statuses = list_runs(folder)
    if as_json:
        return json.dumps([s.to_dict() for s in statuses], indent=2)
    return format_runs(statuses, folder)
