"""The scanner on this kernel, as root: pagemap decoding against swapped-out pages, smaps on a live workload."""
from __future__ import annotations

import ctypes
import os

import numpy as np

from conftest import pagemap_bits
from etmem import procfs
from etmem.kernel import SYS_pidfd_open, SYS_process_madvise, libc
from etmem.scan import Scanner, decode_pagemap, present_pages

PAGE = 4096
MADV_PAGEOUT = 21


def page_out(pid: int, start: int, end: int) -> int:
    """Swap [start, end) of pid out with a raw process_madvise(MADV_PAGEOUT); bytes advised."""
    pidfd = libc.syscall(SYS_pidfd_open, pid, 0)
    assert pidfd >= 0, f"pidfd_open: errno {ctypes.get_errno()}"
    try:
        iov = (ctypes.c_uint64 * 2)(start, end - start)
        done = libc.syscall(SYS_process_madvise, pidfd, ctypes.byref(iov), 1, MADV_PAGEOUT, 0)
        assert done >= 0, f"process_madvise: errno {ctypes.get_errno()}"
        return done
    finally:
        os.close(pidfd)


def raw_pagemap(pid: int, start: int, end: int) -> np.ndarray:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        return np.frombuffer(f.read((end - start) // PAGE * 8), dtype=np.uint64)


def test_pagemap_decoding_matches_the_kernel_for_pages_swapped_to_zram(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=64, hot_mb=8)
    cold_start, cold_end = w.cold
    half = cold_start + (cold_end - cold_start) // 2
    assert page_out(w.pid, cold_start, half) == half - cold_start

    raw = raw_pagemap(w.pid, cold_start, cold_end)
    got = decode_pagemap(raw)
    present, swapped = pagemap_bits(w.pid, cold_start, cold_end)
    np.testing.assert_array_equal(got["present"], present)
    np.testing.assert_array_equal(got["swapped"], swapped)
    n_half = (half - cold_start) // PAGE
    assert got["swapped"][:n_half].mean() > 0.9, "the paged-out half should sit in zram"
    assert got["present"][n_half:].all() and not got["swapped"][n_half:].any()
    assert not (got["present"] & got["swapped"]).any()
    # present pages carry their frame number (root sees PFNs), swapped ones none
    assert (got["pfn"][got["present"]] > 0).all() and (got["pfn"][~got["present"]] == 0).all()
    assert len(np.unique(got["pfn"][got["present"]])) == int(got["present"].sum())
    # private anonymous pages mapped once are exclusive, and not file pages
    assert got["exclusive"][got["present"]].all() and not got["file"].any()

    text = next(v for v in procfs.maps(w.pid) if v.inode and "x" in v.perms)
    file_pm = decode_pagemap(raw_pagemap(w.pid, text.start, text.end))
    assert file_pm["present"].any() and file_pm["file"][file_pm["present"]].all()

    # present_pages counts the same from scattered (addr, size) entries: every other page
    # of the whole cold range, and a 2-page entry straddling the swapped/present border
    every_other = np.arange(cold_start, cold_end, 2 * PAGE, dtype=np.uint64)
    sizes = np.full(every_other.size, PAGE, dtype=np.uint64)
    assert present_pages(w.pid, every_other, sizes) == int(got["present"][::2].sum())
    border = np.array([half - PAGE], dtype=np.uint64)
    assert present_pages(w.pid, border, np.array([2 * PAGE], dtype=np.uint64)) == int(got["present"][n_half - 1:n_half + 1].sum())
    assert present_pages(w.pid, every_other[:0], sizes[:0]) == 0

    # the scanner reports resident pages only: the swapped half is not in its result
    refs = Scanner(w.pid, source="smaps", ranges=[w.cold]).scan()
    assert refs.error is None
    resident = cold_start + np.flatnonzero(got["present"]).astype(np.uint64) * np.uint64(PAGE)
    np.testing.assert_array_equal(refs.addr, resident)


def test_smaps_source_separates_a_hot_vma_from_a_cold_one_in_a_live_workload(need_root, workload_factory):
    w = workload_factory(total_mb=64, hot_mb=8, pause=0.005)
    loop = 3
    refs = Scanner(w.pid, source="smaps", ranges=[w.hot, w.cold]).scan(loop=loop, sleep=0.3)
    assert (refs.source, refs.per_vma, refs.passes, refs.error) == ("smaps", True, loop, None)
    hot = (refs.addr >= w.hot[0]) & (refs.addr < w.hot[1])
    cold = (refs.addr >= w.cold[0]) & (refs.addr < w.cold[1])
    assert hot.sum() == (w.hot[1] - w.hot[0]) // PAGE
    assert cold.sum() == (w.cold[1] - w.cold[0]) // PAGE
    assert (refs.count[hot] == loop).all()
    # the cold region was written once at start: at most the first pass sees that
    assert refs.count[cold].max() <= 1
    np.testing.assert_array_equal(refs.cold(2), cold)
    assert refs.total_bytes(refs.cold(2)) == w.cold[1] - w.cold[0]
    assert len({int(v) for v in refs.vma[hot]} & {int(v) for v in refs.vma[cold]}) == 0


NOBODY_SCAN = """
import json, os, sys
from etmem import kernel
from etmem.scan import Scanner, available_sources
available_sources(), kernel.kernel_config()  # load every module while root can read them
os.setgid(65534)
os.setuid(65534)
refs = Scanner(int(sys.argv[1]), source="smaps").scan(loop=2)
print(json.dumps({"passes": refs.passes, "error": refs.error, "n": len(refs)}))
"""


def test_a_scanner_without_permission_ends_with_a_message_not_an_exception(need_root, workload_factory):
    import json
    import subprocess
    import sys
    w = workload_factory(total_mb=16, hot_mb=4)
    out = subprocess.run([sys.executable, "-c", NOBODY_SCAN, str(w.pid)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["passes"] == 0 and result["n"] == 0
    assert "permission denied" in result["error"] and str(w.pid) in result["error"]
