"""Tiny importable callables for testing the jobs machinery (submitted callables must be importable)."""
from __future__ import annotations

import os
import time

import submitit


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str) -> None:
    raise RuntimeError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def environment() -> dict:
    env = submitit.JobEnvironment()
    return {"job_id": env.job_id, "rank": env.global_rank, "tasks": env.num_tasks,
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pythonpath": os.environ.get("PYTHONPATH", ""),
            "cwd": os.getcwd(), "setup": os.environ.get("FRAMECAST_SETUP_RAN"),
            "wrapped": os.environ.get("FRAMECAST_WRAPPED")}
