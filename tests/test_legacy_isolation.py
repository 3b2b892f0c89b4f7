"""C engines that crash, exit or hang, or name no ops table, in a real etmemd: each
fails its own engine with a message naming the engine, library, function and signal or
exit status, while etmemd and another project's C engine run on (each C engine runs in
a helper process of its own, tests/c/misbehaving_engine.c has the bad engines)."""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from etmem.engines import legacy_abi as abi
from etmem.engines.legacy_host import MAX_MESSAGE, Wire
from etmem.errors import EtmemError, ProtocolError
from etmem.model import Manager
from etmem.scan import CLAIMS
from etmemd_harness import Etmemd, write_config
from test_legacy import compile_engine, error_of, events, thirdparty_config

pytestmark = pytest.mark.usefixtures("need_root")

CALL_TIMEOUT = 4   # etmemd's ETMEM_LEGACY_CALL_TIMEOUT here, seconds
ADVICE = ("; its tasks are stopped and its calls fail until the engine is deleted and added again "
          "(etmem obj del / obj add)")


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_engines")
    os.chmod(d, 0o755)
    return {"bad": compile_engine(d, "misbehaving_engine"), "full": compile_engine(d, "full_engine"),
            "scan": compile_engine(d, "scan_engine", abi.scan_library_path())}


@pytest.fixture
def daemon(tmp_path):
    d = Etmemd(tmp_path)
    d.env["ETMEM_LEGACY_CALL_TIMEOUT"] = str(CALL_TIMEOUT)
    d.start()
    yield d
    assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log()


@pytest.fixture
def survivor(daemon, libs, target, tmp_path):
    """Project `alive`: a good C engine with a started task, whose thread ticks."""
    log = tmp_path / "alive.log"
    conf = write_config(tmp_path / "alive.conf", thirdparty_config(
        libs["full"], "full_ops", target, eng="good", project="alive",
        engine_keys=f"log_file={log}\nengine_private_key=k"))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "alive").returncode == 0
    return log


def assert_runs_on(daemon, survivor: Path) -> None:
    """etmemd answers, and project alive's engine still runs its task (never stopped)."""
    assert daemon.proc.poll() is None
    shown = daemon.etmem("engine", "show", "-n", "alive", "-e", "good", "-t", "t1")
    assert (shown.returncode, shown.stdout) == (0, "engine good cmd show private k task t1 private (none) "
                                                   "ticking yes end\n")
    assert "stop_task t1" not in events(survivor)


def reply_of(result) -> str:
    """What etmemd replied to a failed request (the client prints its own lines after it)."""
    return error_of(result).split("etmem_client_recv failed.\n")[0]


def helpers(daemon) -> set[int]:
    """etmemd's child processes (its C engines' helpers)."""
    pid = daemon.proc.pid
    found: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def last_error(daemon, project: str) -> str | None:
    shown = daemon.etmem("project", "show", "-n", project, "-o", "json")
    assert shown.returncode == 0, shown.stdout
    return json.loads(shown.stdout)[0]["tasks"][0]["stats"]["last_error"]


def test_a_start_task_that_dereferences_null_fails_its_engine_only(daemon, libs, target, tmp_path, survivor):
    before = helpers(daemon)
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["bad"], "null_start_ops", target))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    crashed = (f"engine c1 ({libs['bad']}, null_start_ops) crashed: killed by SIGSEGV in start_task" + ADVICE)
    failed = reply_of(daemon.etmem("project", "start", "-n", "p1"))
    assert failed == f"error: etmemd has internal error, see reason details in messages\n{crashed}\n"
    assert last_error(daemon, "p1") == crashed
    assert f"etmemd: ERROR: {crashed}\n" in daemon.log()
    assert_runs_on(daemon, survivor)
    assert helpers(daemon) == before   # the helper is gone, and reaped

    # never restarted behind the user's back: the engine fails again, the same way
    assert reply_of(daemon.etmem("project", "start", "-n", "p1")).endswith(f"{crashed}\n")
    # obj del takes the dead engine out; obj add runs a new helper, which crashes afresh
    assert daemon.etmem("obj", "del", "-f", str(conf)).returncode == 0
    assert "project: p1" not in daemon.etmem("project", "show").stdout
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert len(helpers(daemon)) == len(before) + 1
    assert reply_of(daemon.etmem("project", "start", "-n", "p1")).endswith(f"{crashed}\n")
    assert daemon.log().count(f"etmemd: ERROR: {crashed}\n") == 2
    assert_runs_on(daemon, survivor)


