"""psi: proactive reclaim of memory cgroups, as much as their memory pressure allows.

Each round (every `interval` s, docs/psi.md) a task finds its cgroups again (a path, a
glob such as `isulad/*`, a systemd unit, or the cgroup a process runs in) and, per
cgroup, reads its pressure (PSI) and refaults. While both are low it asks the kernel,
through `memory.reclaim`, for a share (`reclaim_rate`) of what lies above a floor of
memory the cgroup keeps; the share grows after good rounds and shrinks after bad ones.
The floor, the amount and the rate step are pure functions below. With `dry_run=yes` a
round works out the same amount and reports it (`chosen`, `detail.requested`) without
writing `memory.reclaim`.
"""
from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import attrs

from .. import kernel, procfs
from ..cgroup import GLOB_CHARS, PAGE, Cgroup, CgroupGone, Hierarchy, MemoryFigures, system_hierarchy
from ..config import MAX_COMM, Choice, Float, KeyType, Size, Text, key
from ..errors import EtmemError, ProcError
from ..hookspecs import hookimpl
from ..stats import RoundResult, TargetResult
from ..strategy import Strategy
from .keys import dry_run_key

log = logging.getLogger("etmem.psi")

# The rate counter (upstream's): GOOD_ROUNDS reclaiming rounds in a row raise the rate by
# RATE_STEP, BAD_ROUNDS rounds under pressure in a row lower it by as much.
RATE_STEP = 0.01
GOOD_ROUNDS = 5
BAD_ROUNDS = 2
MAX_CG_DIR = 63   # upstream's cg_dir is shorter than 64 characters
ROOT_REFUSAL = "reclaiming the root cgroup would reclaim from every process of the machine"


class CgroupDir(KeyType):
    """`cg_dir`: a cgroup path relative to the cgroup mount, or a glob of them (`isulad/*`)."""

    allowed = f"a cgroup path under the cgroup mount such as isulad/web, or a glob such as isulad/*, at most {MAX_CG_DIR} characters"

    def __call__(self, raw: Any) -> str:
        text = str(raw).strip()
        path = text.strip("/")   # upstream joins it to the mount: a leading / changes nothing
        if not text or len(text) > MAX_CG_DIR or "\n" in text:
            raise ValueError(f"must be {self.allowed}")
        if not path:
            raise ValueError(f"names the root cgroup: {ROOT_REFUSAL}; name a cgroup below it")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError(f"must be {self.allowed}, without empty, . or .. parts")
        return path


class UnitName(KeyType):
    """`unit`: a systemd service, scope or slice whose cgroup the task reclaims."""

    allowed = "a systemd unit name such as redis.service, app.scope or web.slice"

    def __call__(self, raw: Any) -> str:
        text = str(raw).strip()
        if not re.fullmatch(r"[A-Za-z0-9:_.\\@-]{1,250}\.(service|scope|slice)", text) or text == "-.slice":
            raise ValueError(f"must be {self.allowed} (not the root slice -.slice)")
        return text


@attrs.frozen
class PsiTaskKeys:
    cg_dir: str = key(CgroupDir(), None, help="the cgroup(s) to reclaim: a path under the cgroup mount, or a glob (isulad/*) globbed again each round")
    unit: str = key(UnitName(), None, help="new: the cgroup of this systemd unit (system.slice/redis.service)")
    type: str = key(Choice("pid", "name"), None, help="new: with value, the cgroup a process runs in: pid or process name")
    value: str = key(Text(256), None, help="new: a pid, or a process name as in /proc/PID/comm")
    pressure: float = key(Float(0), 0.1, help="reclaim only while max(some avg10, some avg60) of memory.pressure is below this (percent)")
    reclaim_rate: float = key(Float(0), 0.05, help="share of the memory above the floor reclaimed a round, to start with")
    reclaim_rate_max: float = key(Float(0), 0.5, help="the rate rises at most to this")
    reclaim_rate_min: float = key(Float(0), 0.01, help="the rate falls at least to this")
    reclaim_max_bytes: int = key(Size(), 1 << 30, help="bytes reclaimed at most a round, e.g. 256m")
    limit_min_bytes: int = key(Size(), 0, help="bytes kept above the unreclaimable memory")
    limit_min_ratio: float = key(Float(0), 0.1, help="share of memory.max always kept (nothing when there is no limit)")
    refault_ratio: float = key(Float(0), 0.25, help="new: no reclaim while more than this share of the last reclaim came back as refaults")
    dry_run: bool = dry_run_key()


