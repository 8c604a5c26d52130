"""Write every output under a temporary name and rename it into place when complete.

A kill at any moment then leaves either the previous good file or none, never half a file.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from core.errors import FramecastError
from core.processes import pid_alive


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Temporary names: ``.<name>.tmp-<host>-<pid>[suffix]``. The host keeps a writer on another node of a
# shared file system from mistaking a live writer there for a dead one here.
TMP_MARK = ".tmp-"
_HOST = socket.gethostname().split(".")[0].replace("-", "_") or "host"


def remove_dead_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries left in ``folder`` by writers of this host that no longer run (a kill
    mid-write); a prediction array's can be gigabytes. Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).glob(f".*{TMP_MARK}{_HOST}-*"))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name.rsplit(f"{TMP_MARK}{_HOST}-", 1)[1].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


def os_error_text(exc: OSError) -> str:
    """What went wrong, in a few words: HDF5 and torch wrap the errno in pages of text."""
    found = re.search(r"errno = (\d+)", str(exc))
    if found:
        return os.strerror(int(found.group(1)))
    text = (exc.strerror or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling path; on success fsync it and rename it onto ``path``.

    ``suffix`` keeps an extension some writers insist on (``np.save`` appends ``.npy``).
    On an exception the temporary file is removed and ``path`` is left untouched; an ``OSError``
    (disk full, say) becomes one ``FramecastError`` line naming ``path``.
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}{TMP_MARK}{_HOST}-{os.getpid()}{suffix}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(final.parent)
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        # A full disk, a quota, a read-only or vanished folder: the user's to fix, so one line.
        raise FramecastError(f"{final}: could not write ({os_error_text(exc)}); "
                             "the previous file, if any, is unchanged") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary sibling name and rename it onto ``final`` when complete.

    The folder-sized ``atomic_path``: an interrupted generator leaves no half-written split. With
    ``replace`` an existing ``final`` is swapped out only after success.
    """
    target = Path(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(target.parent)
    tmp = target.with_name(f".{target.name}{TMP_MARK}{_HOST}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            if not replace:
                raise FramecastError(f"{target}: already exists")
            old = target.with_name(f".{target.name}{TMP_MARK}{_HOST}-{os.getpid()}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class WritebackAhead:
    """Flush a file being written to disk in a background thread, every ``every_bytes`` written.

    The kernel keeps up to a tenth of RAM of dirty pages before it writes any back, so a big output
    otherwise reaches the disk only in ``atomic_path``'s final fsync, a stall of seconds per GB with
    the CPUs idle. Flushing as the file grows overlaps that disk time with the work producing it.
    """

    def __init__(self, path: str | os.PathLike, every_bytes: int):
        self.path, self.every_bytes = Path(path), every_bytes
        self._pending = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="writeback")
        self._flush: Future | None = None

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` more written; start a flush when enough have piled up and none is running."""
        self._pending += nbytes
        if self._pending >= self.every_bytes and (self._flush is None or self._flush.done()):
            self._pending = 0
            self._flush = self._pool.submit(self._fdatasync)

    def _fdatasync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "WritebackAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
