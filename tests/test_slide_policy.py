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
