"""etmem: find the cold pages of chosen processes and move them to cheaper memory.

A Python re-creation of openEuler's etmem. The public API is listed in
`__all__` and documented in docs/api.md.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .actions import ActionError, move_pages, page_nodes, swap_out
from .errors import ConfigError, EtmemError, KernelFeatureMissing, ObjectError, ProcessGone
from .hookspecs import hookimpl
from .loader import ConfigFile, load_config
from .model import Engine, Manager, Project, Task, TaskStats
from .process import ProcessHandle, resolve_targets
from .scan import PageRefs, Scanner, ScanError, available_sources
from .stats import CallCounters
from .strategy import Strategy

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
    "EtmemError",
    "KernelFeatureMissing",
    "Manager",
    "ObjectError",
    "ProcessGone",
    "Project",
    "Strategy",
    "Task",
    "TaskStats",
    "hookimpl",
    "load_config",
]
