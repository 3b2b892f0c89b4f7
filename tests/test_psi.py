"""The psi engine on the host: its config, its pure rules on numbers, the cgroup file formats,
and whole rounds over an emulated cgroup v2 tree (the host's own cgroups are never touched;
real reclaim is tested in the guest, tests/vm/test_psi_vm.py)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import textwrap
import threading

import pytest

from etmem import Manager, Project, cgroup, kernel, report
from etmem.cgroup import (Cgroup, CgroupGone, Hierarchy, MemoryFigures, MemoryStat, parse_memory_stat,
                          parse_pressure)
from etmem.config import ConfigError
from etmem.engines.psi import (GOOD_ROUNDS, Psi, next_rate, reclaim_amount, reclaim_floor, too_much_pressure)
from etmem.errors import KernelFeatureMissing
from etmem.loader import load_text
from etmem.protocol import render_show_json

MiB = 1 << 20
PAGE = 4096

# Written as upstream's psi sample config is: one project, one engine, one task with every key.
UPSTREAM_PSI = """\
[project]
name=test
scan_type=psi
interval=1

[engine]
name=psi
project=test

[task]
project=test
engine=psi
name=background_psi
cg_dir=isulad/*
pressure=0.1
reclaim_rate=0.05
reclaim_rate_max=0.5
reclaim_rate_min=0.01
reclaim_max_bytes=1073741824
limit_min_bytes=0
limit_min_ratio=0.1
"""
PROJECT = "[project]\nname=p\nscan_type=psi\ninterval=5\n[engine]\nname=psi\nproject=p\n"
TASK = "[task]\nproject=p\nengine=psi\nname=t\n"   # lines 8-11: its own keys start on line 12


def load(text: str):
    # strict: a key psi does not have (swap_flag) is an error here, not etmemd's warning
    return load_text(textwrap.dedent(text), "t.conf", strict=True)


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    return info.value


# --- config -------------------------------------------------------------------------


def test_a_psi_config_written_like_upstreams_sample_loads_unchanged():
    cfg = load(UPSTREAM_PSI)
    (project,), (engine,), (task,) = cfg.projects, cfg.engines, cfg.tasks
    assert (project.scan_type, project.interval, engine.strategy) == ("psi", 1, Psi)
    assert (task.common.type, task.common.value) == (None, None)
    k = task.keys
    assert (k.cg_dir, k.pressure, k.reclaim_rate, k.reclaim_rate_max, k.reclaim_rate_min) == ("isulad/*", 0.1, 0.05, 0.5, 0.01)
    assert (k.reclaim_max_bytes, k.limit_min_bytes, k.limit_min_ratio) == (1 << 30, 0, 0.1)
    assert cfg.warnings == ()


def test_a_psi_task_of_cg_dir_alone_takes_upstreams_defaults():
    (task,) = load(PROJECT + TASK + "cg_dir=/isulad/web\n").tasks
    k = task.keys
    assert k.cg_dir == "isulad/web"   # a leading / is the mount's, as upstream joins the two
    assert (k.pressure, k.reclaim_rate, k.reclaim_rate_max, k.reclaim_rate_min) == (0.1, 0.05, 0.5, 0.01)
    assert (k.reclaim_max_bytes, k.limit_min_bytes, k.limit_min_ratio) == (1 << 30, 0, 0.1)


@pytest.mark.parametrize("line,needle", [
    ("pressure=0", "must be a number above 0"),
    ("pressure=-1", "must be a number above 0"),
    ("reclaim_rate=fast", "must be a number above 0"),
    ("limit_min_ratio=nan", "must be a number above 0"),
    ("reclaim_max_bytes=-5", "must be a size like 10g"),
    ("limit_min_bytes=1.3k", "must be a whole number of bytes"),
    ("cg_dir=" + "a" * 64, "at most 63 characters"),
    ("cg_dir=isulad/../etc", "without empty, . or .. parts"),
    ("cg_dir=/", "names the root cgroup: reclaiming the root cgroup would reclaim from every process"),
    ("unit=redis", "must be a systemd unit name"),
    ("type=cgroup", "must be pid or name"),
])
def test_a_bad_psi_value_names_file_line_and_key(line, needle):
    extra = "" if line.startswith(("cg_dir", "unit", "type")) else "cg_dir=web\n"
    err = error_of(PROJECT + TASK + extra + line + "\n")
    key, value = line.split("=", 1)
    lineno = 13 if extra else 12
    assert str(err).startswith(f"t.conf:{lineno}: [task] {key}={value}: "), str(err)
    assert needle in str(err)


def test_a_psi_task_that_names_no_cgroup_is_an_error_at_its_header():
    err = error_of(PROJECT + TASK + "pressure=0.5\n")
    assert str(err) == ("t.conf:8: [task] names no cgroup: give cg_dir (a cgroup path or glob), "
                        "unit (a systemd unit) or type and value (a process)")


@pytest.mark.parametrize("keys,key,needle", [
    ("cg_dir=web\nunit=redis.service\n", "unit", "give only one of cg_dir, unit, type/value (it has cg_dir and unit)"),
    ("type=pid\n", "value", "is needed too: type and value name a process together"),
    ("type=pid\nvalue=one\n", "value", "must be a process id"),
    ("type=name\nvalue=a_name_far_too_long\n", "value", "15 characters"),
    ("cg_dir=web\nreclaim_rate_min=0.6\n", "reclaim_rate_min", "must not be above reclaim_rate_max (0.5)"),
    ("cg_dir=web\nreclaim_rate=0.7\n", "reclaim_rate", "must be from reclaim_rate_min (0.01) to reclaim_rate_max (0.5)"),
    ("cg_dir=web\nswap_flag=yes\n", "swap_flag", "unknown key"),
])
def test_psi_cross_key_rules(keys, key, needle):
    err = error_of(PROJECT + TASK + keys)
    assert err.key == key and err.path == "t.conf" and err.line >= 8 and needle in err.message, str(err)


def test_psi_tasks_may_name_their_cgroup_by_unit_or_process():
    tasks = load(PROJECT + TASK + "unit=redis.service\n" + TASK.replace("name=t", "name=u") + "type=name\nvalue=redis-server\n").tasks
    assert tasks[0].keys.unit == "redis.service"
    assert (tasks[1].keys.type, tasks[1].keys.value, tasks[1].common.type) == ("name", "redis-server", None)


def test_psi_needs_a_psi_project_and_slide_tasks_still_need_type_and_value():
    err = error_of("[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n[engine]\nname=psi\nproject=p\n" + TASK + "cg_dir=web\n")
    assert err.key == "engine" and "psi needs a project with scan_type=psi (project p has page)" in err.message
    err = error_of("[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n[engine]\nname=slide\nproject=p\n"
                   "[task]\nproject=p\nengine=slide\nname=t\nT=1\n")
    assert err.key == "type" and "missing; this key is required" in err.message


# --- the pure rules, on numbers -------------------------------------------------------


def figures(current=100 * MiB, anon=60 * MiB, file=30 * MiB, swap_room=None, memory_min=0, memory_low=0, limit=None):
    return MemoryFigures(current, memory_min, memory_low, limit, swap_room, MemoryStat(anon, file, 0, 0))


def test_the_floor_is_the_largest_of_its_four_terms():
    # unreclaimable = 100 - (30 + 60) = 10 MiB
    assert reclaim_floor(figures(), 0, 0.1) == 10 * MiB
    assert reclaim_floor(figures(), 5 * MiB, 0.1) == 15 * MiB                       # limit_min_bytes + unreclaimable
    assert reclaim_floor(figures(memory_min=40 * MiB), 5 * MiB, 0.1) == 40 * MiB     # memory.min
    assert reclaim_floor(figures(memory_low=50 * MiB, memory_min=40 * MiB), 0, 0.1) == 50 * MiB
    assert reclaim_floor(figures(limit=200 * MiB), 0, 0.3) == 60 * MiB               # limit x ratio
    assert reclaim_floor(figures(limit=None), 0, 0.9) == 10 * MiB                    # no limit: the ratio counts 0


def test_swap_room_bounds_the_reclaimable_anon_memory():
    assert reclaim_floor(figures(swap_room=20 * MiB), 0, 0.1) == 50 * MiB   # 100 - (30 + 20)
    assert reclaim_floor(figures(swap_room=0), 0, 0.1) == 70 * MiB          # no swap: only file pages go


def test_the_amount_is_a_share_above_the_floor_capped_and_in_whole_pages():
    assert reclaim_amount(100 * MiB, 10 * MiB, 0.05, 1 << 30) == 4718592        # 90 MiB x 0.05 = 4.5 MiB
    assert reclaim_amount(100 * MiB, 0, 0.5, 8 * MiB) == 8 * MiB                # reclaim_max_bytes
    assert reclaim_amount(10 * MiB + 12345, 10 * MiB, 1.0, 1 << 30) == 12288    # down to 4 KiB
    assert reclaim_amount(10 * MiB, 10 * MiB, 0.5, 1 << 30) == 0
    assert reclaim_amount(9 * MiB, 10 * MiB, 0.5, 1 << 30) == 0


def test_five_good_rounds_raise_the_rate_and_two_bad_ones_lower_it():
    rate, streak = 0.05, 0
    for _ in range(GOOD_ROUNDS - 1):
        rate, streak = next_rate(rate, streak, True, 0.01, 0.5)
    assert (rate, streak) == (0.05, 4)
    rate, streak = next_rate(rate, streak, True, 0.01, 0.5)
    assert (rate, streak) == (0.06, 0)
    rate, streak = next_rate(rate, streak, False, 0.01, 0.5)
    assert (rate, streak) == (0.06, -1)
    rate, streak = next_rate(rate, streak, None, 0.01, 0.5)      # a round with nothing to do counts for neither
    assert (rate, streak) == (0.06, -1)
    rate, streak = next_rate(rate, streak, False, 0.01, 0.5)
    assert (rate, streak) == (0.05, 0)


def test_a_change_of_direction_starts_the_count_again_and_the_rate_stays_in_its_bounds():
    rate, streak = 0.05, 0
    for good in (True, True, True, True, False, True, True, True, True):
        rate, streak = next_rate(rate, streak, good, 0.01, 0.5)
    assert (rate, streak) == (0.05, 4)
    assert next_rate(0.5, 4, True, 0.01, 0.5) == (0.5, 0)
    assert next_rate(0.01, -1, False, 0.01, 0.5) == (0.01, 0)
    rate = 0.05
    for _ in range(2 * 4):
        rate, streak = next_rate(rate, streak, False, 0.01, 0.5)
    assert rate == 0.01


def test_pressure_at_the_threshold_or_refaults_of_the_last_reclaim_make_a_bad_round():
    assert too_much_pressure(0.09, 0.1, None, 0, 0.25) is None
    assert "memory pressure 0.10 is not below pressure=0.1" in too_much_pressure(0.1, 0.1, None, 0, 0.25)
    assert too_much_pressure(None, 0.1, 256, 4 * MiB, 0.25) is None              # 1 MiB back of 4: at the limit
    assert "refaulted since the last round" in too_much_pressure(None, 0.1, 257, 4 * MiB, 0.25)
    assert too_much_pressure(0.0, 0.1, 10_000, 0, 0.25) is None                  # nothing reclaimed yet


# --- cgroup files in the kernel's formats ------------------------------------------------


def test_pressure_and_memory_stat_parse_the_kernels_text():
    p = parse_pressure("some avg10=1.25 avg60=0.50 avg300=0.10 total=123456\n"
                       "full avg10=0.75 avg60=0.25 avg300=0.05 total=65432\n")
    assert (p.some_avg10, p.some_avg60, p.full_total, p.recent) == (1.25, 0.5, 65432, 1.25)
    v2 = parse_memory_stat("anon 1000\nfile 2000\ninactive_anon 300\nactive_anon 700\ninactive_file 1500\n"
                           "active_file 500\nworkingset_refault_anon 7\nworkingset_refault_file 5\n")
    assert (v2.anon_lru, v2.file_lru, v2.refaults) == (1000, 2000, 12)
    v1 = parse_memory_stat("inactive_anon 1\nactive_anon 1\ntotal_inactive_anon 30\ntotal_active_anon 70\n"
                           "total_inactive_file 15\ntotal_active_file 5\n", version=1)
    assert (v1.anon_lru, v1.file_lru, v1.refaults) == (100, 20, None)
    old = parse_memory_stat("workingset_refault 9\n")
    assert old.refaults == 9
    with pytest.raises(ValueError, match="not a PSI file"):
        parse_pressure("garbage")


class EmulatedCgroup(Cgroup):
    """A cgroup whose memory.reclaim acts on its files as the kernel would: inactive file pages
    go first, then inactive anon pages while swap has room; active pages stay (they are in
    use), and what it cannot reclaim is an EAGAIN."""

    def write(self, name, text, tolerate=()):
        if name != "memory.reclaim":
            return super().write(name, text, tolerate)
        super().write(name, text, tolerate)   # the file must be there: a vanished cgroup raises
        want = int(text)
        stat = self.stat()
        room = self.swap_room()
        values = dict(stat.values)
        take_file = min(want, values["inactive_file"])
        take_anon = min(want - take_file, values["inactive_anon"] if room is None else min(room, values["inactive_anon"]))
        values["inactive_file"] -= take_file
        values["inactive_anon"] -= take_anon
        _write_stat(self.dir, values)
        _put(self.dir, "memory.current", self.current() - take_file - take_anon)
        _put(self.dir, "memory.swap.current", int(self.read("memory.swap.current")) + take_anon)
        self.hierarchy.reclaims.append((self.path, want))
        if take_file + take_anon < want and errno.EAGAIN in tolerate:
            return errno.EAGAIN
        return None


class EmulatedHierarchy(Hierarchy):
    @property
    def reclaims(self) -> list:
        return self.__dict__.setdefault("_reclaims", [])

    def cgroup(self, path):
        return EmulatedCgroup(self, path)


def _put(directory, name, value):
    with open(os.path.join(directory, name), "w") as f:
        f.write(f"{value}\n")


def _write_stat(directory, values):
    with open(os.path.join(directory, "memory.stat"), "w") as f:
        f.write("".join(f"{k} {v}\n" for k, v in values.items()))


def make_cgroup(root, path, anon=64 * MiB, file=16 * MiB, other=4 * MiB, active_file=0, pressure=(0.0, 0.0),
                refaults=0, psi=True, **files):
    """A cgroup v2 directory with the files the kernel has, in its formats."""
    d = os.path.join(root, path)
    os.makedirs(d)
    values = {"memory.current": anon + file + other, "memory.max": "max", "memory.min": 0, "memory.low": 0,
              "memory.swap.current": 0, "memory.swap.max": "max", "memory.reclaim": "", **files}
    for name, value in values.items():
        _put(d, name, value)
    _write_stat(d, {"anon": anon, "file": file, "kernel": other, "inactive_anon": anon, "active_anon": 0,
                    "inactive_file": file - active_file, "active_file": active_file, "unevictable": 0,
                    "workingset_refault_anon": refaults, "workingset_refault_file": 0})
    if psi:
        set_pressure(d, *pressure)
    return d


def set_pressure(d, avg10, avg60):
    with open(os.path.join(d, "memory.pressure"), "w") as f:
        f.write(f"some avg10={avg10:.2f} avg60={avg60:.2f} avg300=0.00 total=100\n"
                f"full avg10=0.00 avg60=0.00 avg300=0.00 total=50\n")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """An emulated cgroup v2 mount for the psi engine, with 1 GiB of free swap."""
    root = str(tmp_path / "cgroup")
    os.makedirs(root)
    hierarchy = EmulatedHierarchy(2, root, root)
    monkeypatch.setattr(Psi, "hierarchy", hierarchy)
    monkeypatch.setattr(cgroup.procfs, "meminfo", lambda: {"SwapFree": 1 << 20})
    return hierarchy


def psi_task(name="t", interval=1, type=None, value=None, **keys):
    project = Project(name=f"p-{name}", scan_type="psi", interval=interval)
    task = project.add_engine("psi").add_task(name, type, value, **keys)
    return project, task


def test_cgroup_figures_read_max_as_no_limit_and_bound_swap_by_free_swap(tree, monkeypatch):
    d = make_cgroup(tree.root, "web", **{"memory.max": 256 * MiB, "memory.swap.max": 32 * MiB,
                                          "memory.swap.current": 8 * MiB, "memory.low": 5 * MiB})
    f = tree.cgroup("web").figures()
    assert (f.current, f.limit, f.memory_low, f.swap_room) == (84 * MiB, 256 * MiB, 5 * MiB, 24 * MiB)
    monkeypatch.setattr(cgroup.procfs, "meminfo", lambda: {"SwapFree": 1024})   # 1 MiB of swap left
    assert tree.cgroup("web").swap_room() == MiB
    _put(d, "memory.max", "max")
    _put(d, "memory.swap.max", "max")
    assert (tree.cgroup("web").figures().limit, tree.cgroup("web").swap_room()) == (None, MiB)
    v1 = Hierarchy(1, tree.root, tree.root).cgroup("web")
    _put(d, "memory.limit_in_bytes", 0x7FFFFFFFFFFFF000)   # v1's "no limit"
    _put(d, "memory.usage_in_bytes", 3 * MiB)
    assert (v1.current(), v1._number("memory.limit_in_bytes")) == (3 * MiB, None)


def test_openeulers_cgroup_v1_layout_reads_pressure_from_cpuacct_and_the_rest_from_memory(tmp_path, monkeypatch):
    memory, cpuacct = tmp_path / "memory" / "web", tmp_path / "cpuacct" / "web"
    memory.mkdir(parents=True)
    cpuacct.mkdir(parents=True)
    for name, value in {"memory.usage_in_bytes": 80 * MiB, "memory.limit_in_bytes": 0x7FFFFFFFFFFFF000,
                        "memory.memsw.usage_in_bytes": 90 * MiB, "memory.memsw.limit_in_bytes": 100 * MiB,
                        "memory.min": 0, "memory.low": 4 * MiB}.items():
        _put(memory, name, value)
    _write_stat(memory, {"active_anon": 1, "total_active_anon": 40 * MiB, "total_inactive_anon": 20 * MiB,
                         "total_active_file": 5 * MiB, "total_inactive_file": 10 * MiB})
    set_pressure(cpuacct, 0.5, 0.25)
    monkeypatch.setattr(cgroup.procfs, "meminfo", lambda: {"SwapFree": 1 << 20})
    web = Hierarchy(1, str(tmp_path / "memory"), str(tmp_path / "cpuacct")).cgroup("web")
    f = web.figures()
    assert (f.current, f.limit, f.memory_low, f.swap_room) == (80 * MiB, None, 4 * MiB, 10 * MiB)
    assert (f.stat.anon_lru, f.stat.file_lru) == (60 * MiB, 15 * MiB)
    assert web.pressure().recent == 0.5
    assert reclaim_floor(f, 0, 0.1) == 80 * MiB - (15 * MiB + 10 * MiB)


def test_a_vanished_cgroup_is_an_error_naming_it_and_a_missing_pressure_file_is_no_psi(tree):
    d = make_cgroup(tree.root, "web", psi=False)
    web = tree.cgroup("web")
    assert web.pressure() is None
    os.remove(os.path.join(d, "memory.stat"))
    with pytest.raises(cgroup.CgroupError, match="cgroup web has no memory.stat"):
        web.stat()
    gone = tree.cgroup("isulad/gone")
    for read in (gone.current, gone.identity, gone.figures, lambda: gone.reclaim(PAGE)):
        with pytest.raises(CgroupGone) as info:
            read()
        assert str(info.value) == f"cgroup isulad/gone does not exist under {tree.root}"


def test_a_round_reclaims_a_share_of_what_lies_above_the_floor(tree):
    make_cgroup(tree.root, "web", anon=64 * MiB, file=16 * MiB, other=4 * MiB)
    _, task = psi_task(cg_dir="web", reclaim_rate=0.25)
    stats = task.run_round()
    assert stats.last_error is None and stats.skipped is None
    (out,) = stats.last_round
    assert out.pid is None and out.source == "psi" and out.skipped is None
    # floor = 0 + unreclaimable 4 MiB; (84 - 4) x 0.25 = 20 MiB
    assert tree.reclaims == [("web", 20 * MiB)]
    d = out.detail
    assert (d["current"], d["floor"], d["requested"], d["reclaimed"], d["complete"]) == (84 * MiB, 4 * MiB, 20 * MiB, 20 * MiB, True)
    assert (d["pressure_avg10"], d["pressure_avg60"], d["rate"], d["refaults"]) == (0.0, 0.0, 0.25, None)
    task.run_round()
    assert tree.reclaims[-1] == ("web", 15 * MiB)   # (64 - 4) x 0.25
    assert task.stats.extra["cgroups"]["web"]["reclaimed_total"] == 35 * MiB
    assert task.stats.extra["reclaimed_bytes"] == 35 * MiB


def test_more_than_the_kernel_can_reclaim_is_a_partial_reclaim_not_an_error(tree, monkeypatch):
    monkeypatch.setattr(cgroup.procfs, "meminfo", lambda: {"SwapFree": 0})   # no swap: file pages only
    make_cgroup(tree.root, "web", anon=64 * MiB, file=16 * MiB, active_file=8 * MiB, other=0)
    _, task = psi_task(cg_dir="web", reclaim_rate=1.0, reclaim_rate_max=1.0)
    stats = task.run_round()
    (out,) = stats.last_round
    assert stats.last_error is None and out.error is None
    # floor: the 64 MiB of anon memory swap cannot take; the kernel frees only the 8 inactive MiB of the 16 asked
    assert (out.detail["floor"], out.detail["requested"]) == (64 * MiB, 16 * MiB)
    assert (out.detail["reclaimed"], out.detail["complete"]) == (8 * MiB, False)


def test_high_pressure_stops_reclaim_and_two_bad_rounds_lower_the_rate(tree):
    d = make_cgroup(tree.root, "web", pressure=(0.05, 0.3))
    _, task = psi_task(cg_dir="web", pressure=0.2)
    for _ in range(2):
        (out,) = task.run_round().last_round
    assert out.skipped == "memory pressure 0.30 is not below pressure=0.2"
    assert tree.reclaims == [] and (out.detail["requested"], out.detail["floor"]) == (0, None)
    assert out.detail["rate"] == 0.04
    set_pressure(d, 0.1, 0.1)
    (out,) = task.run_round().last_round
    assert out.skipped is None and len(tree.reclaims) == 1


def test_without_psi_refaults_of_the_last_reclaim_steer_the_rounds(tree):
    d = make_cgroup(tree.root, "web", psi=False, refaults=1000)
    _, task = psi_task(cg_dir="web", reclaim_rate=0.25)
    (out,) = task.run_round().last_round
    assert out.source == "refaults" and out.detail["reclaimed"] == 20 * MiB and out.detail["pressure_avg10"] is None
    stat = tree.cgroup("web").stat().values
    stat["workingset_refault_anon"] = 1000 + (6 * MiB) // PAGE     # 6 MiB of the 20 came back
    _write_stat(d, stat)
    (out,) = task.run_round().last_round
    assert out.detail["refaults"] == (6 * MiB) // PAGE
    assert out.skipped.startswith("6144 KiB refaulted since the last round, more than refault_ratio=0.25")
    (out,) = task.run_round().last_round   # no more refaults: reclaim again
    assert out.skipped is None and out.detail["refaults"] == 0 and len(tree.reclaims) == 2


def test_a_cgroup_without_pressure_or_refault_counters_is_an_error_saying_so(tree):
    d = make_cgroup(tree.root, "web", psi=False)
    stat = tree.cgroup("web").stat().values
    del stat["workingset_refault_anon"], stat["workingset_refault_file"]
    _write_stat(d, stat)
    _, task = psi_task(cg_dir="web")
    stats = task.run_round()
    assert "cgroup web gives no feedback" in stats.last_error and "workingset_refault" in stats.last_error
    assert tree.reclaims == []


def test_the_floor_keeps_memory_low_and_a_cgroup_at_its_floor_is_left_alone(tree):
    make_cgroup(tree.root, "web", **{"memory.low": 100 * MiB})
    _, task = psi_task(cg_dir="web")
    (out,) = task.run_round().last_round
    assert out.skipped == "its 86016 KiB are not above the floor of 102400 KiB it keeps"
    assert tree.reclaims == [] and out.detail["rate"] == 0.05


def test_a_glob_follows_cgroups_as_they_come_and_go_matched_by_inode(tree):
    make_cgroup(tree.root, "isulad/a")
    _put(os.path.join(tree.root, "isulad"), "cgroup.procs", "")   # files of the parent never match
    _, task = psi_task(cg_dir="isulad/*", reclaim_rate=0.25)
    assert [t.detail["cgroup"] for t in task.run_round().last_round] == ["isulad/a"]
    make_cgroup(tree.root, "isulad/b")
    assert [t.detail["cgroup"] for t in task.run_round().last_round] == ["isulad/a", "isulad/b"]
    assert task.stats.extra["cgroups"]["isulad/a"]["reclaimed_total"] == 35 * MiB
    shutil.rmtree(os.path.join(tree.root, "isulad/a"))
    stats = task.run_round()
    assert [t.detail["cgroup"] for t in stats.last_round] == ["isulad/b"] and stats.last_error is None
    make_cgroup(tree.root, "isulad/a")           # made again: another cgroup, a fresh start
    stats = task.run_round()
    a = {t.detail["cgroup"]: t for t in stats.last_round}["isulad/a"]
    assert a.detail["reclaimed_total"] == 20 * MiB and len(task.view.state.cgroups) == 2
    # a: 20 + 15 before it went; b: 20 + 15 + (45 x 0.25); the new a: 20
    assert task.stats.extra["reclaimed_bytes"] == (35 + 46.25 + 20) * MiB


def test_a_cgroup_removed_between_the_glob_and_its_reading_is_dropped_without_error(tree, monkeypatch):
    make_cgroup(tree.root, "isulad/a")
    monkeypatch.setattr(EmulatedHierarchy, "glob", lambda self, pattern: ["isulad/a", "isulad/gone"])
    _, task = psi_task(cg_dir="isulad/*")
    stats = task.run_round()
    assert [t.detail["cgroup"] for t in stats.last_round] == ["isulad/a"] and stats.last_error is None


def test_a_glob_that_matches_nothing_skips_the_round_and_a_missing_cgroup_is_an_error(tree):
    _, globbed = psi_task("g", cg_dir="isulad/*")
    assert globbed.run_round().skipped == f"no cgroup matches isulad/* under {tree.root} now"
    _, named = psi_task("n", cg_dir="web")
    stats = named.run_round()
    assert stats.last_error == f"cgroup web does not exist under {tree.root}"


def test_nothing_is_reclaimed_from_a_cgroup_the_task_does_not_name(tree):
    for path in ("isulad/a", "isulad-b", "other/a"):
        make_cgroup(tree.root, path)
    _, task = psi_task(cg_dir="isulad/*")
    task.run_round()
    assert {path for path, _ in tree.reclaims} == {"isulad/a"}


def test_a_unit_is_found_under_its_slice(tree):
    make_cgroup(tree.root, "system.slice/redis.service")
    make_cgroup(tree.root, "user.slice/user-1000.slice/user@1000.service/app.slice/editor.service")
    make_cgroup(tree.root, "machine.slice/machine-qemu.slice")
    assert tree.find_unit("redis.service") == "system.slice/redis.service"
    assert tree.find_unit("editor.service") == "user.slice/user-1000.slice/user@1000.service/app.slice/editor.service"
    assert tree.find_unit("machine-qemu.slice") == "machine.slice/machine-qemu.slice"
    assert tree.find_unit("nginx.service") is None
    _, task = psi_task(unit="redis.service")
    assert [t.detail["cgroup"] for t in task.run_round().last_round] == ["system.slice/redis.service"]
    _, stopped = psi_task("s", unit="nginx.service")
    assert stopped.run_round().skipped == f"systemd unit nginx.service has no cgroup under {tree.root} (is it running?)"


def test_a_process_names_the_cgroup_it_runs_in_and_the_root_cgroup_is_refused(tree):
    with open(f"/proc/{os.getpid()}/cgroup") as f:   # read here independently of etmem
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    v2_path = next(path for _, ctrl, path in lines if ctrl == "").strip("/")
    _, task = psi_task(type="pid", value=os.getpid())
    stats = task.run_round()
    if v2_path:
        assert stats.last_error == f"cgroup {v2_path} does not exist under {tree.root}"
    else:
        assert stats.last_error.startswith(f"process {os.getpid()} runs in the root cgroup: reclaiming the root "
                                           "cgroup would reclaim from every process of the machine")
    v1_path = [path for _, ctrl, path in lines if "memory" in ctrl.split(",")]
    if v1_path:
        assert Hierarchy(1, tree.root, tree.root).process_cgroup(os.getpid()) == v1_path[0].strip("/")
    _, gone = psi_task("gone", type="pid", value=4194304)
    assert "process 4194304 does not exist" in gone.run_round().last_error


def test_project_show_gives_each_cgroups_figures_and_why_a_round_did_nothing(tree):
    make_cgroup(tree.root, "isulad/a")
    make_cgroup(tree.root, "isulad/b", **{"memory.min": 1 << 30})
    project, task = psi_task(cg_dir="isulad/*", reclaim_rate=0.25)
    manager = Manager()
    manager.add(project)
    task.run_round()
    shown = json.loads(render_show_json(manager.show(project.name)))
    stats = shown[0]["tasks"][0]["stats"]
    a, b = stats["extra"]["cgroups"]["isulad/a"], stats["extra"]["cgroups"]["isulad/b"]
    assert (a["current"], a["reclaimed"], a["reclaimed_total"], a["rate"], a["skipped"]) == (84 * MiB, 20 * MiB, 20 * MiB, 0.25, None)
    assert (a["pressure_avg10"], a["pressure_avg60"], a["refaults"]) == (0.0, 0.0, None)
    assert b["reclaimed"] == 0 and "not above the floor of 1048576 KiB" in b["skipped"]
    assert [t["detail"]["cgroup"] for t in stats["last_round"]] == ["isulad/a", "isulad/b"]


def test_a_dry_run_reclaims_nothing_and_reports_what_a_real_round_then_reclaims(tree):
    d = make_cgroup(tree.root, "web", anon=64 * MiB, file=16 * MiB, other=4 * MiB)
    files = {name: open(os.path.join(d, name)).read() for name in sorted(os.listdir(d))}
    _, dry = psi_task("dry", cg_dir="web", reclaim_rate=0.25, dry_run="yes")
    for _ in range(2):
        (out,) = dry.run_round().last_round
        assert dry.stats.last_error is None and out.skipped is None and out.dry_run
        # floor = 0 + unreclaimable 4 MiB; (84 - 4) x 0.25 = 20 MiB, each round, as nothing left
        assert (out.chosen * PAGE, out.detail["requested"], out.detail["reclaimed"]) == (20 * MiB, 20 * MiB, 0)
    assert tree.reclaims == [], "memory.reclaim is never written"
    assert {name: open(os.path.join(d, name)).read() for name in sorted(os.listdir(d))} == files
    assert dry.stats.pages_chosen * PAGE == 40 * MiB and dry.stats.extra["reclaimed_bytes"] == 0
    shown = dry.stats.extra["cgroups"]["web"]
    assert (shown["would_reclaim"], shown["reclaimed"], shown["reclaimed_total"]) == (20 * MiB, 0, 0)
    (record,) = dry.stats.history.rounds()[-1].targets
    assert record.dry_run and record.chosen * PAGE == 20 * MiB and record.detail["cgroup"] == "web"
    assert report.rounds_text(dry.stats.history, last=1).splitlines()[-1] == \
        "  cgroup web (dry run): current 84 MiB, floor 4 MiB, would reclaim 5,120 pages (20 MiB)"

    _, real = psi_task("real", cg_dir="web", reclaim_rate=0.25)
    (out,) = real.run_round().last_round
    assert tree.reclaims == [("web", 20 * MiB)] and out.detail["reclaimed"] == 20 * MiB and not out.dry_run
    assert "would_reclaim" not in real.stats.extra["cgroups"]["web"]
    assert report.rounds_text(real.stats.history, last=1).splitlines()[-1] == \
        "  cgroup web: current 84 MiB, floor 4 MiB, reclaimed 20 MiB of 20 MiB asked"


def test_a_dry_runs_rate_and_pressure_rules_are_a_real_runs(tree):
    d = make_cgroup(tree.root, "web")
    _, task = psi_task(cg_dir="web", reclaim_rate=0.25, dry_run="yes")
    for _ in range(GOOD_ROUNDS):
        (out,) = task.run_round().last_round
    assert out.detail["rate"] == 0.26, "rounds that would reclaim are good rounds"
    set_pressure(d, 0.5, 0.5)
    (out,) = task.run_round().last_round
    assert out.skipped == "memory pressure 0.50 is not below pressure=0.1"
    assert out.dry_run and out.chosen == 0 and out.detail["requested"] == 0 and tree.reclaims == []


def test_psi_dry_run_takes_yes_or_no_only_with_the_line_of_the_key():
    cfg = load(PROJECT + TASK + "cg_dir=web\ndry_run=yes\n")
    assert cfg.tasks[0].keys.dry_run is True
    err = error_of(PROJECT + TASK + "cg_dir=web\ndry_run=maybe\n")
    assert str(err).startswith("t.conf:13: [task] dry_run=maybe: must be yes or no"), str(err)


def test_a_started_psi_task_runs_rounds_on_the_shared_timer(tree):
    make_cgroup(tree.root, "web")
    project, task = psi_task(cg_dir="web", interval=1)
    manager = Manager()
    manager.add(project)
    done = threading.Event()
    project.start()
    try:
        for _ in range(100):
            if task.stats.rounds >= 2:
                done.set()
                break
            threading.Event().wait(0.05)
    finally:
        project.stop()
    assert done.is_set() and len(tree.reclaims) >= 2


# --- this host's kernel -------------------------------------------------------------------


def _host_facts() -> dict:
    """What this host offers the psi engine, read here without etmem's probes."""
    mounts = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            _, where, fstype, options = line.split()[:4]
            if fstype == "cgroup2":
                mounts.setdefault("cgroup2", where)
            elif fstype == "cgroup" and "memory" in options.split(","):
                mounts.setdefault("memory", where)
    controllers = ""
    if "cgroup2" in mounts:
        with open(os.path.join(mounts["cgroup2"], "cgroup.controllers")) as f:
            controllers = f.read()
    v2_memory = "memory" in controllers.split()
    v2_reclaim = v2_memory and os.path.exists(os.path.join(mounts["cgroup2"], "memory.reclaim"))
    v1_reclaim = "memory" in mounts and os.path.exists(os.path.join(mounts["memory"], "memory.reclaim"))
    return {"mounts": mounts, "v2_memory": v2_memory, "reclaim": v2_reclaim or v1_reclaim,
            "psi": os.path.exists("/proc/pressure/memory")}


def test_on_this_host_the_psi_engine_says_exactly_what_the_kernel_lacks(monkeypatch):
    facts = _host_facts()
    assert kernel.has_psi() == facts["psi"]
    assert kernel.has_cgroup2_memory() == facts["v2_memory"]
    assert kernel.has_memory_reclaim() == facts["reclaim"]
    monkeypatch.setattr(Psi, "hierarchy", None)
    if facts["reclaim"]:
        Project(name="probe", scan_type="psi", interval=1).add_engine("psi")   # nothing to refuse
        return
    with pytest.raises(KernelFeatureMissing) as info:
        Project(name="probe", scan_type="psi", interval=1).add_engine("psi")
    message = str(info.value)
    assert "memory.reclaim is missing: proactive reclaim needs the cgroup v2 memory controller on Linux 5.19" in message
    if not facts["v2_memory"]:
        assert message.startswith("no cgroup v2 memory controller: ")
        if "cgroup2" in facts["mounts"]:
            assert f"cgroup v2 at {facts['mounts']['cgroup2']} has no memory controller" in message
        if "memory" in facts["mounts"]:
            assert f"the memory controller is bound to cgroup v1 at {facts['mounts']['memory']}" in message


def test_psis_missing_sentence_names_the_config_or_the_boot_option():
    config = kernel.kernel_config()
    sentence = kernel.missing("psi")
    assert sentence.startswith("/proc/pressure/memory is missing: ")
    if config.get("CONFIG_PSI") not in (None, "y"):
        assert "the kernel needs CONFIG_PSI=y" in sentence
    elif config.get("CONFIG_PSI_DEFAULT_DISABLED") == "y":
        assert "booted with psi=1 (CONFIG_PSI_DEFAULT_DISABLED=y): add psi=1 to its command line" in sentence


def test_etmem_kernel_shows_what_the_psi_engine_needs():
    out = subprocess.run(["etmem", "kernel", "-o", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    needs = json.loads(out.stdout)["psi"]
    facts = _host_facts()
    assert (needs["psi"] is None, needs["cgroup2_memory"] is None, needs["memory_reclaim"] is None) == \
        (facts["psi"], facts["v2_memory"], facts["reclaim"])
    for name in ("psi", "cgroup2_memory", "memory_reclaim"):
        assert needs[name] in (None, kernel.missing(name))
    text = subprocess.run(["etmem", "kernel"], capture_output=True, text=True, timeout=60).stdout
    section = text[text.index("cgroup reclaim (psi):"):].splitlines()[1:4]
    assert [line.split()[0] for line in section] == ["PSI", "cgroup2", "memory.reclaim"]
    assert ["yes" if facts[f] else "no" for f in ("psi", "v2_memory", "reclaim")] == \
        [line.split()[2] if line.split()[0] == "cgroup2" else line.split()[1] for line in section]
