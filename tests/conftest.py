"""Fixtures shared by the test modules. A module opts in with
``pytestmark = pytest.mark.usefixtures("one_thread")``; nothing here is autouse, so the tests that want
several threads (distributed, benchmarks, data loading) keep them."""
from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist each worker computes with one thread (and so do the processes it starts):
    two workers of two threads each on two cores leave OpenMP threads waiting on each other, several
    times slower than one thread each."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="module")
def one_thread():
    """One torch compute thread for the whole module, restored after it.

    Tiny convs gain nothing from threads, and on a busy 2-core box OpenMP waits make them 10x slower;
    with no loader workers it also makes every run of a config on the CPU bit-for-bit the same.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """The real-Slurm tests run one after another on one pytest-xdist worker (pytest.ini: ``-n``,
    ``--dist loadgroup``): the one-node Slurm has two CPUs, and two of these tests at once would
    leave each other's jobs pending past their timeouts. Every other test is spread over the workers."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
