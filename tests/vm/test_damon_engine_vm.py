"""The damon engine on a real kernel (the test guest's DAMON vaddr): schemes act, count, and leave nothing.

A workload's cold mapping is never touched after it is filled and its hot one is touched
all the time. With upstream's keys and a pageout scheme for regions not seen accessed for
a few aggregation intervals, DAMON itself pages the cold mapping out to zram while the hot
one stays resident; a stat scheme counts the same regions and leaves them be; a second
project gets a kdamond of its own; obj del leaves no kdamond behind.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import pagemap_bits
from etmem import Manager, kernel
from etmem.damon_sysfs import KDAMONDS, Sysfs
from etmem.workload import Workload

pytestmark = pytest.mark.vm

ADMIN = kernel.DAMON_ADMIN

# upstream's keys; a region is cold when no sample of 4 aggregation intervals (2 s) found it accessed
CONFIG = """\
[project]
name={name}
scan_type=region
sample_interval=5000
aggr_interval=500000
update_interval=1000000
min_nr_regions=10
max_nr_regions=1000

[engine]
name=damon
project={name}
min_size=0
max_size=4294967295
min_acc=0
max_acc=0
min_age=4
max_age=4294967295
action={action}

[task]
project={name}
engine=damon
name=w
type=pid
value={pid}
"""


@pytest.fixture(autouse=True)
def need_damon_vaddr():
    if "vaddr" not in kernel.damon_operations():
        pytest.skip(kernel.missing("damon"))


def read(rel: str) -> str:
    # the kernel answers EBUSY while another DAMON sysfs access (the engine's round) runs
    return Sysfs(ADMIN).read(rel)


def stats_of(manager: Manager, project: str) -> dict:
    return manager.show(project)[0]["tasks"][0]["stats"]


def wait_for(check, seconds: float, step: float = 1.0):
    """check() until it returns something true, for at most `seconds`; its last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def test_an_upstream_damon_config_pages_the_cold_region_out_and_obj_del_removes_its_kdamond(zram_swap):
    manager = Manager()
    try:
        with Workload(total_mb=64, hot_mb=8, pause=0.005, huge=False) as w:
            text = CONFIG.format(name="cold", action="pageout", pid=w.pid)
            manager.add_text(text, "damon.conf")
            manager.start("cold")
            assert read("kdamonds/nr_kdamonds") == "1" and read("kdamonds/0/state") == "on"
            cold_kb = (w.cold[1] - w.cold[0]) >> 10
            # the scheme pages out whatever of the process's memory is idle (the interpreter's too):
            # wait on the cold mapping itself, not on VmSwap
            swapped = wait_for(lambda: pagemap_bits(w.pid, *w.cold)[1].mean() >= 0.8, 60)
            # DAMON pages out between etmem's rounds: a round after it shows it
            counted = wait_for(lambda: stats_of(manager, "cold")["extra"]["scheme"]["sz_applied"]
                               >= 0.8 * cold_kb * 1024, 15)
            stats = stats_of(manager, "cold")
            hot_present, _ = pagemap_bits(w.pid, *w.hot)
            _, cold_swapped = pagemap_bits(w.pid, *w.cold)
            detail = f"VmSwap {status_kb(w.pid, 'VmSwap')} kB of a {cold_kb} kB cold mapping; stats {stats}"
            assert swapped and counted, detail
            assert cold_swapped.mean() >= 0.8, detail
            assert hot_present.mean() >= 0.95, detail
            assert stats["extra"]["scheme"]["action"] == "pageout" and stats["last_error"] is None, detail
            kdamond = stats["extra"]["kdamond"]
            assert kdamond["state"] == "on" and kdamond["nr_regions"] >= 10 and kdamond["targets"] == 1, detail
            manager.delete_text(text, "damon.conf")
            assert read("kdamonds/nr_kdamonds") == "0", "obj del removes the kdamond etmem made"
            assert not KDAMONDS.members
            assert w.verify(), "the workload's data came back intact"
    finally:
        for name in list(manager.projects):
            manager.delete_project(name)


def test_a_stat_scheme_counts_without_acting_and_a_second_project_gets_its_own_kdamond():
    sleeper = subprocess.Popen(["sleep", "600"])
    manager = Manager()
    try:
        with Workload(total_mb=32, hot_mb=4, pause=0.005, huge=False) as w:
            manager.add_text(CONFIG.format(name="count", action="stat", pid=w.pid))
            manager.add_text(CONFIG.format(name="second", action="stat", pid=sleeper.pid))
            manager.start("count")
            manager.start("second")
            assert read("kdamonds/nr_kdamonds") == "2"
            assert [read(f"kdamonds/{i}/state") for i in (0, 1)] == ["on", "on"]
            assert [read(f"kdamonds/{i}/contexts/0/targets/0/pid_target") for i in (0, 1)] == \
                [str(w.pid), str(sleeper.pid)]
            cold_bytes = w.cold[1] - w.cold[0]
            counted = wait_for(lambda: stats_of(manager, "count")["extra"].get("scheme", {}).get("sz_tried", 0)
                               >= cold_bytes, 30)
            stats = stats_of(manager, "count")
            assert counted, stats
            assert stats["extra"]["scheme"]["nr_tried"] > 0 and stats["extra"]["scheme"]["nr_applied"] == 0, stats
            cold_present, _ = pagemap_bits(w.pid, *w.cold)
            assert cold_present.mean() == 1.0 and status_kb(w.pid, "VmSwap") == 0, "stat does nothing to the pages"
            assert stats_of(manager, "second")["extra"]["kdamond"]["index"] == 1
            manager.delete_project("count")
            assert read("kdamonds/nr_kdamonds") == "1" and read("kdamonds/0/state") == "on", \
                "the second project's kdamond runs on alone"
            assert read("kdamonds/0/contexts/0/targets/0/pid_target") == str(sleeper.pid)
    finally:
        for name in list(manager.projects):
            manager.delete_project(name)
        sleeper.kill()
        sleeper.wait()
    assert read("kdamonds/nr_kdamonds") == "0" and not KDAMONDS.members


