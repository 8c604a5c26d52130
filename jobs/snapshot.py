"""Jobs run the code they were submitted with: a copy of the project taken at submission.

A queued job, or one requeued after a time limit, would otherwise import whatever the checkout holds
when it starts: edit a file or ``git pull`` while a pipeline waits in the queue and its jobs run the new
code, or a mix of old and new.  So every submission first copies the project's code into
``<run_dir>/code/<content hash>/`` and the jobs import from there (their PYTHONPATH and their start
directory; see ``jobs.submit``).

Only what a job runs is copied (cluster scratch often has an inode quota, and every submission makes a
copy): the Python files of the top-level modules and of the packages a job imports (``core``, ``data``,
``models``, ``training``, ``stages``, ``jobs``: every top-level folder with an ``__init__.py``), plus the
folder of any stage or model family declared outside them (``stages.registry``, ``core.families``: the
declaration's import path names its module; ``model.plugins`` modules declare families); no tests,
benchmarks, docs, configs (a job gets its config as data) or sbatch scripts.

In a git checkout the copy is made by submitit's own ``RsyncSnapshot`` (needs ``git`` and
``rsync``): those of the tracked files, as they are in the working tree, uncommitted edits included,
plus the untracked Python files git does not ignore (new modules not committed yet); no git history.
Elsewhere (no git, no rsync, or the project inside a bigger repository) the same files are found by
walking the folder.  Either way the folders named in ``EXCLUDE`` and the run and data folders are left out.

The folder is named after a hash of its content, so submitting the same code twice reuses one copy,
and the version (that hash, plus the git commit and whether the tree had changes) is printed by every
job and written to ``<run_dir>/code_version.json``.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from submitit.helpers import RsyncSnapshot

from core.atomic import write_json_atomic
from core.errors import FramecastError

# The folder holding core/, stages/, jobs/: what a snapshot copies.
REPO_ROOT = Path(__file__).resolve().parent.parent
CODE_DIR = "code"  # <run_dir>/code/<hash>/
VERSION_NAME = "code_version.json"  # <run_dir>/code_version.json: the latest submission's code
# Never code, and possibly huge: environments, data, runs, caches, git's own files.
EXCLUDE = (".git", ".venv", "venv", "datasets", "runs", "preds", "__pycache__", "*.pyc", ".pytest_cache", "build",
           "*.egg-info")
# What a job imports: files with these suffixes, in the top-level folder or in a package a job imports.
CODE_SUFFIXES = (".py",)
# Top-level folders never imported by a job, even where they hold Python (unless a stage is declared there).
NOT_RUN = ("tests", "benchmarks", "docs", "configs")
HASH_CHARS = 16  # of the sha256, in the folder name
GIT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CodeSnapshot:
    """Where a submission's code was copied, and which code it is (plain data: jobs pickle it)."""

    root: str  # the folder jobs import from
    version: dict[str, Any]  # content_sha256, git_commit, git_dirty, source, taken_at, method

    def describe(self) -> str:
        """``code 1a2b3c4d5e6f7a8b (git 591870e, uncommitted changes)``: one line for logs."""
        v = self.version
        git = ""
        if v.get("git_commit"):
            git = f" (git {v['git_commit'][:12]}{', uncommitted changes' if v.get('git_dirty') else ''})"
        return f"code {v['content_sha256'][:HASH_CHARS]}{git}"


