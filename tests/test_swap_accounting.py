"""swap_out counts what the kernel swapped, read back from pagemap, not what it was asked:
pages it leaves in memory (shared after fork, swap full) and a target killed mid-swap are
not counted, and slide's refault guard remembers only the pages that really left."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import etmem
from conftest import pagemap_bits
from etmem.actions import swap_out
from etmem.errors import ProcessGone
from etmem.process import ProcessHandle
from etmem.workload import Workload

PAGE = 4096

# Maps `MiB` of anonymous memory, fills it, forks (the child shares every page), then
# writes the first half again in the parent only: those pages are the parent's own, the
# second half stays shared with the child, and MADV_PAGEOUT leaves shared pages alone.
_SHARED = textwrap.dedent("""
    import ctypes, mmap, os, sys, time
    n = int(sys.argv[1]) << 20
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(b"\\1" * n)
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
    m.seek(0)
    m.write(b"\\2" * (n // 2))
    print(ctypes.addressof(ctypes.c_char.from_buffer(m)), n, flush=True)
    time.sleep(600)
""")


@pytest.fixture
def half_shared(need_root, zram_swap):
    """(pid, start, end): a process whose mapping is private in its first half, shared with
    its child in the second."""
    proc = subprocess.Popen([sys.executable, "-c", _SHARED, "32"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    start, size = map(int, proc.stdout.readline().split())
    yield proc.pid, start, start + size
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_pages_the_kernel_leaves_in_memory_are_not_counted(half_shared):
    pid, start, end = half_shared
    middle = start + (end - start) // 2
    with ProcessHandle.open(pid) as handle:
        result = swap_out(handle, np.arange(start, end, PAGE, dtype=np.uint64), method="process_madvise")
    _, swapped = pagemap_bits(pid, start, end)
    assert result.requested == (end - start) // PAGE
    assert result.done == int(swapped.sum()), (result, int(swapped.sum()))
    assert swapped[: (middle - start) // PAGE].mean() > 0.95 and not swapped[(middle - start) // PAGE:].any()
    expected = np.arange(start, end, PAGE, dtype=np.uint64)[swapped]
    assert np.array_equal(result.pages_out, expected)
    # pages already out are not counted again
    with ProcessHandle.open(pid) as handle:
        again = swap_out(handle, np.arange(start, end, PAGE, dtype=np.uint64), method="process_madvise")
    assert again.done == 0 and again.pages_out.size == 0


def test_a_target_killed_mid_swap_has_nothing_counted(need_root, zram_swap):
    w = Workload(total_mb=512, hot_mb=8, pause=0.05).start()
    try:
        with ProcessHandle.open(w.pid) as handle:
            killer = threading.Timer(0.05, os.kill, (w.pid, signal.SIGKILL))
            killer.start()
            try:
                with pytest.raises(ProcessGone, match=f"process {w.pid} .* exited during swap-out"):
                    swap_out(handle, np.arange(*w.cold, PAGE, dtype=np.uint64), method="process_madvise")
            finally:
                killer.join()
    finally:
        w.stop()


def test_slides_refault_guard_remembers_only_the_pages_that_left(half_shared, caplog):
    pid, start, end = half_shared
    child = etmem.procfs.children(pid)[0]
    project = etmem.Project(name="p", loop=2, interval=1, sleep=1, scanner="smaps")
    task = project.add_engine("slide").add_task("t", "pid", pid, T=1)
    manager = etmem.Manager()
    manager.add(project)
    with caplog.at_level(logging.WARNING, "etmem.slide"):
        # smaps: round 1 sees every page referenced since the fork, round 2 swaps the cold
        # mapping, round 3's refault guard looks at what round 2 swapped
        for _ in range(3):
            stats = task.run_round()
            assert stats.last_error is None, stats.as_dict()
    _, swapped = pagemap_bits(pid, start, end)
    assert swapped[: (end - start) // PAGE // 2].mean() > 0.95 and not swapped[(end - start) // PAGE // 2:].any()
    in_swap = (etmem.procfs.status_kb(pid, "VmSwap") + etmem.procfs.status_kb(child, "VmSwap")) * 1024 // PAGE
    assert stats.pages_swapped == in_swap, stats.as_dict()
    # the shared half never left: the guard must not take it for refaults and cap the rounds
    assert "came back" not in caplog.text
    assert task.view.state.budget == {}, task.view.state
