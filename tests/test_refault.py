"""The `refault` access source: its pure parts (sample spread, budget, back-off), and on this
kernel with real swap (root): cold pages found inside one mapping, the budget holding back a
target that uses everything, and targets it must leave alone."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import OrderedDict

import attrs
import numpy as np
import pytest

from conftest import pagemap_bits
from etmem import kernel, procfs, zram
from etmem.config import ProjectSpec
from etmem.errors import ConfigError, ProcessGone
from etmem.loader import load_text
from etmem.process import ProcessHandle
from etmem.scan import Scanner, available_sources, best_source
from etmem.scan.sources import refault
from etmem.scan.sources.refault import (BACKOFF_BASE_S, BACKOFF_MAX_LEVEL, MIN_SAMPLE, Backoff, TargetMemory,
                                        next_sample_size, stratified_sample)
from etmem.workload import PAGE, Workload


# --- pure parts ----------------------------------------------------------------------------

def test_stratified_sample_takes_one_page_from_each_equal_stratum_of_the_address_space():
    pages = np.arange(0x10000000, 0x10000000 + 10_000 * PAGE, PAGE, dtype=np.uint64)
    rng = np.random.default_rng(1)
    sample = stratified_sample(pages, 100, rng)
    assert len(sample) == 100 and (np.diff(sample) > 0).all()
    stratum = ((sample - pages[0]) // np.uint64(PAGE)) // np.uint64(100)
    np.testing.assert_array_equal(stratum, np.arange(100))
    # different draws pick different pages within the strata
    assert not np.array_equal(sample, stratified_sample(pages, 100, rng))
    # uneven strata: 7 pages into 3 strata of 2, 2 and 3 pages
    few = np.arange(7, dtype=np.uint64) * np.uint64(PAGE)
    for _ in range(20):
        got = stratified_sample(few, 3, rng) // np.uint64(PAGE)
        assert got[0] in (0, 1) and got[1] in (2, 3) and got[2] in (4, 5, 6)


def test_a_sample_larger_than_the_pages_takes_them_all():
    pages = np.arange(5, dtype=np.uint64) * np.uint64(PAGE)
    np.testing.assert_array_equal(stratified_sample(pages, 64, np.random.default_rng()), pages)


def test_sample_size_doubles_below_half_the_budget_and_follows_it_in_proportion_above():
    assert next_sample_size(1000, came_back=10, allowed=100, ceiling=10**6) == 2000
    assert next_sample_size(1000, came_back=0, allowed=100, ceiling=10**6) == 2000
    assert next_sample_size(1000, came_back=80, allowed=100, ceiling=10**6) == 1250    # N *= allowed / came_back
    assert next_sample_size(1000, came_back=400, allowed=100, ceiling=10**6) == 250
    assert next_sample_size(1000, came_back=1000, allowed=0, ceiling=10**6) == MIN_SAMPLE
    assert next_sample_size(1000, came_back=0, allowed=100, ceiling=1500) == 1500       # at most the resident pages


def test_budget_first_sample_then_tokens_pause_an_overspent_target_until_time_pays_it_back():
    mem = TargetMemory(budget_percent=5.0)
    resident = 100_000
    assert mem.settle(0.0, resident, late=0) == (0.0, 0)
    assert mem.sample_size == resident // 256 and mem.tokens == 0
    mem.sampled_last, mem.pending_came_back = True, 10   # 10 of 390 came back
    allowed, came = mem.settle(6.0, resident, late=2)    # 5% of 100000 per minute, for 6 s: 500
    assert (allowed, came) == (500.0, 12) and mem.sample_size == 2 * (resident // 256)
    assert mem.tokens == 500 - 12
    mem.sampled_last, mem.pending_came_back = True, 5000   # the target touched everything
    allowed, came = mem.settle(12.0, resident, late=0)
    assert mem.sample_size == int(780 * 500 / 5000) and mem.tokens < 0
    # no sample while overspent: the size stays, the tokens come back with time, banked up
    # to 15 s of allowance (1250 pages)
    size = mem.sample_size
    mem.settle(60.0, resident, late=0)
    assert mem.sample_size == size and mem.tokens < 0
    mem.settle(600.0, resident, late=0)
    assert mem.tokens == 1250
    # a one-off burst (a swapoff brings a whole device back) runs up at most a minute's debt
    mem.sampled_last, mem.pending_came_back = True, 100_000
    mem.settle(606.0, resident, late=0)
    assert mem.tokens == -5000
    mem.settle(666.0, resident, late=0)
    assert mem.tokens == 0


def test_backoff_grows_twofold_per_return_up_to_its_cap_and_forgets_pages_that_stay_out():
    b = Backoff()
    a = np.array([3 * PAGE, 1 * PAGE], dtype=np.uint64)
    b.came_back(a, now=0.0)
    assert list(b.level) == [1, 1] and list(b.until) == [BACKOFF_BASE_S] * 2
    probe = np.array([1 * PAGE, 2 * PAGE, 3 * PAGE], dtype=np.uint64)
    assert list(b.blocked(probe, now=BACKOFF_BASE_S - 1)) == [True, False, True]
    assert not b.blocked(probe, now=BACKOFF_BASE_S).any()
    b.came_back(a[:1], now=1000.0)
    assert list(b.level) == [1, 2] and b.until[1] == 1000.0 + 2 * BACKOFF_BASE_S
    for t in range(20):
        b.came_back(a[:1], now=2000.0 + t)
    assert b.level[1] == BACKOFF_MAX_LEVEL and b.until[1] == 2019.0 + BACKOFF_BASE_S * 2 ** (BACKOFF_MAX_LEVEL - 1)
    b.forget(np.array([1 * PAGE, 9 * PAGE], dtype=np.uint64))
    assert list(b.addr) == [3 * PAGE]


def test_memory_of_exited_targets_is_dropped_on_the_next_scan_of_anything_and_bounded(monkeypatch):
    monkeypatch.setattr(refault, "_STORE", OrderedDict())
    child = subprocess.Popen(["sleep", "30"])
    exited = (child.pid, procfs.start_time(child.pid))
    init = (1, procfs.start_time(1))
    refault.memory_for(exited, 5.0)
    child.kill()
    child.wait()
    refault.memory_for(init, 5.0)
    assert list(refault._STORE) == [init]
    monkeypatch.setattr(refault, "MAX_TARGETS", 2)
    monkeypatch.setattr(refault, "_alive", lambda ident: True)
    refault.memory_for((2, 1), 5.0)
    refault.memory_for(init, 5.0)          # scanned again: now the most recent
    refault.memory_for((3, 1), 5.0)
    assert list(refault._STORE) == [init, (3, 1)]


def test_pmd_huge_pages_are_aligned_runs_of_512_present_pages_with_consecutive_frames():
    base = 0x7f0000000000 - 3 * PAGE                  # 3 pages before a 2 MiB boundary
    n = 3 + 3 * 512
    present = np.ones(n, dtype=bool)
    pfn = np.arange(n, dtype=np.uint64) * np.uint64(7) + np.uint64(1)   # scattered frames
    pfn[3:515] = np.arange(1024, 1536, dtype=np.uint64)                  # block 0: one huge page
    pfn[515:1027] = np.arange(2049, 2561, dtype=np.uint64)               # block 1: frames not 2 MiB-aligned
    pfn[1027:] = np.arange(4096, 4608, dtype=np.uint64)                  # block 2: huge, but one page absent
    present[1500] = False
    huge = refault.pmd_huge_pages(base, present, pfn)
    assert huge[3:515].all() and not huge[:3].any() and not huge[515:].any()


def test_gather_reads_the_entries_asked_for_in_few_reads(tmp_path):
    table = np.arange(300_000, dtype=np.uint64) * np.uint64(3)
    path = tmp_path / "table"
    table.tofile(path)
    reads = []

    def opener(p, mode):
        f = open(p, mode, buffering=0)
        real = f.read
        f.read = lambda n: reads.append(n) or real(n)
        return f
    rng = np.random.default_rng(5)
    dense = np.sort(rng.choice(300_000, 50_000, replace=False))
    np.testing.assert_array_equal(refault._gather(str(path), dense, opener), table[dense])
    assert len(reads) <= 300_000 // (1 << 16) + 1, "a dense set is read in runs of 65536 entries"
    reads.clear()
    sparse = np.array([7, 100_000, 299_999])
    np.testing.assert_array_equal(refault._gather(str(path), sparse, opener), table[sparse])
    assert reads == [512 * 8] * 3


def test_the_default_budget_is_the_config_default():
    assert attrs.fields(ProjectSpec).refault_budget.default == refault.DEFAULT_BUDGET_PERCENT


@pytest.mark.parametrize("value,parsed", [("5", 5.0), ("0.5", 0.5), ("2%", 2.0), ("0.01", 0.01), ("100", 100.0)])
def test_refault_budget_takes_a_percentage(value, parsed):
    text = f"[project]\nname=p\nloop=2\ninterval=1\nsleep=1\nscanner=refault\nrefault_budget={value}\n"
    assert load_text(text, "t.conf").projects[0].refault_budget == parsed


@pytest.mark.parametrize("value", ["0", "0.001", "101", "-1", "x", "1e3", "nan", ""])
def test_a_refault_budget_out_of_range_names_file_line_key_and_range(value):
    text = f"[project]\nname=p\nloop=2\ninterval=1\nsleep=1\nrefault_budget={value}\n"
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.conf")
    assert str(info.value) == (f"t.conf:6: [project] refault_budget={value}: "
                               "must be a percentage from 0.01 to 100 (e.g. 5 or 0.5)")


# --- on the real kernel, with real swap ------------------------------------------------------

@pytest.fixture(scope="module")
def swap():
    """Swap for the pages the source samples out: a zram device of our own when none is active."""
    if kernel.swap_active():
        yield None
        return
    reason = zram.missing_reason()
    if reason:
        pytest.skip(f"no swap is active and none can be made: {reason}")
    device = zram.ZramSwap(1 << 30).create()
    yield device
    device.remove()


def test_refault_finds_scattered_cold_pages_inside_one_mapping(need_root, swap):
    with Workload(total_mb=64, hot_mb=8, layout="scattered", pause=0.005) as w, ProcessHandle.open(w.pid) as handle:
        scanner = Scanner(handle, source="refault", ranges=[w.region], refault_budget=100)
        seen_cold = []
        for _ in range(6):     # passes 1 s apart: a busy machine may hold the toucher back that long
            refs = scanner.scan(loop=2, sleep=1.0)
            assert refs.error is None and refs.passes == 2
            s = refs.sampling
            assert s.sampled == s.came_back + s.stayed_out and s.sampled > 0
            cold = refs.cold(1)
            assert int(cold.sum()) == s.stayed_out
            seen_cold.append(refs.addr[cold])
            # every entry but the stayed-out sample is present, and counts "used" (loop x 3)
            assert set(np.unique(refs.count).tolist()) <= {0, 6}
        p = w.placement()
        called_cold = np.concatenate(seen_cold)
        truly_cold = np.isin(called_cold, w.cold_pages)
        assert truly_cold.mean() >= 0.95, "pages called cold were cold"
        assert p["recall"] >= 0.2, p
        assert p["precision"] >= 0.95, p
        assert p["hot_resident"] >= 0.95, p
        assert refs.sampling.sample_size > MIN_SAMPLE, "the sample grew while few pages came back"
        assert w.verify()


def test_the_budget_holds_back_a_target_that_uses_everything(need_root, swap):
    with Workload(total_mb=48, hot_mb=16, pause=0.005) as w, ProcessHandle.open(w.pid) as handle:
        cold = Scanner(handle, source="refault", ranges=[w.cold], refault_budget=20)
        sizes = []
        for _ in range(4):      # nothing comes back from the cold VMA: the sample grows
            sizes.append(cold.scan(loop=1, sleep=0.3).sampling.sample_size)
        assert sizes == sorted(sizes) and sizes[-1] >= 4 * sizes[0]
        hot = Scanner(handle, source="refault", ranges=[w.hot], refault_budget=20)
        first = hot.scan(loop=1, sleep=0.3).sampling       # every sampled page of the hot VMA is used
        assert first.sampled > 0 and first.came_back >= 0.95 * first.sampled
        after = hot.scan(loop=1, sleep=0.3).sampling
        assert after.sample_size < first.sample_size, "the sample shrank after the budget was overspent"
        assert after.sampled == 0 and "refault budget spent" in after.note
        assert w.verify()


def test_without_swap_the_source_says_so_and_pages_nothing_out(need_root, swap, monkeypatch, workload_factory):
    with open("/proc/swaps") as f:
        assert len(f.read().splitlines()) > 1 and refault.RefaultSource.live_problem() is None
    w = workload_factory(total_mb=16, hot_mb=2)
    scanner = Scanner(w.pid, source="refault", ranges=[w.cold])   # chosen while swap is on
    monkeypatch.setattr(kernel, "swap_active", lambda: False)     # then it goes, as on this host at boot
    reason = available_sources()["refault"]
    assert reason == f"{kernel.missing('swap')}; the refault source pages samples out to it"
    assert best_source(available_sources()) != "refault"
    refs = scanner.scan(loop=1, sleep=0.1)                           # begin() asks again
    assert refs.passes == 0 and refs.error == f"scanner source 'refault' cannot run: {kernel.missing('swap')}"
    present, _ = pagemap_bits(w.pid, *w.cold)
    assert present.all()


_HOLDER = r"""
import ctypes, json, mmap, os, sys
kind = sys.argv[1]
size = (16 if kind == "thp" else 8) << 20
flags = mmap.MAP_ANONYMOUS | (mmap.MAP_SHARED if kind == "shared" else mmap.MAP_PRIVATE)
m = mmap.mmap(-1, size, flags=flags)
if kind == "thp":
    m.madvise(14)                           # MADV_HUGEPAGE: 2 MiB pages where aligned
