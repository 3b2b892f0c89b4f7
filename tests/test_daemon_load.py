"""Load: 50 concurrent clients issue show/start/stop against 20 projects of a real etmemd.

Each of 20 clients owns one project and alternates start and stop on it, so every one
of its requests must succeed; the other 30 clients show all projects or one. Nothing
may fail, and the daemon's memory and thread count must not grow.
"""
from __future__ import annotations

import threading
import time

import pytest

from etmem.cli.client import request
from etmem.protocol import Command, Request
from etmemd_harness import Etmemd, install_probe_plugin, probe_config, write_config

PROJECTS = 20
CLIENTS = 50


@pytest.fixture
def loaded_daemon(tmp_path, need_root):
    import subprocess

    target = subprocess.Popen(["sleep", "3600"])
    d = Etmemd(tmp_path, plugin_dir=install_probe_plugin(tmp_path / "plugin")).start()
    try:
        for i in range(PROJECTS):
            conf = write_config(tmp_path / f"load{i}.conf", probe_config(f"load{i}", target.pid))
            reply = request(d.name, Request(Command.OBJ_ADD, file=str(conf)))
            assert reply.ok, reply.text
        yield d
    finally:
        assert d.stop() == 0, d.log()
        target.kill()
        target.wait()


def run_load(d: Etmemd, seconds: float) -> dict:
    stop_at = time.monotonic() + seconds
    failures: list[str] = []
    counts = {"start": 0, "stop": 0, "show": 0}
    lock = threading.Lock()
    rss: list[int] = []

    def call(req: Request, what: str) -> str:
        try:
            reply = request(d.name, req)
        except Exception as e:  # any failure to get an answer is a failure
            with lock:
                failures.append(f"{what}: {type(e).__name__}: {e}")
            return ""
        with lock:
            counts[req.cmd.label.split()[1]] += 1
            if not reply.ok:
                failures.append(f"{what}: {reply.text.strip()}")
        return reply.text

    def owner(i: int) -> None:
        name = f"load{i}"
        while time.monotonic() < stop_at:
            call(Request(Command.PROJECT_START, project=name), f"start {name}")
            call(Request(Command.PROJECT_STOP, project=name), f"stop {name}")

    def viewer(i: int) -> None:
        while time.monotonic() < stop_at:
            if i % 2:
                text = call(Request(Command.PROJECT_SHOW), "show")
                if text and text.count("project: load") != PROJECTS:
                    with lock:
                        failures.append(f"show listed {text.count('project: load')} projects")
            else:
                name = f"load{i % PROJECTS}"
                text = call(Request(Command.PROJECT_SHOW, project=name), f"show {name}")
                if text and not text.startswith(f"project: {name}\n"):
                    with lock:
                        failures.append(f"show {name} answered {text[:60]!r}")

    def sample_rss() -> None:
        while time.monotonic() < stop_at:
            rss.append(d.rss_kb())
            time.sleep(0.25)

    threads = [threading.Thread(target=owner, args=(i,)) for i in range(PROJECTS)]
    threads += [threading.Thread(target=viewer, args=(i,)) for i in range(CLIENTS - PROJECTS)]
    threads.append(threading.Thread(target=sample_rss))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return {"failures": failures, "counts": counts, "rss": rss}


@pytest.mark.parametrize("seconds", [
    pytest.param(5, id="5s"),
    pytest.param(30, id="30s", marks=pytest.mark.slow),
])
def test_fifty_clients_against_twenty_projects(loaded_daemon, seconds):
    d = loaded_daemon
    threads_before = _settled_thread_count(d)
    result = run_load(d, seconds)
    assert result["failures"] == [], result["failures"][:10]
    counts = result["counts"]
    assert counts["start"] >= PROJECTS and counts["stop"] >= PROJECTS and counts["show"] >= 50, counts
    rss = result["rss"]
    print(f"\n{seconds} s: {counts}, daemon RSS {rss[0]}..{max(rss)} kB")
    warm = rss[len(rss) // 3]
    assert max(rss[len(rss) // 3:]) - warm < 16 * 1024, f"RSS grew from {warm} kB: {rss}"
    assert _settled_thread_count(d) <= threads_before, "connection or task threads were left behind"
    assert all(not p["started"] for p in _show(d))


def _settled_thread_count(d: Etmemd) -> int:
    """The daemon's thread count once the threads of finished connections are gone."""
    samples = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        samples.append(d.thread_count())
        if len(samples) >= 5 and len(set(samples[-5:])) == 1:
            break
        time.sleep(0.1)
    return samples[-1]


def _show(d: Etmemd) -> list[dict]:
    import json

    return json.loads(request(d.name, Request(Command.PROJECT_SHOW, engine_cmd="json")).text)
