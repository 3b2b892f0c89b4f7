"""cslide across two real NUMA nodes, in the test guest (node 0 with the CPUs, node 1 CPU-less, CXL style).

Hot pages placed on node 1 must come back to node 0 and cold pages of node 0 must go to
node 1, never more than node_mig_quota MB each way per round, as real node queries
(move_pages with no nodes) show; the access counts come from the kernel's real idle page
tracking. The engine commands are checked through a real etmemd and the real `etmem`.
"""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import etmem
from etmem import kernel, procfs
from etmem.actions import move_pages, page_nodes
from etmem.engines.cslide import SystemNodes
from etmem.process import ProcessHandle
from etmem.protocol import Command, Request
from etmem.workload import Workload

sys.path.insert(0, str(Path(__file__).parent.parent))
from etmemd_harness import Etmemd, write_config  # noqa: E402

MiB = 1 << 20
PAGE = 4096
QUOTA_MB = 24


def nodes_of(pid: int, start: int, end: int) -> np.ndarray:
    with ProcessHandle.open(pid) as h:
        return page_nodes(h, np.arange(start, end, PAGE, dtype=np.uint64))


NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"


@pytest.fixture
def two_nodes():
    """The guest's two nodes, with the kernel's own NUMA balancing off while the test runs.

    Automatic NUMA balancing would bring pages touched from node 0's CPUs back by itself,
    so a page's node would no longer tell what cslide did. The guest is ours alone.
    """
    if not kernel.has_page_idle():
        pytest.skip(kernel.missing("page_idle"))
    assert SystemNodes().memory_nodes() == [0, 1]
    assert procfs.cpu_nodes() == [0], "node 1 is a CPU-less memory node"
    try:
        with open(NUMA_BALANCING) as f:
            saved = f.read().strip()
    except FileNotFoundError:
        saved = None
    if saved is not None:
        with open(NUMA_BALANCING, "w") as f:
            f.write("0")
    yield
    if saved is not None:
        with open(NUMA_BALANCING, "w") as f:
            f.write(saved)


def test_hot_pages_on_node_1_are_promoted_and_cold_pages_on_node_0_demoted_within_the_quota(two_nodes):
    with Workload(total_mb=80, hot_mb=16, pause=0.002) as w:
        with ProcessHandle.open(w.pid) as h:
            hot = np.arange(*w.hot, PAGE, dtype=np.uint64)
            assert move_pages(h, hot, 1).moved == len(hot)
        time.sleep(2)
        assert (nodes_of(w.pid, *w.hot) == 1).all() and (nodes_of(w.pid, *w.cold) == 0).all(), \
            "pages stay where they were put while the hot ones are used"

        project = etmem.Project(name="p", loop=2, interval=1, sleep=1, scanner="page_idle")
        # a reserve larger than node 0: free fast memory is always below it, so cold pages go down
        engine = project.add_engine("cslide", node_pair="0,1", hot_threshold=2,
                                    node_mig_quota=QUOTA_MB, node_hot_reserve=4096)
        task = engine.add_task("t", "pid", w.pid, anon_only="yes")
        cold_down = []
        for _ in range(8):
            task.run_round()
            assert task.stats.last_error is None
            last = task.stats.extra["cslide"]["last_round"]
            used = last["quota_used"]["0,1"]
            assert used["promote_mb"] <= QUOTA_MB and used["demote_mb"] <= QUOTA_MB, last
            cold_down.append(float((nodes_of(w.pid, *w.cold) == 1).mean()))
            if cold_down[-1] > 0.99:
                break
        hot_nodes = nodes_of(w.pid, *w.hot)
        cold_nodes = nodes_of(w.pid, *w.cold)
        assert (hot_nodes == 0).mean() > 0.99, np.bincount(hot_nodes + 2)
        assert (cold_nodes == 1).mean() > 0.99, cold_down
        # 64 MB of cold pages (plus the interpreter's own cold pages) at 24 MB a round
        assert len(cold_down) >= 3 and all(b >= a for a, b in zip(cold_down, cold_down[1:])), cold_down
        st = task.stats.extra["cslide"]
        assert st["promoted_pages"] >= len(hot_nodes) * 0.99
        assert st["demoted_pages"] >= len(cold_nodes) * 0.99
        assert st["nodes"]["0"]["promoted_in"] == st["promoted_pages"]
        assert st["nodes"]["1"]["demoted_in"] == st["demoted_pages"]
        pages = engine.strategy.task_pages(task.view)
        assert pages[1]["cold_kb"] >= 64 * 1024 * 0.99 - 24 * 1024
        assert w.verify(), "the data of both regions survived the moves"


def test_engine_commands_through_etmemd_and_the_etmem_client(two_nodes, tmp_path):
    with Workload(total_mb=48, hot_mb=8, pause=0.002) as w:
        conf = write_config(tmp_path / "cslide.conf", textwrap.dedent(f"""\
            [project]
            name=p
            loop=1
            interval=1
            sleep=1
            scanner=page_idle

            [engine]
            name=cslide
            project=p
            node_pair=0,1
            hot_threshold=1
            node_mig_quota=0
            node_hot_reserve=0

            [task]
            project=p
            engine=cslide
            name=t
            type=pid
            value={w.pid}
            anon_only=yes
            """))
        d = Etmemd(tmp_path).start(timeout=180)     # TCG: the daemon's imports take a while
        try:
            assert d.etmem("obj", "add", "-f", str(conf)).returncode == 0, d.log()
            assert d.etmem("project", "start", "-n", "p").returncode == 0, d.log()
            # Wait for the first round with the request bytes sent from here: under TCG every
            # start of the Python client costs seconds. The checks below use the real client.
            ask = Request(Command.ENGINE, project="p", engine="cslide", engine_cmd="showtaskpages", task="t").encode()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(d.raw(ask).splitlines()) < 2:
                time.sleep(1)
            out = d.etmem("engine", "showtaskpages", "-n", "p", "-e", "cslide", "-t", "t")
            rows = [line.split() for line in out.stdout.splitlines()]
            assert out.returncode == 0, out.stderr
            assert rows[0] == ["node", "used_kb", "hot_kb", "cold_kb"]
            node0 = {r[0]: [int(x) for x in r[1:]] for r in rows[1:]}["0"]
            assert node0[0] == node0[1] + node0[2] and node0[0] >= 48 * 1024
            host = d.etmem("engine", "showhostpages", "-n", "p", "-e", "cslide")
            assert host.returncode == 0, host.stderr
            lines = [line.split() for line in host.stdout.splitlines()]
            assert lines[0] == ["node", "total_kb", "used_kb", "hot_kb", "cold_kb"]
            assert [r[0] for r in lines[1:]] == ["0", "1"]
            total1 = int(lines[2][1])
            assert total1 == procfs.node_meminfo(1)["MemTotal"]
            missing = d.etmem("engine", "showtaskpages", "-n", "p", "-e", "cslide")
            assert missing.returncode != 0 and "showtaskpages needs a task" in missing.stdout + missing.stderr
        finally:
            d.stop()
