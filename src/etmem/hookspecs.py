"""The plugin API of etmem: the hooks a plugin may implement.

A plugin is a module or object with functions decorated by `etmem.hookimpl`,
registered by a package through the `etmem` entry-point group:

    [project.entry-points.etmem]
    lru_age = "etmem_lru_age"

The built-in engines (slide, cslide, thirdparty) are plugins of exactly this
kind. docs/plugins.md has the walkthrough.
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
def etmem_round_finished(task, stats) -> None:
    """Called after each round of any task, with the task and its TaskStats.

    For observers (metrics exporters, loggers); must return quickly and must
    not change the task. Exceptions are logged and otherwise ignored.
    """
