"""The slide engine through its real code: real workloads, real zram swap-out, real pagemap checks.

Where this kernel lacks a per-page access source (idle_pages, page_idle), the access
information comes from tests/kernel_emulation.py in the exact kernel format, routed
through the engine's `opener`; everything else (targets, swap-out, pagemap) is real.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

import etmem
from conftest import pagemap_bits
from etmem.engines import slide as slide_module
from etmem.scan import CLAIMS
from kernel_emulation import ACCESSED, DIRTY, IDLE, Emulator, PageTable

MiB = 1 << 20
PAGE = 4096


class Toucher:
    """Keeps emulated pages accessed, as a running workload would."""

    def __init__(self, table: PageTable, ranges, period: float = 0.02, dirty: bool = False):
        self.table, self.ranges, self.period, self.dirty = table, ranges, period, dirty
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            for start, end in self.ranges:
                self.table.touch(start, end, dirty=self.dirty)
            self.stop.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def slide_task(pid_or_name, scanner="idle_pages", loop=2, sleep=1, interval=1, type="pid", opener=None,
               project_keys=None, **task_keys):
    project = etmem.Project(name="p", loop=loop, interval=interval, sleep=sleep, scanner=scanner, **(project_keys or {}))
    engine = project.add_engine("slide")
    engine.strategy.opener = opener
    task_keys.setdefault("T", 1)
    task = engine.add_task("t", type, pid_or_name, **task_keys)
    manager = etmem.Manager()
    manager.add(project)
    return manager, task


def emulate(workload, huge=False):
    """An emulated page table over the workload's two regions: cold all idle, hot accessed."""
    table = PageTable()
    table.add_vma(*workload.cold, state=IDLE, huge=huge)
    table.add_vma(*workload.hot, state=ACCESSED)
    return table, Emulator(workload.pid, table, idle_pages=True, page_idle=True)


def swapped_fraction(pid, start, end):
    present, swapped = pagemap_bits(pid, start, end)
    return swapped.mean()


@pytest.fixture
def real(need_root, zram_swap):
    """Root and our own zram swap device."""
    return zram_swap


# --- end to end on this kernel, smaps source -------------------------------------------------

def test_slide_swaps_the_cold_set_and_keeps_the_hot_set_with_smaps(real, workload_factory):
    w = workload_factory(total_mb=512, hot_mb=64)
    manager, task = slide_task(w.pid, scanner="smaps", loop=2, sleep=1, interval=1, T=1)
    manager.start("p")
    try:
        deadline = time.monotonic() + 60
        while task.stats.rounds < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        manager.stop("p")
    assert task.stats.rounds >= 3 and task.stats.source == "smaps"
    present_hot, _ = pagemap_bits(w.pid, *w.hot)
    _, swapped_cold = pagemap_bits(w.pid, *w.cold)
    assert swapped_cold.mean() >= 0.90, task.stats.as_dict()
    assert present_hot.all()
    assert task.stats.pages_swapped >= swapped_cold.sum() and task.stats.calls.as_dict()["process_madvise"]["calls"] >= 1
    assert w.verify()


# --- semantics, on idle_pages streams -----------------------------------------------------------

def test_slide_swaps_pages_accessed_fewer_than_T_times_with_upstreams_weights(real, workload_factory):
    w = workload_factory(total_mb=48, hot_mb=8)
    table, emu = emulate(w)
    a_end = w.cold[0] + 16 * MiB                       # A: idle             -> count 0
    b_end = a_end + 8 * MiB                            # B: accessed always  -> count 2 (loop=2)
    table.set(b_end, w.cold[1], DIRTY)                 # C: written once     -> count 3
    manager, task = slide_task(w.pid, "idle_pages", loop=2, T=2, opener=emu.opener)
    with Toucher(table, [(a_end, b_end), w.hot]):
        task.run_round()
    assert task.stats.last_error is None and task.stats.source == "idle_pages"
    assert swapped_fraction(w.pid, w.cold[0], a_end) == 1.0
    assert swapped_fraction(w.pid, a_end, b_end) == 0.0
    assert swapped_fraction(w.pid, b_end, w.cold[1]) == 0.0
    assert swapped_fraction(w.pid, *w.hot) == 0.0
    assert task.stats.cold_pages == 16 * MiB // PAGE and task.stats.pages_swapped == 16 * MiB // PAGE
    assert w.verify()


