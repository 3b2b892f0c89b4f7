"""slide: swap out the pages of a process that were accessed fewer than T times a round.

Each round (every `interval` s, see docs/slide.md) a task resolves its targets
again (a pid or every process of a name, with their whole descendant tree),
scans each of them `loop` times `sleep` s apart, takes the pages whose
access count is below T, and swaps them out through the pidfd. Gates and
limits: the project's `sysmem_threshold`, the task's `swap_threshold` and
`dram_percent`, and our refault guard, which halves the next round's swap-out
when the pages swapped last round come straight back. With `dry_run=yes` a task
scans read-only and reports the pages it would swap out (`chosen`), swapping nothing.
"""
from __future__ import annotations

import logging
import threading

import attrs
import numpy as np

from .. import procfs
from ..actions import swap_out, set_swapcache_watermarks
from ..config import Int, Size, key
from ..errors import ProcessGone
from ..history import summarize_scan
from ..hookspecs import hookimpl
from ..process import ProcessHandle
from ..scan import PAGE, Scanner, present_pages
from ..stats import RoundResult, TargetResult
from ..strategy import Strategy, each_target
from ..units import format_size
from .keys import dry_run_key, pmu_key

log = logging.getLogger("etmem.slide")

# The refault guard (docs/slide.md): when more than REFAULT_HIGH of the pages swapped out
# last round are resident again at the start of this round, this round swaps at most half
# as many pages as last round did; below REFAULT_LOW the cap doubles until it is lifted.
REFAULT_HIGH = 0.25
REFAULT_LOW = 0.05
MIN_BUDGET_PAGES = 256


@attrs.frozen
class SlideTaskKeys:
    T: int = key(Int(0), help="pages accessed fewer than T times over a round's loop passes are cold; 0..loop*3")
    swap_threshold: int = key(Size(), None, help="act only while the process's resident memory is above this size, e.g. 10g")
    dram_percent: int = key(Int(1, 100), None, help="swap the coldest pages until resident memory is at most this percent of RSS+swap")
    sample_period: str = pmu_key()
    vma_updata_rate: str = pmu_key()
    cpu_set_size: str = pmu_key()
    cooling_interval: str = pmu_key()
    dry_run: bool = dry_run_key()


@attrs.define
class SlideState:
    """What a slide task remembers between rounds, per target (pid, start time)."""

    swapped: dict = attrs.field(factory=dict)   # pages swapped out last round: (addr, size)
    budget: dict = attrs.field(factory=dict)    # swap-out cap in pages set by the refault guard


