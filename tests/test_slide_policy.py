"""slide's cold-page choice (`choose_cold_pages`): pure numpy, no kernel."""
from __future__ import annotations

import numpy as np

from etmem.engines.slide import choose_cold_pages

PAGE = 4096
HUGE = 2 << 20


def pages(counts, sizes=None):
    n = len(counts)
    addr = np.arange(n, dtype=np.uint64) * np.uint64(HUGE)
    size = np.full(n, PAGE, np.uint64) if sizes is None else np.asarray(sizes, np.uint64)
    return addr, size, np.asarray(counts, np.int32)


def test_pages_used_fewer_than_T_times_are_cold_and_the_rest_stay():
    addr, size, count = pages([0, 3, 1, 2, 0])
    chosen, _ = choose_cold_pages(addr, size, count, T=2)
    assert sorted(chosen.tolist()) == sorted(addr[[0, 2, 4]].tolist())


def test_T_0_calls_nothing_cold():
    addr, size, count = pages([0, 0, 0])
    chosen, chosen_size = choose_cold_pages(addr, size, count, T=0)
    assert len(chosen) == 0 and len(chosen_size) == 0


def test_the_coldest_pages_come_first_then_by_address():
    addr, size, count = pages([2, 0, 1, 0, 2])
    chosen, _ = choose_cold_pages(addr, size, count, T=3)
    assert chosen.tolist() == addr[[1, 3, 2, 0, 4]].tolist()


def test_a_limit_keeps_the_coldest_and_takes_the_page_that_crosses_it():
    addr, size, count = pages([1, 0, 0, 1])
    chosen, chosen_size = choose_cold_pages(addr, size, count, T=2, limit_bytes=PAGE + 1)
    assert chosen.tolist() == addr[[1, 2]].tolist() and int(chosen_size.sum()) == 2 * PAGE


def test_a_limit_of_zero_chooses_nothing_and_a_huge_page_counts_its_size():
    addr, size, count = pages([0, 0], sizes=[HUGE, PAGE])
    assert len(choose_cold_pages(addr, size, count, T=1, limit_bytes=0)[0]) == 0
    chosen, chosen_size = choose_cold_pages(addr, size, count, T=1, limit_bytes=PAGE)
    assert chosen.tolist() == [addr[0]] and chosen_size.tolist() == [HUGE]


def test_scanner_refault_needs_T_of_at_least_1_and_is_refused_by_cslide():
    import pytest

    import etmem
    from etmem import loader
    from etmem.plugins import Plugins

    plugins = Plugins(entry_points=False)
    project = etmem.Project(name="p", loop=1, interval=1, sleep=1, scanner="refault", plugins=plugins)
    with pytest.raises(etmem.ConfigError, match="T=0 .* would still swap them"):
        project.add_engine("slide").add_task("t", "pid", 1, T=0)
    text = ("[project]\nname=q\nloop=1\ninterval=1\nsleep=1\nscanner=refault\n\n"
            "[engine]\nname=cslide\nproject=q\nnode_pair=0,0\nhot_threshold=1\nnode_mig_quota=1\nnode_hot_reserve=0\n\n"
            "[task]\nproject=q\nengine=cslide\nname=t\ntype=pid\nvalue=1\n")
    with pytest.raises(etmem.ConfigError, match="cslide cannot use scanner=refault"):
        loader.load_text(text, "q.conf", plugins)


def test_a_read_only_scan_never_picks_a_source_that_pages_out():
    import pytest

    from etmem.errors import ScanError
    from etmem.scan import registry

    picked = registry.choose_source("auto", read_only=True) if registry.best_source(registry.available_sources()) else None
    assert picked is None or not registry.source_class(picked).pages_out
    with pytest.raises(ScanError, match="pages its samples out"):
        registry.choose_source("refault", read_only=True)