@attrs.define
class CgroupState:
    """What a psi task remembers of one cgroup between rounds."""

    path: str
    rate: float
    streak: int = 0                    # > 0: good rounds in a row, < 0: bad ones
    reclaimed_total: int = 0           # bytes
    last_reclaimed: int = 0            # bytes, by the latest round that reclaimed anything
    refaults_seen: int | None = None   # the cgroup's refault counter (pages) at the previous round


@attrs.define
class PsiState:
    """A psi task's cgroups, by (device, inode) of their directory, and its running total."""

    cgroups: dict = attrs.field(factory=dict)
    reclaimed_total: int = 0   # bytes, cgroups since dropped included


# -- the pure core -------------------------------------------------------------------


def reclaim_floor(figures: MemoryFigures, limit_min_bytes: int, limit_min_ratio: float) -> int:
    """Bytes the cgroup keeps: max(limit_min_bytes + unreclaimable, memory.min, memory.low, limit x ratio).

    Unreclaimable is what no reclaim can free: usage minus the file LRU and as much of the
    anon LRU as swap has room for. Without a limit the ratio term is 0.
    """
    stat = figures.stat
    swappable = stat.anon_lru if figures.swap_room is None else min(stat.anon_lru, figures.swap_room)
    unreclaimable = max(0, figures.current - (stat.file_lru + swappable))
    by_limit = 0 if figures.limit is None else int(figures.limit * limit_min_ratio)
    return max(limit_min_bytes + unreclaimable, figures.memory_min, figures.memory_low, by_limit)


def reclaim_amount(current: int, floor: int, rate: float, max_bytes: int) -> int:
    """Bytes to ask memory.reclaim for: min((current - floor) x rate, max_bytes), down to whole 4 KiB pages."""
    if current <= floor:
        return 0
    return min(int((current - floor) * rate), max_bytes) // PAGE * PAGE


def next_rate(rate: float, streak: int, good: bool | None, low: float, high: float) -> tuple[float, int]:
    """The rate counter: (rate, streak) after a good (True), bad (False) or idle (None) round.

    The streak counts good rounds up and bad ones down, starting again from 0 when the
    direction changes; GOOD_ROUNDS good ones raise the rate by RATE_STEP (to `high`),
    BAD_ROUNDS bad ones lower it as much (to `low`), and the count starts again.
    """
    if good is None:
        return rate, streak
    if good:
        streak = streak + 1 if streak > 0 else 1
        if streak >= GOOD_ROUNDS:
            return min(high, round(rate + RATE_STEP, 6)), 0
    else:
        streak = streak - 1 if streak < 0 else -1
        if streak <= -BAD_ROUNDS:
            return max(low, round(rate - RATE_STEP, 6)), 0
    return rate, streak


def too_much_pressure(pressure: float | None, threshold: float, refaulted_pages: int | None,
                      last_reclaimed: int, refault_ratio: float) -> str | None:
    """Why this round must not reclaim (a bad round), or None.

    PSI: the cgroup's recent pressure is not below `threshold`. Refaults: more than
    refault_ratio of the bytes the latest reclaim took have been faulted back in since the
    previous round (the only guard where PSI is off, a second one where it is on).
    """
    if pressure is not None and pressure >= threshold:
        return f"memory pressure {pressure:.2f} is not below pressure={threshold:g}"
    if refaulted_pages is not None and last_reclaimed > 0 and refaulted_pages * PAGE > refault_ratio * last_reclaimed:
        return (f"{refaulted_pages * PAGE >> 10} KiB refaulted since the last round, more than refault_ratio={refault_ratio:g} "
                f"of the {last_reclaimed >> 10} KiB last reclaimed")
    return None


# -- the engine ----------------------------------------------------------------------


