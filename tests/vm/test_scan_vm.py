"""The page_idle scanner source on a real kernel that has it (the test guest).

The damon source has its own test (test_damon.py: precision and recall of the hot set,
and the kdamond removed afterwards).

Both rely on the CPU setting a page's accessed bit again after the kernel cleared it, which
only happens when the page's TLB entry is refilled: the kernel does not flush TLBs when it
clears the bits. Under QEMU's TCG (a large software TLB) a small hot set stays cached for
the whole scan, so a hot page is seen accessed in at least one pass, not in every pass;
the tests check the separation of hot from cold, not a count per pass.
"""
from __future__ import annotations

import numpy as np
import pytest

from etmem import kernel, scan
from etmem.scan import Scanner
from etmem.workload import Workload

PAGE = 4096


def hot_and_cold(refs, w):
    hot = (refs.addr >= w.hot[0]) & (refs.addr < w.hot[1])
    cold = (refs.addr >= w.cold[0]) & (refs.addr < w.cold[1])
    return refs.count[hot], refs.count[cold]


def test_page_idle_source_tells_hot_pages_from_cold_ones_in_a_live_workload():
    if not kernel.has_page_idle():
        pytest.skip(kernel.missing("page_idle"))
    assert scan.choose_source() in ("idle_pages", "page_idle")
    loop = 3
    with Workload(total_mb=32, hot_mb=4, pause=0.005) as w:
        refs = Scanner(w.pid, source="page_idle", ranges=[w.hot, w.cold]).scan(loop=loop, sleep=0.5)
    assert (refs.source, refs.passes, refs.error) == ("page_idle", loop, None)
    hot, cold = hot_and_cold(refs, w)
    assert len(hot) == 4 << 20 >> 12 and len(cold) == 28 << 20 >> 12, "every resident page is reported"
    assert (hot >= 1).mean() > 0.95, np.bincount(hot)
    assert (cold == 0).mean() > 0.99, np.bincount(cold)
