"""The etmemd server in-process, on real sockets, around a fake Manager: reply bytes,
request reading, concurrency, config file checks and peer rules."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from etmem.daemon import Daemon, Peer, RequestRefused, check_config_file, resolve_config_path
from etmem.errors import Cause, ObjectError
from etmemd_harness import raw_exchange, unique_socket_name


class FakeManager:
    """Records calls; `engine_command(..., 'wait')` blocks until `release` is set."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.release = threading.Event()
        self.closed = False

    def add_text(self, text, path=None):
        self.calls.append(("add_file", path))
        self.texts = getattr(self, "texts", []) + [text]
        return ["project p"]

    def delete_text(self, text, path=None):
        self.calls.append(("delete_file", path))
        return ["project p"]

    def start(self, name):
        self.calls.append(("start", name))
        if name != "p":
            raise ObjectError(f"project {name} does not exist", Cause.PROJECT_MISSING)

    def stop(self, name):
        self.calls.append(("stop", name))
        raise RuntimeError("a bug in the model")

    def show(self, name=None):
        self.calls.append(("show", name))
        if name == "absent":
            raise ObjectError("project absent does not exist", Cause.PROJECT_MISSING)
        return [{"name": "p", "started": False, "scan_type": "page", "tasks": [
            {"number": 1, "type": "pid", "value": "7", "name": "t1", "engine": "slide",
             "started": False, "stats": {}}]}]

    def engine_command(self, project, engine, cmd, task=None):
        self.calls.append(("engine_command", project, engine, cmd, task))
        if cmd == "wait":
            assert self.release.wait(10)
        return f"did {cmd}\n"

    def close(self):
        self.closed = True


@pytest.fixture
def served():
    manager = FakeManager()
    daemon = Daemon(unique_socket_name("unit"), manager)
    daemon.listen()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    yield daemon, manager
    manager.release.set()
    daemon.request_stop()
    thread.join(15)
    assert not thread.is_alive()


SHOW_REPLY = (b"project: p\n"
              b"number   type     value            name             engine           started \n"
              b"1        pid      7                t1               slide            false   \n\xff")


