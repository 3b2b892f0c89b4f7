"""slide: swap out the pages of a process that were accessed fewer than T times a round.

Each round (every `interval` s, see docs/slide.md) a task resolves its targets
again (a pid or every process of a name, with their whole descendant tree),
scans each of them `loop` times `sleep` s apart, takes the pages whose
access count is below T, and swaps them out through the pidfd. Gates and
limits: the project's `sysmem_threshold`, the task's `swap_threshold` and
`dram_percent`, and our refault guard, which halves the next round's swap-out
when the pages swapped last round come straight back.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import attrs
import numpy as np

from .. import procfs
from ..actions import swap_out, set_swapcache_watermarks
from ..config import Int, Size, key
from ..errors import EtmemError, ProcessGone
from ..hookspecs import hookimpl
from ..process import ProcessHandle, resolve_targets
from ..scan import CLAIMS, PAGE, Scanner, present_pages
from ..stats import CallCounters
from ..strategy import Strategy
from .keys import pmu_key

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


@attrs.define
class TargetRound:
    """What one round did to one target process."""

    pid: int
    scanned: int = 0      # 4 KiB pages seen resident by the scan
    cold: int = 0         # of those, pages with count < T
    chosen: int = 0       # cold pages chosen for swap-out after dram_percent and the refault guard
    swapped: int = 0      # pages the kernel accepted for swap-out
    refaulted: int = 0    # pages swapped out last round that are resident again
    source: str | None = None
    skipped: str | None = None
    error: str | None = None


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
        return []

    def add_task(self, task):
        task.stats.calls = CallCounters()
        task.state.update(swapped={}, budget={})

    # -- one round --------------------------------------------------------------------
    def run_round(self, task, stop):
        project = task.project.spec
        stats = task.stats
        gate = self._system_gate(project)
        if gate:
            stats.extra["skipped"] = gate
            log.info("task %s: %s", task.name, gate)
            return
        targets = resolve_targets(task.type, task.value)
        if not targets:
            raise EtmemError(f"no process named {task.value} is running")
        try:
            workers = max(1, min(task.max_threads, len(targets)))
            if workers == 1:
                rounds = [self._target_round(task, h, stop) for h in targets]
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"slide-{task.name}") as pool:
                    rounds = list(pool.map(lambda h: self._target_round(task, h, stop), targets))
        finally:
            for handle in targets:
                handle.close()
        self._forget_exited(task, targets)
        self._account(task, rounds)

    @staticmethod
    def _system_gate(project) -> str | None:
        if project.sysmem_threshold is None:
            return None
        info = procfs.meminfo()
        free = 100.0 * info.get("MemFree", 0) / max(1, info.get("MemTotal", 1))
        if free >= project.sysmem_threshold:
            return f"free memory is {free:.0f}% of total, not below sysmem_threshold={project.sysmem_threshold}%: nothing to do"
        return None

    def _target_round(self, task, handle: ProcessHandle, stop: threading.Event) -> TargetRound:
        out = TargetRound(handle.pid)
        claim = CLAIMS.claim(handle)
        if claim is None:
            out.skipped = f"process {handle.pid} is being scanned by another task"
            return out
        try:
            self._scan_and_swap(task, handle, stop, out)
        except ProcessGone as exc:
            out.error = str(exc)
        except EtmemError as exc:
            out.error = str(exc)
        finally:
            CLAIMS.release(claim)
        return out

    def _scan_and_swap(self, task, handle: ProcessHandle, stop: threading.Event, out: TargetRound) -> None:
        project = task.project.spec
        keys = task.keys
        ident = (handle.pid, handle.start_time)
        status = procfs.status(handle.pid)
        rss = _kb(status.get("VmRSS")) << 10
        swapped_bytes = _kb(status.get("VmSwap")) << 10
        if keys.swap_threshold is not None and rss <= keys.swap_threshold:
            out.skipped = f"process {handle.pid} has {rss >> 20} MiB resident, not above swap_threshold"
            return

        budget = self._refault_guard(task, handle, ident, out)
        scanner = Scanner(handle, source=project.scanner, anon_only=True, swap_flag=task.swap_flag, opener=self.opener)
        refs = scanner.scan(loop=project.loop, sleep=project.sleep, stop=stop)
        out.source = refs.source
        if refs.error:
            out.error = refs.error
        if refs.passes < project.loop or stop.is_set():
            return  # an incomplete round must not call everything cold
        out.scanned = refs.total_bytes() // PAGE
        cold = refs.cold(keys.T)
        addr, size, count = refs.addr[cold], refs.size[cold], refs.count[cold]
        out.cold = int(size.sum()) // PAGE

        # Coldest first, then by address, so limits keep the coldest pages.
        order = np.lexsort((addr, count))
        addr, size = addr[order], size[order]
        limit = None
        if keys.dram_percent is not None:
            keep = (rss + swapped_bytes) * keys.dram_percent // 100
            limit = max(0, rss - keep)
        if budget is not None:
            limit = budget * PAGE if limit is None else min(limit, budget * PAGE)
        if limit is not None:
            take = int(np.searchsorted(np.cumsum(size), limit, side="left")) + 1
            addr, size = addr[:take], size[:take]
            if limit == 0:
                addr, size = addr[:0], size[:0]
        out.chosen = int(size.sum()) // PAGE
        if not len(addr):
            task.state["swapped"].pop(ident, None)
            return
        result = swap_out(handle, addr, size, counters=task.stats.calls)
        out.swapped = result.done
        if result.error:
            out.error = result.error
        task.state["swapped"][ident] = (addr, size) if result.done else None
        if project.swapcache_high_wmark is not None:
            set_swapcache_watermarks(handle, project.swapcache_low_wmark, project.swapcache_high_wmark)

    def _refault_guard(self, task, handle: ProcessHandle, ident, out: TargetRound) -> int | None:
        """Pages this round may swap at most (None: no cap), from last round's refaults."""
        last = task.state["swapped"].get(ident)
        budgets = task.state["budget"]
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
    def _forget_exited(task, targets) -> None:
        alive = {(h.pid, h.start_time) for h in targets}
        for table in (task.state["swapped"], task.state["budget"]):
            for ident in [i for i in table if i not in alive]:
                del table[ident]

    @staticmethod
    def _account(task, rounds: list[TargetRound]) -> None:
        stats = task.stats
        stats.targets = len(rounds)
        stats.pages_scanned += sum(r.scanned for r in rounds)
        stats.cold_pages += sum(r.cold for r in rounds)
        stats.pages_swapped += sum(r.swapped for r in rounds)
        stats.refaults += sum(r.refaulted for r in rounds)
        sources = sorted({r.source for r in rounds if r.source})
        if sources:
            stats.source = ",".join(sources)
        stats.extra["last_round"] = [attrs.asdict(r) for r in rounds]
        stats.extra.pop("skipped", None)
        errors = [f"process {r.pid}: {r.error}" for r in rounds if r.error]
        if errors:
            raise EtmemError("; ".join(errors))


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


@hookimpl
def etmem_engine_types():
    return [Slide]
