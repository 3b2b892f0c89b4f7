"""Memory actions for real: swap-out checked through pagemap, move_pages and node queries, skips and errors."""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from conftest import PAGE, pagemap_bits
from etmem import actions, kernel
from etmem.actions import (IOV_MAX, MOVE_BATCH, QUOTA_SKIPPED, SWAP_LINE, SWAP_PAGES_WRITE, ActionError,
                           SwapResult, encode_swap_pages, iovecs, move_pages, page_nodes,
                           set_swapcache_watermarks, swap_out)
from etmem.process import ProcessHandle
from etmem.stats import CallCounters

U = np.uint64


# --- address handling (pure) -------------------------------------------------

def test_contiguous_pages_merge_into_one_iovec_and_gaps_split():
    base = 0x7F0000000000
    starts = np.array([base, base + PAGE, base + 2 * PAGE, base + 5 * PAGE, base + 6 * PAGE], dtype=U)
    iov = iovecs(starts, starts + U(PAGE))
    assert iov.dtype.itemsize == 16
    assert iov["base"].tolist() == [base, base + 5 * PAGE]
    assert iov["len"].tolist() == [3 * PAGE, 2 * PAGE]


def test_requested_addresses_are_page_aligned_deduplicated_and_sorted():
    base = 0x7F0000000000
    starts, ends = actions._ranges(np.array([base + 5 * PAGE + 17, base, base + 10, base + PAGE], dtype=U), None)
    assert starts.tolist() == [base, base + 5 * PAGE]
    assert ends.tolist() == [base + 2 * PAGE, base + 6 * PAGE]


def test_sizes_cover_every_page_their_byte_range_touches():
    base = 0x7F0000000000
    starts, ends = actions._ranges(np.array([base + 100, base + (2 << 20)], dtype=U), np.array([PAGE, 2 << 20], dtype=U))
    assert starts.tolist() == [base, base + (2 << 20)]
    assert ends.tolist() == [base + 2 * PAGE, base + (4 << 20)]


def test_ranges_are_cut_at_vma_boundaries():
    bounds = np.array([0x2000, 0x5000, 0x9000], dtype=U)
    starts, ends = actions._split_at(np.array([0x1000, 0x6000], dtype=U), np.array([0x7000, 0x7000], dtype=U), bounds)
    assert list(zip(starts.tolist(), ends.tolist())) == [(0x1000, 0x2000), (0x2000, 0x5000), (0x5000, 0x7000), (0x6000, 0x7000)]


def test_swap_pages_lines_are_upstream_hex_lines():
    addrs = np.array([0x7F12_3456_7000, 0x1000, 0xFFFF_FFFF_FFFF_F000], dtype=U)
    lines = encode_swap_pages(addrs)
    assert lines.shape == (3, SWAP_LINE)
    text = lines.tobytes().decode()
    assert text.splitlines() == ["0x00007f1234567000", "0x0000000000001000", "0xfffffffffffff000"]
    assert [int(x, 16) for x in text.split()] == addrs.tolist()


def test_swap_pages_writes_carry_whole_lines_only():
    # A SEQPACKET socket keeps each write() a separate message, so we see the write boundaries.
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    addrs = np.arange(1000, dtype=U) * U(PAGE) + U(0x7F0000000000)
    result, counters = SwapResult(), CallCounters()
    target = ProcessHandle.open(os.getpid())
    try:
        actions.write_swap_lines(writer.fileno(), encode_swap_pages(addrs), counters, result, target)
        writer.close()
        messages = []
        while True:
            msg = reader.recv(65536)
            if not msg:
                break
            messages.append(msg)
    finally:
        reader.close()
        target.close()
    assert all(len(m) % SWAP_LINE == 0 and len(m) <= SWAP_PAGES_WRITE and m.endswith(b"\n") for m in messages)
    assert len(messages) == -(-1000 // (SWAP_PAGES_WRITE // SWAP_LINE))
    assert [int(x, 16) for x in b"".join(messages).split()] == addrs.tolist()
    assert result.accepted == 1000
    assert counters.as_dict()["swap_pages"]["calls"] == len(messages)


# --- swap-out for real --------------------------------------------------------

def test_swap_out_swaps_exactly_the_chosen_pages(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=56, hot_mb=8)
    s, e = w.cold
    chosen = np.arange(s, e, 2 * PAGE, dtype=U)          # every other page: nothing merges
    counters = CallCounters()
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, chosen, counters=counters, method="auto")
    assert r.error is None
    assert r.method == ("swap_pages" if kernel.has_swap_pages(w.pid) else "process_madvise")
    assert r.requested == r.done == chosen.size
    assert r.skipped_locked == r.skipped_hugetlb == r.skipped_outside == 0
    present, swapped = pagemap_bits(w.pid, s, e)
    assert swapped[::2].all(), f"{int((~swapped[::2]).sum())} chosen pages were not swapped"
    assert not swapped[1::2].any()
    assert present[1::2].all()
    hot_present, hot_swapped = pagemap_bits(w.pid, *w.hot)
    assert hot_present.all() and not hot_swapped.any()
    if r.method == "process_madvise":
        c = counters.as_dict()["process_madvise"]
        assert c["calls"] == -(-chosen.size // IOV_MAX)
        assert c["pages_requested"] == c["pages_done"] == chosen.size
        assert c["bytes"] == chosen.size * PAGE and c["errors"] == {}
    assert w.verify()


def test_contiguous_pages_go_out_in_one_call(need_root, zram_swap, workload_factory):
    if kernel.has_swap_pages():
        pytest.skip("this kernel has swap_pages, which takes page lines, not ranges")
    w = workload_factory(total_mb=24, hot_mb=4)
    s, _ = w.cold
    counters = CallCounters()
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, np.arange(s, s + 3000 * PAGE, PAGE, dtype=U), counters=counters)
    assert r.done == 3000 and r.calls == 1
    assert counters.as_dict()["process_madvise"]["calls"] == 1
    _, swapped = pagemap_bits(w.pid, s, s + 3001 * PAGE)
    assert swapped[:3000].all() and not swapped[3000]
    assert w.verify()


