"""What load, faults and hostile input did to etmemd, each reproduced on a real etmemd:
refused peers that trickle bytes to hold connections, a stop that waited for every held
connection, a second `etmemd -m` that clobbered the running daemon's pid file, a busy
daemon reported as absent, and `obj del` / `obj add` calls that stalled `project show`.

Non-root peers are real child processes: forked, then setuid(65534) before they connect,
so the daemon sees their credentials through SO_PEERCRED as it would a real user's.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from etmem.cli.client import request
from etmem.protocol import Command, Request
from etmemd_harness import Etmemd, install_probe_plugin, probe_config, script, unique_socket_name, write_config

pytestmark = pytest.mark.usefixtures("need_root")

NOBODY = 65534
SHOW = Request(Command.PROJECT_SHOW)
REFUSAL = b"error: permission denied: etmemd accepts requests only from uid 0"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    return install_probe_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def daemon(tmp_path, plugin_dir):
    d = Etmemd(tmp_path, plugin_dir=plugin_dir).start()
    yield d
    assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log()


# -- refused peers ---------------------------------------------------------------------

def _trickle(address: bytes, count: int, seconds: float, gap: float, reconnect: bool, report) -> dict:
    """Hold `count` connections for `seconds`, sending one byte on each every `gap`
    seconds, as a hostile client keeping the daemon busy would. A connection counts as
    let go when a send fails (the daemon closed its end); with `reconnect` it is
    replaced at once. Writes 'opened' to `report` once the first `count` are connected."""
    def connect() -> tuple[socket.socket, float]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address)          # blocking: waits while the listen backlog is full
        s.setblocking(False)
        return s, time.monotonic()

    began = time.monotonic()
    live = dict(connect() for _ in range(count))
    os.write(report, b"opened\n")
    held, replies, connections = [], [], count
    reading = set(live)
    next_send = time.monotonic()
    while live and time.monotonic() - began < seconds:
        now = time.monotonic()
        if now >= next_send:
            next_send += gap
            for s in list(live):
                try:
                    s.send(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    held.append(now - live.pop(s))
                    if s in reading:
                        replies.append(_rest(s))
                        reading.discard(s)
                    s.close()
                    if reconnect:
                        fresh, at = connect()
                        live[fresh] = at
                        reading.add(fresh)
                        connections += 1
        ready, _, _ = select.select(list(reading), [], [], max(0.0, next_send - time.monotonic()))
        for s in ready:
            replies.append(_rest(s))
            reading.discard(s)
    still_held = [time.monotonic() - at for at in live.values()]
    return {"connections": connections, "held": held, "still_held": still_held,
            "replies": [r.decode("latin-1") for r in replies]}


def _rest(s: socket.socket) -> bytes:
    """What is left to read on a socket its peer has closed."""
    out = b""
    while True:
        try:
            chunk = s.recv(4096)
        except (BlockingIOError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


class Tricklers:
    """A forked child that drops to uid/gid 65534 and runs `_trickle` on the socket."""

    def __init__(self, socket_name: str, count: int, seconds: float, gap: float = 0.19,
                 reconnect: bool = False):
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            status = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                result = _trickle(b"\0" + socket_name.encode(), count, seconds, gap, reconnect, w)
                os.write(w, json.dumps(result).encode() + b"\n")
                status = 0
            finally:
                os._exit(status)
        os.close(w)
        self._pipe = os.fdopen(r, "rb")
        assert self._pipe.readline() == b"opened\n", "the child could not connect"

    def result(self) -> dict:
        line = self._pipe.readline()
        self._pipe.close()
        _, status = os.waitpid(self.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and line, "the trickling child failed"
        return json.loads(line)


def test_a_refused_peer_is_let_go_at_once_however_it_trickles(daemon):
    """It was answered, then drained (2,048 bytes, 0.2 s per read): a byte every 0.19 s
    held its connection for minutes."""
    result = Tricklers(daemon.name, count=5, seconds=4).result()
    assert result["still_held"] == [] and len(result["held"]) == 5, result
    assert max(result["held"]) < 1.0, result
    assert all(r.encode("latin-1").startswith(REFUSAL) for r in result["replies"]), result["replies"]
    assert len(result["replies"]) == 5


def test_refused_peers_cost_root_nothing(daemon):
    """140 trickling refused connections (each replaced as soon as it is let go) took
    every connection slot: a root `project show` waited behind them (25 s)."""
    tricklers = Tricklers(daemon.name, count=140, seconds=6, reconnect=True)
    try:
        for _ in range(10):
            began = time.monotonic()
            reply = request(daemon.name, SHOW, send_timeout=5, recv_timeout=5)
            took = time.monotonic() - began
            assert reply.ok and reply.text == "no project exists\n\n"
            assert took < 1.0, f"a root project show took {took:.2f} s"
            time.sleep(0.2)
    finally:
        result = tricklers.result()
    assert result["connections"] > 140 and max(result["held"]) < 1.0, result
    refusals = daemon.log().count("refused a request from pid")
    assert 1 <= refusals < 30, f"{refusals} log lines for {result['connections']} refused connections"
    assert "more refused since" in daemon.log()


def _send_slowly(socket_name: str, data: bytes, gap: float = 0.1) -> None:
    """A root client sending its request one byte every `gap` s, until the daemon lets go."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(b"\0" + socket_name.encode())
        for byte in data * 100:
            try:
                s.send(bytes([byte]))
            except OSError:
                return
            time.sleep(gap)


