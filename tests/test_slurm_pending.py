"""A job that can never start says why, in one line naming the setting, instead of waiting silently
(the one-node Slurm of jobs/local_slurm.sh: 2 CPUs, no GPUs).  Each test is a few seconds: nothing runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests import slurm_helpers
from tests.slurm_helpers import cleanup, submitted_ids, tiny_job_values  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 60  # the wait gives up long before: the first squeue shows the reason

pytestmark = slurm_helpers.slurm_marks()


def _submit_train(tmp_path: Path, cleanup: list[str], *overrides: str, wait_s: float = WAIT_S
                  ) -> subprocess.CompletedProcess:
    config = tmp_path / "pending.yaml"
    config.write_text(yaml.safe_dump(tiny_job_values(tmp_path / "data", tmp_path / "runs", "pending")))
    done = subprocess.run([sys.executable, "main.py", "submit", "train", "--config", str(config), "--executor",
                           "slurm", "--wait", "--timeout", str(wait_s), *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=wait_s + 60)
    cleanup.extend(submitted_ids(done.stdout))
    return done


def _node_cpus() -> int:
    done = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=30)
    return max(int(n) for n in done.stdout.split())


def test_more_cpus_than_any_node_stops_the_wait_naming_cpus_per_task(tmp_path, cleanup):
    """Slurm accepts the job and leaves it pending (PartitionConfig) for ever: the wait says so at once,
    names slurm.cpus_per_task, and cancels the job."""
    cpus = _node_cpus() * 32
    done = _submit_train(tmp_path, cleanup, f"slurm.cpus_per_task={cpus}")
    assert done.returncode == 1, done.stdout + done.stderr
    ids = submitted_ids(done.stdout)
    assert len(ids) == 1, done.stdout
    ended = [line for line in done.stdout.splitlines() if line.startswith(f"job {ids[0]} (train) NEVER_STARTS")]
    assert len(ended) == 1, done.stdout
    assert f"{cpus} CPUs per node" in ended[0] and "slurm.cpus_per_task" in ended[0], ended[0]
    assert "PartitionConfig" in ended[0] and "(cancelled)" in ended[0], ended[0]
    assert "still not ended" not in done.stdout  # it did not sit out the timeout
    assert slurm_helpers.slurm_state(ids[0]) in (None, ("CANCELLED", "PartitionConfig")) or \
        slurm_helpers.slurm_state(ids[0])[0] == "CANCELLED"


def test_gpus_on_a_partition_without_gpus_name_gpus_per_node(tmp_path, cleanup):
    """sbatch refuses a GPU request where no node has GPUs (a gres error): one line naming the setting."""
    done = _submit_train(tmp_path, cleanup, "slurm.gpus_per_node=1")
    assert done.returncode == 2 and not submitted_ids(done.stdout), done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "sbatch refused the train job" in errors[0], done.stderr
    assert "slurm.gpus_per_node" in errors[0] and "gres" in errors[0], errors[0]


def test_more_memory_than_any_node_names_mem_gb(tmp_path, cleanup):
    done = _submit_train(tmp_path, cleanup, "slurm.mem_gb=100000")
    assert done.returncode == 2 and not submitted_ids(done.stdout), done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "slurm.mem_gb" in errors[0], done.stderr


def test_queued_runs_show_the_pending_reason_in_the_wait_and_in_runs(tmp_path, cleanup):
    """A held train job (Slurm reason JobHeldUser, as BeginTime or Priority would be): the wait prints the
    reason and says the job is left in the queue; `runs` lists the run, which has no files but its job's
    yet, as queued with that reason, and a sweep's members (``<sweep>/<member>``) before they started."""
    held = "slurm.additional_parameters={hold: true}"
    done = _submit_train(tmp_path, cleanup, held, wait_s=3)
    [job_id] = submitted_ids(done.stdout)
    assert f"job {job_id} (train) PENDING: JobHeldUser" in done.stdout, done.stdout
    assert "WAIT_TIMEOUT" in done.stdout and "pending, JobHeldUser; left in the queue" in done.stdout, done.stdout

    config = tmp_path / "pending.yaml"
    swept = subprocess.run([sys.executable, "main.py", "submit", "sweep", "--config", str(config), "--executor",
                            "slurm", "--seeds", "2", "run.name=lrsweep", held],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    cleanup.extend(submitted_ids(swept.stdout))
    assert swept.returncode == 0, swept.stdout + swept.stderr
    shown = subprocess.run([sys.executable, "main.py", "runs", str(tmp_path / "runs")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line for line in shown.stdout.splitlines()[1:] if line.strip() and ":" not in
            line.split()[0]}
    assert set(rows) == {"pending", "lrsweep/seed=0", "lrsweep/seed=1"}, shown.stdout
    for name, row in rows.items():
        assert row.split()[1:3] == ["encoder_forecaster", "queued"], row  # family: from the submitted config
        assert "pending: JobHeldUser" in row, row
    assert f"Slurm job {job_id} pending" in rows["pending"]
    assert "queued: a train job of the run waits in the Slurm queue" in shown.stdout
