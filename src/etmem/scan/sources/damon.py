"""The `damon` source: DAMON virtual-address monitoring through /sys/kernel/mm/damon/admin, with
one kdamond of etmem's own and a `stat` scheme to read its regions; never another owner's."""
from __future__ import annotations

import errno
import logging
import os
import threading

from ... import kernel
from ...errors import ScanError
from ...pages import PAGE
from .base import PassEnded, Source, read_windows_pagemap

log = logging.getLogger("etmem.scan")

DAMON_ADMIN = kernel.DAMON_ADMIN

# kdamond directories this process created (as "N" strings); only these may be stopped
_OUR_KDAMONDS: set[str] = set()
_DAMON_LOCK = threading.Lock()
# The kernel runs one set of kdamonds, so etmem's DAMON scans take turns: a scan holds
# this from setting its kdamond up until it is removed; others wait (or their stop ends it).
_DAMON_TURN = threading.Lock()


def owner_problem() -> str | None:
    """Why DAMON cannot be ours to use, from read-only probing; None when it can."""
    try:
        with open(f"{DAMON_ADMIN}/kdamonds/nr_kdamonds") as f:
            nr = int(f.read().strip() or 0)
    except OSError:
        return kernel.missing("damon")
    foreign = [str(i) for i in range(nr) if str(i) not in _OUR_KDAMONDS]
    if foreign:
        found = [_describe_kdamond(i) for i in foreign]
        hint = ""
        if any(", vaddr on pid" in d and d.endswith("scheme stat") for d in found):
            hint = (f" One looks like etmem's own (vaddr, a stat scheme): if an etmemd was killed, stop "
                    f"its leftover with: echo off > {DAMON_ADMIN}/kdamonds/0/state; "
                    f"echo 0 > {DAMON_ADMIN}/kdamonds/nr_kdamonds")
        return (f"DAMON is in use by another owner ({nr} kdamond(s) not created by this etmem: "
                f"{'; '.join(found)}); the kernel allows only one set and etmem never stops another "
                f"owner's kdamond.{hint}")
    return None


