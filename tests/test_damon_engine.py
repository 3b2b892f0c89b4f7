"""The damon engine on the host: upstream's config, its checks, and what it writes to DAMON's sysfs.

DAMON on this machine is the machine's (and has no vaddr), so the sysfs tree is emulated
(kernel_emulation.DamonSysfs, which behaves as Linux 6.12's) except in the one test that
checks, read-only, that the real one is refused as another owner's. The guest runs the
engine on a real kernel (tests/vm/test_damon_engine_vm.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from etmem import Manager, damon_sysfs, kernel, procfs, report, scan
from etmem.damon_sysfs import KDAMONDS, DamonInUse, Kdamond, KdamondSpec, MonitoringAttrs, Scheme
from etmem.engines import damon as damon_engine
from etmem.engines.damon import Damon, by_target, merged, overlap
from etmem.errors import ConfigError, EtmemError, KernelFeatureMissing
from etmem.loader import load_text
from etmem.protocol import render_show_text
from etmem.scan import Scanner
from kernel_emulation import DAMON_ACTIONS, DamonSysfs

# upstream's sample damon config, unchanged
UPSTREAM_SAMPLE = """\
[project]
name=test
scan_type=region
sample_interval=5000
aggr_interval=100000
update_interval=1000000
min_nr_regions=10
max_nr_regions=1000

[engine]
name=damon
project=test
min_size=0
max_size=4294967295
min_acc=0
max_acc=2
min_age=0
max_age=4294967295
action=pageout

