"""The jobs layer against a real Slurm (the one-node cluster of jobs/local_slurm.sh; .ci/run starts it).

Skipped, with the reason, where no Slurm node is idle.  Every wait has a hard timeout and every job a
test submits is cancelled at the end of the test if it is still queued or running.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import config_from_dict
from jobs import submit
from jobs.wait import wait_jobs
from tests import slurm_helpers
from tests.slurm_helpers import cleanup, data_root  # noqa: F401 (fixtures)
from tests.slurm_helpers import slurm_state, submit_toy, submitted_ids, tiny_job_values, wait_slurm_job

REPO = Path(__file__).resolve().parent.parent

pytestmark = slurm_helpers.slurm_marks()

# Hard limits on waiting, generous for a loaded 2-core CI machine.
JOB_TIMEOUT_S = 150
PIPELINE_TIMEOUT_S = 240
REQUEUE_TIMEOUT_S = 240
POLL_S = 0.5


def _track(cleanup: list[str], jobs) -> None:
    cleanup.extend(str(job.job_id) for job in jobs)


def _describe(ends) -> str:
    return "\n".join(end.describe() for end in ends)


def test_pipeline_on_slurm_ends_with_png_frames(data_root, tmp_path, cleanup):
    """`submit pipeline`: train -> 2 predict shards (a job array) -> convert (merges), and evaluate after
    train, chained afterok."""
    values = tiny_job_values(data_root, tmp_path / "runs", "pipeline", predict={"batch_size": 2, "shards": 2})
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [sys.executable, "main.py", "submit", "pipeline", "--config", str(config_file), "--wait",
         "--timeout", str(PIPELINE_TIMEOUT_S)],
        cwd=REPO, capture_output=True, text=True, timeout=PIPELINE_TIMEOUT_S + 60,
    )
    ids = submitted_ids(done.stdout)
    cleanup.extend(ids)
    assert done.returncode == 0, done.stdout + done.stderr
    # train, two array tasks <array>_0 and <array>_1, evaluate, convert; each printed with its log paths.
    expected = submit.pipeline_job_count(config_from_dict(values))
    assert expected == 5
    assert len(ids) == expected and ids[1].endswith("_0") and ids[2].endswith("_1"), done.stdout
    assert done.stdout.count("COMPLETED") == expected and "log: " in done.stdout
    pngs = tmp_path / "runs" / "pipeline" / "png" / "hidden"
    videos = sorted(p.name for p in pngs.iterdir())
    assert videos == sorted(p.name for p in (data_root / "hidden").iterdir())
    for video in videos:
        frames = sorted(p.name for p in (pngs / video).glob("*.png"))
        assert len(frames) == 4, (video, frames)  # t_out predicted frames each
    report = json.loads((tmp_path / "runs" / "pipeline" / "eval" / "val" / "report.json").read_text())
    assert report["split"] == "val" and report["checkpoint"].endswith("best.pt")


def _sbatch_config(data_root: Path, tmp_path: Path, name: str, **sections) -> str:
    """The path of ``tmp_path/<name>.yaml``, the tiny config ``name`` written for ``CONFIG=... sbatch``."""
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(tiny_job_values(data_root, tmp_path / "runs", name, **sections)))
    return str(config_file)


def _small(tmp_path: Path) -> list[str]:
    """sbatch options overriding the SBATCH files' resources (no GPU here), the log in ``tmp_path``."""
    return ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=1G", "--time=10", f"--output={tmp_path}/%j.out"]


