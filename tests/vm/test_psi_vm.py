"""The psi engine on a real kernel: the test guest's cgroup v2 memory controller, its PSI,
memory.reclaim and a zram swap, driven through etmem's Project objects.

The cgroups are the test's own, under /sys/fs/cgroup/etmem-psi: `a` holds the workload the
tasks reclaim, `b` 16 MiB of tmpfs pages that no task names. A workload is charged to its
cgroup from its first page: this process joins the cgroup for the fork and leaves it again
once the child is up.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from etmem import Manager, Project, kernel
from etmem.cgroup import system_hierarchy
from etmem.workload import Workload

pytestmark = pytest.mark.vm

MiB = 1 << 20
BASE = "etmem-psi"     # under the cgroup2 mount
SLACK = MiB            # what memory.reclaim may take beyond the amount asked (it works in batches)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _number(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def _pgsteal(memory_stat: str) -> int:
    return next(int(line.split()[1]) for line in memory_stat.splitlines() if line.startswith("pgsteal "))


@pytest.fixture(scope="module")
def root():
    """The cgroup2 mount (mounted if the guest has none), with memory on for our cgroups."""
    if "cgroup2" not in kernel.cgroup_mounts():
        os.makedirs("/sys/fs/cgroup", exist_ok=True)
        subprocess.run(["mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"], check=True)
    if not kernel.has_cgroup2_memory():
        pytest.skip(kernel.missing("cgroup2_memory"))
    if not kernel.has_memory_reclaim():
        pytest.skip(kernel.missing("memory_reclaim"))
    if not kernel.has_psi():
        pytest.skip(kernel.missing("psi"))
    mount = kernel.cgroup_mounts()["cgroup2"]
    _write(f"{mount}/cgroup.subtree_control", "+memory")
    base = f"{mount}/{BASE}"
    os.makedirs(base, exist_ok=True)
    _write(f"{base}/cgroup.subtree_control", "+memory")
    yield mount
    for here, _, _ in sorted(os.walk(base), key=lambda w: -w[0].count("/")):
        os.rmdir(here)


def started_in(cgroup_dir: str, **workload) -> Workload:
    """A workload whose memory is all charged to cgroup_dir."""
    with open("/proc/self/cgroup") as f:
        home = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    mount = kernel.cgroup_mounts()["cgroup2"]
    _write(f"{cgroup_dir}/cgroup.procs", str(os.getpid()))
    try:
        return Workload(**workload).start()
    finally:
        _write(f"{mount}{home}/cgroup.procs", str(os.getpid()))


@pytest.fixture(scope="module")
def workloads(root, zram_swap, tmp_path_factory):
    """(a, b), workload: a holds a running workload for the tasks; b, named by none, 16 MiB of
    tmpfs pages written by a process that ran in it (cheaper than a second workload)."""
    a, b = f"{BASE}/a", f"{BASE}/b"
    for path in (a, b):
        os.makedirs(f"{root}/{path}", exist_ok=True)
    kept = tmp_path_factory.mktemp("psi") / "b.bin"
    subprocess.run(["sh", "-c", f'echo $$ > {root}/{b}/cgroup.procs && exec dd if=/dev/urandom of={kept} bs=1M count=16'],
                   check=True, capture_output=True)
    w = started_in(f"{root}/{a}", total_mb=48, hot_mb=8, pause=0.01)
    yield (a, b), w
    w.stop()
    kept.unlink()


def psi_task(name: str, **keys):
    project = Project(name=f"vm-psi-{name}", scan_type="psi", interval=1)
    return project.add_engine("psi").add_task(name, keys.pop("type", None), keys.pop("value", None), **keys)


def test_psi_reclaims_while_pressure_is_low_keeps_every_floor_and_leaves_other_cgroups_alone(root, workloads):
    (a, b), wa = workloads
    cg_a = system_hierarchy().cgroup(a)
    b_current, b_stat = _number(f"{root}/{b}/memory.current"), open(f"{root}/{b}/memory.stat").read()
    assert b_current >= 16 * MiB

    task = psi_task("low", cg_dir=a, reclaim_rate=0.5)
    before = cg_a.current()
    (out,) = task.run_round().last_round
    assert (out.error, out.skipped, out.source) == (None, None, "psi"), out
    d = out.detail
    assert max(d["pressure_avg10"], d["pressure_avg60"]) < 0.1
    assert d["requested"] >= 8 * MiB and d["reclaimed"] >= d["requested"] // 2, d
    assert cg_a.current() < before and _number(f"{root}/{a}/memory.swap.current") > 0

    # The same cgroup named by a process in it.
    (by_pid,) = psi_task("pid", type="pid", value=wa.pid).run_round().last_round
    assert by_pid.detail["cgroup"] == a and by_pid.error is None

    # Each floor term in turn, highest first, on rounds no pressure stops (rate 1: to the floor at once).
    current = cg_a.current()

    def share(ratio: float) -> int:   # in whole pages, as the kernel keeps memory.max, .min and .low
        return int(current * ratio) // 4096 * 4096
    phases = [("limit_min_ratio", {"memory.max": str(2 * share(1))}, {"limit_min_ratio": 0.4}, int(2 * share(1) * 0.4)),
              ("limit_min_bytes", {"memory.max": "max"}, {"limit_min_bytes": share(0.65)}, share(0.65)),
              ("memory.low", {"memory.low": str(share(0.5))}, {}, share(0.5)),
              ("memory.min", {"memory.low": "0", "memory.min": str(share(0.35))}, {}, share(0.35))]
    for label, files, keys, floor in phases:
        for name, value in files.items():
            _write(f"{root}/{a}/{name}", value)
        phase = psi_task(label.replace(".", "_"), cg_dir=a, pressure=100, refault_ratio=1000,
                         reclaim_rate=1.0, reclaim_rate_max=1.0, **keys)
        reclaimed = 0
        for _ in range(2):
            (out,) = phase.run_round().last_round
            assert out.error is None, out
            reclaimed += out.detail["reclaimed"]
            after = cg_a.current()
            assert out.detail["floor"] >= floor, (label, out.detail)
            assert after >= floor - SLACK, f"{label}: {after >> 10} KiB left, below the floor of {floor >> 10} KiB"
        # it reclaimed down towards the floor, or the cgroup was at its floor already (the
        # unreclaimable part counts in it: with the swap room other tests left, that can be all)
        assert reclaimed > 0 or out.detail["floor"] >= cg_a.current() - SLACK, (label, out.detail)
    _write(f"{root}/{a}/memory.min", "0")

    # Nothing of b was reclaimed: no page of it stolen, nothing of it swapped.
    assert _pgsteal(open(f"{root}/{b}/memory.stat").read()) == _pgsteal(b_stat)
    assert _number(f"{root}/{b}/memory.swap.current") == 0 and _number(f"{root}/{b}/memory.current") >= b_current


def test_a_psi_dry_run_reclaims_nothing_and_reports_what_it_would(root, workloads):
    (a, _), _ = workloads
    cg_a = system_hierarchy().cgroup(a)
    stat_before = open(f"{root}/{a}/memory.stat").read()
    swap_before = _number(f"{root}/{a}/memory.swap.current")
    # pressure and refaults left by the other tests must not stop the rounds: the floor decides
    task = psi_task("dry", cg_dir=a, reclaim_rate=0.5, pressure=100, refault_ratio=1000, dry_run="yes")
    for _ in range(2):
        (out,) = task.run_round().last_round
        assert (out.error, out.skipped, out.dry_run) == (None, None, True), out
        assert out.detail["requested"] > 0 and out.chosen * 4096 == out.detail["requested"], out.detail
        assert out.detail["reclaimed"] == 0
    assert _pgsteal(open(f"{root}/{a}/memory.stat").read()) == _pgsteal(stat_before), "no page was reclaimed"
    assert _number(f"{root}/{a}/memory.swap.current") <= swap_before, "nothing went to swap (pages may come back)"
    assert task.stats.extra["cgroups"][a]["would_reclaim"] == out.detail["requested"]
    assert task.stats.extra["reclaimed_bytes"] == 0 and cg_a.current() > out.detail["floor"]


def test_psi_stops_reclaiming_while_the_workload_thrashes(root, workloads):
    (a, _), wa = workloads
    task = psi_task("thrash", cg_dir=a)
    cg_a = system_hierarchy().cgroup(a)
    # No swap for a and memory.high below its anonymous memory: the kernel can only take
    # its file pages (the interpreter's code), which it faults back at once, and throttles
    # it for the rest. Stalls, but never an OOM kill (memory.high does not kill).
    _write(f"{root}/{a}/memory.swap.max", "0")
    _write(f"{root}/{a}/memory.high", str(4 * MiB))
    try:
        deadline = time.monotonic() + 20
        while cg_a.pressure().recent < 1.0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cg_a.pressure().recent >= 1.0, f"the squeeze made no pressure: {cg_a.pressure()}"
        for _ in range(2):
            (out,) = task.run_round().last_round
            assert out.skipped.startswith("memory pressure ") and out.skipped.endswith("is not below pressure=0.1"), out
            assert out.detail["requested"] == 0 and out.detail["reclaimed"] == 0
        assert out.detail["rate"] == 0.04   # two bad rounds lower the rate by 0.01
    finally:
        _write(f"{root}/{a}/memory.high", "max")
        _write(f"{root}/{a}/memory.swap.max", "max")
    assert wa.verify(), "the workload's data changed"   # this stops its touching: the last use of it


def test_memory_reclaim_that_cannot_be_met_is_a_partial_reclaim(root):
    path = f"{BASE}/empty"
    os.makedirs(f"{root}/{path}", exist_ok=True)
    result = system_hierarchy().cgroup(path).reclaim(MiB)   # nothing there: the kernel says EAGAIN
    assert (result.requested, result.reclaimed, result.complete) == (MiB, 0, False)


def test_a_glob_picks_up_a_cgroup_made_after_start_and_drops_a_removed_one(root):
    parent = f"{root}/{BASE}/glob"
    os.makedirs(parent, exist_ok=True)
    _write(f"{parent}/cgroup.subtree_control", "+memory")
    os.mkdir(f"{parent}/one")
    project = Project(name="vm-psi-glob", scan_type="psi", interval=1)
    task = project.add_engine("psi").add_task("glob", None, None, cg_dir=f"{BASE}/glob/*")
    manager = Manager()
    manager.add(project)

    def paths_after(change=None, timeout=30.0):
        if change:
            change()
        rounds, deadline = task.stats.rounds, time.monotonic() + timeout
        while task.stats.rounds < rounds + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        return [t.detail["cgroup"] for t in task.stats.last_round]

    manager.start(project.name)
    try:
        assert paths_after() == [f"{BASE}/glob/one"]
        assert paths_after(lambda: os.mkdir(f"{parent}/two")) == [f"{BASE}/glob/one", f"{BASE}/glob/two"]
        assert paths_after(lambda: os.rmdir(f"{parent}/one")) == [f"{BASE}/glob/two"]
        assert task.stats.last_error is None
        assert list(task.stats.extra["cgroups"]) == [f"{BASE}/glob/two"]
    finally:
        manager.stop(project.name)
