"""Wait for submitit jobs without hanging: poll result files and the scheduler, with a hard timeout.

Why not ``job.result()``: on a cluster without Slurm accounting (no slurmdbd, as on the one-node
CI cluster) submitit's sacct calls fail and it backs off to polling every few minutes, and a job that
died without writing its result file (scancel, out of memory, a dependency that can never be
satisfied) can leave ``result()`` waiting far longer than the job itself.  Here a job has ended when
every task's result pickle exists, or when ``squeue`` (``sacct`` where accounting exists) says it is
no longer pending or running.  A job left pending because an upstream job failed
(``DependencyNeverSatisfied``) would wait forever: it is cancelled and reported.  So is a job whose
request the partition can never satisfy (``NEVER_STARTS``: more CPUs, memory or nodes than its nodes
have, a node list that is not available, ...): one line names the slurm.* setting to change.  While
a job waits in the queue, every change of its state or pending reason is shown (``progress``).
"""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from submitit.core.utils import pickle_load

# Seconds between two looks at the result files and the scheduler (one squeue call for all jobs).
POLL_S = 2.0
# A job the scheduler calls finished may need a moment before its result file shows up (NFS caches).
RESULT_GRACE_S = 15.0
# A Slurm job unknown to squeue and sacct for this long (purged, slurmctld down) is given up on.
UNKNOWN_GRACE_S = 60.0
# Seconds allowed for one squeue / sacct / scancel call.
COMMAND_TIMEOUT_S = 30.0

# Slurm states after which a job will not run again on its own (requeued jobs pass through PENDING).
SLURM_ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
}
NEVER_SATISFIED = "DependencyNeverSatisfied"
# Pending reasons that never clear while the job's request stays as it is (Slurm's reason codes, as
# squeue prints them), with the settings that change the request.  ReqNodeNotAvail also appears while
# nodes are down or reserved; a job waiting on them is given up on too: resubmit once they are back.
NEVER_STARTS = {
    "PartitionConfig": "slurm.cpus_per_task, slurm.mem_gb, slurm.gpus_per_node or slurm.partition",
    "ReqNodeNotAvail": "slurm.partition (or slurm.constraint; `sinfo` shows which nodes are up)",
    "PartitionNodeLimit": "slurm.nodes or slurm.partition",
    "PartitionTimeLimit": "slurm.time_min or slurm.partition",
    "BadConstraints": "slurm.constraint",
    "InvalidAccount": "slurm.account",
    "InvalidQOS": "slurm.qos",
}
MEGABYTES = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


@dataclass
class JobEnd:
    """How one job ended, with what a user needs to look further: the log files."""

    job_id: str
    label: str  # "train", "predict[2/4]", ...
    # COMPLETED, FAILED (the stage raised), a Slurm end state (CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...),
    # INTERRUPTED (a local job killed), ENDED_WITHOUT_RESULT, UNKNOWN, or WAIT_TIMEOUT (still running).
    state: str
    ok: bool
    detail: str = ""  # the exception's last line, or the end of the error log
    stdout: Path | None = None
    stderr: Path | None = None
    result: Any = None  # what the stage returned (task 0), when it completed
    ended_at: float = 0.0  # wall-clock time (time.time()) the job's end was written or seen

    def describe(self) -> str:
        """The end in one line, then the job's logs (stderr first: the stages log there), where they exist
        (a job that never started has none)."""
        when = time.strftime("%H:%M:%S", time.localtime(self.ended_at))
        head = f"job {self.job_id} ({self.label}) {self.state} at {when}"
        lines = [head + (f": {self.detail}" if self.detail else "")]
        if any(path is not None and path.exists() for path in (self.stderr, self.stdout)):
            lines.append(f"  log: {self.stderr}")
            lines.append(f"  out: {self.stdout}")
        return "\n".join(lines)


def job_label(job: submitit.Job) -> str:
    """The stage (and shard) a job runs, read back from its submitted pickle; the id as a fallback."""
    try:
        function = job.submission().function
    except Exception:  # the pickle is missing or unreadable: the label is only cosmetic
        return "job"
    return getattr(function, "label", None) or getattr(function, "__name__", None) or type(function).__name__


