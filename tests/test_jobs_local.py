"""The jobs layer without Slurm: submitit's local executor runs the same stages on this machine."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import config_from_dict, load_config
from core.errors import FramecastError
from jobs import submit
from jobs.wait import wait_jobs
from tests import slurm_helpers

REPO = Path(__file__).resolve().parent.parent
PIPELINE_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return slurm_helpers.make_tiny_data(tmp_path_factory.mktemp("local-data") / "shapes")


@pytest.fixture
def no_slurm_path(tmp_path) -> str:
    """A PATH without sbatch (nor anything else): what a laptop without Slurm looks like to `auto`."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


def test_auto_executor_runs_jobs_here_when_sbatch_is_absent(tmp_path, monkeypatch, no_slurm_path):
    cfg = config_from_dict({"run": {"out_dir": str(tmp_path)}})
    monkeypatch.setenv("PATH", no_slurm_path)
    assert cfg.slurm.executor == "auto"
    assert submit.resolve_executor(None, cfg) == "local"
    assert submit.make_executor(cfg, "train").cluster == "local"
    with pytest.raises(FramecastError, match="sbatch is not on PATH"):
        submit.resolve_executor("slurm", cfg)


def _submit_cli(config_file: Path, path: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "main.py", "submit", "pipeline", "--config", str(config_file), "--wait",
         "--timeout", str(PIPELINE_TIMEOUT_S), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=PIPELINE_TIMEOUT_S + 60, env={"PATH": path},
    )


def test_local_pipeline_ends_with_png_frames(data_root, tmp_path, no_slurm_path):
    """`main.py submit pipeline --wait` with no Slurm: the stages run one after another, here."""
    config_file = tmp_path / "local.yaml"
    config_file.write_text(yaml.safe_dump(slurm_helpers.tiny_job_values(data_root, tmp_path / "runs", "local", executor="auto")))
    done = _submit_cli(config_file, no_slurm_path, "predict.shards=2")
    assert done.returncode == 0, done.stdout + done.stderr
    # train, 2 predict shards, evaluate, convert: ids and log paths
    expected = submit.pipeline_job_count(load_config(config_file, ["predict.shards=2"]))
    assert expected == 5
    assert done.stdout.count("(local)") == expected
    assert done.stdout.count(" COMPLETED at ") == expected and "log: " in done.stdout
    pngs = tmp_path / "runs" / "local" / "png" / "hidden"
    videos = sorted(p.name for p in pngs.iterdir())
    assert videos == sorted(p.name for p in (data_root / "hidden").iterdir())
    assert all(len(list((pngs / v).glob("image_*.png"))) == 4 for v in videos)
    evaluation = tmp_path / "runs" / "local" / "eval" / "val"
    assert {"report.json", "metrics_vs_lead_time.png", "samples.png", "samples.gif"} <= {
        p.name for p in evaluation.iterdir()}
    # It ends as the demo does: where every output is, then the scores against the baselines.
    tail = done.stdout[done.stdout.index("all jobs completed"):]
    assert f"predictions:  {tmp_path / 'runs' / 'local' / 'preds' / 'hidden.npy'}" in tail, tail
    assert f"PNG frames:   {pngs}" in tail and f"evaluation:   {evaluation / 'report.json'}" in tail, tail
    assert "copy-last" in tail and "vs copy-last: MSE" in tail, tail
    # The log announced first for each job ("log: ...") holds what its stage logged: training's progress,
    # and what predict and convert wrote.
    logs = dict(re.findall(r"^submitted (\S+): job \S+ \(local\)\n  log: (\S+)$", done.stdout, re.MULTILINE))
    assert set(logs) == {"train", "predict[0/2]", "predict[1/2]", "evaluate", "convert"}, done.stdout
    assert "steps run in this process" in Path(logs["train"]).read_text()
    assert "predict[1/2] wrote " in Path(logs["predict[1/2]"]).read_text()
    assert f"convert wrote {pngs}" in Path(logs["convert"]).read_text()


def test_local_pipeline_stops_at_the_stage_that_failed(tmp_path, no_slurm_path):
    config_file = tmp_path / "broken.yaml"
    config_file.write_text(yaml.safe_dump(slurm_helpers.tiny_job_values(tmp_path / "no-such-data", tmp_path / "runs", "broken", executor="auto")))
    done = _submit_cli(config_file, no_slurm_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("submitted ") == 1  # predict, evaluate and convert were never submitted
    failed = [line for line in done.stdout.splitlines() if "(train) FAILED" in line]
    assert failed and "no-such-data" in failed[0], done.stdout  # the stage's own one-line error
    assert "pipeline stopped" in done.stderr


def test_waiting_gives_up_at_the_timeout_and_leaves_the_job_running(tmp_path):
    cfg = config_from_dict({"run": {"out_dir": str(tmp_path)}, "slurm": {"executor": "local", "time_min": 5}})
    job = submit.make_executor(cfg, "predict").submit(slurm_helpers.sleep, 120)
    try:
        started = time.monotonic()
        [end] = wait_jobs([job], timeout_s=1, poll_s=0.2)
        assert end.state == "WAIT_TIMEOUT" and not end.ok
        assert time.monotonic() - started < 10
        assert not job.done()
    finally:
        job.cancel()
    [end] = wait_jobs([job], timeout_s=30, poll_s=0.2)
    assert end.state != "COMPLETED" and not end.ok


def test_job_logging_writes_each_submitit_line_once_per_log():
    """After a job set up its logging (the stages' handler on the root logger), submitit's own lines (the
    time-limit / preemption and requeue messages come then) are not written a second time through it."""
    code = ("import logging, submitit\n"
            "from jobs.stage_job import setup_job_logging\n"
            "setup_job_logging()\n"
            "logging.getLogger('submitit').warning('requeued-marker')\n"
            "logging.getLogger('submitit').info('signal-marker')\n"
            "logging.getLogger('stages.train').info('stage-marker')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for stream in (done.stdout, done.stderr):  # the job's .out and .err
        assert stream.count("requeued-marker") == 1, (done.stdout, done.stderr)
    assert done.stdout.count("signal-marker") == 1 and "signal-marker" not in done.stderr
    assert done.stderr.count("stage-marker") == 1 and "stage-marker" not in done.stdout  # the stages: .err
