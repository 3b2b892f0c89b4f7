"""The example strategy package (examples/etmem-lru-age): pip-installed into this
environment, found by a freshly started etmemd through the `etmem` entry-point group,
validated like a built-in engine and run against a real workload with zram swap."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import pagemap_bits
from etmemd_harness import Etmemd, script, write_config

pytestmark = pytest.mark.usefixtures("need_root")

PACKAGE = Path(__file__).parent.parent / "examples" / "etmem-lru-age"
DIST = "etmem-lru-age"


def _installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def lru_age_installed():
    """`pip install examples/etmem-lru-age`, undone at the end unless it was there before."""
    if os.geteuid() != 0:
        pytest.skip("needs root: installs into this environment and drives a real etmemd")
    was_there = _installed()
    offline = all(importlib.util.find_spec(m) for m in ("setuptools", "wheel"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--force-reinstall", *(["--no-build-isolation"] if offline else []), str(PACKAGE)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    try:
        yield
    finally:
        if not was_there:
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", DIST],
                           capture_output=True, text=True)


@pytest.fixture
def daemon(tmp_path, lru_age_installed):
    d = Etmemd(tmp_path).start()
    yield d
    assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log()


def lru_config(pid: int, *, engine_keys: str = "", task_keys: str = "idle_rounds=2") -> str:
    return "\n".join([
        "[project]", "name=lru", "loop=1", "interval=1", "sleep=1", "",
        "[engine]", "name=lru_age", "project=lru", engine_keys, "",
        "[task]", "project=lru", "engine=lru_age", "name=t1", "type=pid", f"value={pid}", task_keys, "",
    ])


def test_etmem_plugins_lists_the_installed_package(lru_age_installed):
    listed = subprocess.run([script("etmem"), "plugins"], capture_output=True, text=True)
    line = next(l for l in listed.stdout.splitlines() if l.startswith("lru_age "))
    assert line.split() == ["lru_age", "0.1.0", "entry", "point", "etmem-lru-age", "engines:", "lru_age"]


def test_the_allow_list_keeps_an_installed_plugin_out(lru_age_installed, tmp_path):
    d = Etmemd(tmp_path)
    d.env["ETMEM_LOAD_PLUGINS"] = "some_other_plugin"
    d.start()
    try:
        conf = write_config(tmp_path / "lru.conf", lru_config(1))
        result = d.etmem("obj", "add", "-f", str(conf))
        assert result.returncode == 186
        assert f"{conf}:8: [engine] name=lru_age: engine 'lru_age' is not installed" in result.stdout
    finally:
        assert d.stop() == 0


def test_the_plugins_keys_are_checked_like_a_builtins(daemon, tmp_path):
    for engine_keys, task_keys, message in [
        ("", "idle_rounds=0", ":18: [task] idle_rounds=0: must be an integer from 1 to 100"),
        ("", "", ":12: [task] idle_rounds: missing; this key is required: an integer from 1 to 100"),
        # a misspelt key is ignored with a warning, as upstream ignores keys; the required one is then missing
        ("", "idle_round=3", ":12: [task] idle_rounds: missing; this key is required"),
        ("swap_limit=lots", "idle_rounds=2",
         ":10: [engine] swap_limit=lots: must be a size like 10g, 512m, 64k or a number of bytes"),
    ]:
        conf = write_config(tmp_path / "bad.conf", lru_config(1, engine_keys=engine_keys, task_keys=task_keys))
        result = daemon.etmem("obj", "add", "-f", str(conf))
        assert result.returncode == 186, result
        assert f"{conf}{message}" in result.stdout
    assert daemon.etmem("project", "show").stdout == "no project exists\n\n"


def test_lru_age_swaps_pages_idle_for_n_rounds_through_etmemd(daemon, tmp_path, zram_swap, workload_factory):
    w = workload_factory(total_mb=32, hot_mb=4)
    conf = write_config(tmp_path / "lru.conf", lru_config(w.pid, engine_keys="swap_limit=1g"))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "lru").returncode == 0

    # Round 1 can see the fill of the cold region; it then needs two idle rounds in a row.
    deadline = time.monotonic() + 90
    while True:
        shown = daemon.etmem("project", "show", "-n", "lru", "-o", "json")
        stats = json.loads(shown.stdout)[0]["tasks"][0]["stats"]
        if stats["pages_swapped"] > 0:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.5)
    assert stats["rounds"] >= 2 and stats["last_error"] is None, stats
    _, cold_swapped = pagemap_bits(w.pid, *w.cold)
    hot_present, _ = pagemap_bits(w.pid, *w.hot)
    assert cold_swapped.mean() > 0.9, cold_swapped.mean()
    assert hot_present.mean() > 0.9, hot_present.mean()

    ages = daemon.etmem("engine", "ages", "-n", "lru", "-e", "lru_age", "-t", "t1")
    assert ages.returncode == 0 and ages.stdout.startswith(f"task t1 pid {w.pid} ages 0:"), ages
    assert daemon.etmem("project", "stop", "-n", "lru").returncode == 0
    assert w.verify()
