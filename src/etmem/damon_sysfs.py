"""DAMON's sysfs interface (/sys/kernel/mm/damon/admin) for etmem's DAMON users, the `damon` access
source and the `damon` engine: the kernel's data model as plain classes, one backend that writes and
reads it, and etmem's share of the kernel's one set of kdamonds (ownership, turns, rebuilds).

The kernel keeps one set of kdamonds: writing `kdamonds/nr_kdamonds` removes every kdamond
directory and makes that many new ones, and is refused (EBUSY) while any of them runs. So
etmem keeps every kdamond of its own in one `KdamondSet` (`KDAMONDS`): a kdamond joins or
leaves it by a rebuild (etmem's running kdamonds are turned off, the set is written anew,
and they are turned on again, their scheme totals carried over). Kdamonds of another owner
(the machine's, another tool's) are never written, stopped or removed: while one exists,
etmem refuses with "DAMON is in use by another owner". etmem's users take turns: damon
engines (long-lived, one kdamond per region project) share the set; a damon-source scan
(seconds) has it alone, waiting for another scan, but never for an engine.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Callable

import attrs

from . import kernel
from .errors import EtmemError

log = logging.getLogger("etmem.damon")

# Where DAMON's sysfs interface is and how its files are opened; tests point both at an
# emulated tree (tests/kernel_emulation.py DamonSysfs).
DAMON_ADMIN = kernel.DAMON_ADMIN
OPENER: Callable | None = None

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# How long an engine's project start waits for a damon-source scan to end (scans last
# `loop` x `sleep` seconds; etmem's own scans take turns on the kernel's one kdamond set).
ENGINE_TURN_WAIT_S = 30.0


class DamonError(EtmemError):
    """DAMON cannot be used, or refused what etmem asked; the message says why."""


class DamonInUse(DamonError):
    """The kernel's kdamonds are held by another owner, or by another user inside etmem."""


# --- the kernel's data model ---------------------------------------------------------

@attrs.frozen
class MonitoringAttrs:
    """A context's `monitoring_attrs`: intervals in microseconds, the number of regions."""

    sample_us: int
    aggr_us: int
    update_us: int
    min_nr_regions: int
    max_nr_regions: int


@attrs.frozen
class AccessPattern:
    """A scheme's `access_pattern`: region size in bytes, accesses per aggregation interval
    (the number of samples, out of aggr_us / sample_us, that found the region accessed) and
    age in aggregation intervals; each range inclusive."""

    min_size: int = 0
    max_size: int = U64_MAX
    min_acc: int = 0
    max_acc: int = U32_MAX
    min_age: int = 0
    max_age: int = U32_MAX


EVERY_REGION = AccessPattern()


@attrs.frozen
class QuotaGoal:
    """One of a scheme's `quotas/goals`: DAMON tunes the quota so that `metric` nears `target_value`."""

    metric: str
    target_value: int


@attrs.frozen
class Quotas:
    """A scheme's `quotas`: at most `ms` of work and `bytes` of memory per `reset_interval_ms`
    (0: no limit), auto-tuned towards `goals`; `weights` (size, accesses, age, per thousand)
    rank the regions when a quota holds the scheme back (None: the kernel's, all 0)."""

    ms: int = 0
    bytes: int = 0
    reset_interval_ms: int = 0
    goals: tuple = ()
    weights: tuple | None = None


@attrs.frozen
class Watermarks:
    """A scheme's `watermarks`: with metric `free_mem_rate` (free memory, per thousand, checked
    every interval_us) the scheme runs only while the metric is between low and mid, and stops
    above high or below low; metric `none` always runs."""

    metric: str = "none"
    interval_us: int = 0
    high: int = 0
    mid: int = 0
    low: int = 0


@attrs.frozen
class Scheme:
    """One DAMOS scheme: do `action` to every region matching `pattern`, within quotas and watermarks."""

    action: str
    pattern: AccessPattern = EVERY_REGION
    quotas: Quotas = Quotas()
    watermarks: Watermarks = Watermarks()
    target_nid: int | None = None    # migrate_hot / migrate_cold: the node to move pages to


@attrs.frozen
class Target:
    """A monitored process; `regions` ((start, end), ...) are its initial regions (empty: DAMON picks)."""

    pid: int
    regions: tuple = ()


