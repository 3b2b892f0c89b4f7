"""The plugin API: the `Strategy` every engine implements, what it sees of its engine and tasks, and the common round.

Built-in slide and cslide, pip-installed plugins and the shim for legacy C engines
all subclass `Strategy`; a plugin hands its classes to etmem through the
`etmem_engine_types` hook (hookspecs.py). etmem makes one instance per configured
engine. An engine sees an `EngineView` and `TaskView`s, never the object model
behind them, and returns a `RoundResult` from each round; the round timer
(rounds.py) schedules rounds and keeps the statistics. docs/plugins.md walks
through it.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import attrs

from . import procfs
from .errors import EtmemError, ObjectError
from .process import ProcessHandle, resolve_targets
from .scan import CLAIMS
from .stats import RoundResult, TargetResult, TaskStats

if TYPE_CHECKING:
    from .config import Origin, ProjectSpec


@attrs.frozen
class NoKeys:
    """Spec of an engine or task that has no keys of its own."""


@attrs.define(eq=False)
class TaskView:
    """What an engine sees of one task: its keys, its project's settings, its statistics.

    `state` is the engine's own slot for what it remembers between rounds (set it in
    `add_task`, ideally to an attrs class of the engine's). `project` is the project's
    validated spec (name, loop, sleep, interval, scanner, ...). `target_start` is the
    start time of the process a type=pid task was configured for (or, if there was none
    then, the first one its rounds saw): resolving never yields another process of that
    pid. `allow_init` is the task's allow_init key (pid 1's tree may be targets).
    """

    name: str
    type: str
    value: str
    keys: Any
    extra: dict
    max_threads: int
    swap_flag: bool
    project: "ProjectSpec"
    engine_name: str
    stats: TaskStats = attrs.field(factory=TaskStats)
    state: Any = None
    started: bool = False
    allow_init: bool = False
    target_start: int | None = None

    def __attrs_post_init__(self) -> None:
        value = str(self.value)
        if self.type == "pid" and self.target_start is None and value.isascii() and value.isdigit():
            try:
                self.target_start = procfs.start_time(int(value))
            except procfs.ProcError:   # not running yet: the first round that finds it remembers it
                pass

    @property
    def label(self) -> str:
        return f"{self.project.name}/{self.engine_name}/{self.name}"


@attrs.define(eq=False)
class EngineView:
    """What an engine sees of itself: its keys, its project's spec, its tasks.

    `shared` is one dict per project, the same object for every engine of the
    project (the legacy shim keeps upstream's `struct project` there, damon its kdamond).
    """

    name: str
    kind: str
    keys: Any
    extra: dict
    project: "ProjectSpec"
    origin: "Origin | None" = None
    tasks: list = attrs.field(factory=list)      # TaskView, in the order they were added
    shared: dict = attrs.field(factory=dict)
    # after each round of a task: fires the etmem_round_finished hook. Engines that run their
    # own rounds (schedule "self", e.g. on an etmem.rounds.RoundTimer) hand it to their timer.
    round_finished: Callable[[TaskView, TaskStats], None] = lambda task, stats: None


class Strategy:
    """Base class of engine implementations.

    Class attributes a subclass sets:
      name          the `[engine] name=` value that selects it
      engine_keys   attrs spec class of its own [engine] keys (built with etmem.config.key)
      task_keys     attrs spec class of its own [task] keys
      pass_unknown_keys  True to accept keys it does not declare (handed through in .extra)
      instance_key  an [engine] key naming each instance instead of `name`
                    (thirdparty's eng_name: several C engines in one project)
      schedule      "task": a round per task every `interval` s (run_round);
                    "engine": one round over all started tasks (run_engine_round);
                    "self": the engine schedules its own work (start_task / stop_task)
      version       shown by `etmem plugins`
    """

    name: ClassVar[str] = ""
    engine_keys: ClassVar[type] = NoKeys
    task_keys: ClassVar[type] = NoKeys
    pass_unknown_keys: ClassVar[bool] = False
    instance_key: ClassVar[str | None] = None
    schedule: ClassVar[str] = "task"
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""

    def __init__(self, engine: EngineView):
        self.engine = engine

    # -- validation ---------------------------------------------------------------
    @classmethod
    def check_engine(cls, keys: Any, extra: dict) -> list[tuple[str, str]]:
        """Cross-key rules of the engine's own keys: (key, message) pairs. Offline: no kernel state."""
        return []

    @classmethod
    def check_task(cls, keys: Any, extra: dict, project: "ProjectSpec | None") -> list[tuple[str, str]]:
        """Rules of a task's keys that need its project (slide's T <= loop*3); project may be unknown offline."""
        return []

    # -- lifecycle ----------------------------------------------------------------
    def add_task(self, task: TaskView) -> None:
        """A task joins the engine (obj add). Raise EtmemError to refuse it."""

    def remove_task(self, task: TaskView) -> None:
        """A stopped task leaves the engine (obj del)."""

    def run_round(self, task: TaskView, stop: threading.Event) -> RoundResult | None:
        """One round for the task (schedule "task"): resolve targets, scan, act; return what it did.

        `stop` is set when the task is being stopped: long waits should use
        `stop.wait(seconds)` and return early. An EtmemError becomes the task's
        `last_error`; None means the engine updated `task.stats` itself.
        """
        raise NotImplementedError(f"engine {self.name} does not run rounds")

    def run_engine_round(self, tasks: list[TaskView], stop: threading.Event) -> dict:
        """One round over several tasks: {task: RoundResult}. By default each task's run_round."""
        out = {}
        for task in tasks:
            try:
                out[task] = self.run_round(task, stop)
            except EtmemError as exc:
                out[task] = RoundResult(errors=[str(exc)])
        return out

    def start_task(self, task: TaskView) -> None:
        """Start work on the task (schedule "self" only; the others are started by the round timer)."""

    def stop_task(self, task: TaskView) -> None:
        """Stop work on the task (schedule "self" only); must return only once nothing of it runs."""

    def command(self, cmd: str, task: TaskView | None) -> str:
        """A private engine command (`etmem engine CMD`); return the text for the client."""
        raise ObjectError(f"engine {self.name} has no command '{cmd}'")

    def close(self) -> None:
        """The engine is deleted; release what it holds."""


# -- the common round: targets -> claim -> act -> release -> close ---------------------


@contextlib.contextmanager
def held_targets(tasks: list[TaskView], errors: dict | None = None) -> Iterator[list[tuple[TaskView, ProcessHandle]]]:
    """The processes of tasks, each held by pidfd for this round, as (task, handle) pairs.

    A process two tasks share is held once, for the first. Errors resolving a task go
    to errors[task] when a dict is given, else they are raised. Every handle is closed
    at the end. Claim a process (etmem.scan.CLAIMS) on the thread that scans and acts on it.
    """
    held, seen = [], set()
    try:
        for task in tasks:
            try:
                handles = resolve_targets(task.type, task.value, start_time=task.target_start,
                                          allow_init=task.allow_init)
            except EtmemError as exc:
                if errors is None:
                    raise
                errors.setdefault(task, []).append(str(exc))
                continue
            if not handles:
                message = f"no process named {task.value} is running"
                if errors is None:
                    raise EtmemError(message)
                errors.setdefault(task, []).append(message)
            if task.type == "pid" and task.target_start is None:
                task.target_start = next((h.start_time for h in handles if h.pid == int(task.value)), None)
            for handle in handles:
                ident = (handle.pid, handle.start_time)
                if ident in seen:
                    handle.close()
                    continue
                seen.add(ident)
                held.append((task, handle))
        yield held
    finally:
        for _, handle in held:
            handle.close()


def each_target(task: TaskView, stop: threading.Event,
                act: Callable[[ProcessHandle, TargetResult], None]) -> RoundResult:
    """The common round of a per-target engine: act(handle, result) for each of the task's processes.

    Targets are resolved again and held (held_targets); act runs on up to `max_threads`
    threads, with the process claimed on that thread from scan to action, and fills its
    TargetResult; an EtmemError it raises becomes that target's error. A process another
    task is scanning is skipped with a reason.
    """
    def one(item) -> TargetResult:
        _, handle = item
        out = TargetResult(handle.pid)
        claim = CLAIMS.claim(handle)
        if claim is None:
            out.skipped = f"process {handle.pid} is being scanned by another task"
            return out
        try:
            act(handle, out)
        except EtmemError as exc:
            out.error = str(exc)
        finally:
            CLAIMS.release(claim)
        return out

    with held_targets([task]) as held:
        workers = max(1, min(task.max_threads, len(held)))
        if workers == 1:
            results = [one(item) for item in held]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"etmem-{task.name}") as pool:
                results = list(pool.map(one, held))
    return RoundResult(results)
