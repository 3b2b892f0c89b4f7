"""Observe-only tasks (dry_run=yes): they scan and report what a round would do, and change nothing.

On this kernel, for real: a workload with a hot and a cold mapping (layout split), scanner
smaps (per VMA, so which pages are cold is certain), our own zram swap device. cslide
sees one more node than this machine has (as in test_cslide.py), so its plan has
somewhere to demote to; every page query and move is the kernel's.
"""
from __future__ import annotations

import numpy as np
import pytest

import etmem
from conftest import pagemap_bits
from etmem import procfs
from etmem.engines import cslide as cslide_module
from etmem.engines.cslide import SystemNodes
from etmem.engines.placement import NodeMemory
from etmem.errors import ConfigError
from etmem.process import ProcessHandle
from etmem.stats import CallCounters

MiB = 1 << 20
PAGE = 4096


def slide_task(name, pid, scanner="smaps", **task_keys):
    project = etmem.Project(name=name, loop=2, interval=1, sleep=1, scanner=scanner)
    task = project.add_engine("slide").add_task("t", "pid", pid, T=1, **task_keys)
    manager = etmem.Manager()
    manager.add(project)
    return task


def vm_swap(pid):
    return procfs.status_kb(pid, "VmSwap") << 10


def test_a_dry_run_swaps_nothing_and_reports_the_cold_bytes_a_real_run_then_swaps(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=96, hot_mb=16)
    cold_bytes = w.cold[1] - w.cold[0]
    dry = slide_task("dry", w.pid, dry_run="yes")
    swap_before = vm_swap(w.pid)
    for _ in range(2):          # smaps' first pass still sees the cold mapping's first fill
        dry.run_round()
    last = dry.stats.last_round[0]
    assert dry.stats.last_error is None and last.source == "smaps"
    assert last.dry_run and last.swapped == 0 and dry.stats.pages_swapped == 0
    assert "process_madvise" not in dry.stats.calls.as_dict()
    assert vm_swap(w.pid) == swap_before
    present, swapped = pagemap_bits(w.pid, *w.cold)
    assert present.all() and not swapped.any()
    assert last.chosen * PAGE >= cold_bytes, "every page of the cold mapping would go"
    would = last.chosen * PAGE
    (record,) = dry.stats.history.rounds()[-1].targets
    assert record.dry_run and record.chosen == last.chosen and record.swapped_bytes == swap_before

    real = slide_task("real", w.pid)
    real.run_round()
    out = real.stats.last_round[0]
    assert real.stats.last_error is None and not out.dry_run
    _, swapped = pagemap_bits(w.pid, *w.cold)
    assert swapped.mean() > 0.99
    grown = vm_swap(w.pid) - swap_before
    assert abs(grown - would) <= 0.02 * would, (grown, would)
    assert abs(out.chosen - last.chosen) <= 0.02 * last.chosen
    present_hot, _ = pagemap_bits(w.pid, *w.hot)
    assert present_hot.all() and w.verify()


def test_a_dry_run_on_auto_passes_over_the_refault_source(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=32, hot_mb=8)
    task = slide_task("auto", w.pid, scanner="auto", dry_run="yes")
    task.run_round()
    assert task.stats.last_error is None and task.stats.source not in ("refault", None)
    assert vm_swap(w.pid) == 0 and "process_madvise" not in task.stats.calls.as_dict()


def test_dry_run_with_the_refault_source_is_refused_in_python_and_in_a_file(tmp_path):
    project = etmem.Project(name="p", loop=2, interval=1, sleep=1, scanner="refault")
    engine = project.add_engine("slide")
    with pytest.raises(ConfigError) as err:
        engine.add_task("t", "pid", 1, T=1, dry_run="yes")
    assert str(err.value).startswith("[task] dry_run=yes: a dry run cannot use scanner=refault (project p)")
    conf = tmp_path / "dry.conf"
    conf.write_text("[project]\nname=p\nloop=2\ninterval=1\nsleep=1\nscanner=refault\n\n"
                    "[engine]\nname=slide\nproject=p\n\n"
                    "[task]\nproject=p\nengine=slide\nname=t\ntype=pid\nvalue=1\nT=1\ndry_run=yes\n")
    with pytest.raises(ConfigError) as err:
        etmem.Manager().add_file(str(conf))
    assert str(err.value).startswith(f"{conf}:") and "dry_run" in str(err.value) and "refault" in str(err.value)


class OneMoreNode(SystemNodes):
    """The real node view plus an empty node 1 in the lists: every query and move is the kernel's."""

    def memory_nodes(self):
        return sorted(set(super().memory_nodes()) | {1})

    def memory(self, node):
        return super().memory(node) if node in super().memory_nodes() else NodeMemory(100 * MiB, 100 * MiB)

    def hugetlb(self, node):
        return super().hugetlb(node) if node in super().memory_nodes() else NodeMemory(0, 0)


