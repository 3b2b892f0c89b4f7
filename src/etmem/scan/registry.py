"""The access source registry: which sources exist (built-in and from plugins), which the
running kernel offers, and the one `auto` picks.

A source is a `Source` subclass (scan/sources/base.py). The built-ins are the modules of
`BUILTIN_SOURCES`, each naming its class `SOURCE`; plugins add theirs through the
`etmem_access_sources` hook (etmem.plugins calls `register`). What the kernel offers is
probed once per source and kept, since modules, files and kernel config do not change
while the process runs: `available_sources(refresh=True)` probes again. A source's
`live_problem()` (DAMON taken by another owner) is state that does change, and is asked
every time.
"""
from __future__ import annotations

import importlib
import logging
import re
import threading

from ..errors import KernelFeatureMissing, ScanError
from .sources.base import Source

log = logging.getLogger("etmem.scan")

BUILTIN_SOURCES = (
    "etmem.scan.sources.idle_pages",
    "etmem.scan.sources.page_idle",
    "etmem.scan.sources.damon",
    "etmem.scan.sources.refault",
    "etmem.scan.sources.smaps",
)
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")   # what a source name looks like (config.SourceName too)

_classes: dict[str, type[Source]] = {}
_probed: dict[type[Source], str | None] = {}   # probe() answers without an opener, kept
_lock = threading.Lock()


def register(cls: type[Source]) -> type[Source]:
    """Add a source class; its name must be new (registering the same class again is a no-op).

    Raises ScanError saying what is wrong with the class. Returns cls, so it decorates too.
    """
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise ScanError(f"{cls!r} is not a subclass of etmem.scan.Source")
    if not isinstance(cls.name, str) or not NAME.fullmatch(cls.name) or cls.name == "auto":
        raise ScanError(f"{cls.__name__}.name must be a source name (lower-case letters, digits and _, "
                        f"not 'auto'), not {cls.name!r}")
    if isinstance(cls.rank, bool) or not isinstance(cls.rank, int):
        raise ScanError(f"{cls.__name__}.rank must be an integer (auto's preference, lower first), not {cls.rank!r}")
    with _lock:
        have = _classes.get(cls.name)
        if have is not None and have is not cls:
            raise ScanError(f"scanner source name '{cls.name}' is already provided by {have.__module__}.{have.__qualname__}")
        _classes[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """Every registered source name, in auto's order (rank, then name)."""
    return tuple(sorted(_classes, key=lambda name: (_classes[name].rank, name)))


def source_class(name: str) -> type[Source]:
    """The class of a registered source; ScanError listing the valid names for any other."""
    cls = _classes.get(name)
    if cls is None:
        raise ScanError(f"unknown scanner source {name!r}: choose one of auto, {', '.join(names())}")
    return cls


def _probe(cls: type[Source], opener) -> str | None:
    try:
        return cls.probe(opener)
    except Exception as exc:  # a broken probe makes its source unusable, not etmem
        log.warning("the probe of scanner source %s failed: %s: %s", cls.name, type(exc).__name__, exc)
        return f"its probe failed: {type(exc).__name__}: {exc}"


def _reason(cls: type[Source], opener=None, refresh: bool = False) -> str | None:
    """None when cls can be used now, else why not: the kept probe, then the live problem."""
    if opener is not None:          # an emulated kernel: its answers are not this kernel's
        static = _probe(cls, opener)
    elif refresh or cls not in _probed:
        static = _probed[cls] = _probe(cls, None)
    else:
        static = _probed[cls]
    if static is not None:
        return static
    try:
        return cls.live_problem(opener)
    except Exception as exc:
        return f"its check failed: {type(exc).__name__}: {exc}"


def available_sources(opener=None, refresh: bool = False) -> dict[str, str | None]:
    """Each source name (in auto's order) → None when usable here, else the reason it is not.

    refresh=True probes the kernel again instead of using the kept answers; with an
    opener (tests' emulated kernel files) every source is probed through it and nothing is kept.
    """
    return {name: _reason(_classes[name], opener, refresh) for name in names()}


def best_source(available: dict[str, str | None]) -> str | None:
    """What "auto" picks from available_sources(): the usable source of lowest rank, or None."""
    return next((name for name in names() if name in available and available[name] is None), None)


def choose_source(requested: str = "auto", opener=None, read_only: bool = False) -> str:
    """The source to use: requested if usable, or the best usable one for "auto".

    Probes only what it needs: the requested source, or for auto the sources in rank
    order up to the first usable one. read_only: only sources that page nothing out
    (auto passes the others over; asking for one by name is an error). Raises ScanError
    for an unknown name or a source that pages out in a read-only scan, and
    KernelFeatureMissing naming what the kernel lacks.
    """
    if requested != "auto":
        cls = source_class(requested)
        if read_only and cls.pages_out:
            raise ScanError(f"scanner source {requested!r} pages its samples out to swap, which this engine "
                            "must not do: choose a read-only source (auto passes it over)")
        reason = _reason(cls, opener)
        if reason:
            raise KernelFeatureMissing(f"scanner source {requested!r} is not available: {reason}")
        return requested
    for name in names():
        if read_only and _classes[name].pages_out:
            continue
        if _reason(_classes[name], opener) is None:
            return name
    raise KernelFeatureMissing("no scanner source is available: " +
                               "; ".join(f"{k}: {v}" for k, v in available_sources(opener).items()))


for _module in BUILTIN_SOURCES:
    register(importlib.import_module(_module).SOURCE)

SOURCES = names()   # the built-in sources in auto's order; names() includes plugins' too
