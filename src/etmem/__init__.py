"""etmem: find the cold pages of chosen processes and move them to cheaper memory.

A Python re-creation of openEuler's etmem. The public API is listed in
`__all__` and documented in docs/api.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

# The public names, imported from their modules on first use (PEP 562): `etmem`'s own
# commands (the client above all) and the demo's workload child start without numpy,
# attrs, cattrs and pluggy, which the library needs and a client does not.
_HOME = {
    "ActionError": "actions", "move_pages": "actions", "page_nodes": "actions", "swap_out": "actions",
    "ConfigError": "errors", "EtmemError": "errors", "KernelFeatureMissing": "errors",
    "ObjectError": "errors", "ProcessGone": "errors",
    "hookimpl": "hookspecs",
    "ConfigFile": "loader", "load_config": "loader",
    "Engine": "model", "Manager": "model", "Project": "model", "Task": "model",
    "ProcessHandle": "process", "resolve_targets": "process",
    "PageRefs": "scan", "Scanner": "scan", "ScanError": "scan", "available_sources": "scan",
    "CallCounters": "stats", "RoundResult": "stats", "TargetResult": "stats", "TaskStats": "stats",
    "EngineView": "strategy", "Strategy": "strategy", "TaskView": "strategy", "each_target": "strategy",
    "held_targets": "strategy",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time names load on first use
    from .actions import ActionError, move_pages, page_nodes, swap_out
    from .errors import ConfigError, EtmemError, KernelFeatureMissing, ObjectError, ProcessGone
    from .hookspecs import hookimpl
    from .loader import ConfigFile, load_config
    from .model import Engine, Manager, Project, Task
    from .process import ProcessHandle, resolve_targets
    from .scan import PageRefs, ScanError, Scanner, available_sources
    from .stats import CallCounters, RoundResult, TargetResult, TaskStats
    from .strategy import EngineView, Strategy, TaskView, each_target, held_targets


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'etmem' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOME))


__all__ = [
    "__version__",
    "ActionError",
    "CallCounters",
    "PageRefs",
    "ProcessHandle",
    "ScanError",
    "Scanner",
    "available_sources",
    "move_pages",
    "page_nodes",
    "resolve_targets",
    "swap_out",
    "ConfigError",
    "ConfigFile",
    "Engine",
    "EngineView",
    "EtmemError",
    "KernelFeatureMissing",
    "Manager",
    "ObjectError",
    "ProcessGone",
    "Project",
    "RoundResult",
    "Strategy",
    "TargetResult",
    "Task",
    "TaskStats",
    "TaskView",
    "each_target",
    "held_targets",
    "hookimpl",
    "load_config",
]