@pytest.fixture
def one_more_node(monkeypatch):
    if procfs.memory_nodes() != [0]:
        pytest.skip("this test is for a machine with one NUMA node; tests/vm covers two")
    monkeypatch.setattr(cslide_module.Cslide, "node_view", OneMoreNode())


def cold_nodes(pid, start, end):
    with ProcessHandle.open(pid) as h:
        return SystemNodes().page_nodes(h, np.arange(start, end, PAGE, dtype=np.uint64), CallCounters())


def test_a_cslide_dry_run_moves_nothing_and_plans_what_a_real_run_then_tries(need_root, one_more_node, workload_factory):
    # node 0's free memory is far below a 1 TB reserve: a real round demotes the cold mapping to
    # "node 1", which the kernel refuses (ENODEV); a dry run plans the same demotion and calls nothing
    w = workload_factory(total_mb=40, hot_mb=8)

    def cslide(name, **keys):
        project = etmem.Project(name=name, loop=2, interval=1, sleep=1, scanner="smaps")
        engine = project.add_engine("cslide", node_pair="0,1", hot_threshold=2, node_mig_quota=16,
                                    node_hot_reserve=1 << 20)
        return engine.add_task("t", "pid", w.pid, anon_only="yes", **keys)

    before = cold_nodes(w.pid, *w.cold)
    dry = cslide("dry", dry_run="yes")
    dry.run_round()
    out = dry.stats.last_round[0]
    assert dry.stats.last_error is None and out.dry_run
    assert "move_pages" not in dry.stats.calls.as_dict()
    planned = out.detail["planned"]
    assert planned["demote_pages"] == 16 * MiB // PAGE == out.chosen and planned["to_node"] == {"1": out.chosen}
    assert dry.stats.extra["cslide"]["last_round"]["planned_demote_pages"] == out.chosen
    assert dry.stats.extra["cslide"]["demoted_pages"] == 0
    assert (cold_nodes(w.pid, *w.cold) == before).all()

    real = cslide("real")
    real.run_round()
    moves = real.stats.calls.as_dict()["move_pages"]
    assert moves["pages_requested"] == out.chosen and moves["errors"] == {"ENODEV": 1}
    assert not real.stats.last_round[0].dry_run and real.stats.last_round[0].chosen == out.chosen
    assert w.verify()


class ActingPlugin:
    """An engine that takes any key and has no dry run, as a C engine or a newer engine may."""

    class Acting(etmem.Strategy):
        name = "acting"
        pass_unknown_keys = True

    @etmem.hookimpl
    def etmem_engine_types(self):
        return [self.Acting]


def test_dry_run_on_an_engine_without_one_is_refused_not_ignored_nor_handed_on(tmp_path):
    from etmem.plugins import Plugins

    manager = etmem.Manager(plugins=Plugins(entry_points=False, extra=(ActingPlugin(),)))
    text = ("[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n\n[engine]\nname=acting\nproject=p\n\n"
            "[task]\nproject=p\nengine=acting\nname=t\ntype=pid\nvalue=1\ndry_run=yes\n")
    with pytest.raises(ConfigError) as err:
        manager.add_text(text, "acting.conf")     # a file, where unknown keys are only warnings
    assert str(err.value) == ("acting.conf:17: [task] dry_run=yes: engine acting has no dry run: its tasks act on "
                              "their targets; remove the key (slide, cslide, psi and damon tasks can observe only)")
    assert manager.projects == {}


ACTING_ENGINES = {"slide": {"type": "pid", "value": "1", "T": "1"},
                  "cslide": {"type": "pid", "value": "1"},
                  "psi": {"cg_dir": "web"},
                  "damon": {"type": "pid", "value": "1"}}


@pytest.mark.parametrize("kind", sorted(ACTING_ENGINES))
def test_every_engine_that_acts_takes_dry_run_as_one_key_with_one_error(kind):
    from etmem.loader import build_task
    from etmem.plugins import Plugins

    strategy = Plugins(entry_points=False).engine_type(kind)
    values = {"project": "p", "engine": kind, "name": "t", **ACTING_ENGINES[kind]}
    config, _ = build_task({**values, "dry_run": "yes"}, strategy, None)
    assert config.keys.dry_run is True
    assert build_task(values, strategy, None)[0].keys.dry_run is False, "acting is the default"
    with pytest.raises(ConfigError) as err:
        build_task({**values, "dry_run": "maybe"}, strategy, None)
    assert str(err.value) == "[task] dry_run=maybe: must be yes or no"
