"""cslide: keep hot pages on fast NUMA nodes and cold pages on slow ones (DRAM and PMEM / CXL).

One round every `interval` s covers all of the engine's started tasks together (the
round timer's per-engine schedule): resolve each task's targets again (pidfd handles), scan them `loop` times, find
the node of every resident page (move_pages with no nodes), count hot and cold pages per
node, let the placement policy (placement.py) choose moves per node pair within
`node_mig_quota`, and move them with move_pages(2): demotions first, so promotions find
the room the plan counted on. `showtaskpages` / `showhostpages` print the last round's
pages per node. docs/cslide.md has the semantics and which memory counters are used when.
A task with `dry_run=yes` takes part in the plan as it would in a real run (its pages
count toward the quota and the nodes' room) but none of its pages are moved; its
TargetResults say what would have moved where.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import attrs
import numpy as np

from .. import procfs
from ..actions import move_pages, page_nodes
from ..config import Int, NodePairs, VmFlag, YesNo, key
from ..errors import ConfigError, EtmemError, ObjectError
from ..history import summarize_scan
from ..hookspecs import hookimpl
from ..process import ProcessHandle
from ..scan import CLAIMS, PAGE, Scanner
from ..stats import CallCounters, RoundResult, TargetResult, errno_name
from ..strategy import Strategy, held_targets
from .keys import dry_run_key, pmu_key
from .placement import (DEMOTE_FOR_HOT, DEMOTE_FOR_RESERVE, HUGETLB, NORMAL, PREFETCH_WARM, PROMOTE_HOT,
                        NodeMemory, plan_moves)

log = logging.getLogger("etmem.cslide")

MiB = 1 << 20
HUGETLB_PAGE = 2 << 20      # upstream's (and our) hugetlb size: hugepages-2048kB
PROMOTIONS = (PROMOTE_HOT, PREFETCH_WARM)
DEMOTIONS = (DEMOTE_FOR_HOT, DEMOTE_FOR_RESERVE)


@attrs.frozen
class CslideEngineKeys:
    node_pair: tuple = key(NodePairs(), help="fast,slow node pairs: 'dram,pmem;dram,pmem', e.g. 0,2;1,3")
    hot_threshold: int = key(Int(0), help="pages accessed at least this often per round are hot")
    node_mig_quota: int = key(Int(0), help="MB migrated at most per round in each direction of a pair")
    node_hot_reserve: int = key(Int(0), help="MB of fast memory kept for hot pages")
    sample_period: str = pmu_key()
    vma_updata_rate: str = pmu_key()
    cpu_set_size: str = pmu_key()
    cooling_interval: str = pmu_key()


@attrs.frozen
class CslideTaskKeys:
    vm_flags: str = key(VmFlag(), None, help="scan only VMAs whose smaps VmFlags include this flag (e.g. ht)")
    anon_only: bool = key(YesNo(), False, help="scan only anonymous memory")
    ign_host: bool = key(YesNo(), False, help="for VM memory: ignore the host page table (idle_pages only)")
    dry_run: bool = dry_run_key()



class SystemNodes:
    """The machine's NUMA nodes as cslide sees them; tests hand the engine another object with these methods.

    memory(node): total and free bytes of all memory (nodeN/meminfo MemTotal, MemFree);
    hugetlb(node): the 2 MiB hugetlb pool (nr_hugepages, free_hugepages of hugepages-2048kB).
    """

    def memory_nodes(self) -> list[int]:
        return procfs.memory_nodes()

    def memory(self, node: int) -> NodeMemory:
        info = procfs.node_meminfo(node)
        return NodeMemory(info.get("MemTotal", 0) << 10, info.get("MemFree", 0) << 10)

    def hugetlb(self, node: int) -> NodeMemory:
        try:
            total, free = procfs.node_hugepages(node, HUGETLB_PAGE >> 10)
        except OSError:     # a kernel without hugetlbfs: no pool
            return NodeMemory(0, 0)
        return NodeMemory(total * HUGETLB_PAGE, free * HUGETLB_PAGE)

    def page_nodes(self, handle: ProcessHandle, addrs: np.ndarray, counters: CallCounters) -> np.ndarray:
        return page_nodes(handle, addrs, counters)

    def move_pages(self, handle: ProcessHandle, addrs: np.ndarray, node: int, counters: CallCounters) -> np.ndarray:
        return move_pages(handle, addrs, node, counters=counters).status


@attrs.define
class CslideState:
    """What a cslide task remembers: its resident, hot and cold bytes per node in the last round."""

    by_node: dict | None = None


@attrs.define
class _Target:
    """One target process of one task during a round, and its pages once scanned."""

    task: object
    handle: ProcessHandle
    result: TargetResult
    source: str | None = None
    addr: np.ndarray | None = None
    count: np.ndarray | None = None
    size: np.ndarray | None = None
    kind: np.ndarray | None = None
    node: np.ndarray | None = None


def _pages_of(refs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """addr, count, size, kind of a scan; pages of hugetlb VMAs merged into their 2 MiB pages."""
    addr, count, size = refs.addr, refs.count.astype(np.int32), refs.size
    in_ht = np.fromiter(("ht" in v.vmflags for v in refs.vmas), dtype=bool, count=len(refs.vmas))
    ht = in_ht[refs.vma] if len(addr) else np.zeros(0, bool)
    if not ht.any():
        return addr, count, size, np.full(len(addr), NORMAL, np.uint8)
    heads, inverse = np.unique(addr[ht] & ~np.uint64(HUGETLB_PAGE - 1), return_inverse=True)
    head_count = np.zeros(len(heads), np.int32)
    np.maximum.at(head_count, inverse, count[ht])
    addr = np.concatenate([addr[~ht], heads])
    count = np.concatenate([count[~ht], head_count])
    size = np.concatenate([size[~ht], np.full(len(heads), HUGETLB_PAGE, np.uint64)])
    kind = np.concatenate([np.full(int((~ht).sum()), NORMAL, np.uint8), np.full(len(heads), HUGETLB, np.uint8)])
    order = np.argsort(addr, kind="stable")
    return addr[order], count[order], size[order], kind[order]


def _table(header: tuple, rows: list[tuple]) -> str:
    """A text table: `node` left-aligned, numbers right-aligned, one header line."""
    lines = [f"{header[0]:<6}" + "".join(f"{h:>14}" for h in header[1:])]
    for row in rows:
        lines.append(f"{row[0]:<6}" + "".join(f"{v:>14}" for v in row[1:]))
    return "\n".join(lines) + "\n"


class Cslide(Strategy):
    name = "cslide"
    engine_keys = CslideEngineKeys
    task_keys = CslideTaskKeys
    description = "place hot pages on fast NUMA nodes and cold pages on slow ones"
    schedule = "engine"   # one plan over every task's pages: node memory is shared

    # Where kernel files are opened (tests route idle_pages / page_idle to emulations), and
    # the node view (tests describe a topology); None: the real ones.
    opener = None
    node_view = None

    @classmethod
    def check_task(cls, keys, extra, project):
        if project is not None and project.scanner == "refault":
            return [("engine", f"cslide cannot use scanner=refault (project {project.name}): the refault source pages "
                               "samples out to swap, and cslide moves pages between nodes; choose another source "
                               "(auto passes refault over for cslide)")]
        return []

    def __init__(self, engine):
        super().__init__(engine)
        self.nodes = self.node_view if self.node_view is not None else SystemNodes()
        self._check_nodes()
        self.last_round: dict = {}

    def _check_nodes(self) -> None:
        known = sorted(self.nodes.memory_nodes())
        for pair in self.engine.keys.node_pair:
            for n in pair:
                if n not in known:
                    origin = self.engine.origin
                    raise ConfigError(f"names node {n}, but this machine has memory on nodes "
                                      f"{', '.join(str(k) for k in known) or 'none'}",
                                      getattr(origin, "path", None), getattr(origin, "line", None), "engine", "node_pair")

    # -- tasks and rounds: one round over every started task of the engine --------------
    def add_task(self, task):
        task.stats.extra["cslide"] = {"promoted_pages": 0, "demoted_pages": 0, "failed_pages": 0,
                                      "failed_by_errno": {}, "nodes": {}, "last_round": None}
        task.state = CslideState()

    def run_engine_round(self, tasks, stop: threading.Event) -> dict:
        errors: dict = {t: [] for t in tasks}
        with held_targets(tasks, errors) as held:
            targets = [_Target(task, handle, TargetResult(handle.pid)) for task, handle in held]
            timing = {}
            t0 = time.monotonic()
            self._scan(targets, stop)
            active = [t for t in targets if t.result.skipped is None]
            timing["scan_seconds"] = time.monotonic() - t0
            if not stop.is_set():   # an incomplete round moves nothing
                t0 = time.monotonic()
                self._query_nodes(active)
                timing["query_seconds"] = time.monotonic() - t0
                self._round_on(tasks, active, timing)
        return {task: RoundResult([t.result for t in targets if t.task is task], errors=errors[task]) for task in tasks}

    def _scan(self, targets: list[_Target], stop) -> None:
        if not targets:
            return
        workers = max(1, min(len(targets), max(t.task.max_threads for t in targets)))
        if workers == 1:
            for t in targets:
                self._scan_one(t, stop)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"cslide-{self.engine.name}") as pool:
                list(pool.map(lambda t: self._scan_one(t, stop), targets))

    def _scan_one(self, t: _Target, stop) -> None:
        project = self.engine.project
        keys = t.task.keys
        claim = CLAIMS.claim(t.handle)
        if claim is None:
            t.result.skipped = t.result.error = "being scanned by another task; skipped this round"
            return
        try:
            scanner = Scanner(t.handle, source=project.scanner, anon_only=keys.anon_only,
                              vm_flags=(keys.vm_flags,) if keys.vm_flags else (), ign_host=keys.ign_host,
                              huge="keep", opener=self.opener, read_only=True)
            refs = scanner.scan(loop=project.loop or 1, sleep=project.sleep or 0, stop=stop)
        except EtmemError as exc:
            t.result.error = str(exc)
            return
        finally:
            CLAIMS.release(claim)
        t.source = t.result.source = refs.source
        t.result.dry_run = keys.dry_run
        if refs.error:
            t.result.error = refs.error
        if refs.passes < (project.loop or 1):
            return      # an incomplete scan would call every page cold
        t.result.scan = summarize_scan(refs)
        try:
            t.result.resident_bytes = procfs.status_kb(t.handle.pid, "VmRSS") << 10
            t.result.swapped_bytes = procfs.status_kb(t.handle.pid, "VmSwap") << 10
        except EtmemError:
            pass    # gone since the scan: the node query says so
        t.addr, t.count, t.size, t.kind = _pages_of(refs)

    def _query_nodes(self, targets: list[_Target]) -> None:
        for t in targets:
            if t.addr is None:
                continue
            try:
                node = np.asarray(self.nodes.page_nodes(t.handle, t.addr, t.task.stats.calls), dtype=np.int32)
            except EtmemError as exc:
                t.result.error = str(exc)
                t.addr = None
                continue
            present = node >= 0     # -ENOENT: not resident (swapped, never touched)
            t.addr, t.count, t.size, t.kind, t.node = (t.addr[present], t.count[present], t.size[present],
                                                       t.kind[present], node[present])

    def _round_on(self, tasks, targets: list[_Target], timing: dict) -> None:
        keys = self.engine.keys
        scanned = [t for t in targets if t.node is not None]
        if scanned:
            owner = np.concatenate([np.full(len(t.addr), i, np.int32) for i, t in enumerate(scanned)])
            addr = np.concatenate([t.addr for t in scanned])
            count = np.concatenate([t.count for t in scanned])
            size = np.concatenate([t.size for t in scanned]).astype(np.int64)
            kind = np.concatenate([t.kind for t in scanned])
            node = np.concatenate([t.node for t in scanned])
        else:
            owner = node = count = np.zeros(0, np.int32)
            addr = np.zeros(0, np.uint64)
            size = np.zeros(0, np.int64)
            kind = np.zeros(0, np.uint8)
        hot = count >= keys.hot_threshold
        self._count_by_node(tasks, scanned, owner, node, size, hot)

        t0 = time.monotonic()
        memory = {}
        for n in {n for pair in keys.node_pair for n in pair}:
            memory[(n, NORMAL)] = self.nodes.memory(n)
            memory[(n, HUGETLB)] = self.nodes.hugetlb(n)
        plan = plan_moves(node, count, size, kind, keys.node_pair, keys.hot_threshold,
                          keys.node_mig_quota * MiB, keys.node_hot_reserve * MiB, memory)
        timing["plan_seconds"] = time.monotonic() - t0

        t0 = time.monotonic()
        done = np.zeros(len(node), bool)        # moved as planned
        failed = np.zeros(len(node), np.int32)  # errno of a planned move that failed, else 0
        for phase in (DEMOTIONS, PROMOTIONS):   # demotions first: they make the room promotions use
            planned = np.isin(plan.reason, phase)
            for i, t in enumerate(scanned):
                if t.task.keys.dry_run:
                    continue
                mine = planned & (owner == i)
                for dest in np.unique(plan.target[mine]):
                    sel = np.flatnonzero(mine & (plan.target == dest))
                    try:
                        status = np.asarray(self.nodes.move_pages(t.handle, addr[sel], int(dest), t.task.stats.calls))
                    except EtmemError as exc:
                        t.result.error = str(exc)
                        break
                    done[sel] = status == dest
                    failed[sel] = np.where(status < 0, -status, 0)
        timing["move_seconds"] = time.monotonic() - t0
        self._account(tasks, scanned, owner, node, size, hot, plan, done, failed, timing)

    def _count_by_node(self, tasks, scanned, owner, node, size, hot) -> None:
        """Resident, hot and cold bytes of each task per node, and of each target, as the scan found them."""
        for i, t in enumerate(scanned):
            mine = owner == i
            t.result.scanned = int(size[mine].sum()) // PAGE
            t.result.cold = int(size[mine & ~hot].sum()) // PAGE
        for task in tasks:
            mine = np.isin(owner, [i for i, t in enumerate(scanned) if t.task is task])
            by_node = {}
            for n in np.unique(node[mine]).tolist():
                here = mine & (node == n)
                by_node[n] = {"used": int(size[here].sum()), "hot": int(size[here & hot].sum()),
                              "cold": int(size[here & ~hot].sum())}
            task.state.by_node = by_node

    def _account(self, tasks, scanned, owner, node, size, hot, plan, done, failed, timing) -> None:
        pages = size // PAGE
        promote = np.isin(plan.reason, PROMOTIONS)
        demote = np.isin(plan.reason, DEMOTIONS)
        for i, t in enumerate(scanned):
            mine = (owner == i) & (plan.target >= 0)
            t.result.chosen = int(pages[mine].sum())
            t.result.detail["planned"] = {
                "promote_pages": int(pages[mine & promote].sum()), "demote_pages": int(pages[mine & demote].sum()),
                "to_node": {str(d): int(pages[mine & (plan.target == d)].sum()) for d in np.unique(plan.target[mine]).tolist()}}
            if t.task.keys.dry_run and t.result.chosen:
                log.info("task %s: dry run: would move %d pages of process %d (%s)", t.task.name, t.result.chosen,
                         t.handle.pid, ", ".join(f"{n} to node {d}" for d, n in t.result.detail["planned"]["to_node"].items()))
        pairs = []
        for p in plan.pairs:
            up = promote & (plan.target == p.fast) & done
            down = demote & (plan.target == p.slow) & done
            pairs.append(dict(p.as_dict(), moved_up=int(size[up].sum()), moved_down=int(size[down].sum())))
        moved_bytes = int(size[done].sum())
        self.last_round = dict({k: round(v, 6) for k, v in timing.items()}, moved_bytes=moved_bytes, pairs=pairs)
        for task in tasks:
            mine = np.isin(owner, [i for i, t in enumerate(scanned) if t.task is task])
            st = task.stats.extra["cslide"]
            codes, counts = np.unique(failed[mine & (failed > 0)], return_counts=True)
            failed_pages = {errno_name(int(c)): int(pages[mine & (failed == c)].sum()) for c in codes}
            quota_used = {}
            for p in plan.pairs:
                up = mine & promote & (plan.target == p.fast) & done
                down = mine & demote & (plan.target == p.slow) & done
                quota_used[f"{p.fast},{p.slow}"] = {"promote_mb": round(int(size[up].sum()) / MiB, 3),
                                                    "demote_mb": round(int(size[down].sum()) / MiB, 3)}
            last = {
                "dry_run": bool(task.keys.dry_run),
                "planned_promote_pages": int(pages[mine & promote].sum()),
                "planned_demote_pages": int(pages[mine & demote].sum()),
                "scanned_pages": int(pages[mine].sum()),
                "hot_pages": int(pages[mine & hot].sum()),
                "cold_pages": int(pages[mine & ~hot].sum()),
                "promoted_pages": int(pages[mine & promote & done].sum()),
                "prefetched_pages": int(pages[mine & (plan.reason == PREFETCH_WARM) & done].sum()),
                "demoted_pages": int(pages[mine & demote & done].sum()),
                "failed_pages": int(pages[mine & (failed > 0)].sum()),
                "failed_by_errno": failed_pages,
                "quota_used": quota_used,
                "engine": self.last_round,
            }
            st["last_round"] = last
            st["promoted_pages"] += last["promoted_pages"]
            st["demoted_pages"] += last["demoted_pages"]
            st["failed_pages"] += last["failed_pages"]
            for name, n in failed_pages.items():
                st["failed_by_errno"][name] = st["failed_by_errno"].get(name, 0) + n
            for dest in np.unique(plan.target[mine & (plan.target >= 0)]).tolist():
                row = st["nodes"].setdefault(str(dest), {"promoted_in": 0, "demoted_in": 0, "failed": {}})
                to = mine & (plan.target == dest)
                row["promoted_in"] += int(pages[to & promote & done].sum())
                row["demoted_in"] += int(pages[to & demote & done].sum())
                for c in np.unique(failed[to & (failed > 0)]).tolist():
                    name = errno_name(c)
                    row["failed"][name] = row["failed"].get(name, 0) + int(pages[to & (failed == c)].sum())

    # -- engine commands and their Python API ----------------------------------------------
    def task_pages(self, task) -> dict[int, dict]:
        """{node: {"used_kb", "hot_kb", "cold_kb"}} of the task's pages in the last round."""
        by_node = task.state.by_node or {}
        return {n: {f"{k}_kb": v >> 10 for k, v in row.items()} for n, row in sorted(by_node.items())}

    def host_pages(self) -> dict[int, dict]:
        """{node: {"total_kb", "used_kb", "hot_kb", "cold_kb"}}: node memory now, the engine's pages last round."""
        out = {}
        for n in sorted(self.nodes.memory_nodes()):
            mem = self.nodes.memory(n)
            out[n] = {"total_kb": mem.total >> 10, "used_kb": (mem.total - mem.free) >> 10, "hot_kb": 0, "cold_kb": 0}
        for task in list(self.engine.tasks):
            for n, row in (task.state.by_node or {}).items():
                slot = out.setdefault(n, {"total_kb": 0, "used_kb": 0, "hot_kb": 0, "cold_kb": 0})
                slot["hot_kb"] += row["hot"] >> 10
                slot["cold_kb"] += row["cold"] >> 10
        return out

    def command(self, cmd, task):
        if cmd == "showtaskpages":
            if task is None:
                raise ObjectError("showtaskpages needs a task: etmem engine showtaskpages -n PROJECT -e ENGINE -t TASK")
            rows = [(n, r["used_kb"], r["hot_kb"], r["cold_kb"]) for n, r in self.task_pages(task).items()]
            return _table(("node", "used_kb", "hot_kb", "cold_kb"), rows)
        if cmd == "showhostpages":
            rows = [(n, r["total_kb"], r["used_kb"], r["hot_kb"], r["cold_kb"]) for n, r in self.host_pages().items()]
            return _table(("node", "total_kb", "used_kb", "hot_kb", "cold_kb"), rows)
        raise ObjectError(f"engine cslide has no command '{cmd}' (it has: showtaskpages, showhostpages)")


@hookimpl
def etmem_engine_types():
    return [Cslide]
