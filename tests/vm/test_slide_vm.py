"""slide end to end on a kernel with per-page access sources: the test guest's zram, its
DAMON vaddr and its idle page tracking, driven through a Manager as etmemd drives it.

Each test runs rounds one after another on a live workload (a busy hot set, an untouched
cold set) and checks with pagemap that the cold set went to zram and the hot set stayed.
"""
from __future__ import annotations

import pytest

from conftest import pagemap_bits
from etmem import Manager, Project, kernel, scan
from etmem.workload import Workload


def run_slide(source: str, rounds: int, loop: int, T: int):
    with Workload(total_mb=96, hot_mb=16, pause=0.005, huge=False) as w:
        project = Project(name=f"vm-{source}", loop=loop, interval=1, sleep=1, scanner=source)
        task = project.add_engine("slide").add_task("w", "pid", w.pid, T=T)
        manager = Manager()
        manager.add(project)
        for _ in range(rounds):
            task.run_round()
        hot_present, _ = pagemap_bits(w.pid, *w.hot)
        _, cold_swapped = pagemap_bits(w.pid, *w.cold)
        intact = w.verify()
    return task.stats, hot_present.mean(), cold_swapped.mean(), intact


def test_slide_with_damon_swaps_the_cold_set_to_zram(zram_swap):
    reason = scan.available_sources()["damon"]
    if reason:
        pytest.skip(reason)
    stats, hot, cold, intact = run_slide("damon", rounds=2, loop=3, T=1)
    assert stats.source == "damon" and stats.last_error is None, stats.as_dict()
    # DAMON starts each scan with coarse regions: a cold page sharing one with the hot set
    # is counted accessed, never the other way round, so a few cold pages may stay.
    assert cold >= 0.8, stats.as_dict()
    assert hot >= 0.99, stats.as_dict()
    assert intact


def test_slide_with_idle_page_tracking_swaps_exactly_the_cold_set(zram_swap):
    if not kernel.has_page_idle():
        pytest.skip(kernel.missing("page_idle"))
    stats, hot, cold, intact = run_slide("page_idle", rounds=1, loop=2, T=1)
    assert stats.source == "page_idle" and stats.last_error is None, stats.as_dict()
    assert cold >= 0.99, stats.as_dict()
    assert hot >= 0.99, stats.as_dict()
    assert intact
