"""One writer per run folder: a lock file naming its holder (host, pid, Slurm job id).

Two trainings of one ``run.name`` at once would resume from each other's ``last.pt``, overwrite each
other's ``best.pt`` and interleave their logs. The second is refused with one line naming the first.
The lock is a file, not ``flock``, because ``flock`` does not hold across the nodes of many cluster
file systems. A holder that is gone does not block forever:
- the same Slurm job (a requeued job starts again under its id) takes its folder back;
- a holder on this host whose process no longer exists is replaced;
- a holder elsewhere keeps the file's mtime fresh (a heartbeat thread); older than ``stale_s`` it
  is taken to be dead (killed with its node, say) and replaced.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.atomic import os_error_text, write_json_atomic
from core.errors import FramecastError
from core.processes import pid_alive

LOCK_NAME = "run.lock"
# Seconds a taker waits before reading the lock back, so two that replaced a dead holder at the
# same moment find out which of them won.
SETTLE_S = 0.2


def slurm_job_id() -> str:
    """This process's Slurm job (array tasks as ``<array>_<task>``), or "" outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "")


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    slurm_job: str
    since: float
    # Why the lock file could not be read ("" when it could): its holder is then unknown.
    problem: str = ""

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), slurm_job_id(), time.time())

    def describe(self) -> str:
        if self.problem:
            return f"holder unknown: {self.problem}"
        job = f", Slurm job {self.slurm_job}" if self.slurm_job else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}{job}, since {when}"

    def same_process(self, other: "Holder") -> bool:
        return (self.host, self.pid, self.slurm_job) == (other.host, other.pid, other.slurm_job)


def _read(path: Path) -> Holder | None:
    try:
        values = json.loads(path.read_text())
        return Holder(str(values["host"]), int(values["pid"]), str(values["slurm_job"]), float(values["since"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Unreadable (damaged, or caught while its writer fills it): a holder of unknown liveness,
        # replaced like any other once the file has not been touched for stale_s.
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return Holder("?", -1, "", 0.0, problem=f"{path.name} is unreadable ({why})")


class RunLock:
    """``with RunLock(run_dir, stale_s): ...`` holds ``<run_dir>/run.lock`` for the block."""

    def __init__(self, run_dir: str | os.PathLike, stale_s: float):
        self.path = Path(run_dir) / LOCK_NAME
        self.stale_s = stale_s
        self.me = Holder.me()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _why_replaceable(self, holder: Holder) -> str:
        """Why ``holder`` may be replaced, or "" when it may still be writing."""
        if self.me.slurm_job and holder.slurm_job == self.me.slurm_job:
            return f"it is this Slurm job ({holder.slurm_job}) before a requeue"
        if holder.host == self.me.host and holder.pid > 0 and not pid_alive(holder.pid):
            return f"its process {holder.pid} no longer exists"
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        if age > self.stale_s:
            return f"it has not shown a sign of life for {age:.0f} s"
        return ""

    def acquire(self) -> None:
        record = asdict(self.me)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FramecastError(f"{self.path.parent}: cannot create the run folder ({os_error_text(exc)})") from None
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(self.path)
            reason = self._why_replaceable(holder) if holder is not None else "it is gone"
            if not reason and holder.problem:
                raise FramecastError(
                    f"{self.path}: {holder.problem}, so whether a training holds this run folder is unknown; "
                    f"it is taken over once untouched for run.lock_stale_s={self.stale_s:g} s (delete it "
                    "if no training of this run is running)"
                ) from None
            if not reason:
                raise FramecastError(
                    f"{self.path.parent}: another training is writing this run folder ({holder.describe()}); "
                    f"wait for it to end, cancel it, or choose another run.name (lock file {self.path})"
                ) from None
            write_json_atomic(self.path, record)  # replace the dead holder's record
            time.sleep(SETTLE_S)
            winner = _read(self.path)
            if winner is None or not winner.same_process(self.me):
                raise FramecastError(
                    f"{self.path.parent}: another training took this run folder at the same moment "
                    f"({winner.describe() if winner else 'unknown'}); choose another run.name"
                ) from None
        except OSError as exc:
            raise FramecastError(f"{self.path}: cannot take the run folder's lock ({os_error_text(exc)})") from None
        else:
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump(record, handle)
            except OSError as exc:
                self.path.unlink(missing_ok=True)
                raise FramecastError(f"{self.path}: cannot write the run folder's lock ({os_error_text(exc)})") from None
        self._beat = threading.Thread(target=self._heartbeat, name="framecast-run-lock", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        """Touch the lock a few times per ``stale_s`` so other nodes can tell this holder lives."""
        while not self._stop.wait(self.stale_s / 4):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        holder = _read(self.path)
        if holder is not None and holder.same_process(self.me):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(run_dir: str | os.PathLike) -> Holder | None:
    """Who holds ``run_dir``'s lock now (None when nobody does), for ``main.py runs``."""
    return _read(Path(run_dir) / LOCK_NAME)
