"""damon: upstream's DAMON-scheme engine on DAMON's sysfs interface: one kdamond per region project,
a `vaddr` target per process of its tasks, one DAMOS scheme per damon engine.

The kernel does the work: DAMON watches the processes' memory in regions and applies each
scheme's action (pageout, cold, hugepage, ...) to the regions whose size, access count and
age match it. etmem sets the kdamond up at project start, follows the tasks' processes as
they come and go (a round every max(1 s, update_interval): targets resolved again and
committed), reads the scheme stats for `project show`, turns the kdamond off at project
stop and removes it at obj del. docs/damon.md has the keys and how they map to sysfs.
With `[task] dry_run=yes` the kdamond runs each scheme as `stat` (DAMON only counts the
regions that match it) and every round reports, per process, the pages present in the
regions each scheme's pattern matches, which its action would be applied to; as the
schemes act on every process of the project's kdamond, a region project's tasks are all
dry runs or none.
"""
from __future__ import annotations

import logging
import threading
import time

import attrs
import numpy as np

from .. import kernel, procfs
from ..config import Choice, ConfigError, Int, Name, Size, key
from ..damon_sysfs import (KDAMONDS, U32_MAX, U64_MAX, AccessPattern, DamonError, Kdamond, KdamondSpec,
                           MonitoringAttrs, QuotaGoal, Quotas, Scheme, Target, Watermarks)
from ..errors import EtmemError, ProcError
from ..hookspecs import hookimpl
from ..rounds import RoundTimer
from ..scan import PAGEMAP_CHUNK
from ..scan.pagemap import decode_pagemap_file, default_opener
from ..stats import RoundResult, TargetResult
from ..strategy import Strategy, held_targets
from .keys import dry_run_key

log = logging.getLogger("etmem.damon")

# upstream's six actions first, in upstream's order, then those newer kernels add
ACTIONS = ("willneed", "cold", "pageout", "hugepage", "nohugepage", "stat",
           "lru_prio", "lru_deprio", "migrate_hot", "migrate_cold")

# The last scheme of every project's kdamond is etmem's own: `stat` on every region, so
# that the kdamond's regions can be counted (DAMON lists only the regions a scheme matches).
REGION_COUNTER = Scheme("stat")

# Quota'd schemes rank regions by access frequency and age (the kernel's default weights are
# all 0, which would leave the choice to address order).
QUOTA_WEIGHTS = (0, 1000, 1000)
# Counting the regions makes the kdamond list every region of every scheme in sysfs (a
# directory each) and etmem read them back: outside a dry run, where the count is only
# shown, it is done at most this often.
REGION_COUNT_PERIOD_S = 30.0
DEFAULT_RESET_INTERVAL_MS = 1000
DEFAULT_WMARK_INTERVAL_US = 1_000_000


@attrs.frozen
class DamonEngineKeys:
    """The [engine] keys of name=damon: upstream's action and access pattern, then etmem's extras."""

    action: str = key(Choice(*ACTIONS), help="what DAMON does to the matching regions")
    min_size: int = key(Size(), 0, help="regions of at least this many bytes (e.g. 4096, 2m)")
    max_size: int = key(Size(), U64_MAX, help="regions of at most this many bytes")
    min_acc: int = key(Int(0, U32_MAX), 0, help="regions accessed at least this often per aggregation interval")
    max_acc: int = key(Int(0, U32_MAX), U32_MAX, help="regions accessed at most this often per aggregation interval")
    min_age: int = key(Int(0, U32_MAX), 0, help="regions whose access count held for at least this many aggregation intervals")
    max_age: int = key(Int(0, U32_MAX), U32_MAX, help="regions whose access count held for at most this many aggregation intervals")
    eng_name: str = key(Name(), "damon", help="this engine's name in its project, for several damon engines (default damon)")
    target_nid: int = key(Int(0, 1023), None, help="migrate_hot / migrate_cold: the NUMA node to move the pages to")
    quota_ms: int = key(Int(0), 0, help="at most this much CPU time (ms) per quota_reset_interval_ms; 0: no limit")
    quota_bytes: int = key(Size(), 0, help="at most this much memory per quota_reset_interval_ms (e.g. 256m); 0: no limit")
    quota_reset_interval_ms: int = key(Int(1), None, help="the quotas' period in ms (default 1000)")
    quota_goal_psi_us: int = key(Int(1), None, help="tune the quota so that memory pressure (PSI some, us of stall per quota_reset_interval_ms) reaches this")
    wmark_high: int = key(Int(0, 1000), None, help="stop while free memory is above this, per thousand of all memory")
    wmark_mid: int = key(Int(0, 1000), None, help="run while free memory is below this (and above wmark_low), per thousand")
    wmark_low: int = key(Int(0, 1000), None, help="stop while free memory is below this, per thousand")
    wmark_interval_us: int = key(Int(1), None, help="how often the watermarks are checked, in us (default 1000000)")