@attrs.frozen
class KdamondSpec:
    """Everything one kdamond runs: one context of `operations` with its targets and schemes."""

    attrs: MonitoringAttrs
    targets: tuple = ()
    schemes: tuple = ()
    operations: str = "vaddr"


STAT_FIELDS = ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")


@attrs.frozen
class SchemeStats:
    """A scheme's `stats`: regions (nr_*) and bytes (sz_*) it tried and applied its action to,
    and how often its quota ran out (qt_exceeds)."""

    nr_tried: int = 0
    sz_tried: int = 0
    nr_applied: int = 0
    sz_applied: int = 0
    qt_exceeds: int = 0

    def __add__(self, other: "SchemeStats") -> "SchemeStats":
        return SchemeStats(*(getattr(self, f) + getattr(other, f) for f in STAT_FIELDS))

    def as_dict(self) -> dict:
        return attrs.asdict(self)


# --- the backend: files of the sysfs tree -----------------------------------------------

def _plain_open(path: str, mode: str):
    return open(path, mode, buffering=0)


# How long an access refused with EBUSY is tried again. The kernel holds DAMON's sysfs lock
# while a kdamond serves a command (a region listing makes a directory per region, which
# took over 0.5 s in a TCG guest), and refuses every other access meanwhile.
BUSY_WAIT_S = 5.0


