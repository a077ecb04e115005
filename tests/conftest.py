"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import torch

# glibc returns every freed block above its (adaptive) mmap threshold to the system and faults fresh zeroed pages
# in for the next one: on this suite's many small runs that was a third of the CPU time, in the kernel. These
# keep freed memory for reuse (blocks over 32 MB are still mapped and unmapped).
MALLOC_SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


def pytest_configure(config: pytest.Config) -> None:
    """The controller's environment, before it starts the xdist workers: they and every subprocess of a test
    (the CLI, torchrun) read the allocator settings at start-up."""
    for key, value in MALLOC_SETTINGS.items():
        os.environ.setdefault(key, value)


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


@pytest.fixture(autouse=True, scope="module")
def _module_tmp_cleanup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Directories a module's fixtures made with tmp_path_factory.mktemp are removed when the module ends, unless
    one of its tests failed (pytest itself removes a passed test's tmp_path, tmp_path_retention_policy): the
    suite's runs write checkpoints of up to ~200 MB, and kept to the session's end they filled CI's disk."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return
    for path in set(base.iterdir()) - before:
        shutil.rmtree(path, ignore_errors=True)