def _git(root: Path, *args: str) -> str | None:
    """Output of a read-only git command in ``root``; None where git is missing or fails."""
    if shutil.which("git") is None:
        return None
    try:
        # --no-optional-locks: `git status` must not rewrite the index of a checkout others work in.
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` when it lies inside it (a run or data folder in the checkout)."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def _excluded(relative: str, names: Iterable[str], paths: Iterable[str]) -> bool:
    parts = Path(relative).parts
    if any(Path(part).match(pattern) for part in parts for pattern in names):
        return True
    return any(relative == p or relative.startswith(p + "/") for p in paths)


def _declared_folders(source: Path) -> set[str]:
    """Top-level folders of ``source`` holding the module of a declared stage or model family (one declared
    outside the packages: ``tests/toy_stage.py``, a ``model.plugins`` module such as ``tests/toy_family.py``)."""
    from core import families
    from stages import registry

    paths = [stage.run for stage in registry.stages()] + [family.model for family in families.families()]
    folders = set()
    for path in paths:
        parts = path.split(":")[0].split(".")
        module = source.joinpath(*parts)
        if len(parts) > 1 and (module.with_suffix(".py").is_file() or (module / "__init__.py").is_file()):
            folders.add(parts[0])
    return folders


def code_folders(source: Path) -> set[str]:
    """The top-level folders a job imports from: the packages (a folder with ``__init__.py``) not in
    ``NOT_RUN``, and the folders of stages and families declared elsewhere."""
    packages = {p.parent.name for p in source.glob("*/__init__.py")} - set(NOT_RUN)
    return packages | _declared_folders(source)


def runs_in_jobs(relative: str, folders: set[str]) -> bool:
    """Whether the file ``relative`` (to the project) is one a job may import: a code file at the top or
    in one of ``folders`` (``code_folders``)."""
    parts = Path(relative).parts
    return relative.endswith(CODE_SUFFIXES) and (len(parts) == 1 or parts[0] in folders)


def glob_escape(name: str) -> str:
    """``name`` as an rsync pattern matching only itself (``[``, ``*``, ``?`` and ``\\`` escaped)."""
    return re.sub(r"([\[\]*?\\])", r"\\\1", name)


def _rsync_copy(source: Path, target: Path, skip_paths: list[str]) -> None:
    """submitit's RsyncSnapshot: the working tree's tracked files (and new .py files) that a job runs, rsynced.

    ``target`` exists already, so RsyncSnapshot skips its shallow ``git clone``: the jobs need no
    history (the version records the commit), and a tracked file deleted in the working tree must
    not come back from HEAD.
    """
    folders = code_folders(source)
    untracked = (_git(source, "ls-files", "--others", "--exclude-standard") or "").splitlines()
    # Untracked files copied along with the tracked ones: new modules not committed yet.
    include = [f for f in untracked if runs_in_jobs(f, folders) and not _excluded(f, EXCLUDE, skip_paths)]
    tracked = (_git(source, "ls-files") or "").splitlines()
    # RsyncSnapshot copies every tracked file but those excluded: each one a job does not run, by its path.
    not_run = [f for f in tracked if not runs_in_jobs(f, folders)]
    exclude = [*EXCLUDE, *(f"/{p}" for p in skip_paths), *(f"/{glob_escape(f)}" for f in not_run)]
    try:
        with RsyncSnapshot(target, root_dir=source, exclude=exclude, include=include):
            pass  # it changes into the copy while inside: nothing to do there
    except subprocess.CalledProcessError as exc:
        # rsync exits 23 when a listed file is missing: a tracked file deleted in the working tree
        # (rsync prints its name).  Everything else must have been copied.
        deleted = set((_git(source, "ls-files", "--deleted") or "").splitlines())
        wanted = [f for f in [*tracked, *include] if f not in deleted and runs_in_jobs(f, folders)
                  and not _excluded(f, EXCLUDE, skip_paths)]
        if exc.returncode != 23 or not deleted or not all((target / f).is_file() for f in wanted):
            raise FramecastError(f"{source}: could not snapshot the code for the jobs ({exc})") from None


def _plain_copy(source: Path, target: Path, skip_paths: list[str]) -> None:
    """Every code file a job runs, outside the excluded folders, where git or rsync cannot be used."""
    folders = code_folders(source)
    for path in sorted(p for suffix in CODE_SUFFIXES for p in source.rglob(f"*{suffix}")):
        relative = path.relative_to(source).as_posix()
        if _excluded(relative, EXCLUDE, skip_paths) or any(part.startswith(".") for part in Path(relative).parts) \
                or not runs_in_jobs(relative, folders):
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)


def content_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order: the snapshot's identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _uses_rsync_snapshot(source: Path) -> bool:
    top = _git(source, "rev-parse", "--show-toplevel")
    return bool(top) and Path(top.strip()).resolve() == source.resolve() and RsyncSnapshot.available()


def take_snapshot(run_dir: str | Path, skip: Iterable[str | Path] = (), source: Path = REPO_ROOT) -> CodeSnapshot:
    """Copy the code of ``source`` into ``<run_dir>/code/<hash>/``; record it in ``code_version.json``.

    ``skip``: folders to leave out when they lie inside ``source`` (the run and data folders).
    """
    source = Path(source).resolve()
    run_dir = Path(run_dir).resolve()
    skip_paths = [p for p in (_inside(Path(s), source) for s in [run_dir, *skip]) if p and p != "."]
    code_dir = run_dir / CODE_DIR
    code_dir.mkdir(parents=True, exist_ok=True)
    tmp = code_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    use_rsync = _uses_rsync_snapshot(source)
    try:
        tmp.mkdir()
        (_rsync_copy if use_rsync else _plain_copy)(source, tmp, skip_paths)
        sha = content_hash(tmp)
        final = code_dir / sha[:HASH_CHARS]
        if final.is_dir():
            shutil.rmtree(tmp)  # the same code was snapshot before
        else:
            try:
                os.rename(tmp, final)
            except OSError:  # another submission renamed the same code into place first
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    commit = (_git(source, "rev-parse", "HEAD") or "").strip() or None
    status = _git(source, "status", "--porcelain") if commit else None
    version = {
        "content_sha256": sha,
        "git_commit": commit,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "source": str(source),
        "snapshot": str(final),
        "method": "submitit RsyncSnapshot" if use_rsync else "copy of the .py files",
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(run_dir / VERSION_NAME, version)
    return CodeSnapshot(str(final), version)



def code_pythonpath(code_root: str | Path, shell: bool = False) -> str:
    """PYTHONPATH that makes a job import framecast from ``code_root`` (its snapshot) whatever its
    environment says: the root first, then what PYTHONPATH held. ``shell``: as the ``export`` line of
    a Slurm job's set-up, expanded on the compute node; else the value for this process's children."""
    root = str(code_root)
    if shell:
        return f"export PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}"
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
