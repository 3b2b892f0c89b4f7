"""The workload process: its scattered layout's ground truth, placement figures and Ctrl-C behaviour (root, real swap)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import pagemap_bits
from etmem import procfs, workload
from etmem.actions import swap_out
from etmem.process import ProcessHandle
from etmem.workload import PAGE, Workload, hot_page_indices


def test_scattered_layout_is_one_vma_whose_hot_pages_are_the_ones_it_touches(need_root, zram_swap):
    with Workload(total_mb=32, hot_mb=4, layout="scattered") as w:
        start, end = w.region
        assert w.hot is None and w.cold is None
        assert [v for v in procfs.maps(w.pid) if v.start <= start < v.end] == \
            [v for v in procfs.maps(w.pid) if v.start == start and v.end == end]
        assert len(w.hot_pages) == 1024 and len(w.cold_pages) == 8192 - 1024
        assert np.intersect1d(w.hot_pages, w.cold_pages).size == 0
        spread = np.diff(w.hot_pages.astype(np.int64)) // PAGE
        assert spread.max() > 1 and (w.hot_pages[0] - start) < (end - start) // 8, "hot pages are spread, not one run"
        # Page everything out: exactly the hot pages come back, the cold ones stay in swap.
        with ProcessHandle.open(w.pid) as handle:
            result = swap_out(handle, np.arange(start, end, PAGE, dtype=np.uint64))
        # the kernel took every page; a hot page touched again during the call may not count as out
        assert result.accepted == 8192 and result.done >= 8192 - 1024
        time.sleep(0.5)
        present, swapped = pagemap_bits(w.pid, start, end)
        slots = ((w.hot_pages - np.uint64(start)) // np.uint64(PAGE)).astype(np.int64)
        is_hot = np.zeros(len(present), dtype=bool)
        is_hot[slots] = True
        assert present[is_hot].all() and not present[~is_hot].any()
        p = w.placement()
        assert p == {"hot_pages": 1024, "cold_pages": 7168, "hot_resident": 1.0, "cold_swapped": 7168,
                     "swapped": 7168, "recall": 1.0, "precision": 1.0}
        assert w.verify()


def test_placement_counts_hot_pages_swapped_against_precision(need_root, zram_swap):
    with Workload(total_mb=16, hot_mb=2, layout="scattered", pause=1.0) as w:
        assert w.placement()["precision"] is None        # nothing swapped yet
        with ProcessHandle.open(w.pid) as handle:
            swap_out(handle, w.cold_pages[:768])
            swap_out(handle, w.hot_pages[:256])
        p = w.placement()   # the child sleeps between touches: the hot pages are still out
        assert p["cold_swapped"] == 768 and p["swapped"] == 1024
        assert p["precision"] == 0.75 and p["recall"] == 768 / (4096 - 512)
        assert p["hot_resident"] == 0.5
        assert w.verify()


def test_split_layout_keeps_two_vmas_and_its_ground_truth(need_root, zram_swap):
    with Workload(total_mb=16, hot_mb=4) as w:
        assert w.region is None
        np.testing.assert_array_equal(w.hot_pages, np.arange(*w.hot, PAGE, dtype=np.uint64))
        np.testing.assert_array_equal(w.cold_pages, np.arange(*w.cold, PAGE, dtype=np.uint64))
        assert w.placement()["hot_resident"] == 1.0
        assert w.verify()


def test_hot_page_indices_are_seeded_distinct_and_sorted():
    a = hot_page_indices(10000, 1000, seed=3)
    np.testing.assert_array_equal(a, hot_page_indices(10000, 1000, seed=3))
    assert len(np.unique(a)) == 1000 and (np.diff(a) > 0).all() and a.max() < 10000
    assert not np.array_equal(a, hot_page_indices(10000, 1000, seed=4))


def test_the_child_ignores_ctrl_c_and_prints_nothing_when_the_parent_stops_it(need_root):
    # The child exactly as Workload starts it, with its stderr captured for the check.
    child = subprocess.Popen([sys.executable, "-c", workload._CHILD, "8", "1", "0.01", "0", "scattered", "7"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(child.stdout.readline())["pid"] == child.pid
        child.send_signal(signal.SIGINT)      # what a terminal's Ctrl-C sends the whole process group
        time.sleep(0.3)
        assert child.poll() is None
        child.stdin.write("stats\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline())["rounds"] > 0
        _, err = child.communicate("quit\n", timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0 and err == ""
