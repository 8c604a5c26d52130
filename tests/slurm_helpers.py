"""Tiny importable callables for testing the jobs machinery (submitted callables must be importable),
tiny configs, waiting for Slurm jobs submitted without submitit (``sbatch jobs/*.SBATCH``), and what the
real-Slurm test modules share: their marks, a data set, and cancelling what a test left queued."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import yaml

from jobs.wait import COMMAND_TIMEOUT_S, NEVER_SATISFIED, POLL_S, SLURM_ACTIVE_STATES, UNKNOWN_GRACE_S, slurm_states

REPO = Path(__file__).resolve().parents[1]


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str) -> None:
    raise RuntimeError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def environment() -> dict:
    env = submitit.JobEnvironment()
    return {"job_id": env.job_id, "rank": env.global_rank, "tasks": env.num_tasks,
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pythonpath": os.environ.get("PYTHONPATH", ""),
            "cwd": os.getcwd(), "setup": os.environ.get("FRAMECAST_SETUP_RAN"),
            "wrapped": os.environ.get("FRAMECAST_WRAPPED")}


def make_tiny_data(root: Path) -> Path:
    """Eleven 8-frame 32x48 videos across the four splits: enough for a whole pipeline in seconds."""
    from data.synthetic import make_shapes_dataset

    return make_shapes_dataset(root, counts={"train": 4, "val": 2, "unlabeled": 2, "hidden": 3}, height=32,
                               width=48, frames=8, hidden_frames=4, seed=0, workers=1)


def tiny_job_values(data_root: Path, out_dir: Path, name: str, executor: str = "slurm", **sections) -> dict:
    """A config dict small enough for a 2-core machine: 8-frame 32x48 videos, two 8-channel levels."""
    from tests.tiny_models import model_section

    values = {
        "run": {"name": name, "out_dir": str(out_dir), "device": "cpu"},
        "data": {"root": str(data_root), "t_in": 4, "t_out": 4, "num_workers": 0},
        "model": model_section("encoder_forecaster"),
        "train": {"epochs": 2, "batch_size": 2, "lr": 3e-3, "log_every_steps": 1, "early_stop_patience": 0},
        "predict": {"batch_size": 2},
        "convert": {"workers": 1},
        "slurm": {"executor": executor, "time_min": 10, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1},
    }
    for section, updates in sections.items():
        values[section] = {**values.get(section, {}), **updates}
    return values


def slurm_state(job_id: str) -> tuple[str, str] | None:
    """(state, pending reason) of one Slurm job; None when neither squeue nor sacct knows it."""
    return slurm_states([job_id]).get(job_id)


def wait_slurm_job(job_id: str, timeout_s: float, poll_s: float = POLL_S) -> str:
    """Final Slurm state of a job submitted without submitit (e.g. ``sbatch jobs/train.SBATCH``).

    Cancels and returns "CANCELLED" for a job whose dependency can never be satisfied;
    returns "WAIT_TIMEOUT" (job left running) when ``timeout_s`` passes first.
    """
    started = time.monotonic()
    unknown_since: float | None = None
    while time.monotonic() - started < timeout_s:
        info = slurm_state(job_id)
        now = time.monotonic()
        if info is None:
            unknown_since = unknown_since or now
            if now - unknown_since >= UNKNOWN_GRACE_S:
                return "UNKNOWN"
        else:
            unknown_since = None
            state, reason = info
            if state == "PENDING" and reason == NEVER_SATISFIED:
                subprocess.run(["scancel", job_id], capture_output=True, timeout=COMMAND_TIMEOUT_S)
                return "CANCELLED"
            if state not in SLURM_ACTIVE_STATES:
                return state
        time.sleep(poll_s)
    return "WAIT_TIMEOUT"


def slurm_unavailable() -> str | None:
    """Why the Slurm tests cannot run here, or None when a node is ready."""
    for tool in ("sinfo", "sbatch", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH (start a one-node Slurm with: sudo jobs/local_slurm.sh)"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    if done.returncode != 0:
        return f"sinfo failed: {done.stderr.strip()}"
    states = done.stdout.split()
    # A node busy with other jobs still counts: ours queue behind them.  Down or drained ones do not.
    if not any(s in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable Slurm node (sinfo states: {states or 'none'})"
    return None


def slurm_marks() -> list[pytest.MarkDecorator]:
    """``pytestmark`` of a module of real-Slurm tests: marked ``slurm``, skipped with the reason where
    no Slurm node is ready."""
    reason = slurm_unavailable()
    return [pytest.mark.slurm, pytest.mark.skipif(reason is not None, reason=reason or "")]


# Fixtures for the modules that import them: ``make_tiny_data``'s videos made once per module, and a
# list a test adds the ids of its jobs to.
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("slurm-data") / "shapes")


@pytest.fixture
def cleanup():
    """Collects job ids; cancels whatever is still queued or running when the test ends."""
    ids: list[str] = []
    yield ids
    for job_id in ids:
        info = slurm_state(job_id)
        if info is not None and info[0] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


def submitted_ids(stdout: str) -> list[str]:
    """The job ids ``main.py submit`` printed ("submitted <stage> job <id> ..."), in order."""
    return [line.split("job ")[1].split()[0] for line in stdout.splitlines() if line.startswith("submitted")]


def submit_toy(values: dict, tmp_path: Path, cleanup: list[str], timeout_s: float, *overrides: str
               ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``main.py submit toy --executor slurm --wait`` of the config ``values`` (written to tmp_path/toy.yaml),
    the toy stage (tests/toy_stage.py) declared first: the finished process and the job ids it printed,
    which are added to ``cleanup``."""
    config_file = tmp_path / "toy.yaml"
    config_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [sys.executable, "-c", "import tests.toy_stage, runpy; runpy.run_path('main.py', run_name='__main__')",
         "submit", "toy", "--config", str(config_file), "--executor", "slurm", "--wait", "--timeout",
         str(timeout_s), *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=timeout_s + 60,
    )
    ids = submitted_ids(done.stdout)
    cleanup.extend(ids)
    return done, ids


def job_runs(log: str) -> list[tuple[str, int]]:
    """(job id, SLURM_RESTART_COUNT) of every run of a stage job, from the line each run prints first.

    submitit opens the log files with ``--open-mode=append``: every run of a requeued job (same id)
    appends to the same ``<id>_0_log.out`` / ``_log.err``.
    """
    import re

    return [(job_id, int(restart)) for job_id, restart in
            re.findall(r"^framecast \S+: job (\S+), task 0 of \d+, restart (\d+),", log, flags=re.MULTILINE)]


def steps_run(log: str) -> list[tuple[int, int, int]]:
    """(steps, first step, last step) of each run of a training job: the line the train stage logs at
    exit, also when it stops for a requeue."""
    import re

    return [(int(n), int(a), int(b)) for n, a, b in
            re.findall(r"steps run in this process: (\d+) \(step (\d+) to (\d+)\)", log)]