def choose_cold_pages(addr: np.ndarray, size: np.ndarray, count: np.ndarray, T: int,
                      limit_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """slide's rule: the pages with count < T, coldest first, then by address, at most limit_bytes of them.

    The pure core of a round: (addr, size) of the pages to swap out. A limit keeps the
    coldest pages; the page that crosses the limit is taken (it may be a huge page).
    """
    cold = count < T
    addr, size, count = addr[cold], size[cold], count[cold]
    order = np.lexsort((addr, count))
    addr, size = addr[order], size[order]
    if limit_bytes is not None:
        if limit_bytes <= 0:
            return addr[:0], size[:0]
        take = int(np.searchsorted(np.cumsum(size), limit_bytes, side="left")) + 1
        addr, size = addr[:take], size[:take]
    return addr, size


class Slide(Strategy):
    name = "slide"
    task_keys = SlideTaskKeys
    description = "swap out pages accessed fewer than T times per round"

    # Where kernel files are opened; tests route idle_pages / page_idle to emulations.
    opener = None

    @classmethod
    def check_task(cls, keys, extra, project):
        if project is None:
            return []
        if project.scan_type != "page":
            return [("engine", f"slide needs a project with scan_type=page (project {project.name} has {project.scan_type})")]
        if project.loop is not None and keys.T > project.loop * 3:
            return [("T", f"must be an integer from 0 to {project.loop * 3} (loop x 3, with loop={project.loop} in project {project.name})")]
        if keys.dry_run and project.scanner == "refault":
            return [("dry_run", f"a dry run cannot use scanner=refault (project {project.name}): the refault "
                                "source pages samples out to swap itself, so the target would change; choose a "
                                "source that only reads (auto passes refault over in a dry run)")]
        if keys.T == 0 and project.scanner == "refault":
            return [("T", f"must be at least 1 with scanner=refault (project {project.name}): the refault source pages "
                          "its samples out itself, so T=0 (swap nothing) would still swap them; use T=1")]
        return []

    def add_task(self, task):
        task.state = SlideState()

    # -- one round --------------------------------------------------------------------
    def run_round(self, task, stop):
        gate = self._system_gate(task.project)
        if gate:
            log.info("task %s: %s", task.name, gate)
            return RoundResult(skipped=gate)
        alive: set = set()

        def act(handle: ProcessHandle, out: TargetResult) -> None:
            alive.add((handle.pid, handle.start_time))
            try:
                self._scan_and_swap(task, handle, stop, out)
            except ProcessGone as exc:
                out.error = str(exc)

        result = each_target(task, stop, act)
        self._forget_exited(task.state, alive)
        return result

    @staticmethod
    def _system_gate(project) -> str | None:
        if project.sysmem_threshold is None:
            return None
        info = procfs.meminfo()
        free = 100.0 * info.get("MemFree", 0) / max(1, info.get("MemTotal", 1))
        if free >= project.sysmem_threshold:
            return f"free memory is {free:.0f}% of total, not below sysmem_threshold={project.sysmem_threshold}%: nothing to do"
        return None

    def _scan_and_swap(self, task, handle: ProcessHandle, stop: threading.Event, out: TargetResult) -> None:
        project = task.project
        keys = task.keys
        state: SlideState = task.state
        ident = (handle.pid, handle.start_time)
        status = procfs.status(handle.pid)
        rss = _kb(status.get("VmRSS")) << 10
        swapped_bytes = _kb(status.get("VmSwap")) << 10
        out.resident_bytes, out.swapped_bytes = rss, swapped_bytes
        if keys.swap_threshold is not None and rss <= keys.swap_threshold:
            out.skipped = (f"process {handle.pid} has {format_size(rss)} resident, not above "
                           f"swap_threshold={format_size(keys.swap_threshold)}")
            return

        budget = self._refault_guard(task, handle, ident, out)
        scanner = Scanner(handle, source=project.scanner, anon_only=True, swap_flag=task.swap_flag, opener=self.opener,
                          refault_budget=project.refault_budget, counters=task.stats.calls, read_only=keys.dry_run)
        refs = scanner.scan(loop=project.loop, sleep=project.sleep, stop=stop)
        out.source = refs.source
        if refs.sampling is not None:
            out.detail["sampling"] = attrs.asdict(refs.sampling)
        if refs.error:
            out.error = refs.error
        if refs.passes < project.loop or stop.is_set():
            return  # an incomplete round must not call everything cold
        out.scan = summarize_scan(refs)
        out.scanned = refs.total_bytes() // PAGE
        out.cold = refs.total_bytes(refs.cold(keys.T)) // PAGE
        if refs.sampling is not None and not keys.dry_run:
            # refault: the cold pages are its samples that stayed out; the source paged them
            # out itself, so slide has nothing left to swap and counts what left memory
            self._account_samples(task, handle, ident, refs, out)
            return
        limit = None
        if keys.dram_percent is not None:
            keep = (rss + swapped_bytes) * keys.dram_percent // 100
            limit = max(0, rss - keep)
        if budget is not None:
            limit = budget * PAGE if limit is None else min(limit, budget * PAGE)
        addr, size = choose_cold_pages(refs.addr, refs.size, refs.count, keys.T, limit)
        out.chosen = int(size.sum()) // PAGE
        if keys.dry_run:
            out.dry_run = True
            log.info("task %s: dry run: would swap out %d pages (%d KiB) of process %d", task.name, out.chosen,
                     out.chosen * PAGE >> 10, handle.pid)
            return
        if not len(addr):
            state.swapped.pop(ident, None)
            return
        result = swap_out(handle, addr, size, counters=task.stats.calls, stop=stop)
        out.swapped = result.done
        if result.error:
            out.error = result.error
        # only the pages that left: those the kernel kept (swap full, shared) are no refaults
        state.swapped[ident] = (result.pages_out, np.full(result.done, PAGE, dtype=np.uint64)) if result.done else None
        after = procfs.status(handle.pid)
        out.resident_bytes, out.swapped_bytes = _kb(after.get("VmRSS")) << 10, _kb(after.get("VmSwap")) << 10
        if project.swapcache_high_wmark is not None:
            set_swapcache_watermarks(handle, project.swapcache_low_wmark, project.swapcache_high_wmark)

    @staticmethod
    def _account_samples(task, handle: ProcessHandle, ident, refs, out: TargetResult) -> None:
        """A refault round: the stayed-out samples (count 0) are this round's swap-out."""
        stayed = refs.count == 0
        out.scanned -= refs.total_bytes(stayed) // PAGE   # not resident: out since the sample
        out.chosen = out.swapped = refs.total_bytes(stayed) // PAGE
        task.state.swapped[ident] = (refs.addr[stayed], refs.size[stayed]) if out.swapped else None
        after = procfs.status(handle.pid)
        out.resident_bytes, out.swapped_bytes = _kb(after.get("VmRSS")) << 10, _kb(after.get("VmSwap")) << 10
        project = task.project
        if project.swapcache_high_wmark is not None:
            set_swapcache_watermarks(handle, project.swapcache_low_wmark, project.swapcache_high_wmark)

    def _refault_guard(self, task, handle: ProcessHandle, ident, out: TargetResult) -> int | None:
        """Pages this round may swap at most (None: no cap), from last round's refaults."""
        last = task.state.swapped.get(ident)
        budgets = task.state.budget
        if not last:
            return budgets.get(ident)
        addr, size = last
        out.refaulted = present_pages(handle.pid, addr, size)
        swapped = int(size.sum()) // PAGE
        ratio = out.refaulted / max(1, swapped)
        budget = budgets.get(ident)
        if ratio > REFAULT_HIGH:
            budget = max(MIN_BUDGET_PAGES, min(budget or swapped, swapped) // 2)
            budgets[ident] = budget
            log.warning("task %s: %d of %d pages swapped out of process %d last round came back (%.0f%%); "
                        "this round swaps at most %d pages", task.name, out.refaulted, swapped, handle.pid, 100 * ratio, budget)
        elif budget is not None and ratio < REFAULT_LOW:
            budget *= 2
            if budget >= swapped * 4:
                budgets.pop(ident, None)
                budget = None
                log.info("task %s: refaults of process %d are low again; swap-out cap lifted", task.name, handle.pid)
            else:
                budgets[ident] = budget
        return budget

    @staticmethod
    def _forget_exited(state: SlideState, alive: set) -> None:
        for table in (state.swapped, state.budget):
            for ident in [i for i in table if i not in alive]:
                del table[ident]


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


@hookimpl
def etmem_engine_types():
    return [Slide]