def _sbatch(script: str, env: dict, *options: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *options, script], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def test_sbatch_files_train_predict_shards_and_convert(data_root, tmp_path, cleanup):
    """By hand: `sbatch jobs/train.SBATCH` -> `sbatch --array=0-1 jobs/pred.SBATCH` -> convert.SBATCH.

    Resources are overridden on the sbatch command line (no GPU here), the config comes from CONFIG.
    """
    env = {"CONFIG": _sbatch_config(data_root, tmp_path, "sbatch"), "OVERRIDES": "train.epochs=1"}
    small = _small(tmp_path)
    train = _sbatch("jobs/train.SBATCH", env, *small)
    cleanup.append(train)
    predict = _sbatch("jobs/pred.SBATCH", env, *small, "--array=0-1", f"--dependency=afterok:{train}")
    cleanup.append(predict)
    convert = _sbatch("jobs/convert.SBATCH", {**env, "SHARDS": "2"}, *small[1:],
                      f"--dependency=afterok:{predict}")
    cleanup.append(convert)

    state = wait_slurm_job(train, timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    assert state == "COMPLETED", (tmp_path / f"{train}.out").read_text()
    from core.checkpoint import load_checkpoint

    best = tmp_path / "runs" / "sbatch" / "best.pt"
    assert load_checkpoint(best)["progress"]["epoch"] == 1  # trained, with the OVERRIDES applied

    state = wait_slurm_job(convert, timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert state == "COMPLETED", logs
    assert sorted(p.name for p in (tmp_path / "runs" / "sbatch" / "preds").glob("*.npy")) == [
        "hidden.npy", "hidden.shard0of2.npy", "hidden.shard1of2.npy"]
    pngs = tmp_path / "runs" / "sbatch" / "png" / "hidden"
    assert len(list(pngs.glob("video_*/image_*.png"))) == 3 * 4  # 3 hidden videos x t_out frames


def test_stage_sbatch_runs_any_declared_stage(data_root, tmp_path, cleanup):
    """By hand: `STAGE=evaluate ARGS=... sbatch jobs/stage.SBATCH` after train.SBATCH: no evaluate script needed."""
    env = {"CONFIG": _sbatch_config(data_root, tmp_path, "stage"), "OVERRIDES": "train.epochs=1"}
    small = _small(tmp_path)
    train = _sbatch("jobs/train.SBATCH", env, *small)
    cleanup.append(train)
    evaluate = _sbatch("jobs/stage.SBATCH", {**env, "STAGE": "evaluate", "ARGS": "--max-videos 1 --split val"},
                       *small, f"--dependency=afterok:{train}")
    cleanup.append(evaluate)
    state = wait_slurm_job(evaluate, timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert state == "COMPLETED", logs
    report = json.loads((tmp_path / "runs" / "stage" / "eval" / "val" / "report.json").read_text())
    assert report["videos"] == 1 and report["split"] == "val"  # ARGS reached the stage's flags


def test_a_new_stage_runs_on_slurm_through_submit(tmp_path, cleanup):
    """The toy stage (declared in tests/toy_stage.py only): `submit toy` makes a 2-task sbatch array."""
    values = tiny_job_values(tmp_path, tmp_path / "runs", "toy")
    done, ids = submit_toy(values, tmp_path, cleanup, JOB_TIMEOUT_S, "predict.shards=2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1"), done.stdout
    logs = sorted((tmp_path / "runs" / "toy" / "jobs").glob("*/*_log.out"))
    lines = sorted(line for log in logs for line in log.read_text().splitlines() if line.startswith("toy "))
    assert lines == ["toy toy shard 0/2 version checkout extra None", "toy toy shard 1/2 version checkout extra None"]


def test_train_sbatch_requeues_itself_at_the_time_limit_signal_and_resumes(data_root, tmp_path, cleanup):
    """train.SBATCH: USR2 to the batch shell (--signal=B:USR2@...) -> train saves mid-epoch -> requeue."""
    epochs = 8
    config_file = _sbatch_config(data_root, tmp_path, "sbatch-requeue", train={"epochs": epochs})
    job_id = _sbatch("jobs/train.SBATCH", {"CONFIG": config_file}, *_small(tmp_path))
    cleanup.append(job_id)
    saved = _saved_epoch(tmp_path / "runs" / "sbatch-requeue" / "last.pt", time.monotonic() + JOB_TIMEOUT_S)
    assert 1 <= saved < epochs
    subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], check=True, timeout=30)

    state = wait_slurm_job(job_id, timeout_s=REQUEUE_TIMEOUT_S, poll_s=POLL_S)
    log = (tmp_path / f"{job_id}.out").read_text()
    assert state == "COMPLETED", log
    assert "restart 1" in log and "resuming" in log, log
    from core.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "runs" / "sbatch-requeue" / "last.pt")["progress"]["epoch"] == epochs


