"""Fixtures shared by the test modules. A module opts in with
``pytestmark = pytest.mark.usefixtures("one_thread")``; nothing here is autouse, so the tests that want
several threads (distributed, benchmarks, data loading) keep them."""
from __future__ import annotations

import pytest


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
