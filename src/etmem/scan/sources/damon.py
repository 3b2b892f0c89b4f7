"""The `damon` source: DAMON virtual-address monitoring, one kdamond of etmem's own per scan with a
`stat` scheme whose regions each pass reads; the kernel interface is etmem.damon_sysfs."""
from __future__ import annotations

import logging
import os

from ... import damon_sysfs, kernel
from ...damon_sysfs import KDAMONDS, DamonError, Kdamond, KdamondSpec, MonitoringAttrs, Scheme, Sysfs, Target
from ...errors import ScanError
from ...pages import PAGE
from .base import PassEnded, Source, read_windows_pagemap

log = logging.getLogger("etmem.scan")

# The regions start as the scanned VMAs and are not re-fitted to DAMON's three-big-areas
# guess during the scan (an update interval of an hour): a cold VMA next to a hot one is
# then never one region with it, from the first pass on.
NO_REGION_UPDATE_US = 3600 * 1_000_000


def owner_problem() -> str | None:
    """Why DAMON cannot be used by a scan now, read-only: another owner's kdamonds, or etmem's damon engine."""
    return damon_sysfs.owner_problem() or KDAMONDS.scan_problem()


class DamonSource(Source):
    """DAMON vaddr monitoring: one kdamond of our own, a `stat` scheme to read regions."""

    name = "damon"
    rank = 30
    sample_us = 5000
    aggr_us = 100_000

    @classmethod
    def probe(cls, opener=None):
        ops = kernel.damon_operations()
        if "vaddr" not in ops:
            have = f" (this kernel has only: {', '.join(sorted(ops))})" if ops else ""
            return kernel.missing("damon") + have
        return None

    @classmethod
    def live_problem(cls, opener=None):
        # kdamonds come and go: checked read-only each time, and again when setting up
        return owner_problem()

    def wait_before(self, index, sleep):
        # DAMON has no history: every pass needs one whole aggregation window first.
        return max(sleep, self.aggr_us / 1e6)

    def begin(self, windows, sleep):
        self.kd = None
        problem = self.probe()
        if problem:
            raise ScanError(f"scanner source 'damon' is not available: {problem}")
        aggr_us = self.aggr_us = max(int(sleep * 1e6), 20 * self.sample_us)
        regions = tuple((w.vma.start, w.vma.end) for w in windows)
        spec = KdamondSpec(MonitoringAttrs(self.sample_us, aggr_us, NO_REGION_UPDATE_US, 10, 1000),
                           (Target(self.pid, regions),), (Scheme("stat"),))
        kd = Kdamond(f"a DAMON scan of process {self.pid}", "scan", spec, Sysfs(opener=self.opener))
        try:
            KDAMONDS.join(kd, stop=self.stop)
        except DamonError as exc:
            raise ScanError(str(exc)) from None
        self.kd = kd
        try:
            KDAMONDS.start(kd)
        except DamonError as exc:
            self.end()
            raise ScanError(f"cannot set up DAMON monitoring of process {self.pid}: {exc}") from None
        self.max_accesses = max(1, aggr_us // self.sample_us)

    def one_pass(self, windows, index, last):
        try:
            regions = KDAMONDS.tried_regions(self.kd, 0)
        except (OSError, DamonError) as exc:
            if not os.path.exists(f"/proc/{self.pid}"):
                raise PassEnded(f"process {self.pid} exited during the scan") from None
            raise PassEnded(f"reading DAMON regions of process {self.pid}: "
                            f"{exc.strerror if isinstance(exc, OSError) else exc}") from None
        # A region seen accessed in this aggregation window counts +1 for each of its pages.
        for w in windows:
            lo, hi = w.vma.start, w.vma.end
            for start, end, nr in regions:
                a, b = max(start, lo), min(end, hi)
                if a < b and nr > 0:
                    w.counts[(a - lo) // PAGE:(b - lo + PAGE - 1) // PAGE] += 1
        for w, pm in read_windows_pagemap(self.opener, self.pid, windows):
            w.kinds[pm["present"]] = 1

    def end(self):
        if self.kd is not None:
            try:
                KDAMONDS.stop(self.kd)
            except DamonError as exc:
                log.warning("%s", exc)
            KDAMONDS.leave(self.kd)
            self.kd = None


SOURCE = DamonSource