def _retry_busy(call: Callable, pause: float = 0.01):
    """call(), again while it fails with EBUSY, for up to BUSY_WAIT_S: the kernel serialises
    DAMON's sysfs files with a trylock, so a read or write that meets another one in progress
    (another project's round, another reader) is refused with EBUSY rather than kept waiting."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            return call()
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
            time.sleep(pause)


class Sysfs:
    """Reads and writes DAMON's admin tree at `root` (default DAMON_ADMIN) through `opener`."""

    def __init__(self, root: str | None = None, opener: Callable | None = None):
        self.root = root or DAMON_ADMIN
        self.opener = opener or OPENER or _plain_open

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read(self, rel: str) -> str:
        return _retry_busy(lambda: self._read(rel))

    def _read(self, rel: str) -> str:
        f = self.opener(self.path(rel), "rb")
        try:
            return f.read().decode().strip()
        finally:
            f.close()

    def write(self, rel: str, value) -> None:
        if rel.endswith("nr_kdamonds"):   # EBUSY here means a kdamond runs: the caller's to handle
            self._write(rel, value)
        else:
            _retry_busy(lambda: self._write(rel, value))

    def _write(self, rel: str, value) -> None:
        f = self.opener(self.path(rel), "wb")
        try:
            f.write(str(value).encode())
        finally:
            f.close()

    def listdir(self, rel: str) -> list[str]:
        return os.listdir(self.path(rel))

    def nr_kdamonds(self) -> int:
        return int(self.read("kdamonds/nr_kdamonds") or 0)

    def state(self, index: int) -> str:
        return self.read(f"kdamonds/{index}/state")

    def command(self, index: int, command: str) -> None:
        """Write `command` (on, off, commit, update_schemes_stats, ...) to the kdamond's state file."""
        self.write(f"kdamonds/{index}/state", command)

    # -- writing a whole kdamond ----------------------------------------------------------
    def write_kdamond(self, index: int, spec: KdamondSpec) -> None:
        """Write spec into kdamond `index` (made by nr_kdamonds); it is applied at `on` or `commit`."""
        ctx = f"kdamonds/{index}/contexts"
        self.write(f"{ctx}/nr_contexts", 1)
        ctx += "/0"
        self.write(f"{ctx}/operations", spec.operations)
        a = spec.attrs
        for name, value in (("intervals/sample_us", a.sample_us), ("intervals/aggr_us", a.aggr_us),
                            ("intervals/update_us", a.update_us), ("nr_regions/min", a.min_nr_regions),
                            ("nr_regions/max", a.max_nr_regions)):
            self.write(f"{ctx}/monitoring_attrs/{name}", value)
        self.write_targets(index, spec.targets)
        self.write(f"{ctx}/schemes/nr_schemes", len(spec.schemes))
        for i, scheme in enumerate(spec.schemes):
            self.write_scheme(f"{ctx}/schemes/{i}", scheme)

    def write_targets(self, index: int, targets) -> None:
        base = f"kdamonds/{index}/contexts/0/targets"
        self.write(f"{base}/nr_targets", len(targets))
        for i, target in enumerate(targets):
            self.write(f"{base}/{i}/pid_target", target.pid)
            if target.regions:
                regions = f"{base}/{i}/regions"
                self.write(f"{regions}/nr_regions", len(target.regions))
                for j, (start, end) in enumerate(target.regions):
                    self.write(f"{regions}/{j}/start", start)
                    self.write(f"{regions}/{j}/end", end)

    def write_scheme(self, base: str, scheme: Scheme) -> None:
        try:
            self.write(f"{base}/action", scheme.action)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise DamonError(f"this kernel's DAMON does not know the action '{scheme.action}' "
                                 f"({kernel.damon_action_problem(scheme.action) or 'Linux ' + os.uname().release})") from None
            raise
        # Read back: a kernel that maps unknown names to something else must not act silently.
        if self.read(f"{base}/action") != scheme.action:
            raise DamonError(f"this kernel's DAMON took the action '{scheme.action}' as "
                             f"'{self.read(f'{base}/action')}'")
        p = scheme.pattern
        for name, lo, hi in (("sz", p.min_size, p.max_size), ("nr_accesses", p.min_acc, p.max_acc),
                             ("age", p.min_age, p.max_age)):
            self.write(f"{base}/access_pattern/{name}/min", lo)
            self.write(f"{base}/access_pattern/{name}/max", hi)
        q = scheme.quotas
        self.write(f"{base}/quotas/ms", q.ms)
        self.write(f"{base}/quotas/bytes", q.bytes)
        self.write(f"{base}/quotas/reset_interval_ms", q.reset_interval_ms)
        if q.weights is not None:
            for name, value in zip(("sz_permil", "nr_accesses_permil", "age_permil"), q.weights):
                self.write(f"{base}/quotas/weights/{name}", value)
        if q.goals:
            goals = f"{base}/quotas/goals"
            try:
                self.write(f"{goals}/nr_goals", len(q.goals))
                for i, goal in enumerate(q.goals):
                    self.write(f"{goals}/{i}/target_metric", goal.metric)
                    self.write(f"{goals}/{i}/target_value", goal.target_value)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINVAL):
                    metric = q.goals[0].metric
                    raise DamonError(f"this kernel's DAMON has no quota goal '{metric}': "
                                     f"{kernel.damon_quota_goal_problem(metric) or exc.strerror}") from None
                raise
        w = scheme.watermarks
        for name, value in (("metric", w.metric), ("interval_us", w.interval_us), ("high", w.high),
                            ("mid", w.mid), ("low", w.low)):
            self.write(f"{base}/watermarks/{name}", value)
        if scheme.target_nid is not None:
            try:
                self.write(f"{base}/target_nid", scheme.target_nid)
            except FileNotFoundError:
                raise DamonError(f"this kernel's DAMON has no target_nid for {scheme.action} "
                                 f"(Linux 6.11 or newer has it)") from None

    # -- reading results -------------------------------------------------------------------
    def scheme_stats(self, index: int, nr_schemes: int) -> list[SchemeStats]:
        """Every scheme's stats as the last `update_schemes_stats` left them."""
        base = f"kdamonds/{index}/contexts/0/schemes"
        return [SchemeStats(*(int(self.read(f"{base}/{i}/stats/{f}") or 0) for f in STAT_FIELDS))
                for i in range(nr_schemes)]

    def tried_region_names(self, index: int, scheme: int) -> list[str]:
        """The region directories the last `update_schemes_tried_regions` made for a scheme, in
        the order the kdamond tried the regions: target by target, each in address order."""
        base = f"kdamonds/{index}/contexts/0/schemes/{scheme}/tried_regions"
        return sorted((name for name in self.listdir(base) if name.isdigit()), key=int)

    def tried_regions(self, index: int, scheme: int, age: bool = False) -> list[tuple]:
        """(start, end, nr_accesses) of each region the scheme was tried on, as last updated,
        in the order they were tried; with `age`, (start, end, nr_accesses, age), the age 0
        where the kernel has no `age` file (a file read more per region)."""
        base = f"kdamonds/{index}/contexts/0/schemes/{scheme}/tried_regions"
        return [(int(self.read(f"{base}/{name}/start")), int(self.read(f"{base}/{name}/end")),
                 int(self.read(f"{base}/{name}/nr_accesses")), *((self._age(f"{base}/{name}/age"),) if age else ()))
                for name in self.tried_region_names(index, scheme)]

    def _age(self, rel: str) -> int:
        try:
            return int(self.read(rel))
        except FileNotFoundError:
            return 0

    def describe(self, index: int) -> str:
        """What kdamond `index` monitors, read-only: for the message that it is not etmem's."""
        def read(rel: str) -> str:
            try:
                return self.read(f"kdamonds/{index}/{rel}")
            except OSError:
                return "?"
        ctx = "contexts/0"
        ops = read(f"{ctx}/operations")
        text = f"kdamond {index} {read('state')}, {ops}"
        if ops in ("vaddr", "fvaddr") and read(f"{ctx}/targets/nr_targets") not in ("0", "?"):
            text += f" on pid {read(f'{ctx}/targets/0/pid_target')}"
        nr = read(f"{ctx}/schemes/nr_schemes")
        if nr.isdigit() and int(nr):
            actions = [read(f"{ctx}/schemes/{i}/action") for i in range(int(nr))]
            text += f", scheme{'s' if len(actions) > 1 else ''} {', '.join(actions)}"
        return text