[task]
project=test
engine=damon
name=background_damon
type=name
value=mysqld
"""

# update_interval 100 s: the timer's own rounds come 100 s apart, so a test runs its rounds itself
PROJECT = """\
[project]
name={name}
scan_type=region
sample_interval=5000
aggr_interval=100000
update_interval=100000000
min_nr_regions=10
max_nr_regions=1000
"""

ENGINE = """\
[engine]
name=damon
project={project}
{keys}
"""

TASK = """\
[task]
project={project}
engine={engine}
name={name}
type={type}
value={value}
"""


def config(name="p", keys="action=pageout", tasks=(), engine="damon"):
    text = PROJECT.format(name=name) + ENGINE.format(project=name, keys=keys)
    for i, (kind, value) in enumerate(tasks):
        text += TASK.format(project=name, engine=engine, name=f"t{i}", type=kind, value=value)
    return text


def error_of(text: str, path: str = "damon.conf") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(text, path)
    return info.value


# --- the config -----------------------------------------------------------------------

def test_upstreams_sample_damon_config_loads_unchanged():
    cfg = load_text(UPSTREAM_SAMPLE, "damon_conf.yaml")
    (project,), (engine,), (task,) = cfg.projects, cfg.engines, cfg.tasks
    assert (project.scan_type, project.sample_interval, project.aggr_interval, project.update_interval,
            project.min_nr_regions, project.max_nr_regions) == ("region", 5000, 100000, 1000000, 10, 1000)
    assert engine.strategy is Damon and engine.name == "damon"
    k = engine.keys
    assert (k.min_size, k.max_size, k.min_acc, k.max_acc, k.min_age, k.max_age, k.action) == \
        (0, 4294967295, 0, 2, 0, 4294967295, "pageout")
    assert (task.engine, task.common.type, task.common.value) == ("damon", "name", "mysqld")
    assert cfg.warnings == ()


@pytest.mark.parametrize("key,value,message", [
    ("action", "swapout", "must be willneed, cold, pageout, hugepage, nohugepage, stat, lru_prio, lru_deprio, "
                          "migrate_hot or migrate_cold"),
    ("min_acc", "-1", "must be an integer from 0 to 4294967295"),
    ("max_age", "4294967296", "must be an integer from 0 to 4294967295"),
    ("max_size", "lots", "must be a size like 10g"),
    ("quota_ms", "fast", "must be an integer >= 0"),
    ("wmark_high", "1001", "must be an integer from 0 to 1000"),
    ("target_nid", "-1", "must be an integer from 0 to 1023"),
])
def test_bad_values_name_file_line_and_key(key, value, message):
    lines = UPSTREAM_SAMPLE.splitlines()
    if any(text.startswith(f"{key}=") for text in lines):
        lines = [f"{key}={value}" if text.startswith(f"{key}=") else text for text in lines]
    else:
        lines.insert(lines.index("action=pageout") + 1, f"{key}={value}")
    err = error_of("\n".join(lines) + "\n")
    line = next(i for i, text in enumerate(lines, start=1) if text == f"{key}={value}")
    assert (err.path, err.line, err.group, err.key) == ("damon.conf", line, "engine", key), str(err)
    assert message in err.message
    assert str(err).startswith(f"damon.conf:{line}: [engine] {key}={value}: ")


@pytest.mark.parametrize("keys,key,message", [
    ("min_acc=5\nmax_acc=2", "min_acc", "must not be above max_acc (2)"),
    ("min_size=8k\nmax_size=4k", "min_size", "must not be above max_size (4096)"),
    ("min_age=10\nmax_age=9", "min_age", "must not be above max_age (9)"),
    ("action=migrate_cold", "target_nid", "is required for action=migrate_cold"),
    ("target_nid=1", "target_nid", "is only for action=migrate_hot or migrate_cold"),
    ("quota_reset_interval_ms=500", "quota_reset_interval_ms", "needs a quota"),
    ("wmark_high=900\nwmark_mid=800", "wmark_low", "give wmark_high, wmark_mid and wmark_low, or none"),
    ("wmark_high=100\nwmark_mid=800\nwmark_low=50", "wmark_mid", "wmark_high >= wmark_mid >= wmark_low"),
    ("wmark_interval_us=1000", "wmark_interval_us", "needs the watermarks"),
])
def test_key_combinations_that_cannot_work_are_refused_at_their_line(keys, key, message):
    text = config(keys="action=pageout\n" + keys if not keys.startswith("action=") else keys)
    err = error_of(text)
    line = next(i for i, t in enumerate(text.splitlines(), start=1) if t.startswith(f"{key}=")) \
        if f"\n{key}=" in text else None
    assert err.key == key and message in err.message, str(err)
    if line is not None:
        assert err.line == line


def test_a_region_project_takes_only_damon_engines_and_damon_only_region_projects():
    text = config() + "[engine]\nname=slide\nproject=p\n"
    err = error_of(text)
    assert err.key == "name" and err.line == len(config().splitlines()) + 2
    assert "a region project (scan_type=region) has only damon engines" in err.message
    page = "[project]\nname=q\nloop=1\ninterval=1\nsleep=1\n[engine]\nname=damon\nproject=q\naction=stat\n"
    err = error_of(page)
    assert (err.key, err.line) == ("name", 7) and "the damon engine needs a project with scan_type=region" in err.message


# --- the real kernel of this host: another owner's DAMON, read-only ------------------------

def test_on_this_host_obj_add_says_damon_is_in_use_by_another_owner_and_touches_nothing():
    try:
        nr = int(open(f"{kernel.DAMON_ADMIN}/kdamonds/nr_kdamonds").read())
    except OSError:
        pytest.skip("this kernel has no DAMON sysfs interface")
    if nr == 0:
        pytest.skip("no kdamond is running here, so there is no other owner to detect")
    before = [open(f"{kernel.DAMON_ADMIN}/kdamonds/{i}/state").read() for i in range(nr)]
    manager = Manager()
    with pytest.raises(EtmemError) as info:
        manager.add_text(config(tasks=[("pid", os.getpid())]), "damon.conf")
    assert "damon.conf:" in str(info.value) and "DAMON is in use by another owner" in str(info.value)
    assert manager.projects == {}, "obj add is all or nothing"
    assert int(open(f"{kernel.DAMON_ADMIN}/kdamonds/nr_kdamonds").read()) == nr
    assert [open(f"{kernel.DAMON_ADMIN}/kdamonds/{i}/state").read() for i in range(nr)] == before
    assert not KDAMONDS.members


# --- an emulated DAMON ------------------------------------------------------------------------

@pytest.fixture
def damon_tree(tmp_path, monkeypatch):
    """An emulated Linux 6.12 DAMON sysfs tree that etmem's DAMON code uses, and nothing left of it after."""
    tree = DamonSysfs(tmp_path / "admin")
    monkeypatch.setattr(damon_sysfs, "DAMON_ADMIN", str(tree.root))
    monkeypatch.setattr(damon_sysfs, "OPENER", tree.opener)
    monkeypatch.setattr(kernel, "damon_operations", lambda: {"vaddr", "fvaddr", "paddr"})
    monkeypatch.setattr(kernel, "linux_version", lambda: (6, 12))
    yield tree
    assert not KDAMONDS.members and KDAMONDS.user is None, "a test left etmem's kdamonds behind"


@pytest.fixture
def manager():
    m = Manager()
    yield m
    for name in list(m.projects):
        m.delete_project(name)


@pytest.fixture
def processes():
    """Start idle processes with a name of their own: start(name) -> Popen; all killed after."""
    started = []

    def start(name: str | None = None) -> subprocess.Popen:
        name = name or "dmn" + uuid.uuid4().hex[:8]
        code = ("import ctypes, time; ctypes.CDLL(None).prctl(15, %r, 0, 0, 0); print('ready', flush=True); "
                "time.sleep(120)" % name.encode())
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        child.comm = name
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()
        child.wait()


def end(child: subprocess.Popen) -> None:
    child.kill()
    child.wait()


CTX = "kdamonds/0/contexts/0"


def pids_of(tree: DamonSysfs, index: int = 0) -> list[int]:
    ctx = f"kdamonds/{index}/contexts/0/targets"
    return [int(tree.file(f"{ctx}/{i}/pid_target")) for i in range(int(tree.file(f"{ctx}/nr_targets")))]


