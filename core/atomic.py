"""Write every output under a temporary name and rename it into place when complete.

A kill at any moment then leaves either the previous good file or none, never half a file.
"""
from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling path; on success fsync it and rename it onto ``path``.

    ``suffix`` keeps an extension some writers insist on (``np.save`` appends ``.npy``).
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


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
