"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread (small tensor jobs run faster and steadier on a shared 2-core CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker() -> Iterator[None]:
    """Under pytest-xdist (the suite's two workers, one per core), each worker computes on one torch thread, so
    the two never fight over the cores; a serial run keeps torch's default."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
