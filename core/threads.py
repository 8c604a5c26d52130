"""How many CPU threads a framecast process computes with (``run.threads``), applied to torch.

torch starts one compute thread per core of the machine. Beside other processes (loader workers, a
second job, other users of a shared node) those threads wait on each other, several times slower
than fewer threads (benchmarks/RESULTS.md, "Threads"). So every stage, from the command line or as
a job, sets the number itself:
``run.threads`` when given, else (0) the first of
- ``OMP_NUM_THREADS``, when set: the user's, or the job's (the SBATCH scripts and the job wrapper
  set it from the CPUs the job was given);
- ``SLURM_CPUS_PER_TASK``, when set: what Slurm gave this task;
- a local job's ``slurm.cpus_per_task`` (no Slurm: the submitit local executor), at most the CPUs
  this process may use;
- the CPUs this process may use (``os.sched_getaffinity``: a cgroup or ``taskset`` counts).
Loader workers compute with one thread each (``data.datasets.make_loader``).
"""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), or the machine's where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def _positive_env(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def resolve_threads(setting: int, job_cpus: int | None = None) -> tuple[int, str]:
    """(threads, where the number came from) for ``run.threads`` = ``setting``; see the module's text.

    ``job_cpus``: the CPUs a local job was given (``slurm.cpus_per_task``), None outside a job."""
    if setting > 0:
        return setting, "run.threads"
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = _positive_env(name)
        if value is not None:
            return value, name
    usable = usable_cpus()
    if job_cpus:
        return min(job_cpus, usable), f"slurm.cpus_per_task of a local job, of {usable} usable"
    return usable, "the CPUs this process may use"


# Where the count ``apply_threads`` last set came from, for ``describe_threads`` (None: not set here).
_source: str | None = None


def apply_threads(setting: int, job_cpus: int | None = None) -> str:
    """Set torch's intra-op (and, where not yet started, inter-op) threads; returns the one-line
    description a run's first log line shows, e.g. ``"2 CPU threads (the CPUs this process may use)"``.

    ``OMP_NUM_THREADS`` is set to the same number for the processes this one starts.
    """
    import torch

    threads, source = resolve_threads(setting, job_cpus)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only possible before the first inter-op work of the process; it keeps its pool
        pass
    os.environ["OMP_NUM_THREADS"] = str(threads)
    global _source
    _source = source
    return f"{threads} CPU thread{'s' if threads != 1 else ''} ({source})"


def describe_threads() -> str:
    """The thread counts torch computes with now and where the count came from, for a log line."""
    import torch

    threads = torch.get_num_threads()
    source = f"{_source}; " if _source else ""
    return f"{threads} CPU thread{'s' if threads != 1 else ''} ({source}inter-op {torch.get_num_interop_threads()})"
