"""Sweeps and split arrays on a real Slurm (the one-node cluster of jobs/local_slurm.sh).

Skipped, with the reason, where no Slurm node is idle. Every job a test submits is cancelled at the
end of the test if it is still queued or running.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

from jobs.sweep import MANIFEST_NAME
from tests import slurm_helpers
from tests.slurm_helpers import cleanup, data_root  # noqa: F401 (fixtures)
from tests.slurm_helpers import submit_toy, submitted_ids, tiny_job_values

REPO = Path(__file__).resolve().parent.parent
pytestmark = slurm_helpers.slurm_marks()

SWEEP_TIMEOUT_S = 300
JOB_TIMEOUT_S = 150


def test_sweep_is_one_array_of_train_runs_then_a_comparison(data_root, tmp_path, cleanup):
    """2 learning rates x 2 seeds: one 4-task array (2 at a time), 4 run folders, then compare afterany."""
    values = tiny_job_values(data_root, tmp_path / "runs", "sweep", train={"epochs": 1}, evaluate={"samples": 0},
                         slurm={"array_parallelism": 2})
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [sys.executable, "main.py", "submit", "sweep", "--config", str(config_file), "--grid", "train.lr=3e-3,1e-3",
         "--seeds", "2", "--executor", "slurm", "--wait", "--timeout", str(SWEEP_TIMEOUT_S)],
        cwd=REPO, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S + 60,
    )
    ids = submitted_ids(done.stdout)
    cleanup.extend(ids)
    assert done.returncode == 0, done.stdout + done.stderr
    array = ids[0].split("_")[0]
    assert ids[:4] == [f"{array}_{i}" for i in range(4)], done.stdout  # one array, one task per run
    assert len(ids) == 5 and "_" not in ids[4], done.stdout  # then the compare job
    sweep = tmp_path / "runs" / "sweep"
    names = ["lr=3e-3,seed=0", "lr=3e-3,seed=1", "lr=1e-3,seed=0", "lr=1e-3,seed=1"]
    for name in names:
        assert (sweep / name / "best.pt").is_file(), name
    submission = (sweep / "jobs" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%2" in submission  # slurm.array_parallelism caps the array
    manifest = json.loads((sweep / MANIFEST_NAME).read_text())
    assert [(r["name"], r["job_id"]) for r in manifest["runs"]] == list(zip(names, ids[:4]))
    with (sweep / "compare" / "compare.csv").open() as handle:
        points = list(csv.DictReader(handle))
    assert [(p["train.lr"], p["seeds"], p["runs_scored"]) for p in points] == [("0.001", "0 1", "2"),
                                                                              ("0.003", "0 1", "2")]
    for point in points:
        assert float(point["mse_mean"]) > 0 and float(point["mse_std"]) >= 0 and point["ssim_std"] != ""
    assert "± " in (sweep / "compare" / "compare.md").read_text()


def test_an_array_longer_than_the_limit_is_submitted_as_several(tmp_path, cleanup):
    """4 toy shards with slurm.max_array_size=2 (the cluster's MaxArraySize would be the limit otherwise):
    two arrays of 2, no sbatch error, every shard run once."""
    values = tiny_job_values(tmp_path, tmp_path / "runs", "toy", slurm={"max_array_size": 2})
    done, ids = submit_toy(values, tmp_path, cleanup, JOB_TIMEOUT_S, "predict.shards=4")
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = ids[0].split("_")[0], ids[2].split("_")[0]
    assert first != second and ids == [f"{first}_0", f"{first}_1", f"{second}_0", f"{second}_1"], done.stdout
    logs = sorted((tmp_path / "runs" / "toy" / "jobs").glob("*/*_log.out"))
    lines = sorted(line for log in logs for line in log.read_text().splitlines() if line.startswith("toy "))
    assert lines == [f"toy toy shard {i}/4 version checkout extra None" for i in range(4)]
