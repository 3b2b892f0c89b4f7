"""cslide on this kernel, for real: node queries, move_pages on node 0, the node check, targets and the worker.

This machine has one NUMA node, so every page is on node 0 and a move anywhere else is
refused by the kernel (ENODEV). Where a test needs the engine to believe in a second
node, `OneMoreNode` wraps the real view and only adds a node 1 to the lists; every page
query and every move still goes to the kernel. Cross-node moves are tested in the VM
(tests/vm/test_cslide_vm.py).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import etmem
from etmem import procfs
from etmem.engines import cslide as cslide_module
from etmem.engines.cslide import SystemNodes
from etmem.engines.placement import NodeMemory
from etmem.process import ProcessHandle
from etmem.stats import CallCounters

MiB = 1 << 20
PAGE = 4096
NODE = "/sys/devices/system/node"


def sysfs_kb(path: str, key: str) -> int:
    """A `Node N Key: value kB` line of a node meminfo file, read independently of procfs."""
    for line in open(path):
        parts = line.split()
        if parts[2].rstrip(":") == key:
            return int(parts[3])
    raise KeyError(key)


def test_node_queries_read_the_kernels_node_lists_and_counters():
    view = SystemNodes()
    has_memory = open(f"{NODE}/has_memory").read().strip()
    assert view.memory_nodes() == procfs.parse_cpulist(has_memory) and 0 in view.memory_nodes()
    mem = view.memory(0)
    assert mem.total == sysfs_kb(f"{NODE}/node0/meminfo", "MemTotal") << 10
    free_now = sysfs_kb(f"{NODE}/node0/meminfo", "MemFree") << 10
    assert 0 < mem.free <= mem.total and abs(mem.free - free_now) < 256 * MiB
    base = f"{NODE}/node0/hugepages/hugepages-2048kB"
    total, free = int(open(f"{base}/nr_hugepages").read()), int(open(f"{base}/free_hugepages").read())
    assert view.hugetlb(0) == NodeMemory(total * 2 * MiB, free * 2 * MiB)


def test_page_nodes_and_move_pages_to_node_0_for_real(need_root, workload_factory):
    w = workload_factory(total_mb=40, hot_mb=8)
    addrs = np.arange(w.cold[0], w.cold[1], PAGE, dtype=np.uint64)
    view, counters = SystemNodes(), CallCounters()
    with ProcessHandle.open(w.pid) as h:
        assert (view.page_nodes(h, addrs, counters) == 0).all()
        status = view.move_pages(h, addrs, 0, counters)
        unmapped = view.page_nodes(h, np.array([0x1000], np.uint64), counters)
    assert (status == 0).all() and unmapped[0] < 0
    calls = counters.as_dict()
    assert calls["move_pages"]["pages_requested"] == len(addrs) and calls["move_pages"]["pages_done"] == len(addrs)
    assert calls["move_pages_query"]["calls"] == -(-len(addrs) // 16384) + 1
    assert w.verify()


def test_a_node_pair_naming_a_missing_node_is_a_clear_error():
    missing = max(procfs.memory_nodes()) + 1
    have = ", ".join(str(n) for n in procfs.memory_nodes())
    project = etmem.Project(name="p", loop=1, interval=1, sleep=1)
    with pytest.raises(etmem.ConfigError) as err:
        project.add_engine("cslide", node_pair=f"0,{missing}", hot_threshold=1, node_mig_quota=1, node_hot_reserve=1)
    assert str(err.value) == f"[engine] node_pair: names node {missing}, but this machine has memory on nodes {have}"
    assert project.engines == {}


def test_a_config_file_naming_a_missing_node_fails_at_add_with_file_and_line_but_passes_config_check(tmp_path):
    missing = max(procfs.memory_nodes()) + 1
    path = tmp_path / "cslide.conf"
    path.write_text(textwrap.dedent(f"""\
        [project]
        name=p
        loop=1
        interval=1
        sleep=1

        [engine]
        name=cslide
        project=p
        node_pair=0,{missing}
        hot_threshold=1
        node_mig_quota=1024
        node_hot_reserve=1024
        """))
    manager = etmem.Manager()
    with pytest.raises(etmem.ConfigError, match=rf"^{path}:7: \[engine\] node_pair: names node {missing}, "):
        manager.add_file(str(path))
    assert manager.projects == {}, "all or nothing: the project is not added either"
    out = subprocess.run([sys.executable, "-m", "etmem.cli", "config", "check", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0 and "No module named etmem.cli.__main__" in out.stderr:
        out = subprocess.run(["etmem", "config", "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


class OneMoreNode(SystemNodes):
    """The real node view plus a node 1 in the lists (100 MB free): every query and move is real."""

    def __init__(self):
        self.queried: list[int] = []

    def memory_nodes(self):
        return sorted(set(super().memory_nodes()) | {1})

    def memory(self, node):
        return super().memory(node) if node in super().memory_nodes() else NodeMemory(100 * MiB, 100 * MiB)

    def hugetlb(self, node):
        return super().hugetlb(node) if node in super().memory_nodes() else NodeMemory(0, 0)

    def page_nodes(self, handle, addrs, counters):
        self.queried.append(handle.pid)
        return super().page_nodes(handle, addrs, counters)


@pytest.fixture
def one_more_node(monkeypatch):
    if procfs.memory_nodes() != [0]:
        pytest.skip("this test is for a machine with one NUMA node; tests/vm covers two")
    view = OneMoreNode()
    monkeypatch.setattr(cslide_module.Cslide, "node_view", view)
    return view


def cslide_project(quota=64, reserve=1 << 20, hot_threshold=1, scanner="smaps"):
    project = etmem.Project(name="p", loop=2, interval=1, sleep=1, scanner=scanner)
    engine = project.add_engine("cslide", node_pair="0,1", hot_threshold=hot_threshold,
                                node_mig_quota=quota, node_hot_reserve=reserve)
    return project, engine


def test_a_demotion_the_kernel_refuses_is_reported_and_pages_stay_on_node_0(need_root, one_more_node, workload_factory):
    # Free memory of node 0 is far below a 1 TB reserve: the cold VMA is demoted to "node 1",
    # which this kernel does not have (ENODEV), for real.
    w = workload_factory(total_mb=40, hot_mb=8)
    # smaps' first pass reports the cold VMA's first fill: it counts 1 of loop=2, the hot VMA 2
    project, engine = cslide_project(quota=16, hot_threshold=2)
    task = engine.add_task("t", "pid", w.pid, anon_only="yes")
    task.run_round()
    assert task.stats.last_error is not None and "node 1 does not exist" in task.stats.last_error
    assert task.stats.source == "smaps"
    calls = task.stats.calls.as_dict()
    assert calls["move_pages"]["errors"] == {"ENODEV": 1} and calls["move_pages_query"]["calls"] >= 1
    with ProcessHandle.open(w.pid) as h:
        assert (SystemNodes().page_nodes(h, np.arange(w.cold[0], w.cold[1], PAGE, dtype=np.uint64), CallCounters()) == 0).all()
    by_node = engine.strategy.task_pages(task.view)
    assert list(by_node) == [0]
    assert by_node[0]["hot_kb"] >= 8 * 1024 and by_node[0]["cold_kb"] >= 32 * 1024
    assert task.stats.extra["cslide"]["demoted_pages"] == 0
    assert w.verify()


NAMED = textwrap.dedent("""\
    import ctypes, mmap, sys, time
    ctypes.CDLL(None).prctl(15, b"cslide-target", 0, 0, 0)
    m = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(b"x" * (8 << 20))
    print("ready", flush=True)
    sys.stdin.readline()
