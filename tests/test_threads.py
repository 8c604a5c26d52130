"""run.threads: one number of CPU threads, from the setting or from what the process was given, applied
to torch in every stage and shown on the run's first log line; loader workers compute with one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from core.config import load_config
from core.errors import FramecastError
from core.threads import apply_threads, resolve_threads, usable_cpus
from data.datasets import make_loader

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch):
    """No thread variables from the test run itself; torch's thread count restored after."""
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(threads)


def test_the_thread_count_comes_from_the_setting_then_the_environment_then_the_cpus(clean_env):
    assert resolve_threads(0) == (usable_cpus(), "the CPUs this process may use")
    assert usable_cpus() == len(os.sched_getaffinity(0))
    assert resolve_threads(0, job_cpus=10_000)[0] == usable_cpus()  # a local job never gets more than there is
    assert resolve_threads(0, job_cpus=1) == (1, f"slurm.cpus_per_task of a local job, of {usable_cpus()} usable")
    clean_env.setenv("SLURM_CPUS_PER_TASK", "3")
    assert resolve_threads(0, job_cpus=1) == (3, "SLURM_CPUS_PER_TASK")
    clean_env.setenv("OMP_NUM_THREADS", "5")
    assert resolve_threads(0) == (5, "OMP_NUM_THREADS")
    assert resolve_threads(2) == (2, "run.threads")  # the setting wins over everything
    clean_env.setenv("OMP_NUM_THREADS", "junk")  # not a number: ignored, not a crash
    assert resolve_threads(0) == (3, "SLURM_CPUS_PER_TASK")


def test_apply_sets_torch_and_the_childrens_environment(clean_env):
    assert apply_threads(1) == "1 CPU thread (run.threads)"
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    clean_env.setenv("SLURM_CPUS_PER_TASK", "2")
    clean_env.delenv("OMP_NUM_THREADS")
    assert apply_threads(0) == "2 CPU threads (SLURM_CPUS_PER_TASK)" and torch.get_num_threads() == 2


def test_threads_setting_is_checked():
    assert load_config(None, ["run.threads=3"]).run.threads == 3
    with pytest.raises(FramecastError, match="run.threads"):
        load_config(None, ["run.threads=-1"])


class ThreadsSeen(torch.utils.data.Dataset):
    """Each item: the number of torch threads of the process that made it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(torch.get_num_threads())


def test_loader_workers_compute_with_one_thread_each(clean_env):
    torch.set_num_threads(2)
    loader = make_loader(ThreadsSeen(), 2, shuffle=False, num_workers=2, prefetch_factor=1, pin_memory=False,
                         drop_last=False)
    try:
        seen = torch.cat(list(loader)).tolist()
    finally:
        loader.end_workers()
    assert seen == [1, 1, 1, 1]


def test_the_run_shows_its_threads_on_its_first_lines(tmp_path):
    from train_helpers import make_data, tiny_config

    data_root = make_data(tmp_path / "data")
    cfg = tiny_config(data_root, tmp_path / "runs", "threads", "train.epochs=1")
    config = tmp_path / "run.yaml"
    from core.config import config_to_dict

    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "train", "--config", str(config), "run.threads=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    [training] = [line for line in done.stderr.splitlines() if " training " in line]
    assert training.endswith("1 CPU thread (run.threads; inter-op 1)")