def _describe_kdamond(index: str) -> str:
    """What a kdamond monitors, read-only, for the message that it is not ours."""
    base = f"{DAMON_ADMIN}/kdamonds/{index}"

    def read(path: str) -> str:
        try:
            with open(f"{base}/{path}") as f:
                return f.read().strip()
        except OSError:
            return "?"
    ctx = "contexts/0"
    ops = read(f"{ctx}/operations")
    text = f"kdamond {index} {read('state')}, {ops}"
    if ops in ("vaddr", "fvaddr") and read(f"{ctx}/targets/nr_targets") not in ("0", "?"):
        text += f" on pid {read(f'{ctx}/targets/0/pid_target')}"
    actions = read(f"{ctx}/schemes/0/action") if read(f"{ctx}/schemes/nr_schemes") not in ("0", "?") else None
    return text + (f", scheme {actions}" if actions else "")


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
        self.turn = False
        problem = self.probe()
        if problem:
            raise ScanError(f"scanner source 'damon' is not available: {problem}")
        self._wait_for_turn()
        try:
            self._set_up(windows, sleep)
        except BaseException:
            self.end()
            raise

    def _wait_for_turn(self) -> None:
        if _DAMON_TURN.acquire(blocking=False):
            self.turn = True
            return
        log.info("scan of pid %d waits for another etmem DAMON scan to end (one kdamond at a time)", self.pid)
        while not _DAMON_TURN.acquire(timeout=0.1):
            if self.stop is not None and self.stop.is_set():
                raise ScanError("stopped while waiting for another etmem DAMON scan to end")
        self.turn = True

    def _set_up(self, windows, sleep):
        aggr_us = self.aggr_us = max(int(sleep * 1e6), 20 * self.sample_us)
        with _DAMON_LOCK:
            problem = owner_problem()
            if problem:
                raise ScanError(problem)
            base = f"{DAMON_ADMIN}/kdamonds"
            try:
                self._write(f"{base}/nr_kdamonds", "1")
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise ScanError("DAMON is in use by another owner (the kernel refused a new kdamond: EBUSY)") from None
                raise ScanError(f"cannot create a kdamond: {exc.strerror or exc}") from None
            _OUR_KDAMONDS.add("0")
            self.kd = f"{base}/0"
        try:
            ctx = f"{self.kd}/contexts"
            self._write(f"{ctx}/nr_contexts", "1")
            ctx += "/0"
            self._write(f"{ctx}/operations", "vaddr")
            attrs = f"{ctx}/monitoring_attrs"
            self._write(f"{attrs}/intervals/sample_us", str(self.sample_us))
            self._write(f"{attrs}/intervals/aggr_us", str(aggr_us))
            # The regions start as the scanned VMAs (below) and are not re-fitted to
            # DAMON's three-big-areas guess during the scan: a cold VMA next to a hot one
            # is then never one region with it, from the first pass on.
            self._write(f"{attrs}/intervals/update_us", str(3600 * 1_000_000))
            self._write(f"{attrs}/nr_regions/min", "10")
            self._write(f"{attrs}/nr_regions/max", "1000")
            self._write(f"{ctx}/targets/nr_targets", "1")
            self._write(f"{ctx}/targets/0/pid_target", str(self.pid))
            regions = f"{ctx}/targets/0/regions"
            self._write(f"{regions}/nr_regions", str(len(windows)))
            for i, w in enumerate(windows):
                self._write(f"{regions}/{i}/start", str(w.vma.start))
                self._write(f"{regions}/{i}/end", str(w.vma.end))
            self._write(f"{ctx}/schemes/nr_schemes", "1")
            scheme = f"{ctx}/schemes/0"
            self._write(f"{scheme}/action", "stat")
            pattern = f"{scheme}/access_pattern"
            for key, hi in (("sz", 2**64 - 1), ("nr_accesses", 2**32 - 1), ("age", 2**32 - 1)):
                self._write(f"{pattern}/{key}/min", "0")
                self._write(f"{pattern}/{key}/max", str(hi))
            self._write(f"{self.kd}/state", "on")
            self.scheme = scheme
            self.max_accesses = max(1, aggr_us // self.sample_us)
        except OSError as exc:
            self.end()
            raise ScanError(f"cannot set up DAMON monitoring of process {self.pid}: {exc.strerror or exc}") from None

    def _write(self, path: str, value: str) -> None:
        f = self.opener(path, "wb")
        try:
            f.write(value.encode())
        finally:
            f.close()

    def _read(self, path: str) -> str:
        f = self.opener(path, "rb")
        try:
            return f.read().decode().strip()
        finally:
            f.close()

    def one_pass(self, windows, index, last):
        try:
            self._write(f"{self.kd}/state", "update_schemes_tried_regions")
            base = f"{self.scheme}/tried_regions"
            regions = []
            for name in os.listdir(base):
                if name.isdigit():
                    regions.append((int(self._read(f"{base}/{name}/start")), int(self._read(f"{base}/{name}/end")),
                                    int(self._read(f"{base}/{name}/nr_accesses"))))
        except OSError as exc:
            if not os.path.exists(f"/proc/{self.pid}"):
                raise PassEnded(f"process {self.pid} exited during the scan") from None
            raise PassEnded(f"reading DAMON regions of process {self.pid}: {exc.strerror or exc}") from None
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
            with _DAMON_LOCK:
                try:
                    self._write(f"{self.kd}/state", "off")
                except OSError:
                    pass
                try:
                    self._write(f"{DAMON_ADMIN}/kdamonds/nr_kdamonds", "0")
                except OSError as exc:
                    log.warning("could not remove etmem's kdamond: %s", exc.strerror or exc)
                _OUR_KDAMONDS.discard("0")
                self.kd = None
        if self.turn:
            self.turn = False
            _DAMON_TURN.release()


SOURCE = DamonSource
