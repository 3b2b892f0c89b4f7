"""What load, faults and hostile input did to etmemd, each reproduced on a real etmemd:
refused peers that trickle bytes to hold connections, a stop that waited for every held
connection, a second `etmemd -m` that clobbered the running daemon's pid file, a busy
daemon reported as absent, and `obj del` / `obj add` calls that stalled `project show`.

Non-root peers are real child processes: forked, then setuid(65534) before they connect,
so the daemon sees their credentials through SO_PEERCRED as it would a real user's.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from etmem import Manager, Strategy, hookimpl
from etmem.cli.client import request
from etmem.errors import Cause, ObjectError
from etmem.plugins import Plugins
from etmem.protocol import Command, Request
from etmemd_harness import Etmemd, install_plugin, probe_config, script, unique_socket_name, write_config

pytestmark = pytest.mark.usefixtures("need_root")

NOBODY = 65534
SHOW = Request(Command.PROJECT_SHOW)
REFUSAL = b"error: permission denied: etmemd accepts requests only from uid 0"


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


# -- obj add / obj del and the locks ---------------------------------------------------------

class Gated(Strategy):
    """A test engine whose construction, add_task, start_task and stop_task each wait at a
    gate the test holds shut (`Gated.hold("start")`, or for one task `"start:t1"`), and say
    when they got there (`Gated.reached`); start_task fails for the tasks in `failing`."""

    name = "gated"
    schedule = "self"
    gates: dict[str, threading.Event] = {}
    arrived: dict[str, threading.Event] = {}
    failing: set[str] = set()
    stopped: list[str] = []

    @classmethod
    def hold(cls, *steps: str) -> None:
        for step in steps:
            cls.gates[step] = threading.Event()
            cls.arrived[step] = threading.Event()

    @classmethod
    def reached(cls, step: str) -> None:
        assert cls.arrived[step].wait(10), f"{step} was never reached"

    @classmethod
    def release(cls) -> None:
        for gate in cls.gates.values():
            gate.set()

    @classmethod
    def _pass(cls, step: str, task=None) -> None:
        for key in (step, f"{step}:{task.name}" if task is not None else None):
            if key in cls.gates:
                cls.arrived[key].set()
                assert cls.gates[key].wait(20), f"{key} was held too long"

    def __init__(self, engine):
        super().__init__(engine)
        self._pass("init")

    def add_task(self, task):
        self._pass("add_task", task)

    def start_task(self, task):
        self._pass("start", task)
        if task.name in self.failing:
            raise ObjectError(f"task {task.name} cannot start", Cause.INVALID)

    def stop_task(self, task):
        self._pass("stop", task)
        self.stopped.append(task.name)


class GatedPlugin:
    @hookimpl
    def etmem_engine_types(self):
        return [Gated]


@pytest.fixture
def gated():
    Gated.gates, Gated.arrived, Gated.failing, Gated.stopped = {}, {}, set(), []
    m = Manager(Plugins(entry_points=False, extra=(GatedPlugin(),)))
    yield m
    Gated.release()
    m.close()


def gated_conf(task: str = "t1", task_only: bool = False) -> str:
    """Project p, its gated engine and a task; or only the task."""
    head = "[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n\n[engine]\nname=gated\nproject=p\n\n"
    return ("" if task_only else head) + f"[task]\nproject=p\nengine=gated\nname={task}\ntype=pid\nvalue={os.getpid()}\n"


def in_background(fn, *args) -> tuple[threading.Thread, list]:
    """Run fn(*args) on a thread; the list gets its result or the exception it raised."""
    out: list = []

    def run():
        try:
            out.append(fn(*args))
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def answers_within(fn, seconds: float):
    """fn()'s result (or the exception it raised, raised here) if it comes within
    `seconds`, else AssertionError; fn goes on in its thread until what blocks it is
    released."""
    thread, out = in_background(fn)
    thread.join(seconds)
    assert out, f"no answer within {seconds} s"
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


def test_project_show_answers_while_obj_add_builds_an_engine(gated):
    """obj add made its engines (a C engine: a helper process and fill_eng_params) under
    the Manager lock, so `project show` waited for them."""
    gated.add_text("[project]\nname=other\nloop=1\ninterval=1\nsleep=1\n")
    Gated.hold("init")
    adding, result = in_background(gated.add_text, gated_conf())
    Gated.reached("init")
    shown = answers_within(gated.show, 1.0)
    assert [p["name"] for p in shown] == ["other"]          # nothing of the file until it is all in
    assert answers_within(lambda: gated.show("other"), 1.0)[0]["name"] == "other"
    Gated.release()
    adding.join(10)
    assert result == [["project p", "engine gated", "task t1"]]
    assert [t["name"] for t in gated.show("p")[0]["tasks"]] == ["t1"]


def test_project_show_answers_while_obj_add_starts_a_task_of_a_started_project(gated):
    gated.add_text(gated_conf())
    gated.start("p")
    Gated.hold("start")
    adding, result = in_background(gated.add_text, gated_conf(task="t2", task_only=True))
    Gated.reached("start")
    shown = answers_within(gated.show, 1.0)
    assert [t["name"] for t in shown[0]["tasks"]] == ["t1", "t2"]
    Gated.release()
    adding.join(10)
    assert result == [["task t2"]]
    assert all(t["started"] for t in gated.show("p")[0]["tasks"])


def test_project_show_answers_while_project_start_starts_a_task_and_obj_add_adds_to_it(gated):
    """project start held the project's lock through every start_task, and an obj add
    into that project waited for it holding the Manager lock, so `show` waited too."""
    gated.add_text(gated_conf())
    Gated.hold("start:t1", "start:t2")
    starting, started = in_background(gated.start, "p")
    Gated.reached("start:t1")
    adding, result = in_background(gated.add_text, gated_conf(task="t2", task_only=True))
    Gated.reached("start:t2")          # the task added meanwhile starts by itself
    assert answers_within(gated.show, 1.0)[0]["started"] is True
    Gated.release()
    starting.join(10)
    adding.join(10)
    assert (started, result) == ([None], [["task t2"]])
    assert [t["started"] for t in gated.show("p")[0]["tasks"]] == [True, True]


def test_a_start_that_fails_stops_the_project_again(gated):
    gated.add_text(gated_conf())
    gated.add_text(gated_conf(task="t2", task_only=True))
    Gated.failing = {"t2"}
    with pytest.raises(ObjectError, match="task t2 cannot start"):
        gated.start("p")
    shown = gated.show("p")[0]
    assert shown["started"] is False and [t["started"] for t in shown["tasks"]] == [False, False]
    assert Gated.stopped == ["t1"]
    Gated.failing = set()
    gated.start("p")                   # and it can be started once the cause is gone
    assert [t["started"] for t in gated.show("p")[0]["tasks"]] == [True, True]


def test_a_project_stopped_while_it_starts_leaves_its_other_tasks_unstarted(gated):
    gated.add_text(gated_conf())
    gated.add_text(gated_conf(task="t2", task_only=True))
    Gated.hold("start:t1")
    starting, started = in_background(gated.start, "p")
    Gated.reached("start:t1")
    stopping, stopped = in_background(gated.stop, "p")
    deadline = time.monotonic() + 10
    while gated.projects["p"].started:   # the stop has begun; it waits for t1's start to end
        assert time.monotonic() < deadline, "the stop never began"
        time.sleep(0.01)
    Gated.release()
    starting.join(10)
    stopping.join(10)
    assert (started, stopped) == ([None], [None])
    shown = gated.show("p")[0]
    assert shown["started"] is False and [t["started"] for t in shown["tasks"]] == [False, False]
    assert Gated.stopped == ["t1"]     # t2 was never started, so never stopped


def test_project_show_answers_while_obj_del_stops_a_task(gated):
    """A stop that takes long (a C stop_task of 20 s) must not hold what show needs."""
    text = gated_conf()
    gated.add_text(text)
    gated.start("p")
    Gated.hold("stop")
    deleting, result = in_background(gated.delete_text, text)
    Gated.reached("stop")
    assert answers_within(gated.show, 1.0)[0]["name"] == "p"
    assert answers_within(lambda: gated.add_text("[project]\nname=q\nloop=1\ninterval=1\nsleep=1\n"), 1.0)
    Gated.release()
    deleting.join(10)
    assert result == [["task t1", "engine gated", "project p"]]
    assert [p["name"] for p in gated.show()] == ["q"]


def test_the_same_names_added_twice_at_once_are_added_once(gated):
    Gated.hold("init")
    first, first_result = in_background(gated.add_text, gated_conf())
    Gated.reached("init")
    with pytest.raises(ObjectError, match=r"\[project\] project p already exists \(another obj add is adding it\)"):
        answers_within(lambda: gated.add_text(gated_conf()), 1.0)
    Gated.release()
    first.join(10)
    assert first_result == [["project p", "engine gated", "task t1"]]
    assert list(gated.projects) == ["p"]


def test_an_engine_deleted_while_a_task_is_added_to_it_takes_the_task_with_it(gated):
    gated.add_text(gated_conf())
    Gated.hold("add_task")
    adding, result = in_background(gated.add_text, gated_conf(task="t2", task_only=True))
    Gated.reached("add_task")
    assert answers_within(lambda: gated.delete_engine("p", "gated"), 2.0) is None
    Gated.release()
    adding.join(10)
    assert isinstance(result[0], ObjectError) and result[0].cause is Cause.ENGINE_MISSING
    assert str(result[0]) == ("[task] engine gated of project p was deleted while this file was "
                              "being added; nothing of the file was added")
    assert gated.show("p")[0]["tasks"] == []


SLOW_PLUGIN = '''
"""A test engine whose construction waits until the test creates init.gate beside this file."""
import time
from pathlib import Path

from etmem.hookspecs import hookimpl
from etmem.strategy import Strategy


class SlowInit(Strategy):
    name = "slowinit"

    def __init__(self, engine):
        super().__init__(engine)
        here = Path(__file__).parent
        (here / "init.started").touch()
        deadline = time.monotonic() + 60
        while not (here / "init.gate").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def run_round(self, task, stop):
        return None


@hookimpl
def etmem_engine_types():
    return [SlowInit]
'''


def test_etmemd_answers_project_show_while_obj_add_builds_an_engine(tmp_path, target):
    plugin = install_plugin(tmp_path / "plugin", "slowinit", "etmem_slowinit", SLOW_PLUGIN)
    d = Etmemd(tmp_path, plugin_dir=plugin).start()
    try:
        conf = write_config(tmp_path / "slow.conf", probe_config("slow", target, engine="slowinit"))
        adding = subprocess.Popen([script("etmem"), "obj", "add", "-f", str(conf), "-s", d.name],
                                  stdout=subprocess.PIPE, text=True, env=d.env)
        deadline = time.monotonic() + 30
        while not (plugin / "init.started").exists():
            assert time.monotonic() < deadline, "the engine was never built"
            time.sleep(0.02)
        began = time.monotonic()
        reply = request(d.name, SHOW, send_timeout=5, recv_timeout=5)
        assert (reply.ok, reply.text) == (True, "no project exists\n\n")
        assert time.monotonic() - began < 1.0
        assert adding.poll() is None, "the obj add should still be building its engine"
    finally:
        (plugin / "init.gate").touch()
        assert adding.wait(30) == 0
        assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log()


# -- stopping within a deadline ------------------------------------------------------------

class Stuck(Strategy):
    """A test engine whose rounds ignore their stop event: each waits for `Stuck.free`
    (at most 30 s), having set `Stuck.entered`."""

    name = "stuck"
    entered = threading.Event()
    free = threading.Event()

    def run_round(self, task, stop):
        Stuck.entered.set()
        Stuck.free.wait(30)


class StuckPlugin:
    @hookimpl
    def etmem_engine_types(self):
        return [Stuck, Gated]


def test_close_leaves_a_task_stuck_in_its_round_behind_and_stops_the_others(caplog):
    """Manager.close (SIGTERM) waited without end for a round that did not end."""
    Stuck.entered, Stuck.free = threading.Event(), threading.Event()
    Gated.gates, Gated.arrived, Gated.failing, Gated.stopped = {}, {}, set(), []
    m = Manager(Plugins(entry_points=False, extra=(StuckPlugin(),)))
    try:
        m.add_text(gated_conf().replace("engine=gated", "engine=stuck").replace("name=gated", "name=stuck"))
        m.add_text(gated_conf().replace("name=p\n", "name=q\n").replace("project=p", "project=q"))
        m.start("p")
        m.start("q")
        assert Stuck.entered.wait(10), "the stuck round never began"
        with caplog.at_level(logging.ERROR, logger="etmem"):
            late = answers_within(lambda: m.close(timeout=0.5), 10.0)
        assert late == ["p/stuck/t1"]
        assert Gated.stopped == ["t1"]                 # q's task stopped, though p's hung
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
            "task t1 of engine stuck of project p did not stop within 0.5 s; not waiting for it"]
        assert [p["started"] for p in m.show()] == [False, False]
    finally:
        Stuck.free.set()


STUCK_PLUGIN = '''
"""A test engine whose rounds ignore their stop event and wait, on a ThreadPoolExecutor
worker (a thread the interpreter's exit waits for), until the test creates round.gate."""
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from etmem.hookspecs import hookimpl
from etmem.strategy import Strategy


def _wait_for_the_gate():
    here = Path(__file__).parent
    (here / "round.started").touch()
    deadline = time.monotonic() + 120
    while not (here / "round.gate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class StuckRound(Strategy):
    name = "stuckround"

    def run_round(self, task, stop):
        with ThreadPoolExecutor(1) as pool:
            pool.submit(_wait_for_the_gate).result()


@hookimpl
def etmem_engine_types():
    return [StuckRound]
'''


def test_sigterm_ends_etmemd_though_a_round_does_not_end(tmp_path, target):
    plugin = install_plugin(tmp_path / "plugin", "stuckround", "etmem_stuckround", STUCK_PLUGIN)
    d = Etmemd(tmp_path, plugin_dir=plugin).start()
    try:
        conf = write_config(tmp_path / "stuck.conf", probe_config("stuck", target, engine="stuckround"))
        assert d.etmem("obj", "add", "-f", str(conf)).returncode == 0, d.log()
        assert d.etmem("project", "start", "-n", "stuck").returncode == 0, d.log()
        deadline = time.monotonic() + 30
        while not (plugin / "round.started").exists():
            assert time.monotonic() < deadline, "the round never began"
            time.sleep(0.02)
        d.proc.send_signal(signal.SIGTERM)
        try:
            code = d.proc.wait(30)       # the round waits up to 120 s
        except subprocess.TimeoutExpired:
            raise AssertionError(f"etmemd did not exit on SIGTERM:\n{d.log()}") from None
    finally:
        (plugin / "round.gate").touch()
        d.stop()
    assert code == 0, d.log()
    log_text = d.log()
    assert "task t1 of engine stuckround of project stuck did not stop within 5 s; not waiting for it" in log_text
    assert "etmemd exits with 1 task still stopping: stuck/stuckround/t1" in log_text
    assert "Traceback" not in log_text