def _run(command: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, pending reason)} for the Slurm jobs it can find, e.g. ("PENDING", "Dependency").

    One squeue call for all of them (``-r`` lists array tasks one by one; ``-t all`` includes
    finished jobs, which squeue knows for MinJobAge seconds); sacct, where accounting exists,
    for those squeue no longer knows.
    """
    states: dict[str, tuple[str, str]] = {}
    if not job_ids:
        return states
    done = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])
    if done is not None and done.returncode == 0:
        for line in done.stdout.splitlines():
            job_id, _, rest = line.strip().partition("|")
            state, _, reason = rest.partition("|")
            if job_id and state:
                states[job_id] = (state.upper(), reason.strip())
    for job_id in job_ids:
        if job_id in states:
            continue
        done = _run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id])
        if done is not None and done.returncode == 0:
            words = done.stdout.split()  # "CANCELLED by 0" -> CANCELLED
            if words:
                states[job_id] = (words[0].upper(), "")
    return states


def _error_tail(path: Path | None, lines: int = 5) -> str:
    """The last non-empty lines of a log, joined on one line: enough to see why a job died."""
    if path is None or not path.is_file():
        return ""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    tail = [line.strip() for line in text if line.strip()][-lines:]
    return " | ".join(tail)


def _exception_line(trace: str) -> str:
    """The last line of a formatted traceback: the exception and its message."""
    lines = [line.strip() for line in str(trace).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed without a message"


def never_starts(reason: str) -> str | None:
    """The settings to change when ``reason`` (squeue's %r) never clears, else None."""
    code = reason.split(",")[0].strip()
    return NEVER_STARTS.get(code)


def _megabytes(text: str) -> float | None:
    """squeue's / sinfo's memory (``32G``, ``500M``, ``21007``: MB without a unit) in MB; None if unreadable."""
    found = re.fullmatch(r"([\d.]+)([KMGT]?)[cn]?", text.strip())
    return float(found.group(1)) * MEGABYTES[found.group(2) or "M"] if found else None


def _partition_nodes(partition: str) -> list[tuple[int, float, str]]:
    """(CPUs, memory MB, gres) of each node of ``partition``; [] where sinfo cannot tell."""
    done = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%c|%m|%G"])
    nodes = []
    for line in (done.stdout.splitlines() if done is not None and done.returncode == 0 else []):
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0].isdigit():
            nodes.append((int(parts[0]), _megabytes(parts[1]) or 0.0, parts[2]))
    return nodes


def why_never_starts(job_id: str, reason: str) -> str:
    """One line: why the pending job cannot start, and which slurm.* setting to change.

    The job's request (squeue: CPUs, nodes, memory per node, GPUs) is set against the largest node of its
    partition (sinfo), so a request beyond every node names the one setting that asks too much.
    """
    code = reason.split(",")[0].strip()
    settings = never_starts(reason) or "the slurm.* settings"
    done = _run(["squeue", "-h", "-j", job_id, "-o", "%P|%C|%D|%m|%b"])
    fields = done.stdout.strip().split("|") if done is not None and done.returncode == 0 else []
    if len(fields) == 5 and fields[1].isdigit() and fields[2].isdigit():
        partition, cpus, nodes, memory, gres = fields
        per_node = int(cpus) // max(1, int(nodes))
        known = _partition_nodes(partition)
        if known:
            most_cpus = max(c for c, _, _ in known)
            most_mb = max(m for _, m, _ in known)
            asked_mb = _megabytes(memory)
            if per_node > most_cpus:
                return (f"can never start ({code}): it asks for {per_node} CPUs per node, the largest node of "
                        f"partition {partition} has {most_cpus}: lower slurm.cpus_per_task (x slurm.tasks_per_node) "
                        f"or pick another slurm.partition")
            if asked_mb is not None and asked_mb > most_mb:
                return (f"can never start ({code}): it asks for {memory} of memory per node, the largest node of "
                        f"partition {partition} has {most_mb / 1024:.0f}G: lower slurm.mem_gb or pick another "
                        f"slurm.partition")
            if "gpu" in gres and not any("gpu" in g for _, _, g in known):
                return (f"can never start ({code}): it asks for GPUs ({gres}), partition {partition} has none: "
                        f"set slurm.gpus_per_node=0 or a slurm.partition with GPUs")
        return f"can never start ({reason}) on partition {partition}: change {settings}"
    return f"can never start ({reason}): change {settings}"


@dataclass
class _Watch:
    job: submitit.Job
    label: str
    final_seen: float | None = None  # when the scheduler first said the job was over
    unknown_since: float | None = None
    end: JobEnd | None = None
    seen: tuple[str, str] | None = None  # the last (state, pending reason) shown


def _tasks(job: submitit.Job) -> list[submitit.Job]:
    return [job.task(k) for k in range(job.num_tasks)]


def _end_from_results(watch: _Watch, state_if_missing: str) -> JobEnd:
    """Read every task's result pickle that exists; the job failed if any task failed."""
    job = watch.job
    result, errors, missing = None, [], 0
    for k, task in enumerate(_tasks(job)):
        if not task.paths.result_pickle.exists():
            missing += 1
            continue
        # submitit's result file: ("success", value) or ("error", formatted traceback).
        outcome, value = pickle_load(task.paths.result_pickle)
        if outcome != "success":
            errors.append(_exception_line(value))
        elif k == 0:
            result = value
    stdout, stderr = job.paths.stdout, job.paths.stderr
    written = [t.paths.result_pickle.stat().st_mtime for t in _tasks(job) if t.paths.result_pickle.exists()]
    ended_at = max(written) if missing == 0 else time.time()
    if errors:
        return JobEnd(job.job_id, watch.label, "FAILED", False, errors[0], stdout, stderr, None, ended_at)
    if missing == 0:
        return JobEnd(job.job_id, watch.label, "COMPLETED", True, "", stdout, stderr, result, ended_at)
    detail = f"no result from {missing} of {job.num_tasks} task(s)"
    tail = _error_tail(stderr)
    return JobEnd(job.job_id, watch.label, state_if_missing, False,
                  f"{detail}; end of log: {tail}" if tail else detail, stdout, stderr, None, ended_at)