m.write(b"\x5a" * size)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
libc = ctypes.CDLL(None, use_errno=True)
if kind == "mlocked" and libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) != 0:
    sys.exit("mlock failed: errno %d" % ctypes.get_errno())
if kind == "forked" and os.fork() == 0:     # the child shares every private page copy-on-write
    sys.stdin.read()
    os._exit(0)
print(json.dumps([addr, addr + size]), flush=True)
sys.stdin.read()
assert m[:] == b"\x5a" * size, "the memory changed"
"""


@pytest.fixture
def holder():
    started = []

    def start(kind: str):
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, kind], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        return proc, tuple(json.loads(proc.stdout.readline()))

    yield start
    for proc in started:
        _, _ = proc.communicate("", timeout=10)
        assert proc.returncode == 0, "the holder's memory changed or it failed"


@pytest.mark.parametrize("kind,anon_only,says", [
    ("mlocked", True, "are mlocked"),
    ("shared", False, "are shared"),
    ("forked", True, "are shared with another process or a file (not exclusive to it)"),
])
def test_memory_it_must_not_page_out_is_left_alone_with_a_clear_message(need_root, swap, holder, kind, anon_only, says):
    proc, region = holder(kind)
    refs = Scanner(proc.pid, source="refault", anon_only=anon_only, ranges=[region]).scan(loop=1, sleep=0.1)
    assert refs.passes == 0 and refs.sampling is None
    assert refs.error == (f"process {proc.pid} has no memory the refault source may page out: its 8192 KiB "
                          f"resident in the scanned VMAs {says}; nothing was paged out")
    present, swapped = pagemap_bits(proc.pid, *region)
    assert present.all() and not swapped.any()


def _anon_huge_kb(pid: int, start: int) -> int:
    """AnonHugePages of the VMA holding start, from /proc/PID/smaps."""
    kb, inside = 0, False
    for line in open(f"/proc/{pid}/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= start < hi
        elif inside and head == "AnonHugePages:":
            kb = int(line.split()[1])
    return kb


def test_huge_pages_are_not_sampled_so_none_is_split(need_root, swap, holder):
    proc, region = holder("thp")
    before = _anon_huge_kb(proc.pid, region[0])
    if not before:
        pytest.skip("the kernel gave the MADV_HUGEPAGE region no transparent huge page "
                    f"(THP mode: {open('/sys/kernel/mm/transparent_hugepage/enabled').read().strip()})")
    refs = Scanner(proc.pid, source="refault", ranges=[region], refault_budget=100).scan(loop=1, sleep=0.1)
    assert refs.error is None
    assert refs.sampling.huge == before * 1024 // PAGE
    assert _anon_huge_kb(proc.pid, region[0]) == before, "no huge page was split"
    _, swapped = pagemap_bits(proc.pid, *region)
    assert int(swapped.sum()) <= (region[1] - region[0]) // PAGE - refs.sampling.huge


def test_shared_memory_is_never_sampled_in_a_whole_process_scan(need_root, swap, holder):
    proc, region = holder("shared")
    for _ in range(3):
        refs = Scanner(proc.pid, source="refault", anon_only=False, refault_budget=100).scan(loop=1, sleep=0.1)
        assert refs.error is None and refs.sampling.sampled > 0    # its heap and stack are sampled
    present, _ = pagemap_bits(proc.pid, *region)
    assert present.all()


def test_a_target_exiting_mid_sample_ends_the_scan_with_a_message(need_root, swap, workload_factory):
    w = workload_factory(total_mb=16, hot_mb=2)
    killer = threading.Timer(0.4, lambda: (w.proc.kill(), w.proc.wait()))
    killer.start()
    refs = Scanner(w.pid, source="refault", ranges=[w.cold]).scan(loop=3, sleep=0.3)
    killer.join()
    assert refs.passes < 3 and "exited" in refs.error


def test_a_target_exiting_while_its_sample_is_paged_out_ends_the_scan_with_a_message(need_root, swap, monkeypatch,
                                                                                  workload_factory):
    w = workload_factory(total_mb=16, hot_mb=2)

    def exits(handle, *args, **kwargs):
        w.proc.kill()
        w.proc.wait()
        raise ProcessGone(f"process {handle.pid} exited during swap-out")
    monkeypatch.setattr(refault, "swap_out", exits)
    refs = Scanner(w.pid, source="refault", ranges=[w.cold]).scan(loop=2, sleep=0.1)
    assert refs.passes == 0 and refs.error == f"process {w.pid} exited while its sample was paged out"


def test_auto_picks_refault_where_no_per_page_source_is_usable_and_swap_is_on(need_root, swap):
    avail = available_sources()
    assert avail["refault"] is None
    per_page = [name for name in ("idle_pages", "page_idle", "damon") if avail.get(name) is None]
    assert best_source(avail) == (per_page[0] if per_page else "refault")


def test_etmem_kernel_shows_the_refault_source_and_what_autos_pick_sees(need_root, swap):
    text = subprocess.run(["etmem", "kernel"], capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(line for line in text.splitlines() if line.split()[:1] == ["refault"])
    assert line.split()[1] == "yes"
    if best_source(available_sources()) == "refault":
        assert "scanner sources (auto picks refault):" in text
        assert "auto's pick, refault, sees each page, by paging a sample out to swap" in text