@attrs.frozen
class DamonTaskKeys:
    dry_run: bool = dry_run_key()


def scheme_of(keys: DamonEngineKeys) -> Scheme:
    """The DAMOS scheme an engine's keys describe."""
    pattern = AccessPattern(keys.min_size, keys.max_size, keys.min_acc, keys.max_acc, keys.min_age, keys.max_age)
    goals = (QuotaGoal("some_mem_psi_us", keys.quota_goal_psi_us),) if keys.quota_goal_psi_us else ()
    quotas = Quotas()
    if keys.quota_ms or keys.quota_bytes or goals:
        quotas = Quotas(keys.quota_ms, keys.quota_bytes, keys.quota_reset_interval_ms or DEFAULT_RESET_INTERVAL_MS,
                        goals, QUOTA_WEIGHTS)
    watermarks = Watermarks()
    if keys.wmark_high is not None:
        watermarks = Watermarks("free_mem_rate", keys.wmark_interval_us or DEFAULT_WMARK_INTERVAL_US,
                                keys.wmark_high, keys.wmark_mid, keys.wmark_low)
    return Scheme(keys.action, pattern, quotas, watermarks, keys.target_nid)


def observing(scheme: Scheme) -> Scheme:
    """The scheme of a dry run: the same pattern, quotas and watermarks, with DAMON's `stat`
    action, which only counts the regions that match."""
    return attrs.evolve(scheme, action="stat", target_nid=None)


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The address ranges both of two sets cover: a (n, 2) and b (m, 2) of [start, end) rows,
    each sorted and not overlapping itself. Rows in address order."""
    a, b = np.asarray(a, dtype=np.uint64).reshape(-1, 2), np.asarray(b, dtype=np.uint64).reshape(-1, 2)
    lo = np.searchsorted(b[:, 1], a[:, 0], side="right")   # the first b range ending after a starts
    hi = np.searchsorted(b[:, 0], a[:, 1], side="left")    # past the last b range starting before a ends
    n = np.maximum(hi - lo, 0)
    ai = np.repeat(np.arange(len(a)), n)
    bi = lo[ai] + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    out = np.stack([np.maximum(a[ai, 0], b[bi, 0]), np.minimum(a[ai, 1], b[bi, 1])], axis=1)
    return out[out[:, 1] > out[:, 0]]


def merged(ranges: np.ndarray) -> np.ndarray:
    """[start, end) rows sorted and joined where they overlap or touch (the regions of several
    targets may cover the same addresses)."""
    ranges = np.asarray(ranges, dtype=np.uint64).reshape(-1, 2)
    if not len(ranges):
        return ranges
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    reach = np.maximum.accumulate(ranges[:, 1])
    first = np.concatenate([[True], ranges[1:, 0] > reach[:-1]])
    starts = ranges[first, 0]
    ends = reach[np.concatenate([np.flatnonzero(first)[1:] - 1, [len(ranges) - 1]])]
    return np.stack([starts, ends], axis=1)


def by_target(every: list, matched: list, pids: tuple) -> dict[int, np.ndarray] | None:
    """A scheme's matched regions split by the kdamond's target they belong to: {pid: (n, 2) rows}.

    Both listings are of one `update_schemes_tried_regions`, in the order the kdamond tried
    the regions (target by target, each in address order), rows (start, end, nr_accesses,
    age): `every` is the region counter's (every region), `matched` the scheme's, a
    subsequence of it. A target's regions start where the addresses fall back; when they fall
    back fewer times than there are targets (a later process mapped above an earlier one) the
    listing cannot say whose a region is: None. Each matched region is the first unused one of
    `every` with its bounds, accesses and age: the pattern matches both or neither of two such
    (a quota may not try the second: then it is taken for the first)."""
    if not pids or not every:
        return None
    starts = np.array([r[0] for r in every], dtype=np.uint64)
    ends = np.array([r[1] for r in every], dtype=np.uint64)
    target = np.concatenate([[0], np.cumsum(starts[1:] < ends[:-1])])
    if int(target[-1]) != len(pids) - 1:
        return None
    out: dict[int, list] = {pid: [] for pid in pids}
    i = 0
    for region in matched:
        while i < len(every) and tuple(every[i]) != tuple(region):
            i += 1
        if i == len(every):
            return None          # not of the same listing
        out[pids[target[i]]].append(region[:2])
        i += 1
    return {pid: np.array(rows, dtype=np.uint64).reshape(-1, 2) for pid, rows in out.items()}


def present_in(pid: int, ranges: np.ndarray, opener=None) -> int:
    """Pages of process pid present in memory within ranges ([start, end) rows), from its
    pagemap; only its mappings are read (DAMON's regions span the gaps between them too).
    0 when the process has gone."""
    try:
        vmas = [(v.start, v.end) for v in procfs.maps(pid) if not v.is_special]
        within = overlap(merged(ranges), np.array(vmas, dtype=np.uint64).reshape(-1, 2))
        f = (opener or default_opener)(f"/proc/{pid}/pagemap", "rb")
    except (OSError, ProcError):
        return 0
    buf = np.empty(PAGEMAP_CHUNK, dtype=np.uint64)
    try:
        return sum(int(decode_pagemap_file(f, int(start), int(end), buf)["present"].sum()) for start, end in within)
    except OSError:
        return 0
    finally:
        f.close()


def monitoring_attrs(project) -> MonitoringAttrs:
    return MonitoringAttrs(project.sample_interval, project.aggr_interval, project.update_interval,
                           project.min_nr_regions, project.max_nr_regions)


def round_period(project) -> float:
    """Seconds between a region project's rounds: its update_interval, at least 1 s."""
    return max(1.0, (project.update_interval or 0) / 1e6)


class Damon(Strategy):
    name = "damon"
    engine_keys = DamonEngineKeys
    task_keys = DamonTaskKeys
    instance_key = "eng_name"
    # The kdamond is turned on at project start and off at project stop: the engine starts
    # and stops its project's round timer itself (rounds.RoundTimer, as every engine's).
    schedule = "self"
    description = "DAMON schemes (DAMOS) on the processes of a region project, through DAMON's sysfs"

    @classmethod
    def check_engine(cls, keys: DamonEngineKeys, extra: dict) -> list[tuple[str, str]]:
        problems = []
        for low, high in (("min_size", "max_size"), ("min_acc", "max_acc"), ("min_age", "max_age")):
            if getattr(keys, low) > getattr(keys, high):
                problems.append((low, f"must not be above {high} ({getattr(keys, high)})"))
        for name in ("min_size", "max_size", "quota_bytes"):
            if getattr(keys, name) > U64_MAX:
                problems.append((name, f"must be at most {U64_MAX} bytes"))
        migrates = keys.action in ("migrate_hot", "migrate_cold")
        if migrates and keys.target_nid is None:
            problems.append(("target_nid", f"is required for action={keys.action}: the node to move pages to"))
        if not migrates and keys.target_nid is not None:
            problems.append(("target_nid", "is only for action=migrate_hot or migrate_cold"))
        if keys.quota_reset_interval_ms is not None and not (keys.quota_ms or keys.quota_bytes or keys.quota_goal_psi_us):
            problems.append(("quota_reset_interval_ms", "needs a quota: quota_ms, quota_bytes or quota_goal_psi_us"))
        marks = {n: getattr(keys, n) for n in ("wmark_high", "wmark_mid", "wmark_low")}
        given = [n for n, v in marks.items() if v is not None]
        if given and len(given) < 3:
            missing = [n for n in marks if n not in given][0]
            problems.append((missing, "is required too: give wmark_high, wmark_mid and wmark_low, or none"))
        elif given and not marks["wmark_high"] >= marks["wmark_mid"] >= marks["wmark_low"]:
            problems.append(("wmark_mid", "watermarks must keep wmark_high >= wmark_mid >= wmark_low"))
        if keys.wmark_interval_us is not None and not given:
            problems.append(("wmark_interval_us", "needs the watermarks: wmark_high, wmark_mid and wmark_low"))
        return problems

    def __init__(self, engine):
        super().__init__(engine)
        keys, project = engine.keys, engine.project
        if project.scan_type != "region":
            raise self._config_error("name", f"the damon engine needs a project with scan_type=region "
                                     f"(project {project.name} has scan_type={project.scan_type})")
        samples = project.aggr_interval // project.sample_interval
        if keys.min_acc > samples:
            raise self._config_error("min_acc", f"can never match: an aggregation interval has at most "
                                     f"aggr_interval / sample_interval = {samples} samples")
        problem = kernel_problem(keys)
        if problem:
            raise DamonError(f"{self._where()}engine {engine.name}: {problem}")
        self.scheme = scheme_of(keys)
        self.kdamond = ProjectKdamond.of(engine)
        self.kdamond.add_engine(self)

    def _where(self) -> str:
        origin = self.engine.origin
        return f"{origin.path}:{origin.line}: " if origin is not None and origin.path else ""

    def _config_error(self, key_name: str, message: str) -> ConfigError:
        origin = self.engine.origin
        value = getattr(self.engine.keys, key_name, None) if key_name != "name" else self.name
        return ConfigError(message, path=origin.path if origin else None,
                           line=origin.line_of(key_name) if origin else None, group="engine",
                           key=key_name, value=None if value is None else str(value))

    def add_task(self, task) -> None:
        self.kdamond.join_task(task)

    def remove_task(self, task) -> None:
        self.kdamond.leave_task(task)

    def start_task(self, task) -> None:
        self.kdamond.start_task(task)

    def stop_task(self, task) -> None:
        self.kdamond.stop_task(task)

    def run_engine_round(self, tasks: list, stop: threading.Event) -> dict:
        return self.kdamond.run_round(tasks, stop)

    def close(self) -> None:
        self.kdamond.remove_engine(self)


def kernel_problem(keys: DamonEngineKeys) -> str | None:
    """Why this kernel cannot run an engine with these keys now (read-only); None when it can."""
    problems = []
    owner = KDAMONDS.owner_problem()
    if owner:
        problems.append(owner)
    if "vaddr" not in kernel.damon_operations():
        problems.append(kernel.missing("damon"))
    else:
        action = kernel.damon_action_problem(keys.action)
        if action:
            problems.append(f"action={keys.action}: {action}")
        if keys.quota_goal_psi_us:
            goal = kernel.damon_quota_goal_problem("some_mem_psi_us")
            if goal:
                problems.append(f"quota_goal_psi_us: {goal}")
    return "; and ".join(problems) or None


class ProjectKdamond:
    """The one kdamond of a region project, shared by its damon engines through EngineView.shared.

    It holds the project's kdamond (from the first task's start until the last damon
    engine is deleted), the started tasks, and the project's round timer: one round over
    every started task of every damon engine of the project, every round_period().
    """

    def __init__(self, project, round_finished=lambda task, stats: None):
        self.project = project
        self.engines: list[Damon] = []
        self.kd: Kdamond | None = None
        self._scheme_engines: list[Damon] = []   # whose scheme each of the kdamond's schemes is
        self.started: list = []         # TaskViews, in the order they started
        self.joined: list = []          # every task of the project's damon engines (TaskViews)
        self.nr_regions: int | None = None
        self._counted: tuple | None = None   # (monotonic time, kdamond starts) of the last count
        self.matching: dict = {}        # dry run: engine -> the regions its pattern matched last
        self.matching_by_pid: dict = {}  # dry run: engine -> {pid: its share of them}, or None: not known
        self.lock = threading.RLock()   # the engines, the tasks and the kdamond
        self.timer = RoundTimer(f"{project.name}-damon", round_period(project), self.run_round, round_finished)

    @classmethod
    def of(cls, engine) -> "ProjectKdamond":
        shared = engine.shared.get("damon")
        if shared is None:
            shared = engine.shared["damon"] = cls(engine.project, engine.round_finished)
        return shared

    @property
    def dry_run(self) -> bool:
        """The project's tasks only observe (join_task keeps them all dry runs or none)."""
        return any(t.keys.dry_run for t in self.joined)

    def spec(self, targets: tuple = ()) -> KdamondSpec:
        dry = self.dry_run
        schemes = tuple(observing(e.scheme) if dry else e.scheme for e in self.engines) + (REGION_COUNTER,)
        return KdamondSpec(monitoring_attrs(self.project), targets, schemes)

    # -- tasks come and go (obj add / obj del) -----------------------------------------------
    def join_task(self, task) -> None:
        """A task joins; refused when its dry_run differs from the project's other tasks':
        every scheme of the kdamond acts on every task's processes."""
        with self.lock:
            other = next((t for t in self.joined if t.keys.dry_run != task.keys.dry_run), None)
            if other is not None:
                def yes(t):
                    return "yes" if t.keys.dry_run else "no"
                raise ConfigError(f"task {task.name} of engine {task.engine_name} cannot join task {other.name} of "
                                  f"engine {other.engine_name} (dry_run={yes(other)}) in project {self.project.name}: "
                                  "the damon engines of a region project share one kdamond, whose schemes act on "
                                  "every task's processes; make every task of the project a dry run, or none",
                                  group="task", key="dry_run", value=yes(task))
            self.joined.append(task)

    def leave_task(self, task) -> None:
        with self.lock:
            if task in self.joined:
                self.joined.remove(task)

    # -- engines come and go (obj add / obj del) ----------------------------------------------
    def add_engine(self, engine: Damon) -> None:
        with self.lock:
            self.engines.append(engine)
            if self.kd is not None:
                self._update(self.kd.spec.targets)

    def remove_engine(self, engine: Damon) -> None:
        with self.lock:
            if engine not in self.engines:
                return
            self.engines.remove(engine)
            if self.kd is None:
                return
            if self.engines:
                self._update(self.kd.spec.targets)
            else:
                KDAMONDS.leave(self.kd)
                self.kd = None

    def _update(self, targets: tuple) -> None:
        """The project's kdamond runs the engines' schemes now, on targets; totals follow their engines."""
        before = self._scheme_engines
        kept = [before.index(e) if e in before else None for e in self.engines] + [len(before)]  # + the counter
        KDAMONDS.update(self.kd, self.spec(targets), kept)
        self._scheme_engines = list(self.engines)

    # -- project start / stop --------------------------------------------------------------
    def start_task(self, task) -> None:
        """A task starts: the first one sets the kdamond up and turns it on (errors fail the start)."""
        with self.lock:
            if self.kd is None:
                kd = Kdamond(f"project {self.project.name}", "engine", self.spec())
                KDAMONDS.join(kd)
                self.kd, self._scheme_engines = kd, list(self.engines)
            if task not in self.started:
                self.started.append(task)
            if len(self.started) == 1:
                with held_targets(self.started, {}) as held:
                    targets = _targets(held)
                    KDAMONDS.update(self.kd, self.spec(targets))
                    KDAMONDS.start(self.kd)
        self.timer.add(task)

    def stop_task(self, task) -> None:
        """A task stops; with the last one the kdamond is turned off (its sysfs objects stay until obj del)."""
        self.timer.remove(task)
        with self.lock:
            if task in self.started:
                self.started.remove(task)
            if not self.started and self.kd is not None:
                KDAMONDS.stop(self.kd)
                for view in self._views():
                    view.stats.extra.setdefault("kdamond", {})["state"] = "off"

    def _views(self) -> list:
        return [t for e in self.engines for t in e.engine.tasks]

    # -- rounds ------------------------------------------------------------------------------
    def run_round(self, tasks: list, stop: threading.Event) -> dict:
        """One round: the started tasks' processes resolved and committed as the kdamond's
        targets, the scheme stats and regions read; a RoundResult for each of `tasks`."""
        with self.lock:
            if self.kd is None or not self.started:
                return {t: RoundResult(skipped="the project is not started: DAMON runs from project start")
                        for t in tasks}
            errors: dict = {}
            results = {t: RoundResult() for t in tasks}
            with held_targets(self.started, errors) as held:
                targets = _targets(held)
                try:
                    KDAMONDS.update(self.kd, self.spec(targets))
                except EtmemError as exc:
                    for result in results.values():
                        result.errors.append(str(exc))
                for task, handle in held:
                    if task in results:
                        results[task].targets.append(_target_result(handle.pid))
            try:
                state = KDAMONDS.refresh(self.kd)
            except EtmemError as exc:
                state = "?"
                for result in results.values():
                    result.errors.append(str(exc))
            dry = self.dry_run
            if state == "on" and dry:
                self._count_matching()
            elif state == "on" and self._count_due():
                # 6.12 now and then lists no region at all for a scheme of a running kdamond
                # (an update that raced the kdamond's own): the last count stands then.
                self.nr_regions = KDAMONDS.count_regions(self.kd, len(self.engines)) or self.nr_regions
                self._counted = (time.monotonic(), self.kd.starts)
            regions = self.nr_regions if state == "on" else None
            totals = self.kd.totals()
            kdamond = {"index": self.kd.index, "state": state, "nr_regions": regions,
                       "targets": len(targets), "starts": self.kd.starts}
            for task, result in results.items():
                result.errors.extend(errors.get(task, []))
                if state != "on" and not targets:
                    result.skipped = "no target process is running: DAMON is off until one is"
                engine = self._engine_of(task)
                if engine is not None:
                    stats = totals[self.engines.index(engine)].as_dict()
                    task.stats.extra["scheme"] = dict(action=engine.scheme.action, **stats)
                    if dry:
                        self._report_matching(engine, task, result, state == "on")
                task.stats.extra["kdamond"] = dict(kdamond)
            return results

    def _count_due(self) -> bool:
        """Outside a dry run: count the regions at the first round of each monitoring run, then
        every REGION_COUNT_PERIOD_S."""
        if self._counted is None:
            return True
        at, starts = self._counted
        return starts != self.kd.starts or time.monotonic() - at >= REGION_COUNT_PERIOD_S

    def _count_matching(self) -> None:
        """Dry run: the regions each engine's scheme matches now, from one listing with the region
        counter's; a listing whose counter shows no region raced an update, and the last one stands."""
        listed = KDAMONDS.schemes_regions(self.kd, range(len(self.engines) + 1))
        if not listed or not listed[-1]:
            return
        self.nr_regions = len(listed[-1])
        self.matching = {engine: np.array([(start, end) for start, end, *_ in regions], dtype=np.uint64).reshape(-1, 2)
                         for engine, regions in zip(self.engines, listed)}
        pids = tuple(t.pid for t in self.kd.spec.targets)
        self.matching_by_pid = {engine: by_target(listed[-1], regions, pids)
                                for engine, regions in zip(self.engines, listed)}

    def _report_matching(self, engine: Damon, task, result: RoundResult, on: bool) -> None:
        """Dry run: per process, the pages present in the regions the engine's scheme matches,
        which its action would be applied to (`chosen`); the scheme's regions and their size."""
        task.stats.extra["scheme"]["dry_run"] = True
        regions = self.matching.get(engine) if on else None
        if regions is not None:
            task.stats.extra["scheme"].update(matching_regions=len(regions),
                                              matching_bytes=int((regions[:, 1] - regions[:, 0]).sum()))
        # With several processes, each gets its own regions where the listing tells them
        # apart; else every matched region is taken, within the process's own mappings
        # (which over-counts processes of one layout, as a fork's).
        mine = self.matching_by_pid.get(engine) if on else None
        for out in result.targets:
            out.dry_run = True
            out.detail["action"] = engine.scheme.action
            if regions is not None and not out.skipped:
                own = mine.get(out.pid) if mine is not None else None
                out.chosen = present_in(out.pid, regions if own is None else own)

    def _engine_of(self, task) -> Damon | None:
        for e in self.engines:
            if task in e.engine.tasks:
                return e
        return None


def _targets(held) -> tuple:
    """The kdamond's targets: each held process once, in task order."""
    return tuple(Target(pid) for pid in dict.fromkeys(handle.pid for _, handle in held))


def _target_result(pid: int) -> TargetResult:
    """A monitored process: DAMON acts on it in the kernel; its resident and swapped memory are shown."""
    out = TargetResult(pid, source="damon")
    try:
        status = procfs.status(pid)
        out.detail = {"rss_kb": _kb(status.get("VmRSS")), "swap_kb": _kb(status.get("VmSwap"))}
    except ProcError:
        out.skipped = f"process {pid} exited during the round"
    return out


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


@hookimpl
def etmem_engine_types():
    return [Damon]