def test_a_task_stopped_during_its_swap_out_leaves_the_rest_of_it_undone(real, workload_factory, monkeypatch):
    """The round's stop event reaches swap_out: set as the swap-out begins (as obj del or
    SIGTERM would), it leaves every chosen page in memory and the round says so."""
    w = workload_factory(total_mb=48, hot_mb=8)
    table, emu = emulate(w)
    manager, task = slide_task(w.pid, "idle_pages", loop=2, T=1, opener=emu.opener)
    stop = threading.Event()
    calls = []

    def stopped_as_it_begins(*args, **kwargs):
        stop.set()
        result = real_swap_out(*args, **kwargs)
        calls.append(result)
        return result

    real_swap_out = slide_module.swap_out
    monkeypatch.setattr(slide_module, "swap_out", stopped_as_it_begins)
    with Toucher(table, [w.hot]):
        task.run_round(stop=stop)
    assert len(calls) == 1 and calls[0].stopped and calls[0].requested == (w.cold[1] - w.cold[0]) // PAGE
    assert task.stats.pages_swapped == 0
    assert "stopped early on request: 0 of" in task.stats.last_error
    assert swapped_fraction(w.pid, *w.cold) == 0.0
    assert w.verify()


def test_slide_counts_a_write_as_three_accesses(real, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    table, emu = emulate(w)
    half = w.cold[0] + 10 * MiB
    table.set(half, w.cold[1], DIRTY)                  # B: written once       -> count 3
    manager, task = slide_task(w.pid, "idle_pages", loop=2, T=3, opener=emu.opener)
    with Toucher(table, [(w.cold[0], half)]), Toucher(table, [w.hot], dirty=True):
        task.run_round()                               # A: read every pass    -> count 2; hot: 6
    assert swapped_fraction(w.pid, w.cold[0], half) == 1.0   # 2 < T=3: cold
    assert swapped_fraction(w.pid, half, w.cold[1]) == 0.0   # 3 = T: not cold
    assert swapped_fraction(w.pid, *w.hot) == 0.0
    assert task.stats.cold_pages == 10 * MiB // PAGE


def test_huge_pages_can_be_cold(real, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    table, emu = emulate(w, huge=True)                 # the cold region reports as idle PMDs
    manager, task = slide_task(w.pid, "idle_pages", loop=2, T=1, opener=emu.opener)
    with Toucher(table, [w.hot]):
        task.run_round()
    assert any(f.reads for f in emu.files if type(f).__name__ == "IdlePagesFile")
    assert swapped_fraction(w.pid, *w.cold) == 1.0
    assert swapped_fraction(w.pid, *w.hot) == 0.0
    assert w.verify()


def test_page_idle_source_drives_slide(real, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    table, emu = emulate(w)
    emu.idle_pages = False                             # a kernel with idle page tracking only
    manager, task = slide_task(w.pid, "page_idle", loop=2, T=1, opener=emu.opener)
    with Toucher(table, [w.hot]):
        task.run_round()
    assert task.stats.source == "page_idle" and task.stats.last_error is None
    assert swapped_fraction(w.pid, *w.cold) == 1.0
    assert swapped_fraction(w.pid, *w.hot) == 0.0


def test_dram_percent_swaps_coldest_first_until_resident_share_is_reached(real, workload_factory):
    w = workload_factory(total_mb=64, hot_mb=8)
    table, emu = emulate(w)
    warm_start = w.cold[0] + 8 * MiB                  # the first 8 MiB idle, the rest accessed once
    table.set(warm_start, w.cold[1], ACCESSED)
    manager, task = slide_task(w.pid, "idle_pages", loop=2, T=3, dram_percent=80, opener=emu.opener)
    rss_before = etmem.procfs.status_kb(w.pid, "VmRSS") << 10
    with Toucher(table, [w.hot]):
        task.run_round()
    rss_after = etmem.procfs.status_kb(w.pid, "VmRSS") << 10
    swap_after = etmem.procfs.status_kb(w.pid, "VmSwap") << 10
    assert swapped_fraction(w.pid, w.cold[0], warm_start) == 1.0          # coldest (count 0) all taken
    swapped_warm = swapped_fraction(w.pid, warm_start, w.cold[1])
    assert 0 < swapped_warm < 1                                           # then warm ones, only as needed
    share = rss_after / (rss_after + swap_after)
    assert 0.78 <= share <= 0.81, (rss_before, rss_after, swap_after)
    assert swapped_fraction(w.pid, *w.hot) == 0.0


def test_sysmem_threshold_gates_the_round(real, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    table, emu = emulate(w)
    manager, task = slide_task(w.pid, "idle_pages", loop=1, T=1, opener=emu.opener, project_keys={"sysmem_threshold": 0})
    task.run_round()
    assert "not below sysmem_threshold=0%" in task.stats.skipped
    assert swapped_fraction(w.pid, *w.cold) == 0.0
    manager, task = slide_task(w.pid, "idle_pages", loop=1, T=1, opener=emu.opener, project_keys={"sysmem_threshold": 100})
    task.run_round()
    assert task.stats.skipped is None and swapped_fraction(w.pid, *w.cold) == 1.0


def test_swap_threshold_leaves_small_processes_alone(real, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    table, emu = emulate(w)
    manager, task = slide_task(w.pid, "idle_pages", loop=1, T=1, opener=emu.opener, swap_threshold="10g")
    task.run_round()
    skipped = task.stats.last_round[0].skipped
    assert skipped.startswith(f"process {w.pid} has ") and skipped.endswith(" MiB resident, not above "
                                                                            "swap_threshold=10 GiB")
    assert swapped_fraction(w.pid, *w.cold) == 0.0
    manager, task = slide_task(w.pid, "idle_pages", loop=1, T=1, opener=emu.opener, swap_threshold="1m")
    task.run_round()
    assert swapped_fraction(w.pid, *w.cold) == 1.0


def test_swap_flag_sets_the_vma_scan_flag(real, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    table, emu = emulate(w)
    manager, task = slide_task(w.pid, "idle_pages", loop=1, T=1, opener=emu.opener, swap_flag="yes")
    task.run_round()
    idle_files = [f for f in emu.files if type(f).__name__ == "IdlePagesFile" and f.reads]
    assert idle_files and all(f.vma_flags & 0x1000 for f in idle_files)


# --- the refault guard -----------------------------------------------------------------------------

def test_refault_guard_halves_the_next_round_when_swapped_pages_come_back(real, workload_factory, caplog):
    w = workload_factory(total_mb=48, hot_mb=32, pause=0.0)
    table, emu = emulate(w)
    table.set(*w.hot, state=IDLE)                     # a wrong verdict: the busy hot set looks idle
    manager, task = slide_task(w.pid, "idle_pages", loop=1, T=1, opener=emu.opener)
    task.run_round()
    first = task.stats.last_round[0]
    assert first.swapped >= 40 * MiB // PAGE       # hot set and cold set went out
    time.sleep(0.5)                                   # the workload faults its hot set back in
    table.set(*w.hot, state=IDLE)
    with caplog.at_level("WARNING", logger="etmem.slide"):
        task.run_round()
    second = task.stats.last_round[0]
    assert second.refaulted >= 30 * MiB // PAGE and task.stats.refaults == second.refaulted
    assert second.chosen <= first.chosen // 2
    assert "came back" in caplog.text and "this round swaps at most" in caplog.text
    assert w.verify()


# --- targets -----------------------------------------------------------------------------------------

TREE = textwrap.dedent("""
    import subprocess, sys, time
    depth = int(sys.argv[1])
    if depth:
        child = subprocess.Popen([sys.executable, __file__, str(depth - 1)], stdin=subprocess.DEVNULL)
    print("ready", flush=True)   # every level shares the pipe: 3 lines once the whole tree sleeps
    time.sleep(120)
""")


def test_grandchildren_are_targets_and_dead_pids_are_clear_errors(real, tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    root = subprocess.Popen([sys.executable, str(script), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert [root.stdout.readline().strip() for _ in range(3)] == ["ready"] * 3
        manager, task = slide_task(root.pid, "smaps", loop=1, T=0)
        task.run_round()
        assert task.stats.targets == 3 and task.stats.last_error is None
    finally:
        for pid in etmem.procfs.descendants(root.pid):
            subprocess.run(["kill", str(pid)])
        root.kill()
        root.wait()
    task.run_round()
    assert f"process {root.pid}" in task.stats.last_error and "exist" in task.stats.last_error


FAN = textwrap.dedent("""
    import signal, subprocess, sys, time
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(int(sys.argv[1]))]
    signal.signal(signal.SIGUSR1, lambda *a: kids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])))
    signal.signal(signal.SIGTERM, lambda *a: ([k.kill() for k in kids], sys.exit(0)))
    print("ready", flush=True)
    while True:
        time.sleep(0.1)
""")


@pytest.fixture
def fan(tmp_path):
    """A parent process with N sleeping children (SIGUSR1 adds one)."""
    script = tmp_path / "fan.py"
    script.write_text(FAN)
    started = []

    def make(n):
        proc = subprocess.Popen([sys.executable, str(script), str(n)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.terminate()
        proc.wait()


def wait_for_descendants(pid, n):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(etmem.procfs.descendants(pid)) < n:
        time.sleep(0.05)
    return len(etmem.procfs.descendants(pid))


def test_targets_are_resolved_again_every_round(real, fan):
    root = fan(1)
    manager, task = slide_task(root.pid, "smaps", loop=1, T=0)
    task.run_round()
    assert task.stats.targets == 2
    root.send_signal(__import__("signal").SIGUSR1)
    assert wait_for_descendants(root.pid, 2) == 2
    task.run_round()
    assert task.stats.targets == 3 and task.stats.last_error is None


def test_max_threads_scans_targets_of_a_task_concurrently(real, fan, monkeypatch):
    root = fan(3)
    active, peak, lock = set(), [0], threading.Lock()

    class CountingScanner(slide_module.Scanner):
        def scan(self, *args, **kwargs):
            with lock:
                active.add(self.pid)
                peak[0] = max(peak[0], len(active))
            try:
                return super().scan(*args, **kwargs)
            finally:
                with lock:
                    active.discard(self.pid)

    monkeypatch.setattr(slide_module, "Scanner", CountingScanner)
    manager, task = slide_task(root.pid, "smaps", loop=2, T=0, max_threads=4)
    task.run_round()
    assert task.stats.targets == 4 and peak[0] >= 2
    manager, task = slide_task(root.pid, "smaps", loop=2, T=0, max_threads=1)
    peak[0] = 0
    task.run_round()
    assert peak[0] == 1


def test_one_process_is_never_scanned_by_two_tasks_at_once(real, workload_factory):
    w = workload_factory(total_mb=16, hot_mb=2)
    _, first = slide_task(w.pid, "smaps", loop=2, sleep=1, T=0)
    _, second = slide_task(w.pid, "smaps", loop=1, T=0)
    runner = threading.Thread(target=first.run_round)
    runner.start()
    deadline = time.monotonic() + 10
    while w.pid not in CLAIMS.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    second.run_round()
    runner.join()
    assert "being scanned by another task" in second.stats.last_round[0].skipped
    assert first.stats.last_round[0].skipped is None