def test_upstream_keys_become_one_scheme_of_the_projects_kdamond(damon_tree, manager, processes):
    child = processes()
    keys = "min_size=4096\nmax_size=1g\nmin_acc=0\nmax_acc=2\nmin_age=10\nmax_age=4294967295\naction=pageout"
    manager.add_text(config(keys=keys, tasks=[("pid", child.pid)]))
    assert damon_tree.file("kdamonds/nr_kdamonds") == "0", "obj add only checks; project start sets up"
    manager.start("p")
    f = damon_tree.file
    assert f("kdamonds/0/state") == "on"
    assert f(f"{CTX}/operations") == "vaddr"
    assert [f(f"{CTX}/monitoring_attrs/intervals/{k}") for k in ("sample_us", "aggr_us", "update_us")] == \
        ["5000", "100000", "100000000"]
    assert [f(f"{CTX}/monitoring_attrs/nr_regions/{k}") for k in ("min", "max")] == ["10", "1000"]
    assert pids_of(damon_tree) == [child.pid]
    s = f"{CTX}/schemes/0"
    assert f(f"{CTX}/schemes/nr_schemes") == "2", "the engine's scheme and etmem's region counter"
    assert f(f"{s}/action") == "pageout"
    assert [f(f"{s}/access_pattern/{k}/{m}") for k in ("sz", "nr_accesses", "age") for m in ("min", "max")] == \
        ["4096", str(1 << 30), "0", "2", "10", "4294967295"]
    assert [f(f"{s}/quotas/{k}") for k in ("ms", "bytes", "reset_interval_ms")] == ["0", "0", "0"]
    assert f(f"{s}/quotas/goals/nr_goals") == "0" and f(f"{s}/watermarks/metric") == "none"
    counter = f"{CTX}/schemes/1"
    assert f(f"{counter}/action") == "stat"
    assert [f(f"{counter}/access_pattern/{k}/max") for k in ("sz", "nr_accesses", "age")] == \
        [str(2**64 - 1), str(2**32 - 1), str(2**32 - 1)]


def test_quota_goal_and_watermark_keys_are_written_to_the_scheme(damon_tree, manager, processes):
    child = processes()
    keys = ("action=pageout\nmin_age=5\nquota_ms=20\nquota_bytes=256m\nquota_reset_interval_ms=2000\n"
            "quota_goal_psi_us=5000\nwmark_high=900\nwmark_mid=500\nwmark_low=50\nwmark_interval_us=200000")
    manager.add_text(config(keys=keys, tasks=[("pid", child.pid)]))
    manager.start("p")
    f, s = damon_tree.file, f"{CTX}/schemes/0"
    assert [f(f"{s}/quotas/{k}") for k in ("ms", "bytes", "reset_interval_ms")] == ["20", str(256 << 20), "2000"]
    assert f(f"{s}/quotas/goals/nr_goals") == "1"
    assert (f(f"{s}/quotas/goals/0/target_metric"), f(f"{s}/quotas/goals/0/target_value")) == ("some_mem_psi_us", "5000")
    assert [f(f"{s}/quotas/weights/{k}") for k in ("sz_permil", "nr_accesses_permil", "age_permil")] == ["0", "1000", "1000"]
    assert [f(f"{s}/watermarks/{k}") for k in ("metric", "interval_us", "high", "mid", "low")] == \
        ["free_mem_rate", "200000", "900", "500", "50"]


def test_a_quota_goal_alone_gets_the_default_reset_interval(damon_tree, manager, processes):
    child = processes()
    manager.add_text(config(keys="action=pageout\nquota_goal_psi_us=1000", tasks=[("pid", child.pid)]))
    manager.start("p")
    s = f"{CTX}/schemes/0/quotas"
    assert [damon_tree.file(f"{s}/{k}") for k in ("ms", "bytes", "reset_interval_ms")] == ["0", "0", "1000"]


@pytest.mark.parametrize("action,needs", [("migrate_hot", "Linux 6.17"), ("migrate_cold", "Linux 6.17"),
                                          ("lru_prio", "only to physical memory"),
                                          ("lru_deprio", "only to physical memory")])
def test_actions_the_kernels_vaddr_does_not_apply_are_refused_at_obj_add(damon_tree, manager, action, needs):
    keys = f"action={action}" + ("\ntarget_nid=1" if action.startswith("migrate") else "")
    with pytest.raises(EtmemError) as info:
        manager.add_text(config(keys=keys, tasks=[("pid", os.getpid())]), "damon.conf")
    assert f"action={action}" in str(info.value) and needs in str(info.value) and "damon.conf:" in str(info.value)
    assert manager.projects == {} and damon_tree.stores == []


