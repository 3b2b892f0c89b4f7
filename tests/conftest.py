"""Shared fixtures: root checks, a private zram swap device, workload processes.

Tests that need a kernel feature set it up themselves and skip only when the
kernel truly lacks it, saying why.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from etmem import zram
from etmem.workload import Workload

PAGE = os.sysconf("SC_PAGE_SIZE")

pytest_plugins = ["vm_harness",      # runs `vm`-marked tests inside a QEMU guest
                  "etmemd_harness"]  # the fixtures plugin_dir and daemon (a real etmemd)


def pytest_configure(config):
    config.addinivalue_line("markers", "root: needs root")


@pytest.fixture
def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: the test drives real kernel interfaces of another process")


@pytest.fixture(scope="session")
def zram_swap():
    """A zram swap device of our own (2 GiB, priority 32000: used before the machine's own swap), removed at the end."""
    reason = zram.missing_reason()
    if reason:
        pytest.skip(f"no zram swap device possible: {reason}")
    device = zram.ZramSwap(2 << 30, priority=32000).create()
    yield device
    device.remove()


@pytest.fixture(scope="module")
def target():
    """The pid of a sleeping child process for tasks to point at."""
    proc = subprocess.Popen(["sleep", "3600"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def workload_factory():
    """Start workload processes (etmem.workload.Workload); all are stopped afterwards."""
    started: list[Workload] = []

    def make(total_mb: int = 64, hot_mb: int = 8, pause: float = 0.01, huge: bool = False) -> Workload:
        w = Workload(total_mb=total_mb, hot_mb=hot_mb, pause=pause, huge=huge).start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def pagemap_bits(pid: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(present, swapped) booleans per page of [start, end), read plainly from pagemap.

    Independent of etmem's own decoder, so tests can check it.
    """
    n = (end - start) // PAGE
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        raw = np.frombuffer(f.read(n * 8), dtype=np.uint64)
    return (raw >> np.uint64(63)) & np.uint64(1) == 1, (raw >> np.uint64(62)) & np.uint64(1) == 1
