"""Turn a stage and its config into a submitit job: on Slurm when there is one, on this machine otherwise.

    python main.py submit train    --config configs/default.yaml [--executor auto|slurm|local] [key=value ...]
    python main.py submit predict  --config ...     # an array of predict.shards jobs (+ a merge) when > 1
    python main.py submit convert  --config ...
    python main.py submit pipeline --config ... --wait --timeout 3600

One wrapper, ``StageJob``, runs every stage.  It holds the stage name, the resolved config as a plain
dict (small to pickle, and the job sees exactly the config that was submitted) and the shard.  It is a
``submitit.helpers.Checkpointable``: on a time limit or preemption submitit calls ``checkpoint()``,
which resubmits the same call; ``scontrol requeue`` keeps the job id, and the train stage resumes
from ``<run_dir>/last.pt`` (written every epoch) by itself.

Executors: ``slurm`` submits with sbatch; ``local`` runs the job as a process on this machine
(``auto`` = slurm when ``sbatch`` is on PATH).  Slurm chains the pipeline with ``afterok``
dependencies and returns at once; local jobs have no dependencies, so on the local executor each
stage is submitted only after the previous one has completed, and ``submit_pipeline`` returns when
the pipeline has ended.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission, TorchDistributedEnvironment

from core.config import Config, config_from_dict, config_to_dict, load_config
from core.errors import FramecastError
from jobs.wait import JobEnd, job_label, wait_jobs

STAGES = ("train", "predict", "merge", "convert")
SUBMIT_CHOICES = ("train", "predict", "convert", "pipeline")
EXECUTORS = ("auto", "slurm", "local")
# The folder holding core/, stages/, jobs/: jobs import the project from here.
REPO_ROOT = Path(__file__).resolve().parent.parent


class StageJob(Checkpointable):
    """What a job runs: one stage of one config (and one shard of prediction).

    Only plain data is pickled: the stage name, the config dict, the working directory and the
    shard; the stage modules are imported inside the job.
    """

    def __init__(self, stage: str, config: dict, workdir: str, shard: tuple[int, int] = (0, 1)) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        self.stage = stage
        self.config = config
        self.workdir = workdir
        self.shard = tuple(shard)

    @property
    def label(self) -> str:
        index, count = self.shard
        return f"{self.stage}[{index}/{count}]" if count > 1 else self.stage

    def __call__(self) -> Any:
        # Relative paths in the config (data.root, run.out_dir) mean what they meant at submission.
        os.chdir(self.workdir)
        # The stages log with `logging`; without a handler their progress would not reach the job log.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        # One compute thread per CPU this task was given: torch would otherwise start one per CPU of
        # the machine in every task, and the ranks of a multi-task job would fight over the cores.
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.config["slurm"]["cpus_per_task"])
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(cpus, os.cpu_count() or 1))))
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # Several tasks: one DDP rank each.  RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* are what
            # core.distributed reads; every GPU stays visible so rank r picks cuda:<local rank>.
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"framecast {self.label}: job {env.job_id}, task {env.global_rank} of {env.num_tasks}, "
              f"restart {restarts}", flush=True)
        return run_stage(self.stage, config_from_dict(self.config), self.shard)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on rank 0 at the time-limit / preemption signal: requeue the same call.

        Nothing else needs saving here: training progress lives in ``last.pt``, written every
        epoch, and the train stage resumes from it at start-up.  Predict and convert rerun whole.
        """
        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"StageJob({self.label}, run={self.config.get('run', {}).get('name')!r})"


def run_stage(stage: str, cfg: Config, shard: tuple[int, int] = (0, 1)) -> Any:
    """Dispatch to the stage's ``run``; what it returns must pickle (paths become strings)."""
    if stage == "train":
        from stages.train import run as train

        return train(cfg)
    if stage == "predict":
        from stages.predict import run as predict

        return str(predict(cfg, shard=shard))
    if stage == "merge":
        from stages.predict import merge_shards, output_path

        return str(merge_shards(output_path(cfg), cfg.predict.shards))
    if stage == "convert":
        # The convert stage merges prediction shards itself first, when there are newer ones.
        from stages.convert import run as convert

        return str(convert(cfg))
    raise ValueError(f"unknown stage {stage!r}")


# ----------------------------------------------------------------------------- executors


