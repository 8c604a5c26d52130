"""Turn a stage and its config into a submitit job: on Slurm when there is one, on this machine otherwise.

    python main.py submit train    --config configs/default.yaml [--executor auto|slurm|local] [key=value ...]
    python main.py submit predict  --config ...     # an array of predict.shards jobs (+ a merge) when > 1
    python main.py submit evaluate --config ...     # any stage of stages/registry.py
    python main.py submit pipeline --config ... --wait --timeout 3600
    python main.py submit sweep    --config ... --grid train.lr=1e-3,3e-4 --seeds 3   # jobs/sweep.py

Every stage is declared once, in ``stages.registry``; this module reads its resources (what the job
asks for), whether it runs as an array (``shards``) and what joins the array (``join``).  One wrapper,
``jobs.stage_job.StageJob``, runs every stage.

Each submission first snapshots the code (``jobs.snapshot``) into ``<run_dir>/code/<hash>/``; the
jobs start in that folder and have it on their PYTHONPATH, so they import the code that was
submitted, not whatever the checkout holds when they start (or restart after a requeue).

An array longer than the cluster's MaxArraySize (``scontrol show config``) or ``slurm.max_array_size``
is submitted as several arrays sharing ``slurm.array_parallelism``; the job after it waits for all.

Executors: ``slurm`` submits with sbatch; ``local`` runs the job as a process on this machine
(``auto`` = slurm when ``sbatch`` is on PATH).  Slurm chains the pipeline with ``afterok``
dependencies and returns at once; local jobs have no dependencies, so on the local executor each
stage is submitted only after the stages it depends on have completed.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import submitit
import submitit.core.utils
from submitit.helpers import environment_variables

from core.config import Config, SlurmConfig, config_to_dict, load_config
from core.errors import FramecastError
from core.paths import expand, expand_if_set, host_name
from jobs.snapshot import REPO_ROOT, CodeSnapshot, code_pythonpath, take_snapshot
from jobs.stage_job import StageJob
from jobs.wait import JobEnd, job_label, wait_jobs
from stages import registry
from stages.registry import Stage

EXECUTORS = ("auto", "slurm", "local")
OnSubmit = Callable[[submitit.Job], None]


@dataclass(frozen=True)
class Step:
    """One stage of the pipeline and the stages whose jobs it waits for (afterok)."""

    stage: str
    after: tuple[str, ...] = ()
    # Submit the stage's join job after its array (predict -> merge).  False where a later stage
    # joins the shards itself (convert merges them first: one job fewer in the queue).
    join: bool = True


# train -> predict (array of predict.shards) -> convert; evaluate (best.pt on evaluate.split, val by
# default) after train, in parallel with predict, so every pipeline ends with its scores and figures.
PIPELINE = (
    Step("train"),
    Step("predict", after=("train",), join=False),
    Step("evaluate", after=("train",)),
    Step("convert", after=("predict",)),
)


def describe_pipeline() -> str:
    """``train; predict after train; ...``: the pipeline in words, for help texts and the demo."""
    return "; ".join(f"{s.stage} after {' and '.join(s.after)}" if s.after else s.stage for s in PIPELINE)


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


def job_folder(cfg: Config) -> str:
    """The submitit log folder: ``slurm.folder``, or ``<run_dir>/jobs/%j``.  Unlike every other path
    setting, expanded here, on the submitting host (``${VAR}``, core/paths.py): submitit writes the job's
    pickle there before the job starts, and Slurm opens its logs there."""
    folder = expand("slurm.folder", cfg.slurm.folder, where=f"on the submitting host {host_name()}")
    return folder or str(cfg.run_dir / "jobs" / "%j")


def _stage(stage: Stage | str) -> Stage:
    return registry.get(stage) if isinstance(stage, str) else stage


def make_executor(cfg: Config, stage: Stage | str, executor: str | None = None,
                  code_root: str | Path = REPO_ROOT) -> submitit.AutoExecutor:
    """A submitit executor with the ``slurm:`` section's resources for ``stage``.

    ``code_root``: the folder the job imports the project from (a snapshot for stage jobs; the
    checkout by default, for other callables).
    """
    kind = resolve_executor(executor, cfg)
    s = cfg.slurm
    stage = _stage(stage)
    resources = stage.resources.request(s)
    if kind == "local" and resources["nodes"] > 1:
        raise FramecastError(f"slurm.nodes={resources['nodes']}: the local executor runs on one node only")
    wrapper = {"slurm_python": s.python} if kind == "slurm" and s.python else {}
    ex = submitit.AutoExecutor(
        folder=job_folder(cfg), cluster=kind,
        slurm_max_num_timeout=s.max_num_timeout, local_max_num_timeout=s.max_num_timeout, **wrapper,
    )
    params: dict[str, Any] = dict(
        name=f"framecast-{stage.name}-{cfg.run.name}",
        timeout_min=s.time_min,
        cpus_per_task=s.cpus_per_task,
        mem_gb=s.mem_gb,
        **resources,
    )
    if kind == "slurm":
        params.update(
            slurm_setup=[*s.setup, code_pythonpath(code_root, shell=True)],
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


@contextlib.contextmanager
def _starting_in(code_root: str | Path):
    """Submit from ``code_root`` with it first on PYTHONPATH: a job starts where it was submitted
    (sbatch's working directory; a local job is a child process), and ``python -m`` puts that
    directory first on sys.path, before PYTHONPATH; started in the checkout, it would import the
    checkout's code."""
    with contextlib.chdir(code_root), environment_variables(PYTHONPATH=code_pythonpath(code_root)):
        yield


def _dependency(after: Sequence[submitit.Job], kind: str = "afterok") -> str:
    """``afterok:<id>:<id>``; an array counts as one id (afterok on it = all its tasks completed).
    ``kind="afterany"``: once they ended, however."""
    ids: list[str] = []
    for job in after:
        main_id = str(job.job_id).split("_")[0]
        if main_id not in ids:
            ids.append(main_id)
    return f"{kind}:" + ":".join(ids)


# ----------------------------------------------------------------------------- array size limits


@functools.lru_cache(maxsize=1)
def cluster_max_array_size() -> int | None:
    """The cluster's MaxArraySize (``scontrol show config``); None where scontrol cannot tell.

    Array task indices go up to MaxArraySize - 1, and submitit numbers tasks from 0, so one array
    holds at most MaxArraySize tasks; 0 means the cluster allows no arrays.
    """
    try:
        done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", done.stdout, re.MULTILINE) if done.returncode == 0 else None
    return int(found.group(1)) if found else None


def array_limit(slurm: SlurmConfig) -> int | None:
    """Tasks per array at most: the smaller of ``slurm.max_array_size`` (when set) and the cluster's."""
    limits = [n for n in (slurm.max_array_size or None, cluster_max_array_size()) if n is not None]
    return min(limits) if limits else None


def array_chunks(count: int, limit: int, parallelism: int) -> list[tuple[int, int, int]]:
    """(start, stop, parallelism) of each array when ``count`` tasks go in arrays of at most ``limit``.

    The arrays' parallelism adds up to ``parallelism`` (at least 1 each), so together they never
    run more tasks at once than one array would.  An "array" of one task is submitted as a plain job.
    """
    limit = max(1, limit)
    bounds = [(start, min(start + limit, count)) for start in range(0, count, limit)]
    shares = [parallelism // len(bounds) + (1 if i < parallelism % len(bounds) else 0) for i in range(len(bounds))]
    return [(start, stop, max(1, share)) for (start, stop), share in zip(bounds, shares)]


class UpstreamFailed(FramecastError):
    """A job this submission depends on did not complete (local executor: nothing was submitted)."""


def _await_upstream(after: Sequence[submitit.Job], what: str, timeout_s: float | None) -> None:
    """Local jobs have no dependencies: wait for the upstream jobs here; stop if one did not complete."""
    ends = wait_jobs(after, timeout_s=timeout_s)
    failed = [end for end in ends if not end.ok]
    if failed:
        first = failed[0]
        raise UpstreamFailed(f"{what} not submitted: job {first.job_id} ({first.label}) ended {first.state}")


# What sbatch says when it refuses a request (its messages, as of Slurm 22-24), and the settings that
# make that request: the one-line error names them.
SBATCH_REFUSALS = (
    ("generic resource (gres)", "slurm.gpus_per_node (0 on a partition without GPUs; `sinfo -o %P,%G` lists them)"),
    ("Memory specification can not be satisfied", "slurm.mem_gb"),
    ("Invalid partition", "slurm.partition"),
    ("Invalid account", "slurm.account"),
    ("Invalid qos", "slurm.qos"),
    ("Invalid feature specification", "slurm.constraint"),
    ("Requested time limit is invalid", "slurm.time_min"),
    ("More processors requested than permitted", "slurm.cpus_per_task"),
    ("Requested node configuration is not available", "slurm.cpus_per_task, slurm.mem_gb or slurm.gpus_per_node"),
)


def sbatch_refusal(message: str) -> str:
    """The settings to change for sbatch's refusal ``message``; "" when it is not one of SBATCH_REFUSALS."""
    lowered = message.lower()
    return next((settings for text, settings in SBATCH_REFUSALS if text.lower() in lowered), "")


@contextlib.contextmanager
def _sbatch_errors(stage: str) -> Iterator[None]:
    """sbatch's refusal (controller down, bad partition or account) as one line naming the setting to
    change, not submitit's traceback (nor its copy of sbatch's stderr: the line holds it)."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    except submitit.core.utils.FailedJobError as exc:
        lines = [line.split("error:", 1)[-1].strip() for line in str(exc).splitlines() if line.strip()]
        reason = "; ".join(dict.fromkeys(line for line in lines if "Batch job submission failed" not in line)) \
            or " ".join(lines) or "no message"
        settings = sbatch_refusal(str(exc))
        hint = f"change {settings}" if settings else "check `sinfo` and the slurm.* settings"
        raise FramecastError(f"sbatch refused the {stage} job ({reason}): {hint}; --executor local runs the jobs "
                             "on this machine") from None
    finally:
        sys.stderr.write(printed.getvalue() if not sys.exc_info()[0] else "")


def _submit(ex: submitit.AutoExecutor, stage_jobs: list[StageJob], after: Sequence[submitit.Job],
            timeout_s: float | None, code: CodeSnapshot, slurm: SlurmConfig | None = None,
            dependency: str = "afterok") -> list[submitit.Job]:
    """One job, or one array; on Slurm several arrays when longer than ``array_limit(slurm)``."""
    if after:
        if ex.cluster == "local":
            _await_upstream(after, stage_jobs[0].stage.name, timeout_s)
        else:
            ex.update_parameters(slurm_dependency=_dependency(after, dependency))
    with _starting_in(code.root), _sbatch_errors(stage_jobs[0].stage.name):
        if len(stage_jobs) == 1:
            return [ex.submit(stage_jobs[0])]
        limit = array_limit(slurm) if ex.cluster == "slurm" and slurm is not None else None
        if limit is None or len(stage_jobs) <= limit:
            return ex.submit_array(stage_jobs)
        jobs: list[submitit.Job] = []
        for start, stop, parallelism in array_chunks(len(stage_jobs), limit, slurm.array_parallelism):
            ex.update_parameters(slurm_array_parallelism=parallelism)
            jobs += ex.submit_array(stage_jobs[start:stop])
        return jobs


def submit_calls(stage: Stage | str, cfg: Config, calls: list[StageJob], executor: str | None = None, *,
                 code: CodeSnapshot, after: Sequence[submitit.Job] = (), dependency: str = "afterok",
                 timeout_s: float | None = None) -> list[submitit.Job]:
    """``calls`` (StageJobs of ``stage``, e.g. a sweep's train runs) with the resources ``cfg`` gives
    the stage: one job or an array (several above the array size limit), after ``after``."""
    ex = make_executor(cfg, stage, executor, code.root)
    return _submit(ex, calls, after, timeout_s, code, cfg.slurm, dependency)


# ----------------------------------------------------------------------------- submitting stages


def snapshot_for(cfg: Config) -> CodeSnapshot:
    """The code snapshot of a submission, in ``<run_dir>/code/``; the data folders are never copied."""
    # The run folder is expanded here (the snapshot is written before the job starts); the data folders
    # only where their variables are set here (they are left out of the copy when inside the project).
    skip = [expand_if_set(p) for p in (cfg.data.root, cfg.data.pack_dir) if p]
    return take_snapshot(cfg.run_dir, skip=[p for p in skip if p])


def job_count(stage: Stage | str, cfg: Config, join: bool = True) -> int:
    """Jobs ``submit_jobs`` submits for ``stage``: its shards, and the join job after an array."""
    stage = _stage(stage)
    shards = stage.shard_count(cfg)
    return shards + (1 if join and stage.join and shards > 1 else 0)


def pipeline_job_count(cfg: Config) -> int:
    """Jobs in a complete pipeline submission (fewer: the local executor stopped at a failure)."""
    return sum(job_count(step.stage, cfg, step.join) for step in PIPELINE)


def submit_stage(stage: Stage | str, cfg: Config, executor: str | None = None, *,
                 after: Sequence[submitit.Job] = (), shard: tuple[int, int] = registry.WHOLE,
                 timeout_s: float | None = None, code: CodeSnapshot | None = None) -> submitit.Job:
    """Submit one stage (one shard of it) as one job, to start after ``after`` completed (afterok).

    On the local executor "after" means: wait for those jobs here first (up to ``timeout_s``).
    ``code``: the snapshot to run (default: one taken now).
    """
    stage = _stage(stage)
    code = code or snapshot_for(cfg)
    ex = make_executor(cfg, stage, executor, code.root)
    job = StageJob(stage, config_to_dict(cfg), os.getcwd(), shard, code)
    return _submit(ex, [job], after, timeout_s, code)[0]


def announced(jobs: list[submitit.Job], on_submit: OnSubmit | None) -> list[submitit.Job]:
    """``jobs``, after showing each to ``on_submit`` (if any) as soon as it was submitted."""
    for job in jobs:
        if on_submit is not None:
            on_submit(job)
    return jobs


def submit_jobs(stage: Stage | str, cfg: Config, executor: str | None = None, *,
                after: Sequence[submitit.Job] = (), join: bool = True, timeout_s: float | None = None,
                code: CodeSnapshot | None = None, on_submit: OnSubmit | None = None) -> list[submitit.Job]:
    """A stage as its jobs: one job, or (a sharded stage) an array of its shard count, then its join
    job when ``join``.  ``on_submit`` sees each job as soon as it is submitted."""
    stage = _stage(stage)
    code = code or snapshot_for(cfg)
    shards = stage.shard_count(cfg)

    if shards == 1:
        return announced([submit_stage(stage, cfg, executor, after=after, timeout_s=timeout_s, code=code)],
                         on_submit)
    config, workdir = config_to_dict(cfg), os.getcwd()
    calls = [StageJob(stage, config, workdir, (i, shards), code) for i in range(shards)]
    jobs = announced(submit_calls(stage, cfg, calls, executor, code=code, after=after, timeout_s=timeout_s),
                     on_submit)
    if join and stage.join:
        jobs += announced([submit_stage(stage.join, cfg, executor, after=jobs, timeout_s=timeout_s, code=code)],
                          on_submit)
    return jobs


def submit_pipeline(cfg: Config, executor: str | None = None, *, on_submit: OnSubmit | None = None,
                    timeout_s: float | None = None, code: CodeSnapshot | None = None) -> list[submitit.Job]:
    """The ``PIPELINE`` stages, each after the ones it names; returns the jobs in ``PIPELINE`` order.

    Slurm: all submitted at once, chained with afterok (a failed stage leaves the ones after it
    pending with DependencyNeverSatisfied; the waiter cancels them).  Local: each stage is submitted
    once the stages it waits for completed, so this returns when the last stage was submitted (or at
    a failure: then the jobs not submitted are missing from the list).  One code snapshot for all.
    """
    code = code or snapshot_for(cfg)
    submitted: dict[str, list[submitit.Job]] = {}
    jobs: list[submitit.Job] = []

    def add(job: submitit.Job) -> None:
        jobs.append(job)
        if on_submit is not None:
            on_submit(job)

    try:
        for step in PIPELINE:
            after = [job for name in step.after for job in submitted[name]]
            submitted[step.stage] = submit_jobs(step.stage, cfg, executor, after=after, join=step.join,
                                                timeout_s=timeout_s, code=code, on_submit=add)
    except UpstreamFailed as exc:
        print(f"pipeline stopped: {exc}", file=sys.stderr)
    return jobs


def describe_submission(job: submitit.Job) -> str:
    """What was submitted, its job id and where its logs will be: ``log:`` the job's stderr, where the stages
    log (and tracebacks go); ``out:`` its stdout (submitit's own lines and what the stages print)."""
    kind = "local" if isinstance(job, submitit.LocalJob) else "slurm"
    return (f"submitted {job_label(job)}: job {job.job_id} ({kind})\n"
            f"  log: {job.paths.stderr}\n  out: {job.paths.stdout}")
