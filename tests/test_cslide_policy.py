"""cslide's flow control on described topologies, through the real engine code.

Each test describes node memory (free MB per node), where pages sit and how hot they are;
the engine then runs a real round: a real workload process is scanned through emulated
idle_pages (tests/kernel_emulation.py: DIRTY pages count 3, ACCESSED 1, IDLE 0 in a
one-pass round), and a `FakeNodes` view answers node queries and performs moves on the
described topology (failing with ENOMEM where the destination is full, as the kernel
does). The moves each flow-control case of upstream must give are then checked on the
view's page placement and in the task's stats. Pure `plan_moves` cases follow.
"""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest

import etmem
from etmem import procfs
from etmem.engines import cslide as cslide_module
from etmem.engines.placement import (DEMOTE_FOR_HOT, HUGETLB, NORMAL, PREFETCH_WARM,
                                     PROMOTE_HOT, NodeMemory, plan_moves)
from kernel_emulation import ACCESSED, DIRTY, HOLE, IDLE, Emulator, PageTable

MiB = 1 << 20
PAGE = 4096
HEAT = {"hot": DIRTY, "warm": ACCESSED, "cold": IDLE}   # counts 3, 1, 0 with loop=1


class FakeNodes:
    """A described NUMA topology: free memory per node and the node of every page of one process.

    Pages start on the node their range was placed on; move_pages moves a page when the
    destination has a free page, else reports -ENOMEM, and keeps free memory up to date.
    """

    def __init__(self, free_mb: dict[int, float], total_mb: float = 1024):
        self.free = {n: int(mb * MiB) for n, mb in free_mb.items()}
        self.total = {n: int(total_mb * MiB) for n in free_mb}
        self.ranges: list[tuple[int, int, int]] = []
        self.moved_addr = np.zeros(0, np.uint64)
        self.moved_node = np.zeros(0, np.int32)
        self.move_calls: list[tuple[int, int]] = []  # (node, pages) per call, in call order

    def place(self, start: int, end: int, node: int) -> None:
        self.ranges.append((start, end, node))

    # -- the node view the engine uses
    def memory_nodes(self):
        return sorted(self.free)

    def memory(self, node):
        return NodeMemory(self.total[node], self.free[node])

    def hugetlb(self, node):
        return NodeMemory(0, 0)

    def nodes_of(self, addrs) -> np.ndarray:
        addrs = np.asarray(addrs, np.uint64)
        out = np.full(len(addrs), -errno.ENOENT, np.int32)
        for start, end, node in self.ranges:
            out[(addrs >= np.uint64(start)) & (addrs < np.uint64(end))] = node
        if len(self.moved_addr):
            i = np.minimum(np.searchsorted(self.moved_addr, addrs), len(self.moved_addr) - 1)
            hit = self.moved_addr[i] == addrs
            out[hit] = self.moved_node[i[hit]]
        return out

    def page_nodes(self, handle, addrs, counters):
        handle.check()
        return self.nodes_of(addrs)

    def move_pages(self, handle, addrs, node, counters):
        handle.check()
        addrs = np.asarray(addrs, np.uint64)
        now = self.nodes_of(addrs)
        leaving = now != node
        fits = np.cumsum(leaving) * PAGE <= self.free[node]
        go = leaving & fits
        for src in np.unique(now[go]):
            self.free[int(src)] += int((now[go] == src).sum()) * PAGE
        self.free[node] -= int(go.sum()) * PAGE
        status = np.where(leaving & ~fits, -errno.ENOMEM, node).astype(np.int32)
        addr = np.concatenate([addrs[go], self.moved_addr])
        dest = np.concatenate([np.full(int(go.sum()), node, np.int32), self.moved_node])
        self.moved_addr, first = np.unique(addr, return_index=True)
        self.moved_node = dest[first]
        self.move_calls.append((node, len(addrs)))
        return status

    def mb_on(self, start: int, end: int, node: int) -> float:
        addrs = np.arange(start, end, PAGE, dtype=np.uint64)
        return float((self.nodes_of(addrs) == node).sum()) * PAGE / MiB


