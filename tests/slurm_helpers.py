"""Tiny importable callables for testing the jobs machinery (submitted callables must be importable)."""
from __future__ import annotations

import os
import time
from pathlib import Path

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


def make_tiny_data(root: Path) -> Path:
    """Eleven 8-frame 32x48 videos across the four splits: enough for a whole pipeline in seconds."""
    from data.synthetic import make_shapes_dataset

    return make_shapes_dataset(root, counts={"train": 4, "val": 2, "unlabeled": 2, "hidden": 3}, height=32,
                               width=48, frames=8, hidden_frames=4, seed=0, workers=1)


def tiny_config(data_root: Path, out_dir: Path, name: str, executor: str = "slurm", **sections) -> dict:
    """A config dict small enough for a 2-core machine: 8-frame 32x48 videos, two 8-channel levels."""
    values = {
        "run": {"name": name, "out_dir": str(out_dir), "device": "cpu"},
        "data": {"root": str(data_root), "t_in": 4, "t_out": 4, "num_workers": 0},
        "model": {"cell": "gru", "stem_channels": 8, "hidden_channels": [8, 8], "strides": [1, 2],
                  "kernel_size": 3, "norm_groups": 4},
        "train": {"epochs": 2, "batch_size": 2, "lr": 3e-3, "log_every_steps": 1, "early_stop_patience": 0},
        "predict": {"batch_size": 2},
        "convert": {"workers": 1},
        "slurm": {"executor": executor, "time_min": 10, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1},
    }
    for section, updates in sections.items():
        values[section] = {**values.get(section, {}), **updates}
    return values