def test_sigterm_exits_within_the_shutdown_deadline_whatever_connections_are_held(tmp_path, plugin_dir, target):
    """Each held connection was waited for up to 10 s in turn: six refused tricklers
    delayed etmemd's exit by a minute."""
    d = Etmemd(tmp_path, plugin_dir=plugin_dir).start()
    conf = write_config(tmp_path / "p1.conf", probe_config("p1", target))
    assert d.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert d.etmem("project", "start", "-n", "p1").returncode == 0
    (plugin_dir / "nap.gate").unlink(missing_ok=True)
    (plugin_dir / "nap.started").unlink(missing_ok=True)
    tricklers = Tricklers(d.name, count=6, seconds=30, gap=0.1)
    napping = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)     # a request that runs on
    napping.connect(b"\0" + d.name.encode())
    napping.sendall(Request(Command.ENGINE, project="p1", engine="probe", engine_cmd="nap").encode())
    slow_root = threading.Thread(target=_send_slowly, args=(d.name, b"proj_name p1 file_name - cmd 4"))
    slow_root.start()                                                # a root request still arriving
    try:
        deadline = time.monotonic() + 20
        while not (plugin_dir / "nap.started").exists():
            assert time.monotonic() < deadline, "the nap never began"
            time.sleep(0.02)
        began = time.monotonic()
        status = d.stop(timeout=60)
        took = time.monotonic() - began
    finally:
        (plugin_dir / "nap.gate").touch()
        tricklers.result()
        napping.close()
        slow_root.join(30)
    assert status == 0, d.log()
    assert took < 9, f"etmemd took {took:.1f} s to exit"
    log = d.log()
    assert "project p1 stopped" in log and "etmemd stopped" in log
    assert "1 request still running" in log


# -- the -m pid file ---------------------------------------------------------------------

def _etmemd_m(name: str, pid_file, *args) -> subprocess.CompletedProcess:
    return subprocess.run([script("etmemd"), "-s", name, "-m", "--pid-file", str(pid_file), *args],
                          capture_output=True, text=True, timeout=60)


def _stop_pid(pid: int) -> None:
    """SIGTERM a daemon this test started (its pid read from its own pid file) and wait."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"etmemd {pid} did not stop")


def test_a_second_etmemd_m_on_a_socket_in_use_leaves_the_pid_file_alone(tmp_path):
    """The second one's parent wrote its child's pid over the running daemon's, then
    deleted the file when that child could not listen."""
    name = unique_socket_name("pid")
    pid_file = tmp_path / "etmemd.pid"
    first = _etmemd_m(name, pid_file)
    assert first.returncode == 0, first.stderr
    running = int(pid_file.read_text())
    before = os.stat(pid_file)
    try:
        second = _etmemd_m(name, pid_file)
        assert second.returncode == 1
        assert f"socket name {name} is already in use" in second.stderr
        assert pid_file.read_text() == str(running)
        after = os.stat(pid_file)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    finally:
        _stop_pid(running)
    assert not pid_file.exists()


def test_the_pid_file_is_never_written_through_a_symlink(tmp_path):
    """It was opened O_TRUNC, following symlinks: a link at the pid file's path had its
    target truncated and rewritten (or created), with root's rights."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    for target in (victim, tmp_path / "created-through-the-link"):
        name = unique_socket_name("pid")
        pid_file = tmp_path / "etmemd.pid"
        pid_file.unlink(missing_ok=True)
        pid_file.symlink_to(target)
        started = _etmemd_m(name, pid_file)
        assert started.returncode == 0, started.stderr
        try:
            assert not pid_file.is_symlink()
            st = os.lstat(pid_file)
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
            pid = int(pid_file.read_text())
            assert pid_file.read_text() == str(pid)            # as upstream: no newline
        finally:
            _stop_pid(int(pid_file.read_text()))
        assert victim.read_text() == "precious" and stat.S_IMODE(os.stat(victim).st_mode) == 0o644
        assert not (tmp_path / "created-through-the-link").exists()
    assert [p.name for p in tmp_path.iterdir() if "etmemd.pid" in p.name] == []
