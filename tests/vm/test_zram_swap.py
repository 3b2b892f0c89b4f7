"""zram swap in the guest: a workload's cold set goes out through etmem.actions.swap_out.

This is the groundwork for running slide end to end in the guest with the DAMON source;
that test belongs in this module, next to the swap-out check it builds on.
"""
from __future__ import annotations

import numpy as np

from conftest import pagemap_bits
from etmem import actions
from etmem.process import ProcessHandle
from etmem.workload import Workload

PAGE = 4096


def test_swap_out_sends_a_workloads_cold_set_to_zram_and_leaves_the_hot_set(zram_swap):
    with Workload(total_mb=64, hot_mb=8, pause=0.01, huge=False) as w, ProcessHandle.open(w.pid) as handle:
        cold = np.arange(*w.cold, PAGE, dtype=np.uint64)
        before = zram_swap.stats()["orig_data_size"]
        result = actions.swap_out(handle, cold)
        assert (result.error, result.method) == (None, "process_madvise")
        assert result.done == cold.size

        present, swapped = pagemap_bits(w.pid, *w.cold)
        assert swapped.mean() > 0.98 and present.mean() < 0.02, (swapped.mean(), present.mean())
        hot_present, hot_swapped = pagemap_bits(w.pid, *w.hot)
        assert hot_present.all() and not hot_swapped.any()
        # the pages went to our zram device, and come back intact when touched
        assert zram_swap.stats()["orig_data_size"] - before >= 0.98 * cold.size * PAGE
        assert w.verify(), "the workload's data changed through swap-out and swap-in"
        present, _ = pagemap_bits(w.pid, *w.cold)
        assert present.all(), "verify read every cold page back in"

