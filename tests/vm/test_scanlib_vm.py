"""libetmemd_scan.so on its own on a kernel with idle page tracking (the test guest): a
plain C program's page passes come from page_idle and tell a steady process's hot pages
from its cold ones. (On the host, with no per-page source, the same program's smaps
passes are compared with etmemd's in test_legacy_scanlib.py.)

As for the Python page_idle source (test_scan_vm.py), a hot page is seen accessed only
when its TLB entry is refilled, so at least once in three passes, not in every pass.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

import scanlib_programs
from etmem import kernel


def test_a_plain_c_program_scans_with_page_idle_and_separates_hot_from_cold(tmp_path):
    if not kernel.has_page_idle():
        pytest.skip(kernel.missing("page_idle"))
    programs = scanlib_programs.build(tmp_path)
    proc, hot, cold = scanlib_programs.start_target(programs["scan_target"])
    try:
        out = subprocess.run([programs["scan_standalone"], "passes", str(proc.pid), "3", "500"],
                             capture_output=True, text=True, timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert out.returncode == 0, out.stdout + out.stderr
    refs = scanlib_programs.pages(out.stdout)
    in_hot = np.array([c for a, c, _ in refs if hot[0] <= a < hot[1]])
    in_cold = np.array([c for a, c, _ in refs if cold[0] <= a < cold[1]])
    assert len(in_hot) == len(in_cold) == scanlib_programs.REGION // 4096, "every resident page is reported"
    assert (in_hot >= 1).mean() > 0.95, np.bincount(in_hot)
    assert (in_cold == 0).mean() > 0.99, np.bincount(in_cold)