@pytest.fixture
def topology(monkeypatch, need_root, workload_factory):
    """Build a topology over the cold region of a real workload: segments of (MB, node, heat)."""

    def build(free_mb, segments, quota, reserve, hot_threshold=2):
        total = sum(mb for mb, _, _ in segments)
        w = workload_factory(total_mb=total + 1, hot_mb=1)
        fake = FakeNodes(free_mb)
        table = PageTable()
        table.add_vma(w.cold[0], w.cold[0] + total * MiB, state=IDLE)
        # The kernel reports every VMA it is asked about; the workload's other anonymous
        # VMAs are reported as unpopulated (holes), so only the described pages count.
        for v in procfs.maps(w.pid):
            if v.is_anonymous and v.is_private and v.perms[:3] != "---" and v.start != w.cold[0]:
                table.add_vma(v.start, v.end, state=HOLE)
        bounds, at = [], w.cold[0]
        for mb, node, heat in segments:
            end = at + int(mb * MiB)
            table.set(at, end, HEAT[heat])
            fake.place(at, end, node)
            bounds.append((at, end))
            at = end
        monkeypatch.setattr(cslide_module.Cslide, "node_view", fake)
        project = etmem.Project(name="p", loop=1, interval=1, sleep=1, scanner="idle_pages")
        engine = project.add_engine("cslide", node_pair="0,1", hot_threshold=hot_threshold,
                                    node_mig_quota=quota, node_hot_reserve=reserve)
        engine.strategy.opener = Emulator(w.pid, table).opener
        task = engine.add_task("t", "pid", w.pid, anon_only="yes")
        return fake, task, bounds

    return build


def last(task) -> dict:
    return task.stats.extra["cslide"]["last_round"]