def test_upstream_request_bytes_get_exact_reply_bytes(served):
    daemon, manager = served
    name = daemon.socket_name
    assert raw_exchange(name, b"proj_name p file_name - cmd 2 eng_name - eng_cmd - task_name -") == b"\xff"
    assert raw_exchange(name, b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -") == SHOW_REPLY
    assert raw_exchange(name, b"proj_name q file_name - cmd 2 eng_name - eng_cmd - task_name -") == \
        b"error: project is not exist\nproject q does not exist\xfe"
    assert raw_exchange(name, b"proj_name absent file_name - cmd 4 eng_name - eng_cmd - task_name -") == \
        b"project: project absent is not existed\n\n\xff"
    assert raw_exchange(name, b"proj_name absent file_name - cmd 4 eng_name - eng_cmd json task_name -") == \
        b"error: project is not exist\nproject absent does not exist\xfe"
    assert raw_exchange(name, b"proj_name p file_name - cmd 5 eng_name e eng_cmd go task_name t1") == \
        b"did go\n\xff"
    assert ("engine_command", "p", "e", "go", "t1") in manager.calls


def test_a_bug_below_the_daemon_is_a_failure_reply_not_a_crash(served):
    daemon, _ = served
    reply = raw_exchange(daemon.socket_name, b"proj_name p file_name - cmd 3 eng_name - eng_cmd - task_name -")
    assert reply.startswith(b"error: etmemd has internal error, see reason details in messages\n"
                            b"RuntimeError: a bug in the model")
    assert reply.endswith(b"\xfe")
    assert raw_exchange(daemon.socket_name, b"proj_name p file_name - cmd 2 eng_name - eng_cmd - task_name -") == b"\xff"


def test_a_slow_engine_command_does_not_block_project_show(served):
    daemon, manager = served
    slow: dict = {}
    t = threading.Thread(target=lambda: slow.setdefault("reply", raw_exchange(
        daemon.socket_name, b"proj_name p file_name - cmd 5 eng_name e eng_cmd wait task_name -")))
    t.start()
    while ("engine_command", "p", "e", "wait", None) not in manager.calls:
        time.sleep(0.01)
    began = time.monotonic()
    assert raw_exchange(daemon.socket_name, b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -") == SHOW_REPLY
    assert time.monotonic() - began < 1.0
    assert t.is_alive(), "the engine command should still be running"
    manager.release.set()
    t.join(10)
    assert slow["reply"] == b"did wait\n\xff"


def test_a_request_sent_in_pieces_is_put_back_together(served):
    daemon, _ = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(b"\0" + daemon.socket_name.encode())
        s.sendall(b"proj_name p file_na")
        time.sleep(0.05)
        s.sendall(b"me - cmd 2 eng_name - eng_cmd - task_name -")
        assert s.recv(100) == b"\xff"


@pytest.mark.parametrize("size", [513, 10_000, 300_000])
def test_an_over_long_request_gets_a_failure_reply(served, size):
    daemon, _ = served
    reply = raw_exchange(daemon.socket_name, b"proj_name " + b"p" * size)
    assert reply == b"error: invalid parameters\nrequest longer than 512 bytes\xfe"


def test_a_whole_but_invalid_request_is_answered_without_waiting_for_more(served, monkeypatch):
    monkeypatch.setattr("etmem.daemon.REQUEST_IDLE_GAP", 5.0)
    daemon, _ = served
    began = time.monotonic()
    reply = raw_exchange(daemon.socket_name, b"proj_name p file_name - cmd 7 eng_name - eng_cmd - task_name -")
    assert reply.startswith(b"error: invalid parameters\nunknown command number 7") and reply.endswith(b"\xfe")
    assert time.monotonic() - began < 2.5


def test_an_incomplete_request_is_refused_after_a_pause(served):
    daemon, _ = served
    reply = raw_exchange(daemon.socket_name, b"proj_name p file_name")
    assert reply.startswith(b"error: invalid parameters\nmalformed request") and reply.endswith(b"\xfe")


def test_an_empty_connection_is_refused(served):
    daemon, _ = served
    assert raw_exchange(daemon.socket_name, b"", shutdown=True) == b"error: invalid parameters\nempty request\xfe"


def test_stopping_the_daemon_stops_all_projects_and_frees_the_socket():
    manager = FakeManager()
    daemon = Daemon(unique_socket_name("stop"), manager)
    daemon.listen()
    thread = threading.Thread(target=daemon.serve_forever)
    thread.start()
    daemon.request_stop()
    thread.join(10)
    assert manager.closed
    again = Daemon(daemon.socket_name, FakeManager())
    again.listen()  # the name is free again
    again.request_stop()
    again.serve_forever()


def test_a_taken_socket_name_is_a_clear_error(served):
    daemon, _ = served
    with pytest.raises(Exception, match="already in use"):
        Daemon(daemon.socket_name, FakeManager()).listen()


def test_only_uid_0_with_an_allowed_gid_may_talk():
    strict = Daemon(unique_socket_name("p"), FakeManager())
    assert strict.peer_allowed(Peer(1, 0, 0))
    assert not strict.peer_allowed(Peer(1, 0, 4))
    assert not strict.peer_allowed(Peer(1, 1000, 0))
    lenient = Daemon(unique_socket_name("p"), FakeManager(), allowed_gids=frozenset({4}))
    assert lenient.peer_allowed(Peer(1, 0, 4)) and lenient.peer_allowed(Peer(1, 0, 0))
    assert not lenient.peer_allowed(Peer(1, 1000, 4))


# -- config files -------------------------------------------------------------------

def test_relative_config_paths_are_resolved_against_the_clients_cwd(tmp_path):
    (tmp_path / "sub").mkdir()
    child = subprocess.Popen(["sleep", "30"], cwd=tmp_path / "sub")
    try:
        resolved = resolve_config_path("../a.conf", Peer(child.pid, 0, 0))
    finally:
        child.kill()
        child.wait()
    assert resolved == str(tmp_path / "a.conf")
    assert resolve_config_path("/etc/../etc/x.conf", Peer(child.pid, 0, 0)) == "/etc/x.conf"


def test_a_relative_path_from_a_vanished_client_is_refused():
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(RequestRefused, match="give an absolute path"):
        resolve_config_path("a.conf", Peer(child.pid, 0, 0))


@pytest.fixture
def root_file(tmp_path, need_root):
    path = tmp_path / "c.conf"
    path.write_text("[project]\nname=p\n")
    os.chown(path, 0, 0)
    return path


@pytest.mark.parametrize("mode, strict_ok, relaxed_ok", [
    (0o600, True, True), (0o400, True, True), (0o644, False, True), (0o640, False, True),
    (0o620, False, False), (0o666, False, False), (0o700, False, True),
])
def test_config_file_modes(root_file, mode, strict_ok, relaxed_ok):
    os.chmod(root_file, mode)
    for perms, ok in (("strict", strict_ok), ("relaxed", relaxed_ok)):
        if ok:
            check_config_file(str(root_file), perms)
        else:
            with pytest.raises(RequestRefused, match="mode"):
                check_config_file(str(root_file), perms)


def test_config_files_must_be_owned_by_root(root_file):
    os.chmod(root_file, 0o600)
    os.chown(root_file, 1000, 0)
    with pytest.raises(RequestRefused, match="owned by root:root"):
        check_config_file(str(root_file))
    with pytest.raises(RequestRefused, match="owned by root"):
        check_config_file(str(root_file), "relaxed")
    os.chown(root_file, 0, 1000)
    with pytest.raises(RequestRefused, match=r"root:root \(it is owned by 0:1000\)"):
        check_config_file(str(root_file))
    check_config_file(str(root_file), "relaxed")


def test_config_files_must_be_regular_small_and_present(root_file, tmp_path):
    with pytest.raises(RequestRefused, match="not a regular file"):
        check_config_file(str(tmp_path))
    with pytest.raises(RequestRefused, match="No such file"):
        check_config_file(str(tmp_path / "missing.conf"))
    os.chmod(root_file, 0o600)
    os.truncate(root_file, (10 << 20) + 1)
    with pytest.raises(RequestRefused, match="at most 10485760"):
        check_config_file(str(root_file))


def test_a_trickling_client_is_cut_off_at_the_request_timeout():
    manager = FakeManager()
    daemon = Daemon(unique_socket_name("slow"), manager, request_timeout=1.0)
    daemon.listen()
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(b"\0" + daemon.socket_name.encode())
            s.setblocking(False)
            began = time.monotonic()
            reply = b""
            while not reply.endswith((b"\xff", b"\xfe")) and time.monotonic() - began < 10:
                try:
                    s.send(b"x")
                except BlockingIOError:
                    pass
                time.sleep(0.1)
                try:
                    reply += s.recv(1000)
                except BlockingIOError:
                    pass
            took = time.monotonic() - began
        assert reply.startswith(b"error: invalid parameters\nmalformed request") and reply.endswith(b"\xfe")
        assert took < 3
    finally:
        daemon.request_stop()
        thread.join(15)


def test_the_checked_file_is_the_file_read(root_file, tmp_path):
    """The text is read from the descriptor the checks were made on; a symlink in the path is refused."""
    os.chmod(root_file, 0o600)
    text = check_config_file(str(root_file))
    assert text == open(root_file).read() and text
    link = tmp_path / "link.conf"
    link.symlink_to(root_file)
    with pytest.raises(RequestRefused, match="link.conf"):
        check_config_file(str(link))     # realpath() resolves links first; a link left in is refused


def test_config_files_are_never_read_from_proc_sys_or_dev():
    # /proc/self/status is root-owned and 0444: relaxed rules alone would let etmemd echo it back
    for path in ("/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled", "/dev/null"):
        with pytest.raises(RequestRefused, match="config files are never read from /proc, /sys or /dev"):
            check_config_file(path, "relaxed")
