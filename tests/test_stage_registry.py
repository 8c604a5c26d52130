"""The stage registry: each stage declared once, and the CLI, the submit command, the job wrapper and the
pipeline derived from it.  A toy stage (tests/toy_stage.py) declared outside stages/ runs through all
of them with nothing else added.  No Slurm here (tests/test_slurm.py runs the toy stage through sbatch)."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import config_from_dict
from jobs import submit
from jobs.stage_job import StageJob
from jobs.wait import wait_jobs
from stages import registry
from tests import toy_stage

REPO = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 120
POLL_S = 0.2
# Runs main.py as `python main.py ...` does, with the toy stage declared first (as a plug-in would).
WITH_TOY = "import tests.toy_stage, runpy; runpy.run_path('main.py', run_name='__main__')"


def toy_values(out_dir: Path, name: str = "toy", executor: str = "local", **sections) -> dict:
    values = {
        "run": {"name": name, "out_dir": str(out_dir)},
        "data": {"root": str(out_dir / "no-data")},
        "slurm": {"executor": executor, "time_min": 10, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1},
    }
    for section, updates in sections.items():
        values[section] = {**values.get(section, {}), **updates}
    return values


def run_main(*args: str, toy: bool = False, cwd: Path = REPO, timeout: float = JOB_TIMEOUT_S
             ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITH_TOY] if toy else [sys.executable, "main.py"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_each_builtin_stage_is_declared_once_with_its_flags_and_resources():
    names = [stage.name for stage in registry.BUILTIN]
    assert names == ["train", "predict", "merge", "convert", "segment", "evaluate"]
    assert registry.get("predict").flag_keys() == {
        "checkpoint": "predict.checkpoint", "split": "predict.split", "out": "predict.out"}
    assert registry.get("evaluate").flag_keys() == {
        "checkpoint": "predict.checkpoint", "split": "evaluate.split", "out": "evaluate.out",
        "max_videos": "evaluate.max_videos"}
    assert registry.get("predict").shards == "predict.shards" and registry.get("predict").join == "merge"
    slurm = config_from_dict({"slurm": {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4}}).slurm
    wanted = {
        "train": {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4},
        "predict": {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1},
        "evaluate": {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1},
        "merge": {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0},
        "convert": {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0},
        "segment": {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1},
    }
    assert {name: registry.get(name).resources.request(slurm) for name in names} == wanted
    no_gpus = config_from_dict({"slurm": {"gpus_per_node": 0}}).slurm
    assert registry.get("predict").resources.request(no_gpus)["gpus_per_node"] == 0


def test_declaring_a_stage_twice_differently_is_an_error():
    assert registry.register(toy_stage.TOY) is toy_stage.TOY  # the same declaration again: nothing changes
    with pytest.raises(ValueError, match="already declared"):
        registry.register(registry.Stage("toy", "another toy", "tests.toy_stage:run", registry.ONE_GPU))
    with pytest.raises(ValueError, match="unknown stage"):
        registry.get("no-such-stage")


def test_run_functions_are_imported_only_when_a_stage_runs():
    """`main.py --help` lists every stage without importing one (nor torch): it stays fast."""
    code = ("import sys, runpy\nsys.argv = ['main.py', '--help']\n"
            "try:\n    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules\n"
            "             if m == 'torch' or m.startswith('stages.') and m != 'stages.registry'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    for stage in registry.BUILTIN:
        assert f"    {stage.name} " in done.stdout or f"    {stage.name}\n" in done.stdout, done.stdout


def test_cli_and_submit_commands_come_from_the_registry():
    listed = run_main("submit", "--help")
    assert listed.returncode == 0, listed.stderr
    for name in [*(stage.name for stage in registry.BUILTIN), "pipeline"]:
        assert f"    {name} " in listed.stdout, listed.stdout
    evaluate = run_main("evaluate", "--help")
    assert "--max-videos" in evaluate.stdout and "evaluate.max_videos" in evaluate.stdout
    assert "--shard" in run_main("predict", "--help").stdout and "--shard" not in evaluate.stdout


def test_a_new_stage_runs_through_the_cli(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_values(tmp_path / "runs")))
    done = run_main("toy", "--config", str(config), "--name", "from-flag", "--shard", "1/3", toy=True)
    assert done.returncode == 0, done.stderr
    assert "toy from-flag shard 1/3 version checkout" in done.stdout  # --name set run.name, --shard the shard


def test_a_new_stage_runs_as_local_jobs_through_submit(tmp_path):
    """`submit toy`: an array of predict.shards jobs, each told its shard, from the code snapshot."""
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_values(tmp_path / "runs")))
    done = run_main("submit", "toy", "--config", str(config), "--executor", "local", "--wait", "predict.shards=2",
                    toy=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" COMPLETED at ") == 2 and "all jobs completed" in done.stdout
    assert "submitted toy[0/2]" in done.stdout and "submitted toy[1/2]" in done.stdout
    texts = [log.read_text() for log in (tmp_path / "runs" / "toy" / "jobs").glob("*/*_log.out")]
    assert len(texts) == 2
    snapshots = list((tmp_path / "runs" / "toy" / "code").iterdir())
    assert len(snapshots) == 1  # one snapshot for the whole submission
    for text in texts:
        assert f"from {snapshots[0]}" in text, text  # the job imported the snapshot, not the checkout
    assert sorted(line for text in texts for line in text.splitlines() if line.startswith("toy ")) == [
        "toy toy shard 0/2 version checkout extra None", "toy toy shard 1/2 version checkout extra None"]


def test_stage_job_runs_a_new_stage_under_submitit_s_signal_handler(tmp_path):
    """The local executor through the API: the stage sees the submission directory and submitit's
    SIGUSR2 handler (the train stage wraps it to save before requeueing); checkpoint() requeues the
    same call."""
    cfg = config_from_dict(toy_values(tmp_path / "runs"))
    jobs = submit.submit_jobs("toy", cfg, "local")
    [end] = wait_jobs(jobs, timeout_s=JOB_TIMEOUT_S, poll_s=POLL_S)
    assert end.ok, end.describe()
    assert end.result["cwd"] == str(Path.cwd())
    assert end.result["shard"] == [0, 1]
    assert "checkpoint_and_try_requeue" in end.result["sigusr2"], end.result
    assert Path(end.result["version_file"]).is_relative_to((tmp_path / "runs" / "toy" / "code").resolve())

    job = StageJob("toy", {"run": {"name": "x"}}, str(tmp_path), (1, 2))
    delayed = job.checkpoint()
    assert delayed.function is job and not delayed.args
    again = pickle.loads(pickle.dumps(delayed.function))
    assert (again.stage, again.shard, again.label) == (toy_stage.TOY, (1, 2), "toy[1/2]")


def test_pipeline_job_count_comes_from_the_pipeline_declaration():
    for shards in (1, 3):
        cfg = config_from_dict({"predict": {"shards": shards}})
        # train, the predict shards (convert merges them: no merge job), evaluate, convert
        assert submit.pipeline_job_count(cfg) == 1 + shards + 1 + 1
        assert submit.job_count("predict", cfg) == (shards + 1 if shards > 1 else 1)  # `submit predict` adds merge
    plain = submit.pipeline_steps(config_from_dict({}))
    assert [step.key for step in plain] == ["train", "predict", "evaluate", "convert"]
    # With the mask routes: the segmenter and each route's forecaster train beside the forecaster
    # (joint after both, as it fine-tunes one with the other), segment after every training.
    masks = config_from_dict({"segment": {"pipeline": True, "route": "masks"}, "evaluate": {"routes": ["joint"]}})
    steps = {step.key: step for step in submit.pipeline_steps(masks)}
    assert list(steps) == ["train", "train-segmenter", "train-masks", "train-joint", "predict", "segment",
                           "evaluate", "convert"]
    assert steps["train-segmenter"].after == () and steps["train-joint"].after == ("train", "train-segmenter")
    assert set(steps["segment"].after) == {"train", "train-segmenter", "train-masks", "train-joint"}
    assert submit.step_config(masks, steps["train-masks"]).train.task == "masks"
    assert submit.pipeline_job_count(masks) == 8
    frames_only = config_from_dict({"segment": {"pipeline": True}})
    assert [s.key for s in submit.pipeline_steps(frames_only)] == ["train", "train-segmenter", "predict", "segment",
                                                                   "evaluate", "convert"]