class Psi(Strategy):
    name = "psi"
    task_keys = PsiTaskKeys
    description = "proactive reclaim of memory cgroups while their memory pressure is low"

    # The cgroups' hierarchy; None: the running kernel's. Tests point it at a tree of their own.
    hierarchy: ClassVar[Hierarchy | None] = None

    def __init__(self, engine):
        super().__init__(engine)
        self.cgroups = type(self).hierarchy or system_hierarchy()
        if not kernel.has_psi():
            log.warning("engine psi of project %s: %s; rounds are steered by refaults alone",
                        engine.project.name, kernel.missing("psi"))

    @classmethod
    def check_task(cls, keys, extra, project):
        problems = []
        if project is not None and project.scan_type != "psi":
            problems.append(("engine", f"psi needs a project with scan_type=psi (project {project.name} has {project.scan_type})"))
        named = [k for k in ("cg_dir", "unit") if getattr(keys, k) is not None]
        if keys.type is not None or keys.value is not None:
            named.append("type")
            if keys.type is None or keys.value is None:
                problems.append(("type" if keys.type is None else "value", "is needed too: type and value name a process together"))
            elif keys.type == "pid" and (not keys.value.isdigit() or int(keys.value) < 1):
                problems.append(("value", "must be a process id (a positive integer) when type=pid"))
            elif keys.type == "name" and (len(keys.value) > MAX_COMM or "/" in keys.value):
                problems.append(("value", f"must be a process name of 1 to {MAX_COMM} characters as in /proc/PID/comm when type=name"))
        if not named:
            problems.append((None, "names no cgroup: give cg_dir (a cgroup path or glob), unit (a systemd unit) "
                                   "or type and value (a process)"))
        elif len(named) > 1:
            problems.append((named[1], f"a task names its cgroups one way: give only one of cg_dir, unit, type/value (it has {' and '.join(named)})"))
        low, high = keys.reclaim_rate_min, keys.reclaim_rate_max
        if low > high:
            problems.append(("reclaim_rate_min", f"must not be above reclaim_rate_max ({high:g})"))
        elif not low <= keys.reclaim_rate <= high:
            problems.append(("reclaim_rate", f"must be from reclaim_rate_min ({low:g}) to reclaim_rate_max ({high:g})"))
        return problems

    def add_task(self, task):
        task.state = PsiState()

    # -- one round --------------------------------------------------------------------
    def run_round(self, task, stop):
        state: PsiState = task.state
        try:
            paths, skipped, refused = self._cgroup_paths(task.keys)
        except EtmemError as exc:
            return RoundResult(errors=[str(exc)])
        results, seen = [], set()
        for path in paths:
            if stop.is_set():
                break
            out = TargetResult(None, detail={"cgroup": path})
            cgroup = self.cgroups.cgroup(path)
            try:
                ident = cgroup.identity()
                if ident in seen:
                    continue
                seen.add(ident)
                cg_state = state.cgroups.get(ident)
                if cg_state is None:
                    cg_state = state.cgroups[ident] = CgroupState(path, task.keys.reclaim_rate)
                    log.info("task %s: cgroup %s joins", task.label, path)
                cg_state.path = path
                self._reclaim(cgroup, cg_state, task.keys, state, out)
            except CgroupGone as exc:
                if task.keys.unit or GLOB_CHARS.search(task.keys.cg_dir or ""):
                    continue   # removed since it was found (a container or unit stopped): dropped, no error
                out.error = str(exc)
            except EtmemError as exc:
                out.error = str(exc)
            results.append(out)
        if not stop.is_set():
            for ident in [i for i in state.cgroups if i not in seen]:
                log.info("task %s: cgroup %s is gone; dropped", task.label, state.cgroups.pop(ident).path)
        task.stats.extra = {**task.stats.extra, "reclaimed_bytes": state.reclaimed_total,
                            "cgroups": {r.detail["cgroup"]: _summary(r) for r in results}}
        if skipped and not results:
            return RoundResult(skipped=skipped)
        return RoundResult(results, errors=[refused] if refused else [])

    def _cgroup_paths(self, keys: PsiTaskKeys) -> tuple[list[str], str | None, str | None]:
        """The task's cgroups now; why there are none when that is no error; why processes were left out."""
        root = self.cgroups.root
        if keys.cg_dir is not None:
            if not GLOB_CHARS.search(keys.cg_dir):
                return [keys.cg_dir], None, None
            return self.cgroups.glob(keys.cg_dir), f"no cgroup matches {keys.cg_dir} under {root} now", None
        if keys.unit is not None:
            path = self.cgroups.find_unit(keys.unit)
            return ([path] if path else []), f"systemd unit {keys.unit} has no cgroup under {root} (is it running?)", None
        pids = [int(keys.value)] if keys.type == "pid" else procfs.pids_by_comm(keys.value)
        if not pids:
            raise EtmemError(f"no process named {keys.value} is running")
        paths, in_root = [], []
        for pid in pids:
            try:
                path = self.cgroups.process_cgroup(pid)
            except ProcError:
                if keys.type == "pid":
                    raise
                continue   # exited while we looked
            (paths if path else in_root).append(path or pid)
        refused = None
        if in_root:
            which = f"process {in_root[0]} runs" if len(in_root) == 1 else f"processes {', '.join(map(str, in_root))} run"
            refused = (f"{which} in the root cgroup: {ROOT_REFUSAL}; start it in a cgroup of its own "
                       "(a systemd unit, systemd-run --scope, or a cgroup you make)")
            if not paths:
                raise EtmemError(refused)
        return list(dict.fromkeys(paths)), None, refused

    def _reclaim(self, cgroup: Cgroup, st: CgroupState, keys: PsiTaskKeys, state: PsiState, out: TargetResult) -> None:
        out.dry_run = keys.dry_run
        pressure = cgroup.pressure()
        figures = cgroup.figures()
        refaults = figures.stat.refaults
        refaulted = None
        if refaults is not None and st.refaults_seen is not None and refaults >= st.refaults_seen:
            refaulted = refaults - st.refaults_seen
        st.refaults_seen = refaults
        recent = None if pressure is None else pressure.recent
        out.source = "refaults" if pressure is None else "psi"
        out.detail.update(current=figures.current, refaults=refaulted,
                          pressure_avg10=None if pressure is None else pressure.some_avg10,
                          pressure_avg60=None if pressure is None else pressure.some_avg60)
        if pressure is None and refaults is None:
            out.error = (f"cgroup {cgroup.name} gives no feedback: {kernel.missing('psi')}, and its memory.stat "
                         "has no workingset_refault counters")
            return
        why_not = too_much_pressure(recent, keys.pressure, refaulted, st.last_reclaimed, keys.refault_ratio)
        good: bool | None = False
        floor, amount, reclaimed, complete = None, 0, 0, None   # floor: not worked out in a bad round
        if why_not is None:
            floor = reclaim_floor(figures, keys.limit_min_bytes, keys.limit_min_ratio)
            amount = reclaim_amount(figures.current, floor, st.rate, keys.reclaim_max_bytes)
            if amount and keys.dry_run:
                # counted as the good round a real one would be: the rate moves as it would
                out.chosen, good = amount // PAGE, True
                log.info("dry run: would reclaim %d KiB of cgroup %s", amount >> 10, cgroup.name)
            elif amount:
                result = cgroup.reclaim(amount)
                reclaimed, complete, good = result.reclaimed, result.complete, True
                if reclaimed:
                    st.last_reclaimed = reclaimed
                st.reclaimed_total += reclaimed
                state.reclaimed_total += reclaimed
            else:
                good = None
                why_not = f"its {figures.current >> 10} KiB are not above the floor of {floor >> 10} KiB it keeps"
        st.rate, st.streak = next_rate(st.rate, st.streak, good, keys.reclaim_rate_min, keys.reclaim_rate_max)
        out.skipped = why_not
        out.detail.update(floor=floor, requested=amount, reclaimed=reclaimed, complete=complete,
                          reclaimed_total=st.reclaimed_total, rate=st.rate)


def _summary(result: TargetResult) -> dict:
    """One cgroup's line of `project show` (extra.cgroups.PATH.*)."""
    keep = ("current", "reclaimed", "reclaimed_total", "pressure_avg10", "pressure_avg60", "rate", "refaults")
    out = {k: result.detail.get(k) for k in keep}
    out["skipped"] = result.skipped
    out["error"] = result.error
    if result.dry_run:
        out["would_reclaim"] = result.detail["requested"]
    return out


@hookimpl
def etmem_engine_types():
    return [Psi]
