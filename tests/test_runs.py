"""``main.py runs``: running (a live lock holder), finished, stopped and failed (killed mid-run) runs
are told apart; a run trained with ``run.out_dir: ${VAR}/runs`` keeps that text in its files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from core.config import config_from_dict
from core.runlock import RunLock
from stages import registry
from jobs.runs import list_runs, run_status

REPO = Path(__file__).resolve().parent.parent
VAR = "FRAMECAST_TEST_ROOT"
KILL_TIMEOUT_S = 180


def tiny_values(data_root: Path, out_dir: str, name: str, **train) -> dict:
    return {
        "run": {"name": name, "out_dir": out_dir, "device": "cpu"},
        "data": {"root": str(data_root), "train_splits": ["train"], "t_in": 4, "t_out": 4, "num_workers": 0},
        "model": {"family": "encoder_forecaster", "encoder_forecaster": {
            "cell": "gru", "stem_channels": 4, "hidden_channels": [4, 4], "strides": [1, 2], "kernel_size": 3,
            "norm_groups": 2}},
        "train": {"epochs": 2, "batch_size": 2, "lr": 3e-3, "log_every_steps": 1, "early_stop_patience": 0,
                  **train},
    }


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from data.synthetic import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("runs-data") / "data",
                               counts={"train": 4, "val": 2, "unlabeled": 0, "hidden": 0}, height=16, width=24,
                               frames=8, hidden_frames=4, seed=0, workers=1)


def test_runs_tells_running_finished_stopped_and_failed_apart(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv(VAR, str(tmp_path))
    runs = tmp_path / "runs"

    # finished, through the stage registry (as the CLI and jobs run it): ${VAR} expanded for the run
    finished = config_from_dict(tiny_values(data_root, f"${{{VAR}}}/runs", "finished"))
    summary = registry.run_stage("train", finished)
    assert summary["stopped"] == "completed"
    saved = yaml.safe_load((runs / "finished" / "config.yaml").read_text())
    assert saved["run"]["out_dir"] == f"${{{VAR}}}/runs"  # kept as written, in config.yaml ...
    state = torch.load(runs / "finished" / "last.pt", weights_only=True)
    assert state["config"]["run"]["out_dir"] == f"${{{VAR}}}/runs"  # ... and in the checkpoint

    # stopped early: lr 0 never improves after the first validation; patience 1
    registry.run_stage("train", config_from_dict(tiny_values(data_root, str(runs), "stopped", epochs=5, lr=0.0,
                                                             early_stop_patience=1, schedule="constant")))

    # failed: a training killed (SIGKILL) mid-run leaves last.pt of epoch 1 and its lock behind
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(tiny_values(data_root, str(runs), "killed", epochs=500)))
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    trainer = subprocess.Popen([sys.executable, str(REPO / "main.py"), "train", "--config", str(config)], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not (runs / "killed" / "last.pt").exists() and time.monotonic() < deadline and trainer.poll() is None:
        time.sleep(0.2)
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(timeout=30)
    assert (runs / "killed" / "run.lock").exists() and (runs / "killed" / "last.pt").exists()

    # running: a live holder of the lock (this process)
    (runs / "live").mkdir()
    (runs / "live" / "config.yaml").write_text((runs / "finished" / "config.yaml").read_text())
    (runs / "lr-find" / "finished").mkdir(parents=True)  # lr-find's folder is not a run
    with RunLock(runs / "live", stale_s=600):
        statuses = {s.name: s for s in list_runs(runs)}
        cli = subprocess.run([sys.executable, str(REPO / "main.py"), "runs", str(runs)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert sorted(statuses) == ["finished", "killed", "live", "stopped"]

    done = statuses["finished"]
    assert (done.state, done.family, done.epochs_done, done.epochs_total) == ("finished", "encoder_forecaster", 2, 2)
    progress = state["progress"]
    assert (done.best_val_loss, done.best_epoch) == (progress["best_val_loss"], progress["best_epoch"])
    assert done.parameters == state["parameters"] > 0

    stopped = statuses["stopped"]
    assert (stopped.state, stopped.detail, stopped.epochs_total) == ("stopped", "early_stop", 5)
    assert stopped.epochs_done == 2 and stopped.best_epoch == 1

    killed = statuses["killed"]
    assert killed.state == "failed" and killed.epochs_total == 500 and 1 <= killed.epochs_done < 500
    assert "without a stop reason" in killed.detail and f"lock left by pid {trainer.pid}" in killed.detail

    live = statuses["live"]
    assert live.state == "running" and f"pid {os.getpid()}" in live.detail and live.epochs_done == 0

    assert cli.returncode == 0, cli.stderr
    lines = {line.split()[0]: line for line in cli.stdout.splitlines() if line.strip()}
    assert lines["finished"].split()[2:4] == ["finished", "2/2"]
    assert lines["killed"].split()[2] == "failed" and lines["live"].split()[2] == "running"
    assert "failed: no live holder" in cli.stdout  # what the states mean is printed with them


def test_a_run_without_a_checkpoint_and_no_holder_is_failed(tmp_path):
    run = tmp_path / "runs" / "early"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"family": "simvp"}, "train": {"epochs": 7}}))
    status = run_status(run)
    assert (status.state, status.family, status.epochs_done, status.epochs_total) == ("failed", "simvp", 0, 7)
    assert "before its first checkpoint" in status.detail


def test_runs_lists_every_readable_run_and_names_the_unreadable_ones(tmp_path):
    runs = tmp_path / "runs"
    for name, content in {"good": yaml.safe_dump({"model": {"family": "simvp"}, "train": {"epochs": 7}}).encode(),
                          "latin1": "model:\n  family: caf\xe9\n".encode("latin-1"),
                          "binary": bytes(range(256)), "broken": b"model: [\n", "scalar": b"model: 5\n"}.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_bytes(content)
    by_name = {s.name: s for s in list_runs(runs)}
    assert sorted(by_name) == ["binary", "broken", "good", "latin1", "scalar"]
    assert by_name["good"].family == "simvp" and "unreadable" not in by_name["good"].detail
    assert "config.yaml unreadable (not UTF-8 text)" in by_name["latin1"].detail
    assert "config.yaml unreadable (not UTF-8 text)" in by_name["binary"].detail
    assert "config.yaml unreadable (not valid YAML" in by_name["broken"].detail
    assert by_name["scalar"].family == "?"
    cli = subprocess.run([sys.executable, str(REPO / "main.py"), "runs", str(runs)], capture_output=True, text=True)
    assert cli.returncode == 0 and "binary" in cli.stdout and "good" in cli.stdout


def test_an_unreadable_lock_is_named_and_not_shown_as_running(tmp_path):
    from core.errors import FramecastError

    run = tmp_path / "runs" / "locked"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"family": "simvp"}, "train": {"epochs": 7}}))
    (run / "run.lock").write_bytes(b'{"host": "a", "pi')  # torn, and fresh
    status = run_status(run)
    assert status.state == "failed" and "run.lock is unreadable (JSONDecodeError)" in status.detail
    with pytest.raises(FramecastError) as caught:
        RunLock(run, stale_s=600).acquire()
    message = str(caught.value)
    assert message.startswith(f"{run / 'run.lock'}: run.lock is unreadable (JSONDecodeError)")
    assert "run.lock_stale_s=600 s" in message and "1970" not in message and "pid -1" not in message


def test_runs_nested_one_level_down_are_listed_with_their_folder(tmp_path):
    """A folder of run folders inside the runs folder (a sweep's members, a group of runs) is listed as
    ``<folder>/<run>``; a sweep folder (sweep.json) lists the members it submitted, started or not."""
    runs = tmp_path / "runs"
    for relative, family in (("top", "unet"), ("group/a", "simvp"), ("group/b", "predrnn"),
                             ("lrsweep/lr=1e-3,seed=0", "convlstm")):
        (runs / relative).mkdir(parents=True)
        (runs / relative / "config.yaml").write_text(yaml.safe_dump({"model": {"family": family},
                                                                     "train": {"epochs": 3}}))
    (runs / "lrsweep" / "compare").mkdir()  # not a run
    (runs / "lrsweep" / "sweep.json").write_text(json.dumps({"runs": [
        {"name": "lr=1e-3,seed=0", "job_id": ""}, {"name": "lr=1e-3,seed=1", "job_id": ""}]}))
    (runs / "lr-find" / "top").mkdir(parents=True)  # lr-find's folder holds no run
    statuses = {s.name: s for s in list_runs(runs)}
    assert sorted(statuses) == ["group/a", "group/b", "lrsweep/lr=1e-3,seed=0", "lrsweep/lr=1e-3,seed=1", "top"]
    assert statuses["group/b"].family == "predrnn" and statuses["top"].family == "unet"
    assert statuses["lrsweep/lr=1e-3,seed=0"].family == "convlstm"
    unstarted = statuses["lrsweep/lr=1e-3,seed=1"]
    assert unstarted.state == "failed" and "before it made the run folder" in unstarted.detail
    assert [s.name for s in list_runs(runs / "lrsweep")] == ["lr=1e-3,seed=0", "lr=1e-3,seed=1"]