def test_a_crash_is_seen_at_once_while_a_program_the_engine_started_runs_on(daemon, libs, target, tmp_path,
                                                                            survivor):
    """A child the engine forked holds the helper's socket too: etmemd sees the helper end all the same."""
    pid_file = tmp_path / "child.pid"
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["bad"], "spawn_null_ops", target,
                                                               engine_keys=f"pid_file={pid_file}"))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    began = time.monotonic()
    failed = reply_of(daemon.etmem("project", "start", "-n", "p1"))
    took = time.monotonic() - began
    child = int(pid_file.read_text())
    try:
        assert failed.endswith(f"engine c1 ({libs['bad']}, spawn_null_ops) crashed: killed by SIGSEGV in "
                               f"start_task{ADVICE}\n")
        assert took < CALL_TIMEOUT and not gone(child)
    finally:
        os.kill(child, signal.SIGKILL)
    assert_runs_on(daemon, survivor)


def test_exit_in_fill_eng_params_refuses_the_engine_only(daemon, libs, target, tmp_path, survivor):
    before = helpers(daemon)
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["bad"], "exit_fill_ops", target))
    failed = reply_of(daemon.etmem("obj", "add", "-f", str(conf)))
    assert failed == ("error: etmemd has internal error, see reason details in messages\n"
                      f"engine c1 ({libs['bad']}, exit_fill_ops) crashed: exited with status 3 in fill_eng_params\n")
    shown = daemon.etmem("project", "show")
    assert shown.returncode == 0 and "project: p1" not in shown.stdout and "project: alive" in shown.stdout
    assert helpers(daemon) == before
    assert_runs_on(daemon, survivor)


def test_a_crash_in_an_engine_thread_leaves_the_other_c_engine_of_the_project_running(daemon, libs, target,
                                                                                      tmp_path, survivor):
    log = tmp_path / "good.log"
    both = thirdparty_config(libs["bad"], "thread_crash_ops", target, eng="bad")
    both += "\n".join(["[engine]", "name=thirdparty", "project=p1", "eng_name=good", f"libname={libs['full']}",
                       "ops_name=full_ops", f"log_file={log}", "",
                       "[task]", "project=p1", "engine=good", "name=t2", "type=pid", f"value={target}", ""])
    assert daemon.etmem("obj", "add", "-f", str(write_config(tmp_path / "both.conf", both))).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0   # the crash comes 300 ms later

    crashed = (f"engine bad ({libs['bad']}, thread_crash_ops) crashed: killed by SIGSEGV while none of its "
               "functions was running (in a thread of its own)" + ADVICE)
    deadline = time.monotonic() + 20
    while f"etmemd: ERROR: {crashed}\n" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
    tasks = {t["name"]: t for t in json.loads(daemon.etmem("project", "show", "-n", "p1", "-o", "json").stdout)[0]["tasks"]}
    assert tasks["t1"]["stats"]["last_error"] == crashed and tasks["t2"]["stats"]["last_error"] is None
    assert reply_of(daemon.etmem("engine", "hello", "-n", "p1", "-e", "bad")).endswith(f"{crashed}\n")
    # proj->engs of good's helper lists bad, newest first, until bad is deleted
    good = daemon.etmem("engine", "engines", "-n", "p1", "-e", "good")
    assert (good.returncode, good.stdout) == (0, "good bad\n")
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
    assert events(log)[-2:] == ["stop_task t2", f"free_pid_params {target}"]
    assert_runs_on(daemon, survivor)


@pytest.mark.parametrize("ops, problem", [
    ("not_a_table", "is a function, not a struct engine_ops: ops_name names the table of nine function "
                    "pointers (72 bytes)"),
    ("small_table", "is a data object of 16 bytes, not a struct engine_ops (72 bytes: nine function pointers)"),
])
def test_an_ops_name_that_is_no_ops_table_is_refused_at_obj_add(daemon, libs, target, tmp_path, survivor,
                                                                ops, problem):
    before = helpers(daemon)
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["bad"], ops, target))
    failed = reply_of(daemon.etmem("obj", "add", "-f", str(conf)))
    assert failed.endswith(f"\nlibname {libs['bad']}: ops_name {ops} {problem}\n")
    assert "project: p1" not in daemon.etmem("project", "show").stdout
    assert helpers(daemon) == before
    assert_runs_on(daemon, survivor)


def test_a_stop_task_that_never_returns_is_killed_after_the_timeout(daemon, libs, target, tmp_path, survivor):
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["bad"], "hang_stop_ops", target))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    (helper,) = [int(p) for p in re.findall(rf"engine c1 \({re.escape(str(libs['bad']))}, hang_stop_ops\): "
                                            r"helper process (\d+)", daemon.log())]
    began = time.monotonic()
    stopped = daemon.etmem("project", "stop", "-n", "p1")
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stdout
    assert CALL_TIMEOUT <= took < CALL_TIMEOUT + 10
    killed = (f"engine c1 ({libs['bad']}, hang_stop_ops) did not return from stop_task within {CALL_TIMEOUT} s: "
              f"etmemd killed its helper process (pid {helper})" + ADVICE)
    assert last_error(daemon, "p1") == killed
    assert f"etmemd: ERROR: {killed}\n" in daemon.log()
    assert gone(helper)
    assert daemon.etmem("obj", "del", "-f", str(conf)).returncode == 0
    assert_runs_on(daemon, survivor)