# --- etmem's kdamonds ------------------------------------------------------------------------

class Kdamond:
    """One of etmem's kdamonds: what it runs, where it is in the kernel's set, its scheme totals.

    `user` is "engine" (a region project's) or "scan" (a damon-source scan's). The kernel's
    scheme stats start again from 0 each time the kdamond is turned on; `totals()` adds
    what earlier runs counted.
    """

    def __init__(self, label: str, user: str, spec: KdamondSpec, sysfs: Sysfs | None = None):
        self.label = label
        self.user = user
        self.spec = spec
        self.sysfs = sysfs or Sysfs()
        self.index: int | None = None
        self.wanted_on = False
        self.starts = 0            # times it was turned on: monitoring (region ages) starts afresh each time
        self._earlier: list[SchemeStats] = [SchemeStats() for _ in spec.schemes]
        self._running: list[SchemeStats] = [SchemeStats() for _ in spec.schemes]

    def __repr__(self) -> str:
        return f"<Kdamond {self.label} index={self.index}>"

    def totals(self) -> list[SchemeStats]:
        return [a + b for a, b in zip(self._earlier, self._running)]

    def _set_schemes(self, schemes: tuple, kept: list[int | None]) -> None:
        """New schemes; kept[i] is the old index whose totals scheme i keeps (None: starts at 0)."""
        totals = self.totals()
        self._earlier = [totals[k] if k is not None else SchemeStats() for k in kept]
        self._running = [SchemeStats() for _ in schemes]

    def _fold(self) -> None:
        """The kernel's counters are about to start again: keep what they counted."""
        self._earlier = self.totals()
        self._running = [SchemeStats() for _ in self._earlier]