_MAPPER = textwrap.dedent("""
    import ctypes, json, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def region(size, flags, fill=True):
        m = mmap.mmap(-1, size, flags=flags)
        if fill:
            m.write(b"\\x5a" * size)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        return m, addr
    lock = sys.argv[1] == "1"
    plain, a = region(4 << 20, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    shared, c = region(1 << 20, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    out = {"plain": a, "shared": c}
    if lock:
        locked, b = region(2 << 20, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        assert libc.mlock(ctypes.c_void_p(b), ctypes.c_size_t(2 << 20)) == 0, ctypes.get_errno()
        out["locked"] = b
    try:
        huge, d = region(2 << 20, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000, fill=lock)  # MAP_HUGETLB
        out["hugetlb"] = d
    except OSError:
        pass
    print(json.dumps(out), flush=True)
    sys.stdin.readline()
""")


@pytest.fixture(params=[True, False], ids=["locked", "nothing-locked"])
def mapper(need_root, request):
    """A child with a plain, a shared, (given 2 MiB hugetlb pages) a hugetlb region, and with
    param True an mlocked region and a faulted-in hugetlb page (swap_out reads smaps), with
    False an untouched hugetlb mapping only (swap_out reads maps and must still see it)."""
    path = "/proc/sys/vm/nr_hugepages"
    with open(path) as f:
        before = int(f.read())
    with open(path, "w") as f:   # relative change: other users of hugetlb keep theirs
        f.write(str(before + 1))
    proc = subprocess.Popen([sys.executable, "-c", _MAPPER, "1" if request.param else "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc, json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        with open(path) as f:
            now = int(f.read())
        with open(path, "w") as f:
            f.write(str(max(0, now - 1)))


def test_locked_hugetlb_shared_and_unmapped_pages_are_skipped_and_counted(zram_swap, mapper):
    proc, regions = mapper
    pages = lambda start, size: np.arange(start, start + size, PAGE, dtype=U)
    parts = [pages(regions["plain"], 4 << 20), pages(regions["shared"], 1 << 20),
             np.array([0x1000, 0x2000], dtype=U)]         # never mapped
    if "locked" in regions:
        parts.append(pages(regions["locked"], 2 << 20))
    if "hugetlb" in regions:
        parts.append(pages(regions["hugetlb"], 2 << 20))
    counters = CallCounters()
    with ProcessHandle.open(proc.pid) as h:
        r = swap_out(h, np.concatenate(parts), counters=counters, method="process_madvise")
    assert r.error is None
    assert r.done == 1024
    assert r.skipped_locked == (512 if "locked" in regions else 0)
    assert r.skipped_outside == 256 + 2
    assert r.skipped_hugetlb == (512 if "hugetlb" in regions else 0)
    assert counters.as_dict()["process_madvise"]["errors"] == {}
    _, swapped = pagemap_bits(proc.pid, regions["plain"], regions["plain"] + (4 << 20))
    assert swapped.all()
    for name, size in (("locked", 2 << 20), ("shared", 1 << 20)):
        if name not in regions:
            continue
        present, swapped = pagemap_bits(proc.pid, regions[name], regions[name] + size)
        assert present.all() and not swapped.any(), name
    if "hugetlb" not in regions:
        pytest.skip("no 2 MiB hugetlb page could be reserved; the hugetlb skip was not exercised")


def test_thp_pages_go_out_whole_given_their_size(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=40, hot_mb=4, huge=True)
    s, e = w.cold
    huge = 2 << 20
    first = (s + huge - 1) // huge * huge
    heads = np.arange(first, e - huge + 1, 2 * huge, dtype=U)[:4]     # every other 2 MiB block
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, heads, sizes=huge)
    assert r.requested == r.done == heads.size * 512
    for head in heads.tolist():
        _, swapped = pagemap_bits(w.pid, head, head + huge)
        assert swapped.all()
        present, swapped = pagemap_bits(w.pid, head + huge, head + 2 * huge)
        assert present.all() and not swapped.any()
    assert w.verify()


def test_a_range_the_kernel_refuses_is_skipped_alone_and_counted(need_root, zram_swap, workload_factory, monkeypatch):
    # Pretend the map (read just before) had a private VMA where nothing is mapped any more,
    # as when the target unmaps memory between our read and the call: the kernel says ENOMEM
    # for that range only, and the ranges before and after it in the same batch still go out.
    w = workload_factory(total_mb=24, hot_mb=4)
    s, e = w.cold
    ghost = 0x100000000   # 4 GiB: below the mmap area, above a small python's heap
    assert all(not (v.start < ghost + PAGE and ghost < v.end) for v in actions.procfs.maps(w.pid))
    real = actions.procfs.vmas
    monkeypatch.setattr(actions.procfs, "vmas", lambda pid: sorted(
        real(pid) + [actions.procfs.Vma(ghost, ghost + 16 * PAGE, "rw-p", 0, "00:00", 0, "")]))
    before = np.arange(s, s + 8 * PAGE, 2 * PAGE, dtype=U)
    after = np.arange(s + 64 * PAGE, s + 72 * PAGE, 2 * PAGE, dtype=U)
    counters = CallCounters()
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, np.concatenate([before, np.array([ghost], dtype=U), after]), counters=counters,
                     method="process_madvise")
    assert r.error is None
    assert r.requested == 9 and r.done == 8
    c = counters.as_dict()["process_madvise"]
    assert c["errors"] == {"ENOMEM": 1}
    assert c["pages_done"] == 8
    _, swapped = pagemap_bits(w.pid, s, s + 72 * PAGE)
    assert swapped[0:8:2].all() and swapped[64:72:2].all()
    assert swapped.sum() == 8
    assert w.verify()


