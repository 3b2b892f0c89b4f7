"""lru_age: an example etmem strategy that swaps out pages left unused for N rounds in a row.

Each round scans every target process `loop` times; a page nobody touched in the
whole round gets one round older, a touched page is young again. Pages whose age
reaches the task's `idle_rounds` are swapped out. Installed with pip, it registers
through the `etmem` entry-point group (see pyproject.toml).
"""
from __future__ import annotations

import attrs
import numpy as np

from etmem.actions import swap_out
from etmem.config import Int, Size, key
from etmem.errors import EtmemError
from etmem.hookspecs import hookimpl
from etmem.scan import PAGE, Scanner
from etmem.strategy import Strategy, each_target

__version__ = "0.1.0"


@attrs.frozen
class LruAgeEngineKeys:
    swap_limit: int = key(Size(), None, help="swap at most this much per task and round, e.g. 256m")


@attrs.frozen
class LruAgeTaskKeys:
    idle_rounds: int = key(Int(1, 100), help="swap a page once it went this many rounds in a row unused")


class LruAge(Strategy):
    name = "lru_age"
    engine_keys = LruAgeEngineKeys
    task_keys = LruAgeTaskKeys
    version = __version__
    description = "swap out pages unused for idle_rounds rounds in a row"

    @classmethod
    def check_task(cls, keys, extra, project):
        if project is not None and project.scan_type != "page":
            return [("engine", f"lru_age needs a project with scan_type=page (project {project.name} has {project.scan_type})")]
        return []

    def add_task(self, task):
        task.state = {}  # (pid, start time) -> (addresses, ages), both sorted by address

    def run_round(self, task, stop):
        ages = task.state
        alive = set()

        def act(handle, out):
            # each_target holds and claims the process from the scan to the swap-out
            alive.add((handle.pid, handle.start_time))
            self._age_and_swap(task, handle, stop, out)

        result = each_target(task, stop, act)
        for ident in [i for i in ages if i not in alive]:
            del ages[ident]
        return result

    def _age_and_swap(self, task, handle, stop, out):
        project = task.project
        # read-only: ages need every page's access bits each round, not refault's page-out samples
        refs = Scanner(handle, source=project.scanner, anon_only=True, swap_flag=task.swap_flag,
                       read_only=True).scan(loop=project.loop, sleep=project.sleep, stop=stop)
        out.source = refs.source
        if refs.passes < project.loop or stop.is_set():
            # a cut-short round says nothing about idleness; say why unless we were stopped
            if refs.error and not stop.is_set():
                raise EtmemError(refs.error)
            return
        ident = (handle.pid, handle.start_time)
        old_addr, old_age = task.state.get(ident, (np.zeros(0, np.uint64), np.zeros(0, np.int32)))
        # Age of each scanned page last round (0 when it was not seen then), plus one if idle now.
        at = np.searchsorted(old_addr, refs.addr)
        known = at < len(old_addr)
        known[known] = old_addr[at[known]] == refs.addr[known]
        age = np.zeros(len(refs.addr), np.int32)
        age[known] = old_age[at[known]]
        age = np.where(refs.count == 0, age + 1, 0).astype(np.int32)

        cold = age >= task.keys.idle_rounds
        addr, size = refs.addr[cold], refs.size[cold]
        limit = self.engine.keys.swap_limit
        if limit is not None and len(size):
            # oldest first, so a limit keeps swapping the pages idle the longest
            order = np.argsort(-age[cold], kind="stable")
            addr, size = addr[order], size[order]
            take = int(np.searchsorted(np.cumsum(size), limit, side="right"))
            addr, size = addr[:take], size[:take]
        if len(addr):
            result = swap_out(handle, addr, size, counters=task.stats.calls)
            out.swapped = result.done
            if result.error:
                raise EtmemError(result.error)
        # swapped pages start again from zero when they come back
        keep = ~np.isin(refs.addr, addr)
        task.state[ident] = (refs.addr[keep], age[keep])
        out.scanned = int(refs.size.sum()) // PAGE
        out.cold = out.chosen = int(size.sum()) // PAGE
        out.detail["oldest_age"] = int(age.max()) if len(age) else 0

    def command(self, cmd, task):
        if cmd != "ages":
            return super().command(cmd, task)
        tasks = [task] if task is not None else list(self.engine.tasks)
        lines = []
        for t in tasks:
            for (pid, _), (_, ages) in sorted((t.state or {}).items()):
                values, counts = np.unique(ages, return_counts=True)
                histogram = " ".join(f"{v}:{c}" for v, c in zip(values.tolist(), counts.tolist()))
                lines.append(f"task {t.name} pid {pid} ages {histogram or '-'}")
        return "\n".join(lines) + "\n" if lines else "no pages aged yet\n"


@hookimpl
def etmem_engine_types():
    return [LruAge]