class KdamondSet:
    """etmem's kdamonds in the kernel's one set, and whose turn it is to hold that set.

    Every method takes the set's lock, so etmem's writes to DAMON never interleave.
    """

    def __init__(self):
        self._cond = threading.Condition(threading.RLock())
        self.members: list[Kdamond] = []
        self.user: str | None = None       # "engine", "scan" or None: who holds the kernel's set

    @property
    def ours(self) -> set[int]:
        """Indices of the kernel's kdamonds that are etmem's."""
        return {kd.index for kd in self.members if kd.index is not None}

    def owner_problem(self, sysfs: Sysfs | None = None) -> str | None:
        """Why DAMON cannot be etmem's to use (kdamonds of another owner), read-only; None when it can."""
        sysfs = sysfs or Sysfs()
        with self._cond:
            try:
                nr = sysfs.nr_kdamonds()
            except OSError:
                return kernel.missing("damon")
            foreign = [i for i in range(nr) if i not in self.ours]
            if not foreign:
                return None
            found = [sysfs.describe(i) for i in foreign]
        hint = ""
        if any(", vaddr on pid" in d and d.endswith(("scheme stat", ", stat")) for d in found):
            hint = (f" One looks like etmem's own (vaddr, a stat scheme last): if an etmemd was killed, stop "
                    f"its leftover with: echo off > {sysfs.root}/kdamonds/0/state; "
                    f"echo 0 > {sysfs.root}/kdamonds/nr_kdamonds")
        return (f"DAMON is in use by another owner ({nr} kdamond(s) not created by this etmem: "
                f"{'; '.join(found)}); the kernel allows only one set and etmem never stops another "
                f"owner's kdamond.{hint}")

    def scan_problem(self) -> str | None:
        """Why a damon-source scan cannot have DAMON now (an engine holds it); None otherwise."""
        with self._cond:
            if self.user == "engine":
                return self._engine_holds()
        return None

    def _engine_holds(self) -> str:
        labels = ", ".join(kd.label for kd in self.members)
        return (f"DAMON is in use by etmem's damon engine ({labels}): it holds the kernel's kdamonds "
                f"until its project is deleted (etmem obj del), and a scanner=damon scan cannot run "
                f"meanwhile; choose another scanner for this project")

    # -- joining and leaving: rebuilds of the set --------------------------------------------
    def join(self, kd: Kdamond, stop: threading.Event | None = None, wait_s: float | None = None) -> None:
        """Give kd a kdamond of its own in the kernel's set (off, spec written).

        A scan waits while another scan holds the set, and is refused while engines do; an
        engine waits up to wait_s (default ENGINE_TURN_WAIT_S) for a scan to end. DamonInUse
        when another owner's kdamonds exist or the wait ends.
        """
        with self._cond:
            if kd in self.members:
                return
            self._wait_for_turn(kd, stop, ENGINE_TURN_WAIT_S if wait_s is None else wait_s)
            if not self.members:
                problem = self.owner_problem(kd.sysfs)
                if problem:
                    raise DamonInUse(problem)
                self.user = kd.user
            try:
                self._rebuild(kd.sysfs, self.members + [kd])
            except DamonInUse:
                kd.index = None          # the kernel refused: the old set is as it was
                if not self.members:
                    self.user = None
                    self._cond.notify_all()
                raise
            except BaseException:
                kd.index = None
                self._restore(kd.sysfs)
                raise
            self.members.append(kd)
            log.info("kdamond %d is etmem's %s", kd.index, kd.label)

    def _wait_for_turn(self, kd: Kdamond, stop: threading.Event | None, wait_s: float) -> None:
        if kd.user == "scan":
            if self.user == "engine":
                raise DamonInUse(self._engine_holds())
            if self.user is not None:
                log.info("%s waits for another etmem DAMON scan to end (one kdamond set at a time)", kd.label)
            while self.user is not None:
                if self.user == "engine":
                    raise DamonInUse(self._engine_holds())
                self._cond.wait(0.1)
                if stop is not None and stop.is_set():
                    raise DamonInUse("stopped while waiting for another etmem DAMON scan to end")
            return
        if self.user == "scan":
            scans = ", ".join(m.label for m in self.members)
            log.info("%s waits for %s to end (one kdamond set at a time)", kd.label, scans)
            if not self._cond.wait_for(lambda: self.user != "scan", wait_s):
                raise DamonInUse(f"DAMON is busy with an etmem scan ({scans}, scanner=damon) for more than "
                                 f"{wait_s:.0f} s; start the project again when it has ended")

    def leave(self, kd: Kdamond) -> None:
        """Remove kd's kdamond; the others are rebuilt and go on. The last one gives the set back."""
        with self._cond:
            if kd not in self.members:
                return
            others = [m for m in self.members if m is not kd]
            try:
                if others:
                    self._rebuild(kd.sysfs, others)
                else:
                    self._turn_off(kd)
                    try:
                        kd.sysfs.write("kdamonds/nr_kdamonds", 0)
                    except OSError as exc:
                        log.warning("could not remove etmem's kdamond: %s", exc.strerror or exc)
            finally:
                self.members = others
                kd.index = None
                if not others:
                    self.user = None
                    self._cond.notify_all()
            log.info("etmem's %s no longer has a kdamond", kd.label)

    def _restore(self, sysfs: Sysfs) -> None:
        """After a failed join: the kernel's set made of the members again (or none)."""
        try:
            if self.members:
                self._rebuild(sysfs, self.members)
            else:
                sysfs.write("kdamonds/nr_kdamonds", 0)   # the set is etmem's: it was just written
        except (OSError, DamonError) as exc:
            log.warning("could not put etmem's kdamonds back after a failed start: %s", exc)
        if not self.members:
            self.user = None
            self._cond.notify_all()

    def _rebuild(self, sysfs: Sysfs, members: list[Kdamond]) -> None:
        """Write the kernel's set anew with members, in order; those running before run again.

        DamonInUse or DamonError from the nr_kdamonds write leave the old set as it was.
        """
        running = [m for m in self.members if m.index is not None and self._is_on(m)]
        for m in running:
            self._turn_off(m)
        try:
            sysfs.write("kdamonds/nr_kdamonds", len(members))
        except OSError as exc:
            self._turn_on_again(running)
            if exc.errno == errno.EBUSY:
                raise DamonInUse("DAMON is in use by another owner (the kernel refused a new kdamond set: "
                                 "EBUSY)") from None
            raise DamonError(f"cannot make kdamonds: {exc.strerror or exc}") from None
        for m in self.members:
            m.index = None      # the old set is gone
        for i, m in enumerate(members):
            m.index = i
        try:
            for m in members:
                self._write(m)
        finally:
            self._turn_on_again([m for m in running if m in members])

    def _turn_on_again(self, kds: list[Kdamond]) -> None:
        for m in kds:
            try:
                self._turn_on(m)
            except DamonError as exc:
                log.warning("%s: %s (its next round tries again)", m.label, exc)

    # -- one kdamond -----------------------------------------------------------------------
    def start(self, kd: Kdamond) -> None:
        """Turn kd's kdamond on with its current spec (it stays off, waiting, while it has no target)."""
        with self._cond:
            self._need(kd)
            kd.wanted_on = True
            if self._is_on(kd):
                return
            self._write(kd)
            if kd.spec.targets:
                self._turn_on(kd)

    def stop(self, kd: Kdamond) -> None:
        """Turn kd's kdamond off; its sysfs objects stay until it leaves the set."""
        with self._cond:
            kd.wanted_on = False
            if kd.index is not None:
                self._turn_off(kd)

    def update(self, kd: Kdamond, spec: KdamondSpec, kept: list | None = None) -> None:
        """Make kd run spec: targets only added are committed to the running kdamond (the
        kdamond's `commit`); any other change starts monitoring afresh (off, write, on), since
        a committed target keeps the regions, and their ages, of the one it replaces.

        kept maps new schemes to old ones when the schemes change (see Kdamond._set_schemes;
        default: a scheme equal to the old one at its index keeps its totals). A kdamond the
        kernel stopped (every target exited, or a commit it refused) is turned on again as
        soon as spec has a target.
        """
        with self._cond:
            old = kd.spec
            on = kd.index is not None and self._is_on(kd)
            if spec == old and (on or not kd.wanted_on or not spec.targets):
                return
            if on and _targets_added(old, spec):
                kd.spec = spec
                try:
                    kd.sysfs.write_targets(kd.index, spec.targets)
                    kd.sysfs.command(kd.index, "commit")
                except OSError as exc:
                    raise DamonError(f"DAMON refused the new targets of {kd.label}: {exc.strerror or exc}") from None
                if self._is_on(kd):
                    return
                # The kernel stops a kdamond whose commit fails inside it (a target that exited
                # between resolving and committing): start again below.
                on = False
                old = spec
            if on:
                self._turn_off(kd)
            else:
                kd._fold()      # stopped by the kernel, or never on: what it counted stays
            if spec.schemes != old.schemes:
                kd._set_schemes(spec.schemes, kept if kept is not None else
                                [i if i < len(old.schemes) and old.schemes[i] == s else None
                                 for i, s in enumerate(spec.schemes)])
            kd.spec = spec
            # An off kdamond's files matter only when it is turned on: written then.
            if kd.index is not None and kd.wanted_on and spec.targets:
                self._write(kd)
                self._turn_on(kd)

    def refresh(self, kd: Kdamond) -> str:
        """The kdamond's state; when on, its scheme stats are brought up to date first."""
        with self._cond:
            self._need(kd)
            if not self._is_on(kd):
                return "off"
            try:
                kd.sysfs.command(kd.index, "update_schemes_stats")
                kd._running = kd.sysfs.scheme_stats(kd.index, len(kd.spec.schemes))
            except OSError as exc:
                if not self._is_on(kd):
                    return "off"
                raise DamonError(f"reading the scheme stats of {kd.label}: {exc.strerror or exc}") from None
            return "on"

    def tried_regions(self, kd: Kdamond, scheme: int) -> list[tuple[int, int, int]]:
        """(start, end, nr_accesses) of the regions scheme `scheme` matches now (kdamond on)."""
        with self._cond:
            self._need(kd)
            kd.sysfs.command(kd.index, "update_schemes_tried_regions")
            return kd.sysfs.tried_regions(kd.index, scheme)

    def schemes_regions(self, kd: Kdamond, schemes: range) -> list[list[tuple[int, int, int, int]]] | None:
        """The regions (start, end, nr_accesses, age) each of `schemes` matches now, from one
        `update_schemes_tried_regions` (so that they agree); None when the kernel cannot say
        (off, or before 6.2)."""
        with self._cond:
            self._need(kd)
            try:
                kd.sysfs.command(kd.index, "update_schemes_tried_regions")
                return [kd.sysfs.tried_regions(kd.index, s, age=True) for s in schemes]
            except OSError:
                return None

    def count_regions(self, kd: Kdamond, scheme: int) -> int | None:
        """How many regions scheme `scheme` matches now; None when the kernel cannot say (off, or before 6.2)."""
        with self._cond:
            self._need(kd)
            try:
                kd.sysfs.command(kd.index, "update_schemes_tried_regions")
                return len(kd.sysfs.tried_region_names(kd.index, scheme))
            except OSError:
                return None

    # -- helpers (lock held) -----------------------------------------------------------------
    def _need(self, kd: Kdamond) -> None:
        if kd.index is None:
            raise DamonError(f"{kd.label} has no kdamond (not started, or deleted)")

    def _is_on(self, kd: Kdamond) -> bool:
        try:
            return kd.sysfs.state(kd.index) == "on"
        except OSError:
            return False

    def _write(self, kd: Kdamond) -> None:
        try:
            kd.sysfs.write_kdamond(kd.index, kd.spec)
        except OSError as exc:
            raise DamonError(f"cannot set up DAMON for {kd.label}: {exc.strerror or exc} "
                             f"({exc.filename or 'sysfs'})") from None

    def _turn_on(self, kd: Kdamond) -> None:
        try:
            kd.sysfs.command(kd.index, "on")
            kd.starts += 1
        except OSError as exc:
            raise DamonError(f"DAMON refused to start {kd.label}: {exc.strerror or exc} (a target process "
                             f"that exited, or monitoring attributes the kernel rejects)") from None

    def _turn_off(self, kd: Kdamond) -> None:
        """Off, with the scheme counters read first and kept (they start from 0 at the next on)."""
        if not self._is_on(kd):
            kd._fold()
            return
        try:
            kd.sysfs.command(kd.index, "update_schemes_stats")
            kd._running = kd.sysfs.scheme_stats(kd.index, len(kd.spec.schemes))
        except OSError:
            pass   # the kernel may have stopped it meanwhile: the last figures read stand
        kd._fold()
        try:
            kd.sysfs.command(kd.index, "off")
        except OSError as exc:
            if self._is_on(kd):
                raise DamonError(f"cannot stop etmem's kdamond for {kd.label}: {exc.strerror or exc}") from None


def _targets_added(old: KdamondSpec, new: KdamondSpec) -> bool:
    """new is old with targets appended, nothing else changed."""
    n = len(old.targets)
    return (len(new.targets) > n and new.targets[:n] == old.targets
            and attrs.evolve(new, targets=old.targets) == old)


KDAMONDS = KdamondSet()


def owner_problem(sysfs: Sysfs | None = None) -> str | None:
    """Why DAMON cannot be etmem's to use (another owner's kdamonds), read-only; None when it can."""
    return KDAMONDS.owner_problem(sysfs)