def test_a_stop_set_before_swap_out_leaves_every_page_in_memory(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    s, e = w.cold
    stop = threading.Event()
    stop.set()
    counters = CallCounters()
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, np.arange(s, e, 2 * PAGE, dtype=U), counters=counters, stop=stop)
    assert r.stopped and (r.done, r.accepted, r.calls) == (0, 0, 0)
    assert r.requested == (e - s) // (2 * PAGE)
    assert r.error == f"swap-out of process {w.pid} stopped early on request: 0 of {r.requested} pages were given to the kernel"
    assert counters.as_dict() == CallCounters().as_dict()
    _, swapped = pagemap_bits(w.pid, s, e)
    assert not swapped.any()
    assert w.verify()


def test_a_stop_during_swap_out_ends_it_between_process_madvise_batches(need_root, zram_swap, workload_factory):
    """Four batches of IOV_MAX scattered pages; the stop says yes from its third look on
    (the first is before any work): two batches go out, the other two stay untouched."""
    w = workload_factory(total_mb=56, hot_mb=8)
    s, _ = w.cold
    chosen = np.arange(s, s + 4 * IOV_MAX * 2 * PAGE, 2 * PAGE, dtype=U)   # every other page: one iovec each
    looks = []

    def stop() -> bool:
        looks.append(len(looks))
        return len(looks) > 3

    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, chosen, method="process_madvise", stop=stop)
    assert r.stopped and r.calls == 2 and len(looks) == 4
    assert r.requested == 4 * IOV_MAX and r.accepted == 2 * IOV_MAX
    assert r.error == (f"swap-out of process {w.pid} stopped early on request: {2 * IOV_MAX} of "
                       f"{4 * IOV_MAX} pages were given to the kernel")
    _, swapped = pagemap_bits(w.pid, s, int(chosen[-1]) + PAGE)
    assert swapped[::2][:2 * IOV_MAX].all()
    assert not swapped[::2][2 * IOV_MAX:].any() and not swapped[1::2].any()
    assert r.done == 2 * IOV_MAX and set(r.pages_out.tolist()) == set(chosen[:2 * IOV_MAX].tolist())
    assert w.verify()