""")


def start_named():
    p = subprocess.Popen([sys.executable, "-c", NAMED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def stop_named(p):
    p.stdin.close()
    p.wait(timeout=10)


def test_targets_are_resolved_again_every_round(need_root, one_more_node):
    project, engine = cslide_project(hot_threshold=0, reserve=0)   # every page hot and on node 0: no moves
    task = engine.add_task("t", "name", "cslide-target", anon_only="yes")
    first = start_named()
    try:
        task.run_round()
        assert task.stats.last_error is None and task.stats.targets == 1
        assert one_more_node.queried == [first.pid]
    finally:
        stop_named(first)
    task.run_round()
    assert task.stats.last_error == "no process named cslide-target is running" and task.stats.targets == 0
    second = start_named()
    try:
        task.run_round()
        assert task.stats.last_error is None
        assert one_more_node.queried == [first.pid, second.pid]
        assert task.stats.pages_scanned >= 2 * (8 * MiB // PAGE)
    finally:
        stop_named(second)


def test_one_round_timer_runs_the_rounds_of_every_task_of_the_engine(need_root, one_more_node, workload_factory):
    a, b = workload_factory(total_mb=16, hot_mb=4), workload_factory(total_mb=16, hot_mb=4)
    project, engine = cslide_project(hot_threshold=0, reserve=0)
    ta = engine.add_task("a", "pid", a.pid, anon_only="yes")
    tb = engine.add_task("b", "pid", b.pid, anon_only="yes")
    manager = etmem.Manager()
    manager.add(project)
    before = set(threading.enumerate())
    manager.start("p")
    try:
        deadline = time.monotonic() + 60
        while min(ta.stats.rounds, tb.stats.rounds) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("etmem-p-")]
        assert [t.name for t in workers] == ["etmem-p-cslide"]
        assert ta.stats.rounds >= 2 and tb.stats.rounds >= 2
        assert ta.stats.last_error is None and tb.stats.last_error is None
        assert set(one_more_node.queried) == {a.pid, b.pid}
        # stopping one task keeps the worker for the other
        manager.delete_task("p", "cslide", "a")
        assert workers[0].is_alive()
        rounds, rounds_a = tb.stats.rounds, ta.stats.rounds
        while tb.stats.rounds < rounds + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert tb.stats.rounds > rounds and ta.stats.rounds == rounds_a
    finally:
        manager.stop("p")
    assert not workers[0].is_alive()
