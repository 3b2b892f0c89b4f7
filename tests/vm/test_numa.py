"""Pages of a live process move between the guest's two NUMA nodes through etmem.actions.

Node 0 has the CPUs, node 1 is memory only (CXL style). Where every page sits is checked
twice: with the project's own query (`page_nodes`) and with the kernel's per-VMA page
counts in /proc/PID/numa_maps, which share no code with it.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from etmem import actions, procfs
from etmem.process import ProcessHandle
from etmem.workload import Workload

PAGE = 4096
NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"


@pytest.fixture
def no_numa_balancing():
    """The guest kernel's automatic NUMA balancing off for the test, restored after.

    It would pull the hot pages on CPU-less node 1 back to node 0 on its own, between our
    move and our check. The guest is ours alone, so the sysctl is ours to change.
    """
    try:
        with open(NUMA_BALANCING) as f:
            before = f.read().strip()
    except FileNotFoundError:
        yield  # a kernel without CONFIG_NUMA_BALANCING moves nothing by itself
        return
    with open(NUMA_BALANCING, "w") as f:
        f.write("0")
    yield
    with open(NUMA_BALANCING, "w") as f:
        f.write(before)


def numa_maps_pages(pid: int, start: int) -> dict[int, int]:
    """{node: pages} of the VMA starting at start, from /proc/PID/numa_maps (N<node>=<pages>)."""
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            if int(line.split()[0], 16) == start:
                return {int(n): int(p) for n, p in re.findall(r"\bN(\d+)=(\d+)", line)}
    raise AssertionError(f"no VMA starts at {start:#x} in /proc/{pid}/numa_maps")


def test_move_pages_moves_a_process_to_node_1_then_to_node_0_and_back(no_numa_balancing):
    assert procfs.memory_nodes() == [0, 1]
    with Workload(total_mb=64, hot_mb=8, pause=0.01) as w, ProcessHandle.open(w.pid) as handle:
        regions = [w.cold, w.hot]
        addrs = np.concatenate([np.arange(a, b, PAGE, dtype=np.uint64) for a, b in regions])
        assert np.all(actions.page_nodes(handle, addrs) == 0), "a new process's pages start on its CPU's node"

        for node in (1, 0, 1):
            result = actions.move_pages(handle, addrs, node)
            assert result.failed_by_errno == {}, result.failed_by_errno
            assert result.moved == addrs.size
            where = actions.page_nodes(handle, addrs)
            assert np.all(where == node), np.unique(where, return_counts=True)
            for start, end in regions:
                assert numa_maps_pages(w.pid, start) == {node: (end - start) // PAGE}
        assert w.verify(), "the workload's data changed while its pages moved"