def test_quota_below_free_promotes_the_hottest_pages_up_to_the_quota(topology):
    # node 1 holds 8 MB warm-hot (count 1) at low addresses and 8 MB hot (count 3) above
    fake, task, (warmish, hot, cold) = topology(
        {0: 100, 1: 100}, [(8, 1, "warm"), (8, 1, "hot"), (16, 0, "cold")], quota=8, reserve=10, hot_threshold=1)
    task.run_round()
    assert task.stats.last_error is None
    assert fake.mb_on(*hot, 0) == 8            # the hottest first, though at higher addresses
    assert fake.mb_on(*warmish, 1) == 8        # the quota is used up
    assert fake.mb_on(*cold, 0) == 16          # free stays above the reserve: nothing demoted
    r = last(task)
    assert (r["promoted_pages"], r["demoted_pages"], r["prefetched_pages"]) == (8 * MiB // PAGE, 0, 0)
    assert r["quota_used"]["0,1"] == {"promote_mb": 8.0, "demote_mb": 0.0}
    assert fake.free == {0: 92 * MiB, 1: 108 * MiB}
    assert json.loads(json.dumps(task.stats.as_dict()))["extra"]["cslide"]["promoted_pages"] == 8 * MiB // PAGE


def test_quota_above_free_demotes_the_coldest_pages_to_make_room_for_hot_ones(topology):
    fake, task, (hot, cooler, coldest) = topology(
        {0: 4, 1: 100}, [(16, 1, "hot"), (8, 0, "warm"), (8, 0, "cold")], quota=32, reserve=0)
    task.run_round()
    assert task.stats.last_error is None
    assert fake.mb_on(*hot, 0) == 16           # every hot page is promoted ...
    assert fake.mb_on(*coldest, 1) == 8        # ... after 12 MB of the coldest went down:
    assert fake.mb_on(*cooler, 1) == 4         # all the count-0 pages, then 4 MB of count-1 ones
    assert [n for n, _ in fake.move_calls] == [1, 0], "demotions run before promotions"
    r = last(task)
    assert r["demoted_pages"] == 12 * MiB // PAGE and r["promoted_pages"] == 16 * MiB // PAGE
    assert r["failed_pages"] == 0 and fake.free[0] == 0


def test_reserve_reached_demotes_coldest_pages_until_free_memory_is_back_at_the_reserve(topology):
    fake, task, (cooler, coldest) = topology({0: 10, 1: 100}, [(8, 0, "warm"), (8, 0, "cold")], quota=32, reserve=20)
    task.run_round()
    assert fake.mb_on(*coldest, 1) == 8 and fake.mb_on(*cooler, 1) == 2
    assert fake.free[0] == 20 * MiB
    nodes = task.stats.extra["cslide"]["nodes"]
    assert nodes["1"]["demoted_in"] == 10 * MiB // PAGE and nodes["1"]["promoted_in"] == 0


def test_reserve_reached_demotes_no_more_than_the_quota(topology):
    fake, task, (coldest,) = topology({0: 10, 1: 100}, [(16, 0, "cold")], quota=4, reserve=20)
    task.run_round()
    assert fake.mb_on(*coldest, 1) == 4
    assert last(task)["quota_used"]["0,1"]["demote_mb"] == 4.0


def test_cold_node_full_limits_demotion_and_so_promotion(topology):
    fake, task, (hot, coldest) = topology({0: 4, 1: 2}, [(16, 1, "hot"), (16, 0, "cold")], quota=32, reserve=0)
    task.run_round()
    assert fake.mb_on(*coldest, 1) == 2        # only as much as the slow node had free
    assert fake.mb_on(*hot, 0) == 6            # free fast memory plus what the demotion freed
    r = last(task)
    assert r["failed_pages"] == 0 and r["promoted_pages"] == 6 * MiB // PAGE
    assert any("slow node 1 is full" in n for n in r["engine"]["pairs"][0]["notes"])


def test_free_fast_memory_above_the_reserve_is_filled_with_warm_pages_only(topology):
    fake, task, (warm, cold) = topology({0: 100, 1: 100}, [(16, 1, "warm"), (16, 1, "cold")], quota=32, reserve=90)
    task.run_round()
    assert fake.mb_on(*warm, 0) == 10 and fake.mb_on(*cold, 0) == 0
    assert last(task)["prefetched_pages"] == 10 * MiB // PAGE


def test_a_move_the_kernel_refuses_is_counted_by_errno(topology):
    fake, task, (hot,) = topology({0: 100, 1: 100}, [(8, 1, "hot")], quota=32, reserve=0)
    fake.free[0] = 3 * MiB                     # the kernel's free memory changed after the plan was made
    original = fake.memory
    fake.memory = lambda node: NodeMemory(fake.total[node], 100 * MiB) if node == 0 else original(node)
    task.run_round()
    r = last(task)
    assert r["promoted_pages"] == 3 * MiB // PAGE
    assert r["failed_by_errno"] == {"ENOMEM": 5 * MiB // PAGE}
    assert task.stats.extra["cslide"]["nodes"]["0"]["failed"] == {"ENOMEM": 5 * MiB // PAGE}


def test_showtaskpages_and_showhostpages_print_the_last_rounds_pages_per_node(topology):
    fake, task, _ = topology({0: 100, 1: 100}, [(8, 1, "hot"), (4, 0, "cold"), (2, 1, "cold")], quota=0, reserve=0)
    manager = etmem.Manager()
    manager.add(task.project)
    task.run_round()
    manager.start("p")
    try:
        text = manager.engine_command("p", "cslide", "showtaskpages", "t")
        host = manager.engine_command("p", "cslide", "showhostpages")
        with pytest.raises(etmem.ObjectError, match="showtaskpages needs a task"):
            manager.engine_command("p", "cslide", "showtaskpages")
    finally:
        manager.stop("p")
    lines = [line.split() for line in text.splitlines()]
    assert lines == [["node", "used_kb", "hot_kb", "cold_kb"], ["0", "4096", "0", "4096"], ["1", "10240", "8192", "2048"]]
    rows = [line.split() for line in host.splitlines()]
    assert rows[0] == ["node", "total_kb", "used_kb", "hot_kb", "cold_kb"]
    assert rows[1] == ["0", str(1024 * 1024), str(924 * 1024), "0", "4096"]
    assert rows[2] == ["1", str(1024 * 1024), str(924 * 1024), "8192", "2048"]


# --- the pure policy -----------------------------------------------------------------------

def mem(**free_mb):
    """memory[(node, kind)] from n0=..., h1=... (n: normal pages, h: hugetlb) in MB."""
    out = {}
    for name, mb in free_mb.items():
        out[(int(name[1:]), NORMAL if name[0] == "n" else HUGETLB)] = NodeMemory(1 << 40, int(mb * MiB))
    return out


def pages(*groups):
    """Arrays of node, count, size, kind from (n, node, count, size, kind) groups."""
    cols = [np.concatenate([np.full(n, v) for n, *vals in groups for v in [vals[i]]]) for i in range(4)]
    return cols[0], cols[1], cols[2], cols[3]


def test_hugetlb_pages_are_placed_by_the_hugepage_counters_not_by_meminfo():
    H = 2 * MiB
    node, count, size, kind = pages((4, 1, 5, H, HUGETLB), (4, 0, 0, H, HUGETLB), (256, 1, 5, PAGE, NORMAL))
    # lots of free normal memory on node 0 but only 2 free huge pages; the slow node's pool is full
    plan = plan_moves(node, count, size, kind, ((0, 1),), 1, 64 * MiB, 0, mem(n0=500, n1=500, h0=4, h1=0))
    huge_up = (kind == HUGETLB) & (plan.reason == PROMOTE_HOT)
    assert huge_up.sum() == 2 and not (plan.reason == DEMOTE_FOR_HOT).any()
    assert ((kind == NORMAL) & (plan.reason == PROMOTE_HOT)).sum() == 256
    assert plan.pairs[0].promoted == 2 * H + 256 * PAGE


def test_the_quota_is_shared_by_both_kinds_of_page_in_each_direction():
    H = 2 * MiB
    node, count, size, kind = pages((3, 1, 5, H, HUGETLB), (1024, 1, 5, PAGE, NORMAL))
    plan = plan_moves(node, count, size, kind, ((0, 1),), 1, 8 * MiB, 0, mem(n0=500, n1=500, h0=100, h1=0))
    assert plan.pairs[0].promote_used == 8 * MiB
    assert ((kind == HUGETLB) & (plan.target == 0)).sum() == 3
    assert ((kind == NORMAL) & (plan.target == 0)).sum() == 512


def test_pages_on_nodes_of_another_pair_or_of_no_pair_stay():
    node, count, size, kind = pages((10, 3, 5, PAGE, NORMAL), (10, 2, 0, PAGE, NORMAL), (10, 4, 0, PAGE, NORMAL))
    plan = plan_moves(node, count, size, kind, ((0, 1), (2, 3)), 1, 64 * MiB, 64 * MiB,
                      mem(n0=0, n1=100, n2=0, n3=100))
    assert (plan.target[:10] == 2).all()            # hot on 3 -> 2 (demoting 2's cold pages for room)
    assert (plan.target[10:20] == 3).all()
    assert (plan.target[20:] == -1).all()           # node 4 is in no pair
    assert set(plan.reason[10:20].tolist()) == {DEMOTE_FOR_HOT}   # the room for hot pages restores the reserve too


def test_zero_quota_moves_nothing():
    node, count, size, kind = pages((10, 1, 5, PAGE, NORMAL), (10, 0, 0, PAGE, NORMAL))
    plan = plan_moves(node, count, size, kind, ((0, 1),), 1, 0, 64 * MiB, mem(n0=0, n1=100))
    assert (plan.target == -1).all()


def test_warm_pages_never_push_free_memory_below_the_reserve_and_hot_ones_may():
    node, count, size, kind = pages((256, 1, 5, PAGE, NORMAL), (256, 1, 1, PAGE, NORMAL))
    plan = plan_moves(node, count, size, kind, ((0, 1),), 2, 64 * MiB, 1 * MiB, mem(n0=1.5, n1=100))
    assert (plan.reason[:256] == PROMOTE_HOT).all()           # 1 MB of hot pages use the reserve
    assert not (plan.reason == PREFETCH_WARM).any()           # free is 0.5 MB < reserve: no warm fill