def test_a_stop_ends_swap_pages_writes_between_chunks():
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    per_write = SWAP_PAGES_WRITE // SWAP_LINE
    addrs = np.arange(5 * per_write, dtype=U) * U(PAGE) + U(0x7F0000000000)
    result, counters = SwapResult(requested=addrs.size), CallCounters()
    target = ProcessHandle.open(os.getpid())

    def stop() -> bool:   # yes once two writes are done
        return counters.as_dict().get("swap_pages", {}).get("calls", 0) >= 2

    try:
        actions.write_swap_lines(writer.fileno(), encode_swap_pages(addrs), counters, result, target, stop)
        writer.close()
        messages = []
        while msg := reader.recv(65536):
            messages.append(msg)
    finally:
        reader.close()
        target.close()
    assert len(messages) == 2 and result.stopped
    assert [int(x, 16) for x in b"".join(messages).split()] == addrs[:2 * per_write].tolist()
    assert result.accepted == 2 * per_write
    assert result.error == (f"swap-out of process {os.getpid()} stopped early on request: {2 * per_write} of "
                            f"{addrs.size} pages were given to the kernel")


def test_a_stop_that_is_neither_an_event_nor_callable_is_a_clear_error():
    with ProcessHandle.open(os.getpid()) as h:
        with pytest.raises(ActionError, match="swap_out's stop must be a threading.Event or a callable "
                                              "returning a bool, not int"):
            swap_out(h, np.array([0x7F0000000000], dtype=U), stop=1)


def test_missing_swap_skips_with_one_clear_message(need_root, workload_factory, monkeypatch, caplog):
    monkeypatch.setattr(actions.procfs, "swap_devices", lambda: [])
    monkeypatch.setattr(actions, "_last_warning", {})
    w = workload_factory(total_mb=16, hot_mb=4)
    s, e = w.cold
    with ProcessHandle.open(w.pid) as h, caplog.at_level(logging.WARNING, "etmem.actions"):
        r1 = swap_out(h, np.arange(s, e, PAGE, dtype=U))
        r2 = swap_out(h, np.arange(s, e, PAGE, dtype=U))
    assert r1.done == r2.done == 0
    assert "no swap device is active" in r1.error and "skipped" in r1.error
    assert len([rec for rec in caplog.records if "no swap device" in rec.getMessage()]) == 1
    present, swapped = pagemap_bits(w.pid, s, e)
    assert present.all() and not swapped.any()
    assert w.verify()


def test_full_swap_skips_with_a_clear_message(need_root, workload_factory, monkeypatch):
    full = [{"name": "/dev/zram9", "type": "partition", "size_kb": 1024, "used_kb": 1024, "priority": 5}]
    monkeypatch.setattr(actions.procfs, "swap_devices", lambda: full)
    w = workload_factory(total_mb=16, hot_mb=4)
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, np.arange(*w.cold, PAGE, dtype=U))
    assert r.done == 0 and r.error.startswith("swap is full (/dev/zram9)")
    assert w.verify()


def test_kernel_without_process_madvise_skips_with_a_clear_message(need_root, zram_swap, workload_factory, monkeypatch):
    monkeypatch.setattr(actions.kernel, "has_process_madvise", lambda: False)
    monkeypatch.setattr(actions.kernel, "has_swap_pages", lambda pid=None: False)
    w = workload_factory(total_mb=16, hot_mb=4)
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, np.arange(*w.cold, PAGE, dtype=U))
    assert r.done == 0 and r.method == "none"
    assert "Linux 5.10" in r.error and "etmem_swap" in r.error
    _, swapped = pagemap_bits(w.pid, *w.cold)
    assert not swapped.any()


def test_swap_pages_method_on_a_kernel_without_it_is_skipped_clearly(need_root, zram_swap, workload_factory):
    if kernel.has_swap_pages():
        pytest.skip("this kernel has /proc/PID/swap_pages")
    w = workload_factory(total_mb=16, hot_mb=4)
    with ProcessHandle.open(w.pid) as h:
        r = swap_out(h, np.arange(*w.cold, PAGE, dtype=U), method="swap_pages")
        with pytest.raises(ActionError, match="unknown swap-out method"):
            swap_out(h, np.arange(*w.cold, PAGE, dtype=U), method="madvise")
    assert r.done == 0 and "etmem_swap" in r.error