def test_a_crash_in_a_command_returns_what_the_command_wrote(daemon, libs, target, tmp_path, survivor):
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["bad"], "crash_cmd_ops", target))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    fine = daemon.etmem("engine", "other", "-n", "p1", "-e", "c1")
    assert (fine.returncode, fine.stdout) == (0, "fine\n")
    failed = reply_of(daemon.etmem("engine", "crash", "-n", "p1", "-e", "c1"))
    assert failed == ("error: etmemd has internal error, see reason details in messages\nabout to crash\n"
                      f"engine c1 ({libs['bad']}, crash_cmd_ops) crashed: killed by SIGSEGV in eng_mgt_func{ADVICE}\n")
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
    assert_runs_on(daemon, survivor)


def test_no_helper_outlives_etmemd(libs, target, tmp_path):
    for how in (signal.SIGTERM, signal.SIGKILL):
        d = Etmemd(tmp_path / how.name)
        d.workdir.mkdir()
        d.start()
        conf = write_config(tmp_path / f"{how.name}.conf", thirdparty_config(
            libs["full"], "full_ops", target, engine_keys=f"log_file={tmp_path / 'full.log'}"))
        assert d.etmem("obj", "add", "-f", str(conf)).returncode == 0
        assert d.etmem("project", "start", "-n", "p1").returncode == 0
        (helper,) = helpers(d)
        if how == signal.SIGKILL:
            d.proc.kill()   # etmemd has no chance to stop anything: the helper sees its socket close
            d.proc.wait()
        d.stop()
        deadline = time.monotonic() + 10
        while not gone(helper):
            assert time.monotonic() < deadline, f"helper {helper} still runs after etmemd got {how.name}"
            time.sleep(0.05)


def test_a_c_engines_page_passes_claim_their_process_in_etmemd(libs, tmp_path, workload_factory):
    """While another task of etmemd scans a process (its claim held here), a C engine's
    page pass over it fails rather than clear what the other scan is counting."""
    w = workload_factory(total_mb=8, hot_mb=2)
    text = thirdparty_config(libs["scan"], "scan_ops", w.pid, project_keys="scanner=smaps")

    def scan_results() -> str:
        m = Manager()
        m.add_text(text)
        try:
            m.start("p1")
            deadline = time.monotonic() + 60
            while "done=1" not in (out := m.engine_command("p1", "c1", "stats", "t1")):
                assert time.monotonic() < deadline, out
                time.sleep(0.1)
            return dict(item.split("=") for item in out.split())["refs"]
        finally:
            m.delete_project("p1")

    held = CLAIMS.claim(w.pid)
    try:
        assert scan_results() == "-1,-1"
    finally:
        CLAIMS.release(held)
    assert scan_results() == "0,0"


def test_a_bad_call_timeout_is_named(libs, target, monkeypatch):
    monkeypatch.setenv("ETMEM_LEGACY_CALL_TIMEOUT", "soon")
    with pytest.raises(EtmemError, match="ETMEM_LEGACY_CALL_TIMEOUT=soon: must be a number of seconds above 0"):
        Manager().add_text(thirdparty_config(libs["full"], "full_ops", target, engine_keys="log_file=/dev/null"))


def test_the_wire_between_etmemd_and_a_helper():
    ours, theirs = socket.socketpair()
    a, b = Wire(ours), Wire(theirs)
    read_fd, write_fd = os.pipe()
    sender = threading.Thread(target=lambda: [a.send({"op": "command", "cmd": "ü" * 70000}, [write_fd]),
                                              a.send({"at": "eng_mgt_func"})])
    sender.start()   # the first message is longer than the socket holds
    assert b.receive() == {"op": "command", "cmd": "ü" * 70000}
    assert b.receive() == {"at": "eng_mgt_func"}
    sender.join()
    os.close(write_fd)
    (passed,) = b.fds
    os.write(passed, b"through")
    assert os.read(read_fd, 16) == b"through"

    ours.sendall(struct.pack("!I", MAX_MESSAGE + 1))
    with pytest.raises(ProtocolError, match=f"a message of {MAX_MESSAGE + 1} bytes"):
        b.receive()
    b._buf.clear()
    ours.sendall(struct.pack("!I", 2) + b"[]")
    with pytest.raises(ProtocolError, match="a message that is not an object"):
        b.receive()
    ours.sendall(struct.pack("!I", 10) + b"{")
    ours.close()
    with pytest.raises(ProtocolError, match="closed in the middle of a message"):
        b.receive()
    b.close()
    os.close(read_fd)
    assert b.fds == collections.deque() and b.sock.fileno() == -1

    # a process's end ends its wire too, even while another holds its socket
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(["sleep", "0.2"])
    pidfd = os.pidfd_open(child.pid)
    try:
        assert Wire(theirs).receive(until=pidfd) is None
    finally:
        os.close(pidfd)
        child.wait()
        ours.close()
        theirs.close()
