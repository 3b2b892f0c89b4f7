"""`Scanner`: `loop` passes over one process's VMAs with one access source, summed into `PageRefs`.

It selects the VMAs, keeps one window of counts per VMA, drives the source's passes
`sleep` apart, checks the target and its VMAs after each pass, and ends cleanly with an
`error` when a pass is cut short.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from .. import _scan, procfs
from ..errors import ProcessGone, ScanError
from ..pages import PAGE
from .claims import CLAIMS
from .pagemap import default_opener
from .refs import PageRefs
from .registry import choose_source, source_class
from .sources.base import PassEnded, covering_vma

log = logging.getLogger("etmem.scan")

PMD_SIZE = 2 << 20
PUD_SIZE = 1 << 30


class _Window:
    """The counts and page kinds of one scanned VMA, one slot per 4 KiB page."""

    __slots__ = ("vma", "base", "counts", "kinds")

    def __init__(self, vma: procfs.Vma):
        self.vma = vma
        self.base = vma.start
        n = (vma.end - vma.start) // PAGE
        self.counts = np.zeros(n, dtype=np.int32)
        self.kinds = np.zeros(n, dtype=np.uint8)


class Scanner:
    """Scan one process's pages with one source.

    target: a pid, or an object with .pid (and optionally .check() raising ProcessGone).
    source: "auto" or a registered source name (registry.names()). anon_only: only private
    anonymous VMAs (heap, stack, anonymous mappings). vm_flags: smaps VmFlags every scanned
    VMA must have (e.g. ("ht",)). ranges: [(start, end), ...] address ranges the scan is
    limited to. huge: "split" counts 2 MiB / 1 GiB pages on each 4 KiB page, "keep" as one
    entry of their size (idle_pages). ign_host / as_huge / swap_flag: idle_pages scan flags
    SCAN_IGN_HOST, SCAN_AS_HUGE and VMA_SCAN_FLAG. opener(path, mode) opens every kernel
    file (tests route them to emulations). refault_budget: the refault source's budget,
    percent of the target's resident pages that may come back per minute (None: its
    default); counters: a CallCounters for the page-outs the refault source makes.
    read_only: only sources that page nothing out while scanning (see Source.pages_out).
    """

    def __init__(self, target, source: str = "auto", anon_only: bool = True, vm_flags=(), ranges=None,
                 huge: str = "split", ign_host: bool = False, opener=None, as_huge: bool = False,
                 swap_flag: bool = False, refault_budget: float | None = None, counters=None,
                 read_only: bool = False):
        if huge not in ("split", "keep"):
            raise ScanError(f"huge must be 'split' or 'keep', not {huge!r}")
        self.target = target
        self.pid = int(getattr(target, "pid", target))
        self.opener = opener or default_opener
        self.anon_only = anon_only
        self.vm_flags = tuple(vm_flags)
        self.ranges = [(int(a), int(b)) for a, b in ranges] if ranges else None
        self.huge = huge
        self.ign_host = ign_host
        self.as_huge = as_huge
        self.swap_flag = swap_flag
        self.refault_budget = refault_budget
        self.counters = counters
        # the kernel's real files: the registry's kept probes; an emulation: probed through it
        self.source_name = choose_source(source, opener, read_only)
        log.debug("scanner for pid %d uses source %s", self.pid, self.source_name)

    def _check_target(self) -> None:
        check = getattr(self.target, "check", None)
        if check is not None:
            check()
        elif not os.path.exists(f"/proc/{self.pid}"):
            raise ProcessGone(f"process {self.pid} exited")

    def select_vmas(self) -> list[procfs.Vma]:
        """The VMAs this scanner covers, clipped to ranges, in address order.

        From maps where that says enough (procfs.vmas: smaps is slow for large processes);
        their VmFlags are there when vm_flags must match, and `ht`/`lo` whenever true.
        """
        try:
            vmas = procfs.vmas(self.pid, flags=bool(self.vm_flags))
        except procfs.NoSuchProcess:
            raise PassEnded(f"process {self.pid} exited before the scan") from None
        except procfs.AccessDenied:
            raise PassEnded(f"permission denied on the memory map of process {self.pid} "
                            "(etmem needs root / CAP_SYS_ADMIN)") from None
        out = []
        for v in vmas:
            if v.is_special or v.perms[:3] == "---":
                continue  # nothing can be accessed in PROT_NONE reservations
            if self.anon_only and not (v.is_anonymous and v.is_private):
                continue
            if any(flag not in v.vmflags for flag in self.vm_flags):
                continue
            if self.ranges is None:
                out.append(v)
                continue
            for a, b in self.ranges:
                lo, hi = max(a, v.start) // PAGE * PAGE, -(-min(b, v.end) // PAGE) * PAGE
                if lo < hi:
                    out.append(v._replace(start=lo, end=hi))
        out.sort(key=lambda v: v.start)
        return out

    def scan(self, loop: int = 1, sleep: float = 0.0, stop: threading.Event | None = None) -> PageRefs:
        """Run loop passes sleep seconds apart; stop (an Event) ends the waiting early.

        Never raises for a target that exits, a VMA that vanishes or a refused read: the
        result then carries the passes that completed and `error` says what happened.
        """
        key = CLAIMS.claim(self.target)
        if key is None:
            return PageRefs.empty(self.source_name, per_vma=source_class(self.source_name).per_vma,
                                  error=f"process {self.pid} is being scanned by another task; not scanned now")
        try:
            return self._scan(loop, sleep, stop)
        finally:
            CLAIMS.release(key)

    def _scan(self, loop: int, sleep: float, stop: threading.Event | None) -> PageRefs:
        source = source_class(self.source_name)(self, stop)
        refs = self._run(source, loop, sleep, stop)
        refs.sampling = getattr(source, "sampling", None)   # set by the refault source's end()
        return refs

    def _run(self, source, loop: int, sleep: float, stop: threading.Event | None) -> PageRefs:
        try:
            self._check_target()
            vmas = self.select_vmas()
        except (ProcessGone, PassEnded, procfs.ProcError) as exc:
            return PageRefs.empty(self.source_name, per_vma=source.per_vma, error=str(exc))
        windows = [_Window(v) for v in vmas]
        passes, error = 0, None
        t0 = time.monotonic()
        try:
            source.begin(windows, sleep)
        except ScanError as exc:
            return PageRefs.empty(self.source_name, vmas, source.per_vma, error=str(exc))
        except PassEnded as exc:
            source.end()
            return PageRefs.empty(self.source_name, vmas, source.per_vma, error=str(exc))
        try:
            for index in range(loop):
                wait = source.wait_before(index, sleep)
                if stop is not None:
                    if stop.wait(wait) if wait > 0 else stop.is_set():
                        break
                elif wait > 0:
                    time.sleep(wait)
                try:
                    self._check_target()
                    source.one_pass(windows, index, index == loop - 1)
                    self._check_vmas(windows)
                except (PassEnded, ProcessGone, procfs.ProcError, OSError) as exc:
                    error = f"pass {index + 1} of {loop} ended early: {exc}"
                    log.warning("scan of pid %d with %s: %s", self.pid, self.source_name, error)
                    break
                passes += 1
        finally:
            source.end()
        log.debug("scan of pid %d with %s: %d passes in %.3f s", self.pid, self.source_name, passes,
                  time.monotonic() - t0)
        return self._result(windows, passes, error, source.per_vma)

    def _check_vmas(self, windows) -> None:
        """A scanned VMA that is gone makes the pass end; its pages are no longer the target's."""
        try:
            current = procfs.maps(self.pid)
        except procfs.NoSuchProcess:
            raise PassEnded(f"process {self.pid} exited during the scan") from None
        except procfs.ProcError:
            return  # the source itself will report a refused read
        for w in windows:
            if covering_vma(current, w.vma) is None:
                w.kinds[:] = 0
                raise PassEnded(f"VMA {w.vma.start:#x}-{w.vma.end:#x} of process {self.pid} vanished during the scan")

    def _result(self, windows, passes: int, error: str | None, per_vma: bool) -> PageRefs:
        addrs, counts, sizes, vmaidx = [], [], [], []
        for i, w in enumerate(windows):
            slots = np.flatnonzero(w.kinds)
            if not len(slots):
                continue
            kinds = w.kinds[slots]
            addr = np.uint64(w.base) + slots.astype(np.uint64) * np.uint64(PAGE)
            size = np.full(len(slots), PAGE, dtype=np.uint64)
            if self.huge == "keep":
                pmd = kinds == _scan.KIND_PMD
                pud = kinds == _scan.KIND_PUD
                addr[pmd] &= ~np.uint64(PMD_SIZE - 1)
                addr[pud] &= ~np.uint64(PUD_SIZE - 1)
                size[pmd] = PMD_SIZE
                size[pud] = PUD_SIZE
            addrs.append(addr)
            counts.append(w.counts[slots])
            sizes.append(size)
            vmaidx.append(np.full(len(slots), i, dtype=np.int32))
        vmas = [w.vma for w in windows]
        if not addrs:
            return PageRefs.empty(self.source_name, vmas, per_vma, passes, error)
        return PageRefs(np.concatenate(addrs), np.concatenate(counts), np.concatenate(sizes),
                        np.concatenate(vmaidx), vmas, self.source_name, per_vma, passes, error)
