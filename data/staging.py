"""Node-local staging: copy a pack once per node to fast local disk, verify it, read it from there.

``data.stage_to: ${SLURM_TMPDIR}`` makes ``data.sources.open_split`` call ``stage_file`` for every pack
(and Moving MNIST ``.npy`` file) a job opens: the training splits and the validation split for train,
the predicted or evaluated split for predict and evaluate. A job on 8 GPUs then reads the shared file
system once per node instead of 8 times per epoch.

- Once per node: the processes of a node that stage the same file take an exclusive ``flock`` on
  ``<copy>.lock`` in the staging folder. The first one copies, the others (the other local ranks of a
  DDP job, or another job on the node) block until it is done, then find the copy ready. ``flock``
  (not a lock file, as ``core.runlock`` uses) because the staging folder is node-local, where flock is
  reliable and is released by the kernel when its holder dies, so a killed copier never blocks the node.
- Verified: size and a BLAKE2b checksum. The checksum is computed over the bytes as they are read from
  the source while copying (no extra read of the shared file system), then the written copy is read
  back from the local disk and must give the same checksum before it is renamed into place (it is
  written under a temporary name, so a reader never sees half a copy). The first copy records the
  source's checksum beside the source (``.<name>.blake2b.json``, when that folder is writable) and in
  the copy's marker; later copies, on any node, must read the same bytes, so a source changed in place
  or a bad read is caught.
- Reused while valid: the marker ``<copy>.staged.json`` records the source's path, size, mtime and
  checksum. A later job on the node reuses the copy when the source is unchanged and the copy's
  checksum still matches; a corrupted copy (a flipped byte) fails that check and is copied again. The
  check is a full checksum, not a sample (a sampled checksum would miss a single flipped byte almost
  always), computed in parallel threads over the local copy; the processes of one Slurm job trust a
  copy this job already verified, so a DDP job verifies once per node, not once per rank.

The checksum is a tree hash: BLAKE2b of each 16 MiB chunk, then BLAKE2b of the chunk digests and the
size, so chunks can be hashed in parallel (hashlib releases the GIL) in any order.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from core.atomic import atomic_path, os_error_text, write_json_atomic
from core.errors import FramecastError
from core.threads import usable_cpus

log = logging.getLogger(__name__)

STAGED_DIR = "framecast-staged"  # <stage_to>/framecast-staged/<source key>/<name>
MARKER_SUFFIX = ".staged.json"
LOCK_SUFFIX = ".lock"
CHUNK_BYTES = 16 << 20
DIGEST_BYTES = 32
# Free space to leave on the staging disk beyond the copy itself.
SPARE_BYTES = 256 << 20
MAX_HASH_THREADS = 8
# A copy is tried this many times when what was read disagrees with the source's recorded checksum.
COPY_ATTEMPTS = 2


@dataclass(frozen=True)
class Staged:
    """The outcome of ``stage``: the path to read and what was done (copied / reused / recopied)."""

    path: Path
    action: str  # "copied", "reused" or "recopied" (a copy that failed its check was replaced)
    seconds: float


def _threads() -> int:
    return max(1, min(MAX_HASH_THREADS, usable_cpus()))


def _tree_digest(chunk_digests: list[bytes], size: int) -> str:
    top = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for digest in chunk_digests:
        top.update(digest)
    top.update(size.to_bytes(8, "little"))
    return top.hexdigest()


def _chunk_digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def file_digest(path: str | os.PathLike, desc: str | None = None) -> str:
    """The tree checksum of a file, its chunks read and hashed by parallel threads."""
    path = Path(path)
    size = path.stat().st_size
    offsets = range(0, size, CHUNK_BYTES)
    fd = os.open(path, os.O_RDONLY)
    try:
        def one(offset: int) -> bytes:
            return _chunk_digest(os.pread(fd, CHUNK_BYTES, offset))

        with ThreadPoolExecutor(_threads()) as pool, \
                tqdm(total=size, unit="B", unit_scale=True, desc=desc or f"verify {path.name}", disable=None,
                     leave=False) as bar:
            digests = []
            for index, digest in enumerate(pool.map(one, offsets)):
                digests.append(digest)
                bar.update(min(CHUNK_BYTES, size - index * CHUNK_BYTES))
    finally:
        os.close(fd)
    return _tree_digest(digests, size)


def _copy_hashing(source: Path, target: Path, size: int) -> str:
    """Copy ``source`` to ``target`` sequentially, hashing the bytes read in background threads."""
    digests: list[bytes] = []
    pending: deque[Future] = deque()
    in_flight = _threads() + 1  # chunks read but not hashed yet: at most this many x CHUNK_BYTES in memory
    with open(source, "rb", buffering=0) as src, open(target, "wb") as dst, \
            ThreadPoolExecutor(_threads()) as pool, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"stage {source.name}", disable=None, leave=False) as bar:
        while True:
            data = src.read(CHUNK_BYTES)
            if not data:
                break
            dst.write(data)
            pending.append(pool.submit(_chunk_digest, data))
            while len(pending) > in_flight:
                digests.append(pending.popleft().result())
            bar.update(len(data))
        digests.extend(future.result() for future in pending)
        copied = dst.tell()
    if copied != size:
        raise FramecastError(f"{source}: read {copied} bytes, but the file has {size} (it changed while being staged)")
    return _tree_digest(digests, size)


def _source_state(source: Path) -> dict:
    stat = source.stat()
    return {"source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_json(path: Path) -> dict | None:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def _source_cache_path(source: Path) -> Path:
    return source.with_name(f".{source.name}.blake2b.json")


def _recorded_source_digest(source: Path, state: dict) -> str | None:
    """The checksum recorded beside the source for exactly this (size, mtime), or None."""
    cached = _read_json(_source_cache_path(source))
    if (cached and cached.get("size") == state["size"] and cached.get("mtime_ns") == state["mtime_ns"]
            and cached.get("chunk_bytes") == CHUNK_BYTES):
        return cached.get("digest")
    return None


def _record_source_digest(source: Path, state: dict, digest: str) -> None:
    """Best effort: a read-only data folder keeps no record (the copy's marker still does)."""
    try:
        write_json_atomic(_source_cache_path(source), {**state, "digest": digest, "chunk_bytes": CHUNK_BYTES})
    except (FramecastError, OSError):
        pass


def _job_id() -> str:
    return os.environ.get("SLURM_JOB_ID", "")


@contextlib.contextmanager
def _node_lock(lock_path: Path, what: str) -> Iterator[None]:
    """An exclusive flock on ``lock_path``; says once that it waits when another process holds it."""
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise FramecastError(f"{lock_path}: cannot create the staging lock ({os_error_text(exc)}); "
                             "data.stage_to must be a writable node-local folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process on %s to stage %s", socket.gethostname(), what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise FramecastError(f"{lock_path}: this file system does not support flock; data.stage_to "
                                     "must be a node-local folder (e.g. ${SLURM_TMPDIR} or /tmp)") from None
            raise
        yield
    finally:
        os.close(fd)  # releases the lock


def _valid_marker(marker: dict | None, state: dict, copy: Path) -> bool:
    if not marker or any(marker.get(key) != state[key] for key in ("source", "size", "mtime_ns")):
        return False
    try:
        return copy.stat().st_size == state["size"] and bool(marker.get("digest"))
    except FileNotFoundError:
        return False


def staged_path(source: str | os.PathLike, stage_to: str | os.PathLike) -> Path:
    """Where ``source`` is staged under ``stage_to``: one folder per source path, so two data sets
    with a ``train.h5`` each never share a copy."""
    source = Path(source).resolve()
    key = hashlib.blake2b(str(source).encode(), digest_size=8).hexdigest()
    return Path(stage_to) / STAGED_DIR / f"{source.parent.name}-{key}" / source.name


def stage(source: str | os.PathLike, stage_to: str | os.PathLike) -> Staged:
    """Stage ``source`` under ``stage_to`` (see the module docstring); returns the copy and what was done."""
    started = time.monotonic()
    source = Path(source).resolve()
    if not source.is_file():
        raise FramecastError(f"{source}: file to stage not found")
    copy = staged_path(source, stage_to)
    marker_path = copy.with_name(copy.name + MARKER_SUFFIX)
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FramecastError(f"data.stage_to={stage_to}: cannot create {copy.parent} ({os_error_text(exc)})") from None
    with _node_lock(copy.with_name(copy.name + LOCK_SUFFIX), str(source)):
        state = _source_state(source)
        marker = _read_json(marker_path)
        action = "copied"
        if _valid_marker(marker, state, copy):
            if _job_id() and marker.get("verified_job") == _job_id():
                return Staged(copy, "reused", time.monotonic() - started)  # this job checked it already
            digest = file_digest(copy, desc=f"verify staged {copy.name}")
            if digest == marker["digest"]:
                write_json_atomic(marker_path, {**marker, "verified_job": _job_id(), "verified_at": time.time()})
                log.info("reusing the staged copy %s of %s (checksum verified)", copy, source)
                return Staged(copy, "reused", time.monotonic() - started)
            log.warning("%s: the staged copy of %s fails its checksum (corrupted); copying it again", copy, source)
            action = "recopied"
        elif marker is not None or copy.exists():
            log.info("%s: the staged copy is out of date (the source changed); copying it again", copy)
        _copy_verified(source, copy, marker_path, state, stage_to)
    seconds = time.monotonic() - started
    log.info("staged %s to %s (%.1f MB in %.1f s)", source, copy, state["size"] / 1e6, seconds)
    return Staged(copy, action, seconds)


class _ReadMismatch(Exception):
    """What was read from the source disagrees with the checksum recorded for it."""


def _copy_once(source: Path, copy: Path, size: int, recorded: str | None, stage_to: str | os.PathLike) -> str:
    """One copy to a temporary name, renamed into place only when both checksums agree."""
    with atomic_path(copy) as tmp:
        try:
            read_digest = _copy_hashing(source, tmp, size)
        except OSError as exc:
            raise FramecastError(f"{source}: staging to {copy} failed ({os_error_text(exc)})") from None
        if recorded is not None and read_digest != recorded:
            raise _ReadMismatch()
        if file_digest(tmp, desc=f"verify {copy.name}") != read_digest:
            raise FramecastError(f"{copy}: the copy written to data.stage_to={stage_to} reads back differently "
                                 "from what was copied (a failing local disk?)")
    return read_digest


def _copy_verified(source: Path, copy: Path, marker_path: Path, state: dict, stage_to: str | os.PathLike) -> None:
    """Copy under a temporary name, check the checksum of the written copy, rename it into place."""
    marker_path.unlink(missing_ok=True)  # no marker while the copy is not valid
    with contextlib.suppress(FileNotFoundError):
        copy.unlink()  # frees its space for the new copy
    free = shutil.disk_usage(copy.parent).free
    if free < state["size"] + SPARE_BYTES:
        raise FramecastError(f"data.stage_to={stage_to}: {free / 1e9:.1f} GB free, too little to stage {source} "
                             f"({state['size'] / 1e9:.1f} GB); use a bigger node-local folder or data.stage_to=''")
    recorded = _recorded_source_digest(source, state)
    for attempt in range(1, COPY_ATTEMPTS + 1):
        try:
            read_digest = _copy_once(source, copy, state["size"], recorded, stage_to)
            break
        except _ReadMismatch:
            if attempt == COPY_ATTEMPTS:
                raise FramecastError(
                    f"{source}: its bytes do not match the checksum recorded when it was first staged "
                    f"({_source_cache_path(source)}): it was changed in place or reads back wrong; re-pack "
                    "it, or delete that file if the change was intended"
                ) from None
            log.warning("%s: read back differently than its recorded checksum; copying again", source)
    if recorded is None:
        _record_source_digest(source, state, read_digest)
    write_json_atomic(marker_path, {**state, "digest": read_digest, "chunk_bytes": CHUNK_BYTES,
                                    "host": socket.gethostname(), "copied_at": time.time(),
                                    "verified_job": _job_id(), "verified_at": time.time()})


def stage_file(source: str | os.PathLike, stage_to: str | os.PathLike) -> Path:
    """The node-local copy of ``source`` to read (``data.sources.open_split``)."""
    return stage(source, stage_to).path
