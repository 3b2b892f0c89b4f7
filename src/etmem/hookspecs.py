"""The plugin API of etmem: the hooks a plugin may implement.

A plugin is a module or object with functions decorated by `etmem.hookimpl`,
registered by a package through the `etmem` entry-point group:

    [project.entry-points.etmem]
    lru_age = "etmem_lru_age"

The built-in engines (slide, cslide, thirdparty) are plugins of exactly this
kind. docs/plugins.md has the walkthrough; docs/scanner.md shows an access source.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("etmem")
hookimpl = pluggy.HookimplMarker("etmem")


@hookspec
def etmem_engine_types() -> list:
    """Return the engine classes (subclasses of etmem.Strategy) this plugin provides.

    Each class's `name` is what a config's `[engine] name=` selects; its
    `engine_keys` and `task_keys` attrs classes declare the keys it accepts.
    """


@hookspec
def etmem_access_sources() -> list:
    """Return the access source classes (subclasses of etmem.scan.Source) this plugin provides.

    Each class's `name` is what `[project] scanner=` and `Scanner(source=...)` select,
    its `rank` places it in auto's order (lower first; the built-ins: idle_pages 10,
    page_idle 20, damon 30, smaps 50) and its `probe()` says whether this kernel offers
    it. docs/scanner.md shows one.
    """


@hookspec
def etmem_round_finished(task, stats) -> None:
    """Called after each round of any task, with the task and its TaskStats.

    For observers (metrics exporters, loggers); must return quickly and must
    not change the task. Exceptions are logged and otherwise ignored.
    """
