"""``StageJob``: what every submitit job runs, whichever the stage (one wrapper, the stage passed in).

It holds plain data only, small to pickle: the stage's declaration (``stages.registry.Stage``: its
run function is an import path, resolved inside the job), the resolved config as a dict (the job sees
exactly the config that was submitted), the directory it was submitted from, the shard, and the code
snapshot it runs (``jobs.snapshot``).

It is a ``submitit.helpers.Checkpointable``: on a time limit or preemption (SIGUSR2) submitit's own
handler calls ``checkpoint()``, which resubmits the same call; ``scontrol requeue`` keeps the job id
and the train stage resumes from ``<run_dir>/last.pt``.  StageJob installs no signal handler and runs
the stage in the job's main thread, so submitit's handler is the one in place while a stage runs: the
train stage may wrap it, save at the next step boundary, then call it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission, TorchDistributedEnvironment

from core.config import config_from_dict
from core.threads import apply_threads
from jobs.snapshot import CodeSnapshot
from stages import registry
from stages.registry import Stage

# Where this process imports the project from: the snapshot in a submitted job.
CODE_ROOT = Path(__file__).resolve().parent.parent


LOG = logging.getLogger("framecast.job")


def setup_job_logging() -> None:
    """The stages log with ``logging``: one handler on the root logger, to stderr (the job's ``.err``, the
    log path every submission announces first).  submitit's logger has handlers of its own (stdout, and
    stderr for warnings): it stops passing its records on to the root, or each of its lines (the
    time-limit and requeue messages of a preemption) would be written twice."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("submitit").propagate = False


def _plain(result: Any) -> Any:
    """Paths become strings, so a job's result unpickles anywhere."""
    return str(result) if isinstance(result, Path) else result


class StageJob(Checkpointable):
    """One stage of one config (and one shard of a sharded stage), as a job."""

    def __init__(self, stage: Stage | str, config: dict, workdir: str, shard: tuple[int, int] = registry.WHOLE,
                 code: CodeSnapshot | None = None) -> None:
        self.stage = registry.get(stage) if isinstance(stage, str) else stage
        self.config = config
        self.workdir = workdir
        self.shard = tuple(shard)
        self.code = code

    @property
    def label(self) -> str:
        index, count = self.shard
        return f"{self.stage.name}[{index}/{count}]" if count > 1 else self.stage.name

    def describe_code(self) -> str:
        """What code this process runs: the snapshot's version, and where it was imported from."""
        what = self.code.describe() if self.code is not None else "code: the live checkout (no snapshot)"
        return f"{what} from {CODE_ROOT}"

    def __call__(self) -> Any:
        # Relative paths in the config (data.root, run.out_dir) mean what they meant at submission.
        # The code was imported from the snapshot already (this job started there, on its PYTHONPATH).
        os.chdir(self.workdir)
        setup_job_logging()
        # One compute thread per CPU this task was given (run.threads, core/threads.py): torch would
        # otherwise start one per CPU of the machine in every task, and the ranks of a multi-task job
        # would fight over the cores.
        cfg = config_from_dict(self.config)
        threads = apply_threads(cfg.run.threads, job_cpus=cfg.slurm.cpus_per_task)
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # Several tasks: one DDP rank each.  RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* are what
            # core.distributed reads; every GPU stays visible so rank r picks cuda:<local rank>.
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"framecast {self.label}: job {env.job_id}, task {env.global_rank} of {env.num_tasks}, "
              f"restart {restarts}, {threads}, {self.describe_code()}", flush=True)
        result = registry.run_stage(self.stage, cfg, self.shard)
        if isinstance(result, Path):  # what a file-writing stage (predict, merge, convert) wrote, as the CLI says
            LOG.info("%s wrote %s", self.label, result)
        return _plain(result)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on rank 0 at the time-limit / preemption signal: requeue the same call.

        Nothing else needs saving here: training progress lives in ``last.pt`` and the train stage
        resumes from it at start-up.  The requeued job runs the same snapshot (same script, same
        PYTHONPATH).  Other stages rerun whole.
        """
        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"StageJob({self.label}, run={self.config.get('run', {}).get('name')!r})"
