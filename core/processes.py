"""Worker processes that never outlive the process that started them.

A pool's workers wait on their task queue; when the parent is killed outright (SIGKILL, the out-of-
memory killer) nobody tells them, and each lingers with its memory (hundreds of MB while decoding
or encoding frames). On Linux the kernel can send a worker a signal when its parent dies
(``PR_SET_PDEATHSIG``); elsewhere a thread polls the parent's pid.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from typing import Iterator

from core.errors import FramecastError

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Seconds between looks at the parent where the kernel cannot watch it for us.
PARENT_POLL_S = 1.0


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when ``parent_pid`` (the process that made the pool) ends.

    Pools must be created from the main thread: the kernel's signal fires when the creating thread
    ends. If the parent is already gone by the time this runs, the worker exits at once.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        threading.Event().wait(PARENT_POLL_S)


class StoppedBySignal(FramecastError):
    """A command stopped by a signal on purpose: one line, and the shell's exit status for it (143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


@contextlib.contextmanager
def signals_stop(what: str, signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Inside the block, SIGTERM raises ``StoppedBySignal``, so every ``with`` in it unwinds: temporary
    files are removed instead of left behind by a silent death.

    Only where the signal still has its default action, in the main thread: a handler someone set
    (submitit's, which requeues a job) is left alone.
    """
    installed: dict[int, object] = {}

    def stop(signum: int, _frame: object) -> None:
        raise StoppedBySignal(f"{what}: stopped by {signal.Signals(signum).name} before it finished; "
                              "its temporary files are removed and any earlier output is unchanged", signum)

    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            if signal.getsignal(sig) is signal.SIG_DFL:
                installed[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)
