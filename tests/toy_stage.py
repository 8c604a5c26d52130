"""A toy stage, declared outside stages/ the way a new stage is: one ``Stage(...)`` and its run function.

Importing this module registers it (the CLI test imports it before running main.py; a job imports it
when it resolves ``run``).  It reports what a job needs to show: which code it ran (``toy_version``,
imported only when it runs, and ``toy_extra`` when that module exists), its shard, its working
directory and the SIGUSR2 handler in place while a stage runs.

While ``<run_dir>/hold`` exists it waits (up to ``HOLD_TIMEOUT_S``) before importing that code: a test
edits the checkout after submitting and then releases the job.
"""
from __future__ import annotations

import importlib
import os
import signal
import time
from pathlib import Path

from stages.registry import NO_GPU, WHOLE, Arg, Stage, register

HOLD_NAME = "hold"
HOLD_TIMEOUT_S = 120.0
POLL_S = 0.1

TOY = register(Stage(
    "toy", "report the code, config and shard a job ran (a test stage)", "tests.toy_stage:run", NO_GPU,
    args=(Arg("--name", "run.name", "run name"),),
    shards="predict.shards",
))


def _optional(module: str, attr: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError:
        return None


def run(cfg, shard: tuple[int, int] = WHOLE) -> dict:
    hold = cfg.run_dir / HOLD_NAME
    deadline = time.monotonic() + HOLD_TIMEOUT_S
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    version = importlib.import_module("tests.toy_version")
    result = {
        "name": cfg.run.name,
        "shard": list(shard),
        "version": version.VERSION,
        "extra": _optional("tests.toy_extra", "VALUE"),
        "version_file": str(Path(version.__file__).resolve()),
        "cwd": os.getcwd(),
        "sigusr2": repr(signal.getsignal(signal.SIGUSR2)),
    }
    print(f"toy {result['name']} shard {shard[0]}/{shard[1]} version {result['version']} "
          f"extra {result['extra']}", flush=True)
    return result
