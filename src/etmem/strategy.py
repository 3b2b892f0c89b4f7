"""The interface every engine implements: built-in slide and cslide, pip-installed
plugins and the ctypes shim for legacy C engines alike.

A plugin hands its `Strategy` subclasses to etmem through the
`etmem_engine_types` hook (see hookspecs.py). etmem makes one instance per
configured engine and calls it from the model: tasks are added and removed,
started and stopped, and by default `run_round` is called every `interval`
seconds on a thread of the task's own. docs/plugins.md walks through it.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    from .config import ProjectSpec
    from .model import Engine, Task


@attrs.frozen
class NoKeys:
    """Spec of an engine or task that has no keys of its own."""


class Strategy:
    """Base class of engine implementations.

    Class attributes a subclass sets:
      name          the `[engine] name=` value that selects it
      engine_keys   attrs spec class of its own [engine] keys (built with etmem.config.key)
      task_keys     attrs spec class of its own [task] keys
      pass_unknown_keys  True to accept keys it does not declare (handed through in .extra)
      instance_key  an [engine] key naming each instance instead of `name`
                    (thirdparty's eng_name: several C engines in one project)
      version       shown by `etmem plugins`
    """

    name: ClassVar[str] = ""
    engine_keys: ClassVar[type] = NoKeys
    task_keys: ClassVar[type] = NoKeys
    pass_unknown_keys: ClassVar[bool] = False
    instance_key: ClassVar[str | None] = None
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""

    def __init__(self, engine: "Engine"):
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
    def add_task(self, task: "Task") -> None:
        """A task joins the engine (obj add). Raise EtmemError to refuse it."""

    def remove_task(self, task: "Task") -> None:
        """A stopped task leaves the engine (obj del)."""

    def start_task(self, task: "Task") -> None:
        """Start work on the task. The default runs `run_round` every `interval` s."""
        task.start_rounds(self.run_round)

    def stop_task(self, task: "Task") -> None:
        """Stop work on the task; must return only once no round is running."""
        task.stop_rounds()

    def run_round(self, task: "Task", stop: threading.Event) -> None:
        """One round for the task: resolve targets, scan, act, update task.stats.

        `stop` is set when the task is being stopped: long waits should use
        `stop.wait(seconds)` and return early.
        """
        raise NotImplementedError(f"engine {self.name} does not run rounds")

    def command(self, cmd: str, task: "Task | None") -> str:
        """A private engine command (`etmem engine CMD`); return the text for the client."""
        from .errors import ObjectError

        raise ObjectError(f"engine {self.name} has no command '{cmd}'")

    def close(self) -> None:
        """The engine is deleted; release what it holds."""
