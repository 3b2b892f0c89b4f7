"""The guest the harness boots is the one the vm tests are written for."""
from __future__ import annotations

import os


def test_guest_has_two_numa_nodes_one_without_cpus():
    with open("/sys/devices/system/node/has_memory") as f:
        assert f.read().strip() == "0-1"
    with open("/sys/devices/system/node/has_cpu") as f:
        assert f.read().strip() == "0"


def test_guest_runs_as_root_inside_the_vm():
    assert os.environ.get("ETMEM_IN_VM") == "1"
    assert os.geteuid() == 0


def test_etmem_kernel_sees_the_guests_per_page_sources_and_two_tiers():
    from etmem import kernel
    from etmem.cli.kernel_cmd import report
    r = report()
    assert r["scanner_sources"]["damon"] is None, r["scanner_sources"]["damon"]
    # the project's test kernel has idle page tracking; Debian's fallback kernel has not
    assert r["scanner_auto"] == ("page_idle" if kernel.has_page_idle() else "damon")
    assert r["numa_nodes"] == [0, 1] and r["migration"] is None
    assert r["swap_out"]["process_madvise"] is None and r["pidfd"] is None