def test_two_task_training_job_is_one_ddp_run(data_root, tmp_path, cleanup):
    """tasks_per_node=2 gives one job whose two tasks are the two ranks of one gloo process group."""
    cfg = config_from_dict(tiny_job_values(data_root, tmp_path / "runs", "ddp", slurm={
        "executor": "slurm", "tasks_per_node": 2, "time_min": 10, "gpus_per_node": 0, "cpus_per_task": 1,
        "mem_gb": 1}))
    job = submit.submit_stage("train", cfg)
    _track(cleanup, [job])
    assert job.num_tasks == 2
    [end] = wait_jobs([job], timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    assert end.ok, _describe([end])
    assert end.result["world_size"] == 2
    assert (tmp_path / "runs" / "ddp" / "best.pt").is_file()
    logs = [job.task(k).paths.stdout.read_text() for k in range(2)]
    assert "task 0 of 2" in logs[0] and "task 1 of 2" in logs[1]


def _val_epochs(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [row["epoch"] for row in rows if row.get("kind") == "val"]


def _saved_epoch(last: Path, deadline: float) -> int:
    """The epoch of the first ``last.pt`` that appears before ``deadline`` (0 if none)."""
    from core.checkpoint import load_checkpoint

    while time.monotonic() < deadline:
        if last.exists():
            return int(load_checkpoint(last)["progress"]["epoch"])  # written atomically: always complete
        time.sleep(POLL_S)
    return 0


# USR2 is what Slurm sends signal_delay_s before the time limit (and on preemption where the cluster
# signals first): submitit calls StageJob.checkpoint() and requeues at once.  `scontrol requeue` is
# what an administrator or a requeueing preemption does: SIGTERM (which submitit ignores), SIGKILL
# a few seconds later (KillWait), then the original call runs again.  Enough epochs (0.15-0.5 s
# each, by machine) that training cannot finish before the requeue takes effect, even when
# Slurm takes a few seconds more than KillWait to kill the step.  Values: (command, epochs).
REQUEUES = {"usr2": (["scancel", "--signal=USR2"], 8), "scontrol": (["scontrol", "requeue"], 80)}


@pytest.mark.parametrize("how", sorted(REQUEUES))
def test_requeued_training_job_resumes_from_its_checkpoint(data_root, tmp_path, cleanup, how):
    """A training job requeued mid-run keeps its id, resumes from last.pt and finishes every epoch once."""
    command, epochs = REQUEUES[how]
    cfg = config_from_dict(tiny_job_values(data_root, tmp_path / "runs", "requeue", train={"epochs": epochs}))
    job = submit.submit_stage("train", cfg)
    _track(cleanup, [job])
    metrics = cfg.run_dir / "metrics.jsonl"
    saved = _saved_epoch(cfg.run_dir / "last.pt", time.monotonic() + JOB_TIMEOUT_S)
    assert saved >= 1, f"no last.pt within {JOB_TIMEOUT_S}s; log: {job.paths.stdout}"
    assert saved < epochs, "training finished before it could be interrupted; give it more epochs"
    subprocess.run([*command, str(job.job_id)], check=True, timeout=30)

    [end] = wait_jobs([job], timeout_s=REQUEUE_TIMEOUT_S, poll_s=POLL_S)
    log = job.paths.stdout.read_text()
    assert end.ok, _describe([end]) + "\n" + log
    assert "restart 1" in log  # the same job id ran a second time
    assert end.result["resumed_from"]["epoch"] >= saved  # from last.pt, not from scratch
    assert end.result["epochs_run"] == epochs
    assert _val_epochs(metrics) == list(range(1, epochs + 1))  # every epoch validated exactly once


def test_requeued_ddp_job_leaves_no_error_in_any_rank_s_log(data_root, tmp_path, cleanup):
    """USR2 to both ranks of a two-task job: rank 0 saves and requeues; rank 1 ends quietly, so that no
    task's log says "Submitted job triggered an exception" for a job that then completed."""
    epochs = 40
    cfg = config_from_dict(tiny_job_values(data_root, tmp_path / "runs", "ddp-requeue", train={"epochs": epochs},
                                           slurm={"executor": "slurm", "tasks_per_node": 2, "time_min": 10,
                                                  "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1}))
    job = submit.submit_stage("train", cfg)
    _track(cleanup, [job])
    saved = _saved_epoch(cfg.run_dir / "last.pt", time.monotonic() + JOB_TIMEOUT_S)
    assert 1 <= saved < epochs, f"last.pt of epoch {saved}; log: {job.paths.stdout}"
    time.sleep(2)  # well into training, on both ranks
    subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True, timeout=30)
    [end] = wait_jobs([job], timeout_s=REQUEUE_TIMEOUT_S, poll_s=POLL_S)
    logs = [job.task(k).paths.stdout.read_text() + job.task(k).paths.stderr.read_text() for k in range(2)]
    assert end.ok, _describe([end]) + "\n" + "\n".join(logs)
    assert all("restart 1" in log for log in logs), logs  # both ranks ran again under the same job id
    assert end.result["epochs_run"] == epochs and _val_epochs(cfg.run_dir / "metrics.jsonl") == list(range(1, epochs + 1))
    for rank, log in enumerate(logs):
        assert "triggered an exception" not in log, f"rank {rank}:\n{log}"


def test_failed_stage_cancels_the_jobs_waiting_on_it(tmp_path, cleanup):
    """A train that fails (missing data) -> predict, evaluate and convert never start and are reported,
    not waited on."""
    values = tiny_job_values(tmp_path / "no-such-data", tmp_path / "runs", "broken")
    jobs = submit.submit_pipeline(config_from_dict(values))
    _track(cleanup, jobs)
    assert len(jobs) == submit.pipeline_job_count(config_from_dict(values)) == 4
    ends = wait_jobs(jobs, timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    assert [end.state for end in ends] == ["FAILED", "CANCELLED", "CANCELLED", "CANCELLED"], _describe(ends)
    assert "no-such-data" in ends[0].detail  # the stage's own one-line error, naming the folder
    assert "never started" in ends[1].detail


def test_slurm_section_reaches_the_job(tmp_path, cleanup):
    """Time, memory, partition, extra sbatch parameters, setup lines and the Python wrapper (a container
    command in real use) all come from the config."""
    values = tiny_job_values(tmp_path, tmp_path / "runs", "params", slurm={
        "executor": "slurm", "time_min": 7, "mem_gb": 1, "gpus_per_node": 0, "cpus_per_task": 1,
        "partition": "debug", "additional_parameters": {"comment": "framecast-test"},
        "setup": ["export FRAMECAST_SETUP_RAN=yes"], "python": f"env FRAMECAST_WRAPPED=yes {sys.executable}"})
    cfg = config_from_dict(values)
    ex = submit.make_executor(cfg, "predict")
    job = ex.submit(slurm_helpers.environment)
    _track(cleanup, [job])
    shown = subprocess.run(["scontrol", "show", "job", str(job.job_id)], capture_output=True, text=True,
                           timeout=30).stdout
    assert "TimeLimit=00:07:00" in shown and "Partition=debug" in shown and "MinMemoryNode=1G" in shown, shown
    assert "Comment=framecast-test" in shown and "JobName=framecast-predict-params" in shown, shown
    [end] = wait_jobs([job], timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    assert end.ok, _describe([end])
    assert end.result["setup"] == "yes" and end.result["wrapped"] == "yes"
    assert str(REPO) in end.result["pythonpath"].split(os.pathsep)


def test_cancelled_job_is_reported_not_waited_for(tmp_path, cleanup):
    """A job killed from outside (scancel) leaves no result file; the waiter still returns at once."""
    cfg = config_from_dict(tiny_job_values(tmp_path, tmp_path / "runs", "cancel"))
    job = submit.make_executor(cfg, "predict").submit(slurm_helpers.sleep, 300)
    _track(cleanup, [job])
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (slurm_state(job.job_id) or ("",))[0] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(POLL_S)
    subprocess.run(["scancel", str(job.job_id)], check=True, timeout=30)
    started = time.monotonic()
    [end] = wait_jobs([job], timeout_s=60, poll_s=POLL_S)
    assert end.state == "CANCELLED" and not end.ok, _describe([end])
    assert time.monotonic() - started < 30


# ----------------------------------------------------------------------------- a real time limit

# A 1-minute limit with the warning 5 s before it.  slurmctld looks at time limits every 30 s
# (PERIODIC_TIMEOUT, on a fixed clock, not from the job's start) and sends the warning at the first
# look that finds at most signal_delay_s + 30 s left, so USR2 comes 5-35 s before the limit: 25-55 s
# into each run, and at least 30 s before the limit's own SIGTERM/SIGKILL (KillWait later).  With a
# delay of 30 s it comes at the first look after the start, 0-30 s into the run (measured here: 3, 5
# and 16 s): little training per run, and a USR2 before Python has installed submitit's handler kills
# the job (SIGUSR2's default action) instead of requeueing it.
TIME_LIMIT_SLURM = {"executor": "slurm", "time_min": 1, "signal_delay_s": 5, "gpus_per_node": 0,
                    "cpus_per_task": 1, "mem_gb": 1, "setup": ["export OMP_NUM_THREADS=1"]}
TIME_LIMIT_LOG_EVERY = 4
# Uninterrupted training time aimed at, as timed here before submitting: more than one run trains
# (at most ~50 s each), so the job runs at least twice (each ~25-55 s, plus ~15 s pending after a
# requeue); 1.8 times what one run can train, since the job may train faster than the calibration did
# (another process was busy then, say). One requeue is the behaviour tested; every further run only
# adds a minute to the suite.
TIME_LIMIT_TRAIN_S = 90
TIME_LIMIT_TIMEOUT_S = 720


def _epoch_seconds(values: dict) -> float:
    """Seconds per epoch of ``values`` trained here, one thread, timed over 2 epochs."""
    import torch

    from stages.train import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calibrate = {**values, "run": {**values["run"], "name": "calibrate"}, "train": {**values["train"], "epochs": 2}}
        return run(config_from_dict(calibrate))["seconds"] / 2
    finally:
        torch.set_num_threads(threads)


def test_training_job_past_its_time_limit_is_requeued_until_done_and_redoes_at_most_a_log_interval(
        tmp_path, cleanup):
    """`submit train` with slurm.time_min=1: Slurm's USR2 before the limit -> last.pt saved at the next
    step -> submitit requeues (same job id, SLURM_RESTART_COUNT + 1) -> resumed, until all epochs are
    done.  Every run's "steps run in this process" line (one log file for all runs) adds up to the
    uninterrupted run's steps plus at most one log interval per requeue, and the losses and weights are
    those of an uninterrupted run of the same config (trained here meanwhile)."""
    from train_helpers import losses, state_digest

    from core.checkpoint import load_checkpoint
    from data.synthetic import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", counts={"train": 40, "val": 2}, height=32, width=48, frames=8,
                               hidden_frames=4, seed=0, workers=1)  # 20 steps an epoch
    values = tiny_job_values(data, tmp_path / "runs", "time-limit", data={"train_splits": ["train"]},
                         train={"log_every_steps": TIME_LIMIT_LOG_EVERY}, slurm=TIME_LIMIT_SLURM)
    epochs = max(20, round(TIME_LIMIT_TRAIN_S / _epoch_seconds(values)))
    values["train"]["epochs"] = epochs
    cfg = config_from_dict(values)
    job = submit.submit_stage("train", cfg, "slurm")
    _track(cleanup, [job])

    # The uninterrupted run of the same config, in a process of its own, while the job runs.
    reference = {**values, "run": {**values["run"], "name": "reference"}}
    reference_file = tmp_path / "reference.yaml"
    reference_file.write_text(yaml.safe_dump(reference))
    with open(tmp_path / "reference.log", "wb") as ref_log:
        ref = subprocess.Popen([sys.executable, "main.py", "train", "--config", str(reference_file)], cwd=REPO,
                               stdout=ref_log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        [end] = wait_jobs([job], timeout_s=TIME_LIMIT_TIMEOUT_S, poll_s=POLL_S)
        ref.wait(timeout=TIME_LIMIT_TIMEOUT_S)
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
    stdout = job.paths.stdout.read_text()  # submitit's own messages and what StageJob prints
    log = stdout + job.paths.stderr.read_text()  # + the stages' logging (which repeats submitit's)
    assert end.ok, _describe([end]) + "\n" + log
    assert ref.returncode == 0, (tmp_path / "reference.log").read_text()
    ref_dir = tmp_path / "runs" / "reference"
    total = load_checkpoint(ref_dir / "last.pt")["progress"]["step"]
    assert total == epochs * 20 and end.result["steps"] == total

    # Requeued by submitit at the time-limit warning: one job id, restart counts 0, 1, ...
    runs = slurm_helpers.job_runs(stdout)
    assert len(runs) >= 2, f"never requeued: the training ({epochs} epochs) ended within one run\n{log}"
    assert runs == [(str(job.job_id), i) for i in range(len(runs))], log
    assert stdout.count("this job is timed-out") == len(runs) - 1, log  # submitit's word for each requeue
    assert stdout.count(f"Requeued job {job.job_id}") == len(runs) - 1, log

    # Work redone after the requeues: at most one log interval each.
    steps = slurm_helpers.steps_run(log)
    assert steps[0][1] == 0 and steps[-1][2] == total, steps
    for (_, _, stopped), (_, resumed, _) in itertools.pairwise(steps):
        assert stopped - TIME_LIMIT_LOG_EVERY <= resumed <= stopped, steps  # never skips, redoes < 1 interval
    executed = sum(n for n, _, _ in steps)
    assert total <= executed <= total + TIME_LIMIT_LOG_EVERY * (len(runs) - 1), (steps, runs)

    # ... and the run is the uninterrupted one: the same records of metrics.jsonl, the same weights.
    assert losses(cfg.run_dir) == losses(ref_dir)
    for name in ("last.pt", "best.pt"):
        ours, theirs = load_checkpoint(cfg.run_dir / name), load_checkpoint(ref_dir / name)
        assert state_digest(ours["model"]) == state_digest(theirs["model"]), name


def test_mask_pipeline_on_slurm_trains_the_segmenter_beside_and_hands_off_masks(data_root, tmp_path, cleanup):
    """segment.pipeline: the segmenter trains beside the forecaster (no dependency), segment after
    both, convert after predict and segment (mask PNGs beside the frames), evaluate scores the routes."""
    values = tiny_job_values(data_root, tmp_path / "runs", "masks",
                         segment={"pipeline": True, "route": "frames", "base_channels": 8, "levels": 2,
                                  "norm_groups": 4, "frames_per_video": 2},
                         evaluate={"routes": ["frames"]}, data={"num_classes": 25})
    cfg = config_from_dict(values)
    jobs = submit.submit_pipeline(cfg)
    _track(cleanup, jobs)
    assert len(jobs) == submit.pipeline_job_count(cfg) == 6
    ends = wait_jobs(jobs, timeout_s=PIPELINE_TIMEOUT_S, poll_s=POLL_S)
    assert all(end.ok for end in ends), _describe(ends)
    run_dir = tmp_path / "runs" / "masks"
    assert (run_dir / "segmenter" / "best.pt").is_file() and (run_dir / "seg" / "hidden.frames.npy").is_file()
    for video in (data_root / "hidden").iterdir():
        assert len(list((run_dir / "png" / "hidden" / video.name).glob("mask_*.png"))) == 1  # the last future frame
    report = json.loads((run_dir / "eval" / "val" / "masks_report.json").read_text())
    assert report["routes"] == ["frames", "copy_last", "oracle"]