def test_migrate_on_a_kernel_that_has_it_writes_the_target_node(damon_tree, manager, processes, monkeypatch):
    monkeypatch.setattr(kernel, "linux_version", lambda: (6, 17))
    child = processes()
    manager.add_text(config(keys="action=migrate_cold\ntarget_nid=1\nmax_acc=0", tasks=[("pid", child.pid)]))
    manager.start("p")
    assert damon_tree.file(f"{CTX}/schemes/0/action") == "migrate_cold"
    assert damon_tree.file(f"{CTX}/schemes/0/target_nid") == "1"


def test_an_action_the_kernel_does_not_know_fails_project_start_with_a_clear_error(tmp_path, monkeypatch, manager, processes):
    old_kernel = DamonSysfs(tmp_path / "admin", actions=tuple(a for a in DAMON_ACTIONS if not a.startswith("migrate")))
    monkeypatch.setattr(damon_sysfs, "DAMON_ADMIN", str(old_kernel.root))
    monkeypatch.setattr(damon_sysfs, "OPENER", old_kernel.opener)
    monkeypatch.setattr(kernel, "damon_operations", lambda: {"vaddr"})
    monkeypatch.setattr(kernel, "linux_version", lambda: (6, 17))   # a kernel that says it is new, but is not
    child = processes()
    manager.add_text(config(keys="action=migrate_hot\ntarget_nid=0", tasks=[("pid", child.pid)]))
    with pytest.raises(EtmemError, match="does not know the action 'migrate_hot'"):
        manager.start("p")
    assert not manager.project("p").started
    assert old_kernel.file("kdamonds/nr_kdamonds") == "0" and not KDAMONDS.members, "a failed start leaves nothing"
    assert KDAMONDS.user is None


def test_min_acc_above_the_samples_of_an_aggregation_is_refused(damon_tree, manager):
    with pytest.raises(ConfigError) as info:
        manager.add_text(config(keys="action=stat\nmin_acc=21", tasks=[("pid", os.getpid())]), "damon.conf")
    assert info.value.key == "min_acc" and "at most aggr_interval / sample_interval = 20 samples" in str(info.value)


# --- the lifecycle ------------------------------------------------------------------------------

def test_start_turns_on_stop_turns_off_and_obj_del_removes_every_sysfs_object(damon_tree, manager, processes):
    child = processes()
    text = config(tasks=[("pid", child.pid)])
    manager.add_text(text)
    manager.start("p")
    assert damon_tree.file("kdamonds/0/state") == "on" and KDAMONDS.user == "engine"
    manager.stop("p")
    assert damon_tree.file("kdamonds/0/state") == "off"
    assert damon_tree.file("kdamonds/nr_kdamonds") == "1", "stop keeps the kdamond (its counters stay readable)"
    manager.start("p")
    assert damon_tree.file("kdamonds/0/state") == "on"
    manager.delete_text(text)
    assert damon_tree.file("kdamonds/nr_kdamonds") == "0"
    assert not list((damon_tree.root / "kdamonds").glob("[0-9]*")), "no kdamond directory is left"
    assert not KDAMONDS.members and KDAMONDS.user is None