def resolve_executor(choice: str | None, cfg: Config) -> str:
    """``slurm`` or ``local``: the explicit choice, else ``slurm.executor``; auto = sbatch on PATH."""
    kind = choice or cfg.slurm.executor
    if kind not in EXECUTORS:
        raise FramecastError(f"executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
    has_sbatch = shutil.which("sbatch") is not None
    if kind == "auto":
        return "slurm" if has_sbatch else "local"
    if kind == "slurm" and not has_sbatch:
        raise FramecastError("slurm.executor is 'slurm' but sbatch is not on PATH (use --executor local)")
    return kind


def _stage_resources(stage: str, cfg: Config) -> dict[str, int]:
    """Training gets the configured nodes/tasks/GPUs; the other stages are one process.

    Prediction uses at most one GPU; merging and PNG conversion need none.
    """
    s = cfg.slurm
    if stage == "train":
        return {"nodes": s.nodes, "tasks_per_node": s.tasks_per_node, "gpus_per_node": s.gpus_per_node}
    gpus = min(s.gpus_per_node, 1) if stage == "predict" else 0
    return {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": gpus}


def job_folder(cfg: Config) -> str:
    return cfg.slurm.folder or str(cfg.run_dir / "jobs" / "%j")


def make_executor(cfg: Config, stage: str, executor: str | None = None) -> submitit.AutoExecutor:
    """A submitit executor with the ``slurm:`` section's resources for ``stage``."""
    kind = resolve_executor(executor, cfg)
    s = cfg.slurm
    resources = _stage_resources(stage, cfg)
    if kind == "local" and resources["nodes"] > 1:
        raise FramecastError(f"slurm.nodes={resources['nodes']}: the local executor runs on one node only")
    wrapper = {"slurm_python": s.python} if kind == "slurm" and s.python else {}
    ex = submitit.AutoExecutor(
        folder=job_folder(cfg), cluster=kind,
        slurm_max_num_timeout=s.max_num_timeout, local_max_num_timeout=s.max_num_timeout, **wrapper,
    )
    params: dict[str, Any] = dict(
        name=f"framecast-{stage}-{cfg.run.name}",
        timeout_min=s.time_min,
        cpus_per_task=s.cpus_per_task,
        mem_gb=s.mem_gb,
        **resources,
    )
    if kind == "slurm":
        # The job imports jobs/ and stages/ from this checkout, whatever directory it starts in.
        pythonpath = f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"
        params.update(
            slurm_setup=[*s.setup, pythonpath],
            slurm_signal_delay_s=s.signal_delay_s,
            slurm_array_parallelism=s.array_parallelism,
        )
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(s, key)
            if value:
                params[f"slurm_{key}"] = value
        if s.additional_parameters:
            params["slurm_additional_parameters"] = dict(s.additional_parameters)
    ex.update_parameters(**params)
    return ex


def _is_local(job: submitit.Job) -> bool:
    return isinstance(job, submitit.LocalJob)


def _dependency(after: Sequence[submitit.Job]) -> str:
    """``afterok:<id>:<id>``; an array counts as one id (afterok on it = all its tasks completed)."""
    ids: list[str] = []
    for job in after:
        main_id = str(job.job_id).split("_")[0]
        if main_id not in ids:
            ids.append(main_id)
    return "afterok:" + ":".join(ids)


def _await_upstream(after: Sequence[submitit.Job], what: str, timeout_s: float | None) -> None:
    """Local jobs have no dependencies: wait for the upstream jobs here; stop if one did not complete."""
    ends = wait_jobs(after, timeout_s=timeout_s)
    failed = [end for end in ends if not end.ok]
    if failed:
        first = failed[0]
        raise UpstreamFailed(f"{what} not submitted: job {first.job_id} ({first.label}) ended {first.state}")


class UpstreamFailed(FramecastError):
    """A job this submission depends on did not complete (local executor: nothing was submitted)."""


def _submit(ex: submitit.AutoExecutor, stage_jobs: list[StageJob], after: Sequence[submitit.Job],
            timeout_s: float | None) -> list[submitit.Job]:
    if after:
        if ex.cluster == "local":
            _await_upstream(after, stage_jobs[0].stage, timeout_s)
        else:
            ex.update_parameters(slurm_dependency=_dependency(after))
    # A local job is a child process: it inherits this environment, so put the project on its path.
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with submitit.helpers.environment_variables(PYTHONPATH=pythonpath):
        if len(stage_jobs) == 1:
            return [ex.submit(stage_jobs[0])]
        return ex.submit_array(stage_jobs)


def submit_stage(stage: str, cfg: Config, executor: str | None = None, *,
                 after: Sequence[submitit.Job] = (), shard: tuple[int, int] = (0, 1),
                 timeout_s: float | None = None) -> submitit.Job:
    """Submit one stage as one job, to start after ``after`` completed (afterok).

    On the local executor "after" means: wait for those jobs here first (up to ``timeout_s``).
    """
    ex = make_executor(cfg, stage, executor)
    job = StageJob(stage, config_to_dict(cfg), os.getcwd(), shard)
    return _submit(ex, [job], after, timeout_s)[0]


def submit_predict(cfg: Config, executor: str | None = None, *, after: Sequence[submitit.Job] = (),
                   merge: bool = True, timeout_s: float | None = None) -> list[submitit.Job]:
    """Prediction: one job, or a job array of ``predict.shards`` shard jobs (+ a merge job if ``merge``)."""
    shards = cfg.predict.shards
    if shards == 1:
        return [submit_stage("predict", cfg, executor, after=after, timeout_s=timeout_s)]
    ex = make_executor(cfg, "predict", executor)
    config, workdir = config_to_dict(cfg), os.getcwd()
    jobs = _submit(ex, [StageJob("predict", config, workdir, (i, shards)) for i in range(shards)],
                   after, timeout_s)
    if merge:
        jobs.append(submit_stage("merge", cfg, executor, after=jobs, timeout_s=timeout_s))
    return jobs


def submit_pipeline(cfg: Config, executor: str | None = None, *,
                    on_submit: Callable[[submitit.Job], None] | None = None,
                    timeout_s: float | None = None) -> list[submitit.Job]:
    """train -> predict (shards) -> convert; returns the jobs in that order.

    Slurm: all submitted at once, chained with afterok (a failed stage leaves the rest pending
    with DependencyNeverSatisfied; the waiter cancels them).  Local: each stage is submitted once
    the previous completed, so this returns after the pipeline ended (or stopped at a failure:
    then the jobs not submitted are missing from the list).  ``on_submit`` sees each job at once.
    """
    jobs: list[submitit.Job] = []

    def add(new: list[submitit.Job]) -> list[submitit.Job]:
        for job in new:
            jobs.append(job)
            if on_submit is not None:
                on_submit(job)
        return new

    try:
        train = add([submit_stage("train", cfg, executor)])
        # The convert stage merges the shards first: one job fewer in the queue than a merge job.
        predict = add(submit_predict(cfg, executor, after=train, merge=False, timeout_s=timeout_s))
        add([submit_stage("convert", cfg, executor, after=predict, timeout_s=timeout_s)])
    except UpstreamFailed as exc:
        print(f"pipeline stopped: {exc}", file=sys.stderr)
    return jobs


# ----------------------------------------------------------------------------- command line


def describe_submission(job: submitit.Job, label: str | None = None) -> str:
    """What was submitted, its job id and where its logs will be."""
    kind = "local" if _is_local(job) else "slurm"
    return (f"submitted {label or job_label(job)}: job {job.job_id} ({kind})\n"
            f"  log: {job.paths.stdout}\n  err: {job.paths.stderr}")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """``submit {train,predict,convert,pipeline} --config FILE [options] [key.sub=value ...]``.

    Each stage is a sub-command with the same options: that way the overrides can follow the
    options (argparse cannot join two positionals split by options).
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="YAML config file (see configs/)")
    common.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="slurm, local, or auto (slurm when sbatch is on PATH); default: slurm.executor")
    common.add_argument("--wait", action="store_true", help="wait for the jobs and report how each ended")
    common.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="with --wait: stop waiting after this long (the jobs keep running)")
    common.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {
        "train": "a training job (resumes from last.pt; requeued at its time limit)",
        "predict": "a prediction job, or an array of predict.shards jobs and a merge job",
        "convert": "a job writing the prediction as PNG frames",
        "pipeline": "train -> predict -> convert, chained (afterok on Slurm)",
    }
    for stage in SUBMIT_CHOICES:
        stages.add_parser(stage, parents=[common], help=helps[stage], description=helps[stage])


def submit_main(args: argparse.Namespace) -> int:
    """``main.py submit``: 0 when submitted (with --wait: when every job completed), else 1."""
    cfg = load_config(args.config, list(args.overrides))
    executor = resolve_executor(args.executor, cfg)

    def show(job: submitit.Job) -> None:
        print(describe_submission(job), flush=True)

    if args.stage == "pipeline":
        jobs = submit_pipeline(cfg, executor, on_submit=show, timeout_s=args.timeout)
    elif args.stage == "predict":
        jobs = submit_predict(cfg, executor)
        for job in jobs:
            show(job)
    else:
        jobs = [submit_stage(args.stage, cfg, executor)]
        show(jobs[0])
    # On the local executor a pipeline stops submitting at the first stage that fails.
    expected = 2 + cfg.predict.shards if args.stage == "pipeline" else len(jobs)
    complete = len(jobs) == expected
    if not args.wait:
        return 0 if complete else 1

    def report(end: JobEnd) -> None:
        print(end.describe(), flush=True)

    ends = wait_jobs(jobs, timeout_s=args.timeout, report=report)
    ok = complete and all(end.ok for end in ends)
    print("all jobs completed" if ok else "some jobs did not complete", flush=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__.splitlines()[0])
    add_submit_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return submit_main(args)
    except FramecastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
