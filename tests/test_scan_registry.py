"""The access source registry: sources from plugins, auto's order, probes kept and asked again."""
from __future__ import annotations

import mmap
import os
from collections import Counter

import numpy as np
import pytest

from etmem import hookimpl, loader
from etmem.errors import ConfigError, KernelFeatureMissing, ScanError
from etmem.plugins import Plugins
from etmem.scan import Scanner, Source, registry
from kernel_emulation import Emulator, PageTable

PAGE = 4096


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Each test's registrations and kept probes are its own; the process's come back after."""
    monkeypatch.setattr(registry, "_classes", dict(registry._classes))
    monkeypatch.setattr(registry, "_probed", {})


@pytest.fixture
def region():
    """1 MiB of private anonymous memory of this process, every page faulted in: (start, end)."""
    m = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(b"x" * len(m))
    start = np.frombuffer(m, dtype=np.uint8).ctypes.data
    yield start, start + len(m)
    m.close()


class EveryOtherPage(Source):
    """Reports every even page of a VMA used in each pass and every odd one not: no kernel does."""

    name = "every_other"
    rank = 5
    probes = 0

    @classmethod
    def probe(cls, opener=None):
        cls.probes += 1
        return None

    def one_pass(self, windows, index, last):
        for w in windows:
            w.kinds[:] = 1
            w.counts[::2] += 1


class SourcePlugin:
    @hookimpl
    def etmem_access_sources(self):
        return [EveryOtherPage]


PROJECT = "[project]\nname=p\nloop=1\ninterval=1\nsleep=1\nscanner={}\n"


def test_a_plugins_source_is_registered_and_scanner_uses_it(region):
    with pytest.raises(ScanError, match="unknown scanner source 'every_other'"):
        Scanner(os.getpid(), source="every_other")
    plugins = Plugins(entry_points=False, extra=(SourcePlugin(),))
    assert plugins.infos[-1].sources == ("every_other",) and plugins.infos[-1].error is None
    assert registry.names()[0] == "every_other", "rank 5 comes before idle_pages (10)"

    refs = Scanner(os.getpid(), source="every_other", ranges=[region]).scan(loop=3)
    assert (refs.source, refs.passes, refs.error, len(refs)) == ("every_other", 3, None, (1 << 20) // PAGE)
    even = ((refs.addr - np.uint64(region[0])) // np.uint64(PAGE)) % np.uint64(2) == 0
    assert (refs.count[even] == 3).all() and (refs.count[~even] == 0).all()
    assert Scanner(os.getpid()).source_name == "every_other", "auto takes the usable source of lowest rank"


def test_config_accepts_a_registered_source_and_names_every_valid_one_for_another():
    builtin = registry.names()
    assert builtin[:2] == ("idle_pages", "page_idle") and builtin[-1] == "smaps"
    plugins = Plugins(entry_points=False)
    err = _error(PROJECT.format("every_other"), plugins)
    assert str(err) == (f"t.conf:6: [project] scanner=every_other: must be auto, {', '.join(builtin[:-1])} "
                        f"or smaps")
    plugins = Plugins(entry_points=False, extra=(SourcePlugin(),))
    assert loader.load_text(PROJECT.format("every_other"), "t.conf", plugins).projects[0].scanner == "every_other"
    err = _error(PROJECT.format("nope"), plugins)
    assert err.key == "scanner" and err.message == f"must be auto, every_other, {', '.join(builtin[:-1])} or smaps"


def _error(text: str, plugins) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loader.load_text(text, "t.conf", plugins)
    return info.value


class NotASource:
    name = "plain"


class SecondSmaps(Source):
    name = "smaps"

    @classmethod
    def probe(cls, opener=None):
        return None


class BadPlugin:
    @hookimpl
    def etmem_access_sources(self):
        return [NotASource, SecondSmaps, EveryOtherPage]


class BrokenPlugin:
    @hookimpl
    def etmem_access_sources(self):
        raise RuntimeError("cannot import its kernel bindings")


def test_bad_sources_are_reported_like_bad_engines_and_the_rest_still_load():
    plugins = Plugins(entry_points=False, extra=(BadPlugin(), BrokenPlugin()))
    errors = [i.error for i in plugins.infos if i.error]
    assert any("is not a subclass of etmem.scan.Source" in e for e in errors)
    assert any("'smaps' is already provided by etmem.scan.sources.smaps.SmapsSource" in e for e in errors)
    assert "RuntimeError: cannot import its kernel bindings" in errors
    assert registry.source_class("smaps").__module__ == "etmem.scan.sources.smaps"
    assert next(i for i in plugins.infos if i.name == "BadPlugin" and not i.error).sources == ("every_other",)
    assert "slide" in plugins.engines


@pytest.mark.parametrize("attrs,complaint", [({"name": "auto"}, "name must be a source name"),
                                             ({"name": "Has Space"}, "name must be a source name"),
                                             ({"name": "ok", "rank": True}, "rank must be an integer")])
def test_register_refuses_a_class_that_cannot_be_told_apart(attrs, complaint):
    with pytest.raises(ScanError, match=complaint):
        registry.register(type("Odd", (EveryOtherPage,), attrs))


@pytest.fixture
def probe_calls(monkeypatch):
    """How often each built-in source's probe ran."""
    calls = Counter()
    for name in registry.names():
        cls = registry.source_class(name)

        def counted(klass, opener=None, original=cls.probe, name=name):
            calls[name] += 1
            return original(opener)
        monkeypatch.setattr(cls, "probe", classmethod(counted))
    return calls


def test_choosing_a_named_source_probes_only_that_one(probe_calls):
    try:
        registry.choose_source("page_idle")
    except KernelFeatureMissing:
        pass  # this kernel may lack it; what counts is what was probed
    assert probe_calls == {"page_idle": 1}


def test_probes_are_kept_for_every_scanner_and_asked_again_only_on_refresh(probe_calls):
    first = [Scanner(os.getpid()).source_name for _ in range(5)]
    assert len(set(first)) == 1 and max(probe_calls.values()) == 1
    answers = registry.available_sources()
    assert set(probe_calls) == set(registry.names()) and set(probe_calls.values()) == {1}
    assert registry.available_sources(refresh=True) == answers
    assert set(probe_calls.values()) == {2}


def test_an_emulated_kernel_is_probed_through_its_opener_and_not_kept(probe_calls):
    real = registry.available_sources()
    emulated = registry.available_sources(Emulator(os.getpid(), PageTable()).opener)
    assert emulated["idle_pages"] is None and emulated["page_idle"] is None
    assert set(probe_calls.values()) == {2}
    assert registry.available_sources() == real and set(probe_calls.values()) == {2}


class SometimesTaken(Source):
    """Offered by the kernel, but now and then held by another program (as DAMON can be)."""

    name = "sometimes"
    rank = 1
    taken: str | None = "held by another owner"

    @classmethod
    def probe(cls, opener=None):
        return None

    @classmethod
    def live_problem(cls, opener=None):
        return cls.taken


def test_a_live_problem_is_asked_every_time_not_kept(monkeypatch):
    registry.register(SometimesTaken)
    assert registry.available_sources()["sometimes"] == "held by another owner"
    with pytest.raises(KernelFeatureMissing, match="'sometimes' is not available: held by another owner"):
        registry.choose_source("sometimes")
    assert registry.choose_source() != "sometimes"
    monkeypatch.setattr(SometimesTaken, "taken", None)
    assert registry.available_sources()["sometimes"] is None
    assert registry.choose_source() == "sometimes"