def test_a_dry_run_pages_nothing_out_and_reports_the_cold_pages_a_pageout_scheme_would(zram_swap):
    manager = Manager()
    try:
        with Workload(total_mb=32, hot_mb=4, pause=0.005, huge=False) as w:
            text = CONFIG.format(name="dry", action="pageout", pid=w.pid) + "dry_run=yes\n"
            manager.add_text(text, "damon.conf")
            manager.start("dry")
            assert read("kdamonds/0/contexts/0/schemes/0/action") == "stat", "the kernel only counts"
            cold_pages = (w.cold[1] - w.cold[0]) // 4096

            def would():   # the pages the round found present in the regions the pattern matches
                stats = stats_of(manager, "dry")
                return stats["last_round"][0]["chosen"] if stats["last_round"] else 0

            found = wait_for(lambda: would() >= 0.8 * cold_pages, 60)
            counted = wait_for(lambda: stats_of(manager, "dry")["extra"]["scheme"]["nr_tried"] > 0, 15)
            stats = stats_of(manager, "dry")
            present, swapped = pagemap_bits(w.pid, *w.cold)
            (out,) = stats["last_round"]
            detail = f"VmSwap {status_kb(w.pid, 'VmSwap')} kB of a {cold_pages * 4} kB cold mapping; stats {stats}"
            assert found and counted, detail
            assert out["pid"] == w.pid and out["dry_run"] and out["detail"]["action"] == "pageout", detail
            # pages present, not the regions' address space (which spans the gaps between mappings)
            assert out["chosen"] * 4 <= out["detail"]["rss_kb"], detail
            scheme = stats["extra"]["scheme"]
            assert scheme["action"] == "pageout" and scheme["dry_run"], detail
            assert scheme["sz_applied"] == 0 and scheme["nr_applied"] == 0, detail
            assert present.all() and not swapped.any() and status_kb(w.pid, "VmSwap") == 0, detail
            assert stats["last_error"] is None and stats["pages_swapped"] == 0, detail
            assert w.verify()
    finally:
        for name in list(manager.projects):
            manager.delete_project(name)
    assert read("kdamonds/nr_kdamonds") == "0" and not KDAMONDS.members


FORKED = """
import mmap, os, sys, time
import numpy as np
m = mmap.mmap(-1, 64 << 20)
a = np.frombuffer(m, dtype=np.uint8)
a[::4096] = 1
child = os.fork()
print(os.getpid(), a.ctypes.data, flush=True)
if child == 0:
    while True:          # the child's own copy of every page, read and written all the time
        a[::4096] += 1
        time.sleep(0.005)
sys.stdin.read()
os.kill(child, 9)
"""


def test_a_dry_run_over_a_fork_counts_the_cold_mapping_for_the_parent_only(zram_swap):
    # parent and child have the mapping at one address; the kdamond lists the regions
    # without their process, in target order, which tells them apart
    procs = subprocess.Popen([sys.executable, "-c", FORKED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    manager = Manager()
    try:
        at = dict(tuple(map(int, procs.stdout.readline().split())) for _ in range(2))
        parent, child = procs.pid, next(p for p in at if p != procs.pid)
        assert at[parent] == at[child]
        pages = (64 << 20) // 4096
        manager.add_text(CONFIG.format(name="fork", action="pageout", pid=parent) + "dry_run=yes\n", "damon.conf")
        manager.start("fork")

        def would() -> dict:
            return {out["pid"]: out["chosen"] for out in stats_of(manager, "fork")["last_round"]}

        found = wait_for(lambda: would().get(parent, 0) >= 0.8 * pages, 90)
        chosen = would()
        detail = f"chosen {chosen} of a {pages}-page mapping; stats {stats_of(manager, 'fork')}"
        assert found and set(chosen) == {parent, child}, detail
        # the child's copy is read all the time: what it is counted is its other memory (the
        # interpreter's, cold too), not the mapping its parent left cold at the same addresses
        child_pages = status_kb(child, "VmRSS") // 4
        assert chosen[child] <= child_pages - 0.8 * pages, detail
        assert status_kb(parent, "VmSwap") == 0 and status_kb(child, "VmSwap") == 0, detail
    finally:
        for name in list(manager.projects):
            manager.delete_project(name)
        procs.stdin.close()
        procs.wait(10)
    assert read("kdamonds/nr_kdamonds") == "0" and not KDAMONDS.members