def test_outside_a_dry_run_the_regions_are_counted_once_a_run_and_then_every_period(damon_tree, manager, processes,
                                                                                    monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(damon_engine.time, "monotonic", lambda: clock[0])
    child = processes()
    manager.add_text(config(tasks=[("pid", child.pid)]))
    manager.start("p")
    task = manager.project("p").engine("damon").task("t0")

    def listings():
        return damon_tree.commands().count("update_schemes_tried_regions")

    damon_tree.regions[0] = [(0x1000, 0x5000, 0), (0x5000, 0x9000, 4)]
    task.run_round()
    assert listings() == 1 and task.stats.extra["kdamond"]["nr_regions"] == 2
    damon_tree.regions[0] = [(0x1000, 0x3000, 0), (0x3000, 0x5000, 0), (0x5000, 0x9000, 4)]
    clock[0] += damon_engine.REGION_COUNT_PERIOD_S - 1
    task.run_round()
    assert listings() == 1 and task.stats.extra["kdamond"]["nr_regions"] == 2, "the last count stands"
    assert damon_tree.commands().count("update_schemes_stats") >= 2, "the scheme stats are read every round"
    clock[0] += 1
    task.run_round()
    assert listings() == 2 and task.stats.extra["kdamond"]["nr_regions"] == 3
    manager.stop("p")
    manager.start("p")      # a new monitoring run: counted at its first round
    task.run_round()
    assert listings() == 3


def test_show_has_each_schemes_stats_the_regions_and_the_kdamonds_state(damon_tree, manager, processes):
    child = processes()
    manager.add_text(config(tasks=[("pid", child.pid)]))
    manager.start("p")
    damon_tree.counters[(0, 0)] = {"nr_tried": 12, "sz_tried": 12 << 20, "nr_applied": 3, "sz_applied": 3 << 20,
                                   "qt_exceeds": 1}
    damon_tree.regions[0] = [(0x1000, 0x5000, 0), (0x5000, 0x9000, 4), (0x9000, 0xa000, 20)]
    task = manager.project("p").engine("damon").task("t0")
    task.run_round()
    show = manager.show("p")[0]["tasks"][0]["stats"]
    assert show["extra"]["scheme"] == {"action": "pageout", "nr_tried": 12, "sz_tried": 12 << 20, "nr_applied": 3,
                                       "sz_applied": 3 << 20, "qt_exceeds": 1}
    assert show["extra"]["kdamond"] == {"index": 0, "state": "on", "nr_regions": 3, "targets": 1, "starts": 1}
    assert show["source"] == "damon" and show["last_error"] is None and show["targets"] == 1
    assert show["last_round"][0]["pid"] == child.pid and "swap_kb" in show["last_round"][0]["detail"]
    assert "update_schemes_stats" in damon_tree.commands(), "the stats are brought up to date before reading"
    text = render_show_text(manager.show("p"), stats=True)     # etmem project show -v
    assert re.search(r"extra\.scheme\.sz_applied +3145728\n", text) and re.search(r"extra\.kdamond\.state +on\n", text)
    manager.stop("p")
    assert manager.show("p")[0]["tasks"][0]["stats"]["extra"]["kdamond"]["state"] == "off"


def test_the_kdamond_follows_the_processes_of_a_name_as_they_come_and_go(damon_tree, manager, processes):
    first = processes()
    manager.add_text(config(tasks=[("name", first.comm)]))
    manager.start("p")
    task = manager.project("p").engine("damon").task("t0")
    assert pids_of(damon_tree) == [first.pid]
    second = processes(first.comm)
    damon_tree.stores.clear()
    task.run_round()
    assert pids_of(damon_tree) == [first.pid, second.pid]
    assert "commit" in damon_tree.commands() and "off" not in damon_tree.commands(), \
        "a new process is committed to the running kdamond"
    end(first)
    damon_tree.stores.clear()
    task.run_round()
    assert pids_of(damon_tree) == [second.pid] and damon_tree.file("kdamonds/0/state") == "on"
    assert [c for c in damon_tree.commands() if c in ("on", "off")] == ["off", "on"], \
        "a process gone: monitoring starts afresh"
    end(second)
    damon_tree.targets_exited(0)     # the kernel stops a kdamond whose targets are all gone
    task.run_round()
    assert task.stats.extra["kdamond"]["state"] == "off"
    assert "no process named" in task.stats.last_error and task.stats.skipped.startswith("no target process")
    third = processes(first.comm)
    task.run_round()
    assert damon_tree.file("kdamonds/0/state") == "on" and pids_of(damon_tree) == [third.pid]
    assert task.stats.last_error is None and task.stats.extra["kdamond"]["starts"] == 3


def test_scheme_totals_survive_the_kernels_restarts(damon_tree, manager, processes):
    child = processes()
    manager.add_text(config(tasks=[("pid", child.pid)]))
    manager.start("p")
    task = manager.project("p").engine("damon").task("t0")
    damon_tree.counters[(0, 0)] = {"nr_applied": 5, "sz_applied": 5 << 20}
    manager.stop("p")          # the counters are read before off
    manager.start("p")         # a new run of the kdamond counts from 0 again
    damon_tree.counters[(0, 0)] = {"nr_applied": 2, "sz_applied": 2 << 20}
    task.run_round()
    assert task.stats.extra["scheme"]["nr_applied"] == 7 and task.stats.extra["scheme"]["sz_applied"] == 7 << 20


def test_a_second_project_gets_its_own_kdamond_and_the_first_keeps_running(damon_tree, manager, processes):
    a, b = processes(), processes()
    manager.add_text(config("a", tasks=[("pid", a.pid)]))
    manager.add_text(config("b", keys="action=stat", tasks=[("pid", b.pid)]))
    manager.start("a")
    damon_tree.counters[(0, 0)] = {"nr_tried": 9}
    manager.start("b")
    assert damon_tree.file("kdamonds/nr_kdamonds") == "2"
    assert [damon_tree.file(f"kdamonds/{i}/state") for i in (0, 1)] == ["on", "on"]
    assert (pids_of(damon_tree, 0), pids_of(damon_tree, 1)) == ([a.pid], [b.pid])
    assert damon_tree.file("kdamonds/1/contexts/0/schemes/0/action") == "stat"
    task_a = manager.project("a").engine("damon").task("t0")
    task_a.run_round()
    assert task_a.stats.extra["scheme"]["nr_tried"] == 9, "what a counted before b's rebuild is kept"
    manager.delete_project("a")
    assert damon_tree.file("kdamonds/nr_kdamonds") == "1" and damon_tree.file("kdamonds/0/state") == "on"
    assert pids_of(damon_tree, 0) == [b.pid] and KDAMONDS.members[0].label == "project b"


def test_two_damon_engines_of_a_project_are_two_schemes_of_one_kdamond(damon_tree, manager, processes):
    child = processes()
    text = (PROJECT.format(name="p") + "[engine]\nname=damon\nproject=p\neng_name=cold\naction=pageout\nmax_acc=0\n"
            "[engine]\nname=damon\nproject=p\neng_name=hot\naction=hugepage\nmin_acc=10\n"
            + TASK.format(project="p", engine="cold", name="c", type="pid", value=child.pid)
            + TASK.format(project="p", engine="hot", name="h", type="pid", value=child.pid))
    manager.add_text(text)
    manager.start("p")
    assert damon_tree.file("kdamonds/nr_kdamonds") == "1" and damon_tree.file(f"{CTX}/schemes/nr_schemes") == "3"
    assert [damon_tree.file(f"{CTX}/schemes/{i}/action") for i in range(3)] == ["pageout", "hugepage", "stat"]
    assert pids_of(damon_tree) == [child.pid], "a process two tasks share is one target"
    damon_tree.counters[(0, 0)] = {"nr_applied": 4}
    damon_tree.counters[(0, 1)] = {"nr_applied": 6}
    hot = manager.project("p").engine("hot").task("h")
    hot.run_round()
    assert hot.stats.extra["scheme"] == {"action": "hugepage", "nr_tried": 0, "sz_tried": 0, "nr_applied": 6,
                                         "sz_applied": 0, "qt_exceeds": 0}
    manager.delete_engine("p", "cold")
    assert [damon_tree.file(f"{CTX}/schemes/{i}/action") for i in range(2)] == ["hugepage", "stat"]
    hot.run_round()
    assert hot.stats.extra["scheme"]["nr_applied"] == 6 + 0, "the hot scheme keeps its totals"


# --- dry runs ------------------------------------------------------------------------------------

COLD = "min_acc=0\nmax_acc=2\nmin_age=4\naction=pageout"


def test_dry_run_counts_the_present_pages_of_the_regions_within_the_processs_mappings():
    regions = [(0x1000, 0x9000), (0x5000, 0xc000), (0x20000, 0x30000), (0x30000, 0x31000)]
    assert merged(regions).tolist() == [[0x1000, 0xc000], [0x20000, 0x31000]], "overlapping and touching joined"
    vmas = [(0x0, 0x2000), (0x8000, 0x22000), (0x40000, 0x50000)]
    assert overlap(merged(regions), vmas).tolist() == [[0x1000, 0x2000], [0x8000, 0xc000], [0x20000, 0x22000]]
    assert overlap(np.zeros((0, 2)), vmas).shape == (0, 2) and overlap(regions[:1], []).shape == (0, 2)


def test_a_dry_run_installs_its_scheme_as_stat_and_reports_the_pages_it_would_page_out(damon_tree, manager,
                                                                                     workload_factory):
    w = workload_factory(total_mb=24, hot_mb=8)
    cold_pages = (w.cold[1] - w.cold[0]) // 4096
    manager.add_text(config(keys=COLD, tasks=[("pid", w.pid)]) + "dry_run=yes\n")
    manager.start("p")
    f = damon_tree.file
    scheme = f"{CTX}/schemes/0"
    assert [f(f"{CTX}/schemes/{i}/action") for i in range(2)] == ["stat", "stat"], "nothing pages out"
    assert [f(f"{scheme}/access_pattern/{k}/{m}") for k in ("nr_accesses", "age") for m in ("min", "max")] == \
        ["0", "2", "4", "4294967295"], "the pattern is the pageout scheme's"
    # matched: the cold mapping and 1 GiB of address space above the top of the process's
    # mappings (the stack; the kernel's vdso there is none of its pages), which has no page;
    # not the hot mapping (accessed 4 times an aggregation) nor a young region
    top = max(v.end for v in procfs.maps(w.pid) if not v.is_special)
    damon_tree.regions[0] = [(w.cold[0], w.cold[1], 0, 10), (w.hot[0], w.hot[1], 4, 10), (top, top + (1 << 30), 0, 10),
                             (top + (1 << 30), top + (2 << 30), 0, 1)]
    damon_tree.counters[(0, 0)] = {"nr_tried": 5, "sz_tried": 5 << 18}
    task = manager.project("p").engine("damon").task("t0")
    task.run_round()
    assert task.stats.last_error is None and task.stats.pages_swapped == 0
    (out,) = task.stats.last_round
    assert (out.pid, out.dry_run, out.chosen, out.detail["action"]) == (w.pid, True, cold_pages, "pageout")
    matched = w.cold[1] - w.cold[0] + (1 << 30)
    assert task.stats.extra["scheme"] == {"action": "pageout", "dry_run": True, "nr_tried": 5, "sz_tried": 5 << 18,
                                          "nr_applied": 0, "sz_applied": 0, "qt_exceeds": 0,
                                          "matching_regions": 2, "matching_bytes": matched}
    assert task.stats.extra["kdamond"]["nr_regions"] == 4
    (record,) = task.stats.history.rounds()[-1].targets
    assert record.dry_run and record.chosen == cold_pages
    (line,) = report.rounds_text(task.stats.history, last=1).splitlines()[-1:]
    assert re.fullmatch(rf"  process {w.pid} \(dry run\): resident \d.*, swapped 0 B, "
                        rf"would apply pageout to 4,096 pages \(16 MiB\)", line), line
    # a listing with no region at all raced an update (6.12): the last regions stand
    damon_tree.regions[0] = []
    task.run_round()
    assert task.stats.last_round[0].chosen == cold_pages and task.stats.extra["kdamond"]["nr_regions"] == 4
    assert w.verify()


def test_regions_are_told_apart_by_target_where_the_addresses_fall_back():
    a, b = (0x1000, 0x5000, 0, 9), (0x5000, 0x9000, 0, 9)
    every = [a, b, (0x9000, 0xa000, 6, 2), a, b]          # two processes of one layout: b twice
    assert {p: r.tolist() for p, r in by_target(every, [a, b, a], (11, 12)).items()} == \
        {11: [[0x1000, 0x5000], [0x5000, 0x9000]], 12: [[0x1000, 0x5000]]}
    # the second process's b is younger: matched alone, it is the second one's
    young = (0x5000, 0x9000, 0, 3)
    assert by_target([a, b, a, young], [young], (11, 12))[12].tolist() == [[0x5000, 0x9000]]
    assert by_target([a, b, a, young], [young], (11, 12))[11].shape == (0, 2)
    # a second process mapped above the first: the addresses never fall back, nothing is known
    assert by_target([a, b, (0x20000, 0x30000, 0, 9)], [a], (11, 12)) is None
    assert by_target([a, b], [(0x7000, 0x8000, 0, 1)], (11,)) is None, "not of the same listing"


FORKED = """
import mmap, os, sys
import numpy as np
m = mmap.mmap(-1, 8 << 20)
a = np.frombuffer(m, dtype=np.uint8)
a[::4096] = 1
child = os.fork()
if child == 0:
    a[::4096] = 2          # the child's own copy of every page
print(os.getpid(), a.ctypes.data, flush=True)
sys.stdin.read()
"""


def test_a_dry_run_counts_each_forked_process_only_in_its_own_regions(damon_tree, manager):
    procs = subprocess.Popen([sys.executable, "-c", FORKED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        at = dict(tuple(map(int, procs.stdout.readline().split())) for _ in range(2))
        parent, child = procs.pid, next(p for p in at if p != procs.pid)
        assert at[parent] == at[child], "a fork keeps the layout"
        start, end = at[parent], at[parent] + (8 << 20)
        manager.add_text(config(keys=COLD, tasks=[("pid", parent)]) + "dry_run=yes\n")   # the task has the child too
        manager.start("p")
        task = manager.project("p").engine("damon").task("t0")

        def chosen():
            task.run_round()
            return {out.pid: out.chosen for out in task.stats.last_round}

        # the parent leaves the mapping cold, the child reads it: listed parent first, as the
        # kdamond's targets are
        damon_tree.regions[0] = [(start, end, 0, 10), (start, end, 5, 10)]
        assert chosen() == {parent: 2048, child: 0}, "the child's pages are not in the parent's cold region"
        damon_tree.regions[0] = [(start, end, 5, 10), (start, end, 0, 10)]
        assert chosen() == {parent: 0, child: 2048}
    finally:
        procs.stdin.close()
        procs.wait(10)


def test_a_region_projects_tasks_are_all_dry_runs_or_none(damon_tree, manager, processes):
    child = processes()
    text = (config(keys=COLD, tasks=[("pid", child.pid)]) + "dry_run=yes\n"
            + TASK.format(project="p", engine="damon", name="real", type="pid", value=child.pid))
    with pytest.raises(ConfigError) as err:
        manager.add_text(text, "damon.conf")
    line = text.splitlines().index("[task]", text.splitlines().index("[task]") + 1) + 1   # the second task's group
    assert str(err.value) == (
        f"damon.conf:{line}: [task] dry_run=no: task real of engine damon cannot join task t0 of engine damon (dry_run=yes) in project p: "
        "the damon engines of a region project share one kdamond, whose schemes act on every task's processes; "
        "make every task of the project a dry run, or none")
    assert manager.projects == {}
    # a second engine's task shares the kdamond as much: refused through the Python API too
    manager.add_text(config(keys=COLD, tasks=[("pid", child.pid)]))
    other = manager.project("p").add_engine("damon", eng_name="hot", action="hugepage", min_acc=10)
    with pytest.raises(ConfigError, match=r"^\[task\] dry_run=yes: task h of engine hot cannot join task t0"):
        other.add_task("h", "pid", child.pid, dry_run="yes")
    other.add_task("h", "pid", child.pid)
    manager.start("p")
    assert [damon_tree.file(f"{CTX}/schemes/{i}/action") for i in range(3)] == ["pageout", "hugepage", "stat"]


def test_a_damon_dry_run_takes_yes_or_no_at_its_line():
    err = error_of(config(keys=COLD, tasks=[("pid", 1)]) + "dry_run=sure\n")
    assert str(err).startswith("damon.conf:22: [task] dry_run=sure: must be yes or no"), str(err)


# --- turns with the damon source ---------------------------------------------------------------

def test_a_damon_source_scan_while_an_engine_holds_damon_gets_a_clear_message(damon_tree, manager, processes):
    child = processes()
    manager.add_text(config(tasks=[("pid", child.pid)]))
    manager.start("p")
    with pytest.raises(KernelFeatureMissing, match=r"DAMON is in use by etmem's damon engine \(project p\)"):
        Scanner(child.pid, source="damon", opener=damon_tree.opener)
    # a scan that got past the check meanwhile is refused when it asks for its kdamond
    late_scan = Kdamond("a DAMON scan", "scan", KdamondSpec(MonitoringAttrs(5000, 100000, 10**9, 10, 1000)))
    with pytest.raises(DamonInUse, match="choose another scanner"):
        KDAMONDS.join(late_scan)
    reason = scan.available_sources(opener=damon_tree.opener)["damon"]
    assert "etmem's damon engine" in reason, "auto does not pick DAMON meanwhile"
    assert damon_tree.file("kdamonds/nr_kdamonds") == "1" and damon_tree.file("kdamonds/0/state") == "on"


def test_project_start_waits_for_a_damon_source_scan_and_then_gives_up_clearly(damon_tree, manager, processes,
                                                                              monkeypatch):
    child = processes()
    manager.add_text(config(tasks=[("pid", child.pid)]))
    other_scan = Kdamond("a DAMON scan of process 1", "scan", KdamondSpec(MonitoringAttrs(5000, 100000, 10**9, 10, 1000),
                                                                     (), (Scheme("stat"),)))
    KDAMONDS.join(other_scan)
    monkeypatch.setattr(damon_sysfs, "ENGINE_TURN_WAIT_S", 0.3)
    try:
        with pytest.raises(EtmemError, match=r"busy with an etmem scan \(a DAMON scan of process 1, scanner=damon\)"):
            manager.start("p")
        # a scan that ends within the wait lets the project start
        threading.Timer(0.1, KDAMONDS.leave, args=(other_scan,)).start()
        monkeypatch.setattr(damon_sysfs, "ENGINE_TURN_WAIT_S", 5.0)
        manager.start("p")
    finally:
        KDAMONDS.leave(other_scan)
    assert damon_tree.file("kdamonds/0/state") == "on" and KDAMONDS.user == "engine"



def test_the_python_api_builds_the_same_engine_and_refuses_it_outside_a_region_project(damon_tree, manager, processes):
    from etmem import Project
    child = processes()
    project = Project(name="api", scan_type="region", sample_interval=5000, aggr_interval=100000,
                      update_interval=100000000, min_nr_regions=10, max_nr_regions=1000)
    project.add_engine("damon", action="cold", max_acc=0).add_task("t", "pid", child.pid)
    manager.add(project)
    manager.start("api")
    assert damon_tree.file(f"{CTX}/schemes/0/action") == "cold" and pids_of(damon_tree) == [child.pid]
    page = Project(name="pages", loop=1, interval=1, sleep=1)
    with pytest.raises(ConfigError, match="the damon engine needs a project with scan_type=region"):
        page.add_engine("damon", action="cold")


def test_sysfs_retries_what_the_kernel_refuses_with_ebusy_but_not_nr_kdamonds(tmp_path, monkeypatch):
    import errno as _errno
    import io

    from etmem.damon_sysfs import Sysfs

    busy = {"left": 2}
    (tmp_path / "kdamonds").mkdir()
    (tmp_path / "kdamonds" / "nr_kdamonds").write_text("1\n")

    def opener(path, mode):
        if busy["left"]:
            busy["left"] -= 1
            raise OSError(_errno.EBUSY, "Device or resource busy")
        return open(path, mode) if "r" in mode else io.FileIO(path, "w")

    fs = Sysfs(str(tmp_path), opener)
    assert fs.read("kdamonds/nr_kdamonds") == "1" and busy["left"] == 0   # two refusals, then the answer
    busy["left"] = 1
    with pytest.raises(OSError) as refused:
        fs.write("kdamonds/nr_kdamonds", 0)       # EBUSY here means a kdamond runs: not retried
    assert refused.value.errno == _errno.EBUSY
    # refused for longer than BUSY_WAIT_S: the caller gets the EBUSY
    monkeypatch.setattr(damon_sysfs, "BUSY_WAIT_S", 0.05)
    busy["left"] = 10 ** 6
    with pytest.raises(OSError) as refused:
        fs.read("kdamonds/nr_kdamonds")
    assert refused.value.errno == _errno.EBUSY and 0 < busy["left"] < 10 ** 6
