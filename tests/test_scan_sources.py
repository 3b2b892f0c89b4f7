"""Scanner sources driven through their real code, with idle_pages / page_idle files emulated."""
from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

from etmem import damon_sysfs, kernel, scan
from etmem.errors import KernelFeatureMissing, ProcessGone
from etmem.kernel import abi
from etmem.scan import PageRefs, Scanner
from etmem.scan.sources import damon
from kernel_emulation import ACCESSED, HOLE, IDLE, PMD, SWAPPED, DamonSysfs, Emulator, PageTable

PAGE = 4096
MADV_NOHUGEPAGE = 15


@pytest.fixture
def region():
    """8 MiB of private anonymous memory of this process, 2 MiB aligned: (start, end)."""
    m = mmap.mmap(-1, 10 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = np.frombuffer(m, dtype=np.uint8).ctypes.data
    start = -(-base // PMD) * PMD
    yield start, start + (8 << 20)
    m.close()


def hooked(emu: Emulator, name: str, action):
    """An opener that calls action(n) before the n-th open (from 1) of /proc/PID/name.

    /proc/self/... opens are the availability probe, not a pass: they are not counted.
    """
    opened = {"n": 0}

    def opener(path, mode="rb"):
        if path.endswith(name) and "/self/" not in path:
            opened["n"] += 1
            action(opened["n"])
        return emu.opener(path, mode)
    return opener


def hot_cold_scan(region, source, loop=3, dirty=False, **kw):
    start, end = region
    hot_end = start + (1 << 20)
    table = PageTable()
    table.add_vma(start, end, state=IDLE)
    emu = Emulator(os.getpid(), table, **kw)
    name = "idle_pages" if source == "idle_pages" else "pagemap"
    opener = hooked(emu, name, lambda n: table.touch(start, hot_end, dirty=dirty))
    refs = Scanner(os.getpid(), source=source, ranges=[region], opener=opener).scan(loop=loop)
    hot = refs.addr < hot_end
    return refs, hot, emu


def test_idle_pages_counts_hot_pages_once_per_pass_and_cold_pages_never(region):
    refs, hot, _ = hot_cold_scan(region, "idle_pages")
    assert isinstance(refs, PageRefs)
    assert (refs.source, refs.passes, refs.per_vma, refs.error) == ("idle_pages", 3, False, None)
    assert len(refs) == 2048 and (np.diff(refs.addr.astype(np.int64)) > 0).all()
    assert refs.addr[0] == region[0] and (refs.size == PAGE).all()
    assert (refs.count[hot] == 3).all() and (refs.count[~hot] == 0).all()
    assert hot.sum() == 256
    assert refs.total_bytes() == 8 << 20
    assert refs.total_bytes(refs.cold(1)) == 7 << 20
    assert (refs.vma == 0).all() and refs.vmas[0].start == region[0]


def test_idle_pages_weighs_dirty_pages_3(region):
    refs, hot, _ = hot_cold_scan(region, "idle_pages", dirty=True)
    assert (refs.count[hot] == 9).all() and (refs.count[~hot] == 0).all()


@pytest.mark.parametrize("chunk", [19, 8000])
def test_idle_pages_read_in_many_reads_and_kernel_chunks_counts_every_page(region, chunk):
    start, end = region
    table = PageTable()
    table.add_vma(start, end, state=IDLE)
    for a in range(start, end, 2 * PAGE):  # alternate pages: one record per page
        table.touch(a, a + PAGE, dirty=(a // PAGE) % 4 == 0)
    emu = Emulator(os.getpid(), table, chunk_size=chunk)
    refs = Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=emu.opener).scan()
    assert sum(getattr(f, "reads", 0) for f in emu.files) >= 5
    page = (refs.addr // PAGE).astype(np.int64)
    expect = np.where(page % 2 == 1, 0, np.where(page % 4 == 0, 3, 1))
    assert len(refs) == 2048
    np.testing.assert_array_equal(refs.count, expect)


def test_idle_pages_leaves_holes_and_swapped_pages_out(region):
    start, end = region
    table = PageTable()
    table.add_vma(start, end, state=ACCESSED)
    table.set(start, start + 10 * PAGE, HOLE)
    table.set(start + 20 * PAGE, start + 25 * PAGE, SWAPPED)
    emu = Emulator(os.getpid(), table)
    refs = Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=emu.opener).scan()
    assert len(refs) == 2048 - 15
    assert refs.addr[0] == start + 10 * PAGE
    assert not np.isin(np.arange(start + 20 * PAGE, start + 25 * PAGE, PAGE, dtype=np.uint64), refs.addr).any()
    assert (refs.count == 1).all()


@pytest.mark.parametrize("huge", ["split", "keep"])
def test_transparent_huge_pages_are_kept_whole_or_split(region, huge):
    start, end = region
    table = PageTable()
    table.add_vma(start, end, state=ACCESSED, huge=True)
    emu = Emulator(os.getpid(), table)
    refs = Scanner(os.getpid(), source="idle_pages", ranges=[region], huge=huge, opener=emu.opener).scan(loop=2)
    assert (refs.count == 1).all()  # accessed in the first pass, idle after the clear
    if huge == "keep":
        assert (refs.size == PMD).all() and len(refs) == 4
        assert (refs.addr % PMD == 0).all()
    else:
        assert (refs.size == PAGE).all() and len(refs) == 2048
    assert refs.total_bytes() == 8 << 20


def test_idle_pages_scan_flags_reach_the_kernel_file(region):
    table = PageTable()
    table.add_vma(*region)
    emu = Emulator(os.getpid(), table)
    Scanner(os.getpid(), source="idle_pages", ranges=[region], ign_host=True, as_huge=True, swap_flag=True,
            opener=emu.opener).scan()
    f = emu.files[-1]
    assert f.flags == abi.SCAN_IGN_HOST | abi.SCAN_AS_HUGE and f.vma_flags == abi.VMA_SCAN_FLAG


def test_page_idle_counts_pages_not_idle_since_the_previous_pass(region):
    refs, hot, emu = hot_cold_scan(region, "page_idle", idle_pages=False)
    assert (refs.source, refs.passes, refs.error) == ("page_idle", 3, None)
    # every page is marked idle before the first pass, so only use during the scan counts
    assert (refs.count[hot] == 3).all() and (refs.count[~hot] == 0).all()
    assert any(getattr(f, "writes", 0) for f in emu.files)


def test_page_idle_reports_only_present_pages(region):
    start, end = region
    table = PageTable()
    table.add_vma(start, end, state=IDLE)
    table.set(start, start + 100 * PAGE, SWAPPED)
    table.set(end - 50 * PAGE, end, HOLE)
    emu = Emulator(os.getpid(), table, idle_pages=False)
    refs = Scanner(os.getpid(), source="page_idle", ranges=[region], opener=emu.opener).scan(loop=2)
    assert len(refs) == 2048 - 150 and refs.addr[0] == start + 100 * PAGE
    assert (refs.count == 0).all()


def test_auto_prefers_idle_pages_then_page_idle_then_what_the_kernel_has(region):
    table = PageTable()
    table.add_vma(*region)
    assert Scanner(os.getpid(), opener=Emulator(os.getpid(), table).opener).source_name == "idle_pages"
    only_bitmap = Emulator(os.getpid(), table, idle_pages=False)
    assert Scanner(os.getpid(), opener=only_bitmap.opener).source_name == "page_idle"
    neither = Emulator(os.getpid(), table, idle_pages=False, page_idle=False)
    avail = scan.available_sources(neither.opener)
    assert "etmem_scan" in avail["idle_pages"] and "CONFIG_IDLE_PAGE_TRACKING" in avail["page_idle"]
    expect = next(name for name in scan.SOURCES if avail[name] is None)
    assert Scanner(os.getpid(), opener=neither.opener).source_name == expect


def test_asking_for_a_source_the_kernel_lacks_says_what_is_missing():
    avail = scan.available_sources()
    for name in ("idle_pages", "page_idle", "damon"):
        if avail[name] is None:
            continue
        with pytest.raises(KernelFeatureMissing, match=name):
            Scanner(os.getpid(), source=name)
    with pytest.raises(scan.ScanError, match="unknown scanner source"):
        scan.choose_source("bitmap")


def test_damon_taken_by_another_owner_is_a_clear_error_found_read_only():
    try:
        with open(f"{kernel.DAMON_ADMIN}/kdamonds/nr_kdamonds") as f:
            nr = int(f.read())
    except OSError:
        pytest.skip("this kernel has no DAMON sysfs interface")
    if nr == 0:
        pytest.skip("no kdamond is running here, so there is no other owner to detect")
    before = open(f"{kernel.DAMON_ADMIN}/kdamonds/0/state").read()
    assert "another owner" in damon.owner_problem()
    reason = scan.available_sources()["damon"]
    assert "another owner" in reason or "vaddr" in reason
    with pytest.raises(KernelFeatureMissing):
        Scanner(os.getpid(), source="damon")
    assert open(f"{kernel.DAMON_ADMIN}/kdamonds/0/state").read() == before
    assert int(open(f"{kernel.DAMON_ADMIN}/kdamonds/nr_kdamonds").read()) == nr


# --- a pass cut short ends cleanly ---------------------------------------------

def test_permission_denied_ends_the_pass_with_a_message(region):
    table = PageTable()
    table.add_vma(*region)
    emu = Emulator(os.getpid(), table)

    def opener(path, mode="rb"):
        if path.endswith("idle_pages") and "self" not in path:
            raise PermissionError(13, "Permission denied", path)
        return emu.opener(path, mode)
    refs = Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=opener).scan(loop=2)
    assert refs.passes == 0 and "permission denied" in refs.error and len(refs) == 0


def test_corrupt_stream_ends_the_pass_with_a_message(region):
    table = PageTable()
    table.add_vma(*region)
    emu = Emulator(os.getpid(), table)

    def opener(path, mode="rb"):
        f = emu.opener(path, mode)
        if path.endswith("idle_pages") and "self" not in path:
            f.read = lambda n=-1: bytes([0xB3, 0x01])
        return f
    refs = Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=opener).scan(loop=2)
    assert refs.passes == 0 and "unknown record 0xb3" in refs.error


CHILD = """
import mmap, sys, ctypes
m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(15)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
print(addr, flush=True)
for line in sys.stdin:
    if line.strip() == "unmap":
        m.close()
        print("ok", flush=True)
"""


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    addr = int(p.stdout.readline())
    yield p, (addr, addr + (4 << 20))
    p.kill()
    p.wait()


def test_target_exiting_mid_scan_ends_the_scan_with_passes_done(child):
    proc, rng = child
    table = PageTable()
    table.add_vma(*rng, state=ACCESSED)
    emu = Emulator(proc.pid, table)

    def kill_on_second(n):
        if n == 2:
            proc.kill()
            proc.wait()
    refs = Scanner(proc.pid, source="idle_pages", ranges=[rng], opener=hooked(emu, "idle_pages", kill_on_second)).scan(loop=3)
    assert refs.passes == 1 and "exited" in refs.error


def test_vma_vanishing_mid_scan_ends_the_pass_and_drops_its_pages(child):
    proc, rng = child
    table = PageTable()
    table.add_vma(*rng, state=ACCESSED)
    emu = Emulator(proc.pid, table)

    def unmap_on_second(n):
        if n == 2:
            proc.stdin.write("unmap\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
    refs = Scanner(proc.pid, source="idle_pages", ranges=[rng], opener=hooked(emu, "idle_pages", unmap_on_second)).scan(loop=3)
    assert refs.passes == 1 and "vanished" in refs.error and len(refs) == 0


def test_target_object_check_is_asked_before_each_pass(region):
    table = PageTable()
    table.add_vma(*region)
    emu = Emulator(os.getpid(), table)

    class Target:
        pid = os.getpid()
        calls = 0

        def check(self):
            Target.calls += 1
            if Target.calls > 2:
                raise ProcessGone(f"process {self.pid} was replaced")
    refs = Scanner(Target(), source="idle_pages", ranges=[region], opener=emu.opener).scan(loop=4)
    assert refs.passes == 1 and "replaced" in refs.error and len(refs) == 2048


def test_stop_event_ends_the_waiting_between_passes(region):
    import threading
    import time
    table = PageTable()
    table.add_vma(*region)
    emu = Emulator(os.getpid(), table)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    refs = Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=emu.opener).scan(loop=5, sleep=10, stop=stop)
    assert time.monotonic() - t0 < 5 and refs.passes == 1 and refs.error is None


def test_idle_pages_reads_stop_at_the_vma_end_so_the_next_vmas_bits_survive(region):
    start, end = region
    mid = start + (end - start) // 2
    table = PageTable()
    table.add_vma(start, mid, state=ACCESSED)
    table.add_vma(mid, end, state=ACCESSED)
    emu = Emulator(os.getpid(), table)
    refs = Scanner(os.getpid(), source="idle_pages", ranges=[(start, mid), (mid, end)], opener=emu.opener).scan()
    assert len(refs.vmas) == 2 and len(refs) == 2048
    assert (refs.count == 1).all(), "reading the first VMA must not clear the second one's accessed bits"


# --- DAMON through a stand-in sysfs tree ----------------------------------------

@pytest.fixture
def damon_tree(tmp_path, monkeypatch):
    """An emulated /sys/kernel/mm/damon/admin (kernel_emulation.DamonSysfs) that etmem's DAMON code uses."""
    tree = DamonSysfs(tmp_path / "admin")
    monkeypatch.setattr(damon_sysfs, "DAMON_ADMIN", str(tree.root))
    monkeypatch.setattr(kernel, "damon_operations", lambda: {"vaddr", "paddr"})
    return tree


def test_damon_source_maps_region_accesses_to_pages_and_removes_its_kdamond(damon_tree):
    m = mmap.mmap(-1, 6 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(MADV_NOHUGEPAGE)
    m.write(b"x" * len(m))  # fault every page in
    start = np.frombuffer(m, dtype=np.uint8).ctypes.data
    end, hot_end = start + len(m), start + (2 << 20)
    # two regions: the hot one seen accessed, the cold one not
    damon_tree.regions[0] = [(start, hot_end, 7), (hot_end, end, 0)]
    refs = Scanner(os.getpid(), source="damon", ranges=[(start, end)], opener=damon_tree.opener).scan(loop=3)
    assert (refs.source, refs.passes, refs.error) == ("damon", 3, None)
    assert damon_tree.commands().count("update_schemes_tried_regions") == 3 and len(refs) == len(m) // PAGE
    hot = refs.addr < hot_end
    assert (refs.count[hot] == 3).all() and (refs.count[~hot] == 0).all()
    written = dict(damon_tree.stores)
    ctx = "kdamonds/0/contexts/0"
    assert written[f"{ctx}/operations"] == "vaddr"
    assert written[f"{ctx}/targets/0/pid_target"] == str(os.getpid())
    regions = f"{ctx}/targets/0/regions"
    assert [written[f"{regions}/{n}"] for n in ("nr_regions", "0/start", "0/end")] == ["1", str(start), str(end)]
    assert written[f"{ctx}/schemes/0/action"] == "stat"
    assert damon_tree.commands()[-1] == "off" and damon_tree.file("kdamonds/nr_kdamonds") == "0"
    assert not damon_sysfs.KDAMONDS.members and damon_sysfs.KDAMONDS.user is None
    m.close()


def test_damon_scans_of_two_processes_at_once_take_turns_on_the_one_kdamond(damon_tree):
    """The kernel refuses a second kdamond set while one runs (EBUSY): etmem's own scans wait."""
    import threading
    # two idle processes: their VMAs stay put (this one's change as threads come and go)
    children = [subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for c in children:
            assert c.stdout.readline().strip() == "ready"    # start-up maps no more VMAs
        results = {}
        scans = [threading.Thread(target=lambda p=c.pid: results.update(
                     {p: Scanner(p, source="damon", opener=damon_tree.opener).scan(loop=2, sleep=0.1)}))
                 for c in children]
        for t in scans:
            t.start()
        for t in scans:
            t.join(30)
    finally:
        for c in children:
            c.kill()
            c.wait()
    assert {p: (r.passes, r.error) for p, r in results.items()} == {c.pid: (2, None) for c in children}
    on_off = [v for v in damon_tree.commands() if v in ("on", "off")]
    assert on_off == ["on", "off", "on", "off"], "never two kdamonds of etmem's at once"
    assert damon_tree.file("kdamonds/nr_kdamonds") == "0"
    assert not damon_sysfs.KDAMONDS.members and damon_sysfs.KDAMONDS.user is None, "the turn must be given back"


def test_damon_with_a_foreign_kdamond_is_refused_without_writing(damon_tree):
    damon_tree.set("kdamonds/nr_kdamonds", 1)
    damon_tree.set("kdamonds/0/state", "off")
    damon_tree.set("kdamonds/0/contexts/0/operations", "paddr")
    with pytest.raises(KernelFeatureMissing, match="another owner") as info:
        Scanner(os.getpid(), source="damon", opener=damon_tree.opener)
    assert damon_tree.stores == [] and damon_tree.file("kdamonds/nr_kdamonds") == "1"
    # the message says what that kdamond is; a foreign one (paddr) gets no stop hint
    assert "kdamond 0 off, paddr)" in str(info.value) and "echo off" not in str(info.value)


def test_a_leftover_kdamond_that_looks_like_etmems_gets_a_hint_how_to_stop_it(damon_tree):
    ctx = "kdamonds/0/contexts/0"
    for rel, text in (("kdamonds/nr_kdamonds", 1), ("kdamonds/0/state", "on"), (f"{ctx}/operations", "vaddr"),
                      (f"{ctx}/targets/nr_targets", 1), (f"{ctx}/targets/0/pid_target", 4242),
                      (f"{ctx}/schemes/nr_schemes", 1), (f"{ctx}/schemes/0/action", "stat")):
        damon_tree.set(rel, text)
    problem = damon.owner_problem()
    assert "kdamond 0 on, vaddr on pid 4242, scheme stat" in problem
    assert f"echo off > {damon_tree.root}/kdamonds/0/state" in problem
    assert damon_tree.file("kdamonds/0/state") == "on" and damon_tree.stores == [], "etmem itself never stops it"


def test_damon_busy_kernel_ends_the_scan_with_another_owner(damon_tree):
    def opener(path, mode="rb"):
        if path.endswith("nr_kdamonds") and "w" in mode:
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        return damon_tree.opener(path, mode)
    refs = Scanner(os.getpid(), source="damon", opener=opener).scan()
    assert refs.passes == 0 and "another owner" in refs.error
    assert not damon_sysfs.KDAMONDS.members and damon_sysfs.KDAMONDS.user is None


def test_page_idle_reads_and_writes_the_bitmap_a_page_per_call_across_far_apart_frames(region):
    start, end = region
    mid = start + (end - start) // 2
    table = PageTable()
    table.add_vma(start, mid, state=IDLE)
    table._next_pfn += 1 << 20  # the second VMA's frames lie 4 GiB of RAM further on
    table.add_vma(mid, end, state=IDLE)
    emu = Emulator(os.getpid(), table, idle_pages=False)
    opener = hooked(emu, "pagemap", lambda n: table.touch(mid, mid + 64 * PAGE))
    refs = Scanner(os.getpid(), source="page_idle", ranges=[(start, mid), (mid, end)], opener=opener).scan(loop=2)
    assert refs.passes == 2 and len(refs) == 2048
    hot = (refs.addr >= mid) & (refs.addr < mid + 64 * PAGE)
    assert (refs.count[hot] == 2).all() and (refs.count[~hot] == 0).all()
    assert max(f.writes for f in emu.files if hasattr(f, "writes")) > 1


def test_small_adjacent_vmas_are_each_counted_although_one_read_covers_both(region):
    start = region[0]
    table = PageTable()
    vmas = [(start + k * 16 * PAGE, start + (k + 1) * 16 * PAGE) for k in range(4)]
    for lo, hi in vmas:
        table.add_vma(lo, hi, state=ACCESSED)
    emu = Emulator(os.getpid(), table)
    refs = Scanner(os.getpid(), source="idle_pages", ranges=vmas, opener=emu.opener).scan()
    assert len(refs.vmas) == 4 and len(refs) == 64
    assert (refs.count == 1).all(), np.bincount(refs.count)
    assert sorted(set(refs.vma.tolist())) == [0, 1, 2, 3]


def test_a_process_is_scanned_by_one_scanner_at_a_time(region):
    """A second scan of a process while one runs is refused with a message, not interleaved."""
    import threading
    table = PageTable()
    table.add_vma(*region, state=IDLE)
    emu = Emulator(os.getpid(), table)
    first_running, first_may_end = threading.Event(), threading.Event()

    def slow_opener(path, mode="rb"):
        if path.endswith("idle_pages") and "/self/" not in path and threading.current_thread().name == "first":
            first_running.set()
            first_may_end.wait(10)
        return emu.opener(path, mode)

    results = {}
    first = threading.Thread(name="first", target=lambda: results.update(
        first=Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=slow_opener).scan(loop=1)))
    first.start()
    assert first_running.wait(10)
    assert os.getpid() in scan.CLAIMS.busy()
    second = Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=emu.opener).scan(loop=1)
    first_may_end.set()
    first.join()
    assert second.passes == 0 and len(second) == 0 and "being scanned by another task" in second.error
    assert results["first"].error is None and results["first"].passes == 1
    assert os.getpid() not in scan.CLAIMS.busy(), "the claim must be given back"
    # once the first scan is over, the process can be scanned again
    assert Scanner(os.getpid(), source="idle_pages", ranges=[region], opener=emu.opener).scan(loop=1).error is None


def test_claims_nest_in_one_thread_and_survive_the_process_exiting():
    """An engine claims a target for its round and then scans it: the scan's own claim nests."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        outer = scan.CLAIMS.claim(child.pid)
        assert outer is not None and scan.CLAIMS.claim(child.pid) == outer   # nested, same thread
        import threading
        other = []
        t = threading.Thread(target=lambda: other.append(scan.CLAIMS.claim(child.pid)))
        t.start()
        t.join()
        assert other == [None], "another thread is refused while the claim is held"
        scan.CLAIMS.release(outer)
        assert child.pid in scan.CLAIMS.busy()
    finally:
        child.kill()
        child.wait()
    scan.CLAIMS.release(outer)         # the process is gone: the key still releases it
    assert child.pid not in scan.CLAIMS.busy()
