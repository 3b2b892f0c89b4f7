"""A swap that fills up, in the guest: an 8 MiB zram device as the only swap and a workload
with a 32 MiB cold set. swap_out and slide count only the pages that went to swap, and
slide's refault guard does not take the pages that stayed for refaults.

The guest is ours alone, so the swap devices other tests made are switched off for these
tests and on again after (the host's must never be touched: see conftest's zram_swap).
"""
from __future__ import annotations

import logging
import subprocess

import numpy as np
import pytest

from conftest import pagemap_bits
from etmem import Manager, Project, kernel, procfs, zram
from etmem.actions import swap_out
from etmem.process import ProcessHandle
from etmem.workload import Workload

PAGE = 4096
SWAP_BYTES = 8 << 20


@pytest.fixture
def small_swap():
    """An 8 MiB zram device as the guest's only swap; the others are back on afterwards."""
    others = procfs.swap_devices()
    for device in others:
        subprocess.run(["swapoff", device["name"]], check=True)
    try:
        with zram.ZramSwap(SWAP_BYTES, priority=100) as device:
            yield device
    finally:
        for device in others:
            subprocess.run(["swapon", "-p", str(device["priority"]), device["name"]], check=True)


def test_swap_out_counts_what_fitted_when_swap_fills(small_swap):
    slots = SWAP_BYTES // PAGE - 1   # the first page holds the swap header
    with Workload(total_mb=40, hot_mb=8, pause=0.01, huge=False) as w, ProcessHandle.open(w.pid) as handle:
        cold = np.arange(*w.cold, PAGE, dtype=np.uint64)
        result = swap_out(handle, cold, method="process_madvise")
        _, swapped = pagemap_bits(w.pid, *w.cold)
        assert result.done == int(swapped.sum()) <= slots, result   # what fitted into swap ...
        assert result.accepted == cold.size            # ... of the whole range the kernel took
        assert np.array_equal(result.pages_out, cold[swapped])
        assert result.error and "swap is full" in result.error
        assert w.verify()


def test_slide_with_a_full_swap_counts_what_left_and_keeps_its_rounds_whole(small_swap, caplog):
    source = "page_idle" if kernel.has_page_idle() else "damon"
    with Workload(total_mb=40, hot_mb=8, pause=0.005, huge=False) as w:
        project = Project(name="full", loop=2, interval=1, sleep=1, scanner=source)
        task = project.add_engine("slide").add_task("w", "pid", w.pid, T=1)
        manager = Manager()
        manager.add(project)
        with caplog.at_level(logging.WARNING, "etmem.slide"):
            for _ in range(3):
                stats = task.run_round()
        in_swap = procfs.status_kb(w.pid, "VmSwap") * 1024 // PAGE
        assert stats.pages_swapped == in_swap <= SWAP_BYTES // PAGE, stats.as_dict()
        assert "came back" not in caplog.text
        assert task.view.state.budget == {}
        assert w.verify()
