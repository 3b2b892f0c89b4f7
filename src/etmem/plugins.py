"""The plugin manager: built-in engines first, then the `etmem` entry-point group.

Engines go into the manager's engine registry; access sources into the scanner's
(etmem.scan.registry), which is the process's one list of sources.

Built-ins register exactly as third-party plugins do, so they prove the API.
`ETMEM_LOAD_PLUGINS=name,name` limits which entry points are loaded (empty:
none), which makes a broken plugin easy to rule out. A plugin that fails to
load is reported by `etmem plugins` and in the log, never fatal.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from importlib import metadata

import attrs
import pluggy

from . import hookspecs
from ._version import __version__
from .errors import ScanError
from .scan import registry as scan_registry
from .strategy import Strategy

log = logging.getLogger("etmem.plugins")

ENTRY_POINT_GROUP = "etmem"
BUILTIN_PLUGINS = ("etmem.engines.slide", "etmem.engines.cslide", "etmem.engines.psi", "etmem.engines.damon",
                   "etmem.engines.legacy")


@attrs.frozen
class PluginInfo:
    name: str
    version: str
    source: str  # "builtin" or "entry point <dist>"
    engines: tuple = ()
    error: str | None = None
    sources: tuple = ()  # access source names


class Plugins:
    """A pluggy manager plus the engine registry it yields; plugins' access sources go to etmem.scan.registry."""

    def __init__(self, entry_points: bool = True, extra: tuple = ()):
        """Load the built-ins, then `extra` plugin objects (for programs and tests), then entry points."""
        self.pm = pluggy.PluginManager("etmem")
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self.engines: dict[str, type[Strategy]] = {}
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self._register(module, module_name, __version__, "builtin")
        for plugin in extra:
            name = getattr(plugin, "__name__", type(plugin).__name__)
            self._register(plugin, name, getattr(plugin, "__version__", "0"), "registered in code")
        if entry_points:
            self._load_entry_points()
        self.pm.check_pending()

    def _register(self, plugin, name: str, version: str, source: str) -> None:
        try:
            self.pm.register(plugin, name=name)
            types = self._provided(plugin, self.pm.hook.etmem_engine_types)
            source_types = self._provided(plugin, self.pm.hook.etmem_access_sources)
        except Exception as exc:  # a broken plugin must not take etmem down
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self.infos.append(PluginInfo(name, version, source, error=f"{type(exc).__name__}: {exc}"))
            log.error("plugin %s (%s) failed to register: %s", name, source, exc)
            return
        accepted = []
        for engine_type in types:
            problem = _check_engine_type(engine_type)
            if problem is None and engine_type.name in self.engines:
                problem = f"engine name '{engine_type.name}' is already provided by another plugin"
            if problem:
                log.error("plugin %s: %s", name, problem)
                self.infos.append(PluginInfo(name, version, source, error=problem))
                continue
            self.engines[engine_type.name] = engine_type
            accepted.append(engine_type.name)
        sources = []
        for source_type in source_types:
            try:
                scan_registry.register(source_type)
            except ScanError as exc:
                log.error("plugin %s: %s", name, exc)
                self.infos.append(PluginInfo(name, version, source, error=str(exc)))
                continue
            sources.append(source_type.name)
        self.infos.append(PluginInfo(name, version, source, tuple(accepted), sources=tuple(sources)))

    @staticmethod
    def _provided(plugin, hook) -> list:
        """What plugin's implementation of hook returns (nothing when it has none)."""
        impls = [i for i in hook.get_hookimpls() if i.plugin is plugin]
        return [t for impl in impls for t in (impl.function() or [])]

    def _load_entry_points(self) -> None:
        allow = os.environ.get("ETMEM_LOAD_PLUGINS")
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            dist = ep.dist
            version = dist.version if dist else "?"
            source = f"entry point {dist.name if dist else '?'}"
            try:
                plugin = ep.load()
            except Exception as exc:
                self.infos.append(PluginInfo(ep.name, version, source, error=f"cannot import {ep.value}: {type(exc).__name__}: {exc}"))
                log.error("plugin %s: cannot import %s: %s", ep.name, ep.value, exc)
                continue
            self._register(plugin, ep.name, version, source)

    def engine_type(self, name: str) -> type[Strategy] | None:
        return self.engines.get(name)

    def installed(self) -> str:
        return ", ".join(sorted(self.engines)) or "none"

    def round_finished(self, task, stats) -> None:
        try:
            self.pm.hook.etmem_round_finished(task=task, stats=stats)
        except Exception as exc:
            log.warning("an etmem_round_finished hook failed: %s", exc)


def _check_engine_type(engine_type) -> str | None:
    if not (isinstance(engine_type, type) and issubclass(engine_type, Strategy)):
        return f"{engine_type!r} is not a subclass of etmem.Strategy"
    if not engine_type.name:
        return f"{engine_type.__name__} has no engine name"
    for attr in ("engine_keys", "task_keys"):
        if not attrs.has(getattr(engine_type, attr)):
            return f"{engine_type.__name__}.{attr} must be an attrs class"
    return None


_default: Plugins | None = None
_lock = threading.Lock()


def default_plugins() -> Plugins:
    """The process-wide plugin manager, loaded on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = Plugins()
        return _default


def reload_plugins() -> Plugins:
    """Forget the loaded plugins and load them again (after a pip install)."""
    global _default
    with _lock:
        _default = None
    return default_plugins()