def _all_results(job: submitit.Job) -> bool:
    return all(task.paths.result_pickle.exists() for task in _tasks(job))


def _needs_scheduler(watch: _Watch) -> bool:
    return not isinstance(watch.job, submitit.LocalJob) and not _all_results(watch.job)


def _check(watch: _Watch, now: float, states: dict[str, tuple[str, str]]) -> JobEnd | None:
    """The job's end if it has ended, else None (and cancel it if it can never start)."""
    job = watch.job
    if _all_results(job):
        return _end_from_results(watch, "COMPLETED")
    if isinstance(job, submitit.LocalJob):
        if not job.done():
            return None
        state = "COMPLETED" if job.state == "FINISHED" else job.state
    else:
        info = states.get(str(job.job_id))
        if info is None:
            watch.unknown_since = watch.unknown_since or now
            if now - watch.unknown_since < UNKNOWN_GRACE_S:
                return None
            return _end_from_results(watch, "UNKNOWN")
        watch.unknown_since = None
        state, reason = info
        if state == "PENDING" and reason == NEVER_SATISFIED:
            job.cancel(check=False)
            end = _end_from_results(watch, "CANCELLED")
            end.detail = "never started: a job it depends on did not complete (cancelled)"
            return end
        if state == "PENDING" and never_starts(reason):
            why = why_never_starts(str(job.job_id), reason)  # asked before the cancel makes the job go
            job.cancel(check=False)
            end = _end_from_results(watch, "NEVER_STARTS")
            end.detail = f"{why} (cancelled)"
            return end
        if state in SLURM_ACTIVE_STATES:
            return None
    # Over, by the scheduler's word: give the result files a moment to appear.
    watch.final_seen = watch.final_seen or now
    if state == "COMPLETED":
        if now - watch.final_seen < RESULT_GRACE_S:
            return None
        state = "ENDED_WITHOUT_RESULT"  # the process ended, but submitit never wrote what it returned
    return _end_from_results(watch, state)


def _queue_line(watch: _Watch, state: str, reason: str) -> str:
    """``job 12 (train) PENDING: Resources``: a change of a queued job's state, for ``progress``."""
    shown = reason if reason and reason != "None" else ""
    return f"job {watch.job.job_id} ({watch.label}) {state}" + (f": {shown}" if shown else "")


def wait_jobs(
    jobs: Sequence[submitit.Job],
    timeout_s: float | None = None,
    poll_s: float = POLL_S,
    report: Callable[[JobEnd], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[JobEnd]:
    """Wait until every job has ended or ``timeout_s`` passed; one ``JobEnd`` per job, in order.

    ``report`` is called once per job as soon as its end is seen; ``progress`` with one line each time a
    Slurm job's state or pending reason changes (``job 12 (train) PENDING: Priority``).  Jobs still
    running at the timeout are reported as ``WAIT_TIMEOUT`` (with their last state and reason) and left
    running (the caller decides to cancel).
    """
    started = time.monotonic()
    watches = [_Watch(job, job_label(job)) for job in jobs]
    while True:
        now = time.monotonic()
        pending = [w for w in watches if w.end is None]
        states = slurm_states([str(w.job.job_id) for w in pending if _needs_scheduler(w)])
        for watch in pending:
            watch.end = _check(watch, now, states)
            info = states.get(str(watch.job.job_id))
            if watch.end is None and info is not None and info != watch.seen:
                watch.seen = info
                if progress is not None:
                    progress(_queue_line(watch, *info))
            if watch.end is not None and report is not None:
                report(watch.end)
        if all(w.end is not None for w in watches):
            break
        if timeout_s is not None and now - started >= timeout_s:
            for watch in watches:
                if watch.end is None:
                    where = "left running"
                    if watch.seen is not None:
                        state, reason = watch.seen
                        where = f"{state.lower()}" + (f", {reason}" if reason and reason != "None" else "")
                        where += "; left in the queue" if state == "PENDING" else "; left running"
                    watch.end = JobEnd(
                        watch.job.job_id, watch.label, "WAIT_TIMEOUT", False,
                        f"still not ended after {timeout_s:.0f}s of waiting ({where})",
                        watch.job.paths.stdout, watch.job.paths.stderr, None, time.time(),
                    )
                    if report is not None:
                        report(watch.end)
            break
        time.sleep(poll_s)
    return [w.end for w in watches]  # type: ignore[misc]