def test_swap_out_of_a_process_that_exited_raises_process_gone(need_root, workload_factory):
    w = workload_factory(total_mb=16, hot_mb=4)
    h = ProcessHandle.open(w.pid)
    w.stop()
    with pytest.raises(actions.ProcessGone):
        swap_out(h, np.arange(*w.cold, PAGE, dtype=U))
    h.close()


# --- NUMA ---------------------------------------------------------------------

def test_node_query_reports_node_not_present_and_unmapped(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=16, hot_mb=4)
    s, e = w.cold
    counters = CallCounters()
    with ProcessHandle.open(w.pid) as h:
        swap_out(h, np.array([s], dtype=U))
        nodes = page_nodes(h, np.array([s, s + PAGE, s + 2 * PAGE, 0x1000], dtype=U), counters=counters)
    assert nodes.tolist() == [-errno.ENOENT, 0, 0, -errno.EFAULT]
    c = counters.as_dict()["move_pages_query"]
    assert c["calls"] == 1 and c["pages_requested"] == 4 and c["pages_done"] == 2


def test_move_pages_to_node_0_in_batches(need_root, workload_factory):
    w = workload_factory(total_mb=104, hot_mb=4)
    s, e = w.cold
    addrs = np.arange(s, e, PAGE, dtype=U)
    assert addrs.size > MOVE_BATCH
    counters = CallCounters()
    with ProcessHandle.open(w.pid) as h:
        r = move_pages(h, addrs, 0, counters=counters)
        after = page_nodes(h, addrs)
    assert (r.status == 0).all() and (after == 0).all()
    assert r.moved == addrs.size and r.bytes_moved == addrs.size * PAGE
    assert r.failed_by_errno == {} and not r.quota_exhausted
    c = counters.as_dict()["move_pages"]
    assert c["calls"] == -(-addrs.size // MOVE_BATCH)
    assert c["pages_done"] == addrs.size
    assert w.verify()


def test_move_pages_stops_at_the_quota(need_root, workload_factory):
    w = workload_factory(total_mb=16, hot_mb=4)
    s, _ = w.cold
    addrs = np.arange(s, s + 1024 * PAGE, PAGE, dtype=U)
    with ProcessHandle.open(w.pid) as h:
        r = move_pages(h, addrs, 0, quota_mb=1)
    quota_pages = (1 << 20) // PAGE
    assert r.quota_exhausted and r.moved == quota_pages
    assert (r.status[:quota_pages] == 0).all()
    assert (r.status[quota_pages:] == QUOTA_SKIPPED).all()


def test_move_pages_keeps_per_page_failures(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=16, hot_mb=4)
    s, _ = w.cold
    with ProcessHandle.open(w.pid) as h:
        swap_out(h, np.array([s + PAGE], dtype=U))
        r = move_pages(h, np.array([s, s + PAGE, 0x1000], dtype=U), 0)
    assert r.status.tolist() == [0, -errno.ENOENT, -errno.EFAULT]
    assert r.moved == 1 and r.failed_by_errno == {"ENOENT": 1, "EFAULT": 1}


def test_missing_node_is_a_clear_error(need_root, workload_factory):
    w = workload_factory(total_mb=16, hot_mb=4)
    missing = max(actions.procfs.memory_nodes()) + 1
    counters = CallCounters()
    with ProcessHandle.open(w.pid) as h:
        addrs = np.arange(*w.cold, PAGE, dtype=U)[:8]
        with pytest.raises(ActionError, match=rf"node {missing} does not exist \(this machine has nodes 0"):
            move_pages(h, addrs, missing, counters=counters)
        with pytest.raises(ActionError, match="not a NUMA node number"):
            move_pages(h, addrs, -1)
    assert counters.as_dict()["move_pages"]["errors"] == {"ENODEV": 1}


# --- swap cache watermarks ----------------------------------------------------

def test_swapcache_watermarks_without_kernel_support_log_one_line(need_root, workload_factory, monkeypatch, caplog):
    if kernel.has_swap_pages():
        pytest.skip("this kernel has /proc/PID/swap_pages")
    monkeypatch.setattr(actions, "_logged_no_wmark", False)
    w = workload_factory(total_mb=16, hot_mb=4)
    with ProcessHandle.open(w.pid) as h, caplog.at_level(logging.WARNING, "etmem.actions"):
        assert set_swapcache_watermarks(h, 10, 30) is False
        assert set_swapcache_watermarks(h, 10, 30) is False
        with pytest.raises(ActionError, match="1 <= low < high <= 100"):
            set_swapcache_watermarks(h, 30, 10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "etmem_swap" in lines[0]
