"""The real `etmem` command against a recording socket: the exact bytes it sends, how it
prints replies (all on stdout, as upstream's client), its help texts and exit statuses."""
from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from etmem.cli import client
from etmemd_harness import script, unique_socket_name


class RecordingServer:
    """Listens like etmemd, records each request's bytes and answers with `reply`."""

    def __init__(self, reply: bytes = b"\xff", split: bool = False):
        self.name = unique_socket_name("rec")
        self.reply = reply
        self.split = split  # send the text and the tag in two writes, as upstream's daemon does
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                self.requests.append(conn.recv(4096))  # upstream's client sends one write
                if self.split:
                    conn.sendall(self.reply[:-1])
                    time.sleep(0.1)
                    conn.sendall(self.reply[-1:])
                else:
                    conn.sendall(self.reply)

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def server():
    s = RecordingServer()
    yield s
    s.close()


def etmem(*args, cwd=None):
    return subprocess.run([script("etmem"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("argv, wire", [
    (["obj", "add", "-f", "/etc/etmem/a.conf", "-s", "SOCK"],
     b"proj_name - file_name /etc/etmem/a.conf cmd 0 eng_name - eng_cmd - task_name -"),
    (["obj", "del", "--file", "a.conf", "--socket", "SOCK"],
     b"proj_name - file_name a.conf cmd 1 eng_name - eng_cmd - task_name -"),
    (["project", "show", "-s", "SOCK"],
     b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -"),
    (["project", "start", "-n", "proj1", "-s", "SOCK"],
     b"proj_name proj1 file_name - cmd 2 eng_name - eng_cmd - task_name -"),
    (["project", "stop", "-s", "SOCK", "--name=proj1"],
     b"proj_name proj1 file_name - cmd 3 eng_name - eng_cmd - task_name -"),
    (["project", "show", "-n", "proj1", "-s", "SOCK"],
     b"proj_name proj1 file_name - cmd 4 eng_name - eng_cmd - task_name -"),
    (["engine", "showtaskpages", "-t", "t1", "-n", "proj1", "-e", "cslide", "-s", "SOCK"],
     b"proj_name proj1 file_name - cmd 5 eng_name cslide eng_cmd showtaskpages task_name t1"),
    (["engine", "showhostpages", "--proj_name", "proj1", "--engine", "cslide", "--socket", "SOCK"],
     b"proj_name proj1 file_name - cmd 5 eng_name cslide eng_cmd showhostpages task_name -"),
    (["project", "start", "-n", "p", "-n", "proj1", "-s", "SOCK"],      # getopt: the last one wins
     b"proj_name proj1 file_name - cmd 2 eng_name - eng_cmd - task_name -"),
    (["project", "show", "-v", "-s", "SOCK"],
     b"proj_name - file_name - cmd 4 eng_name - eng_cmd verbose task_name -"),
])
def test_the_client_sends_exactly_upstreams_bytes(server, argv, wire):
    argv = [server.name if a == "SOCK" else a for a in argv]
    result = etmem(*argv)
    assert result.returncode == 0, result.stderr
    assert server.requests == [wire]


def test_the_relative_config_path_is_sent_as_typed(server, tmp_path):
    etmem("obj", "add", "-f", "sub/a.conf", "-s", server.name, cwd=tmp_path)
    assert server.requests == [b"proj_name - file_name sub/a.conf cmd 0 eng_name - eng_cmd - task_name -"]


def test_success_prints_the_reply_text_on_stdout_as_it_is():
    s = RecordingServer(b"project: p\nnumber\n\xff")
    try:
        result = etmem("project", "show", "-s", s.name)
    finally:
        s.close()
    assert (result.returncode, result.stdout, result.stderr) == (0, "project: p\nnumber\n", "")
    s = RecordingServer(b"no newline\xff")
    try:
        result = etmem("engine", "x", "-n", "p", "-e", "e", "-s", s.name)
    finally:
        s.close()
    assert (result.returncode, result.stdout) == (0, "no newline")


def test_a_failure_reply_exits_186_with_upstreams_two_lines_and_no_usage():
    s = RecordingServer(b"error: project is not exist\nproject p does not exist (projects: none)\xfe")
    try:
        result = etmem("project", "start", "-n", "p", "-s", s.name)
    finally:
        s.close()
    assert result.returncode == 186
    assert result.stderr == ""
    # the command line was right: the daemon's answer ends the output, no usage buries it
    assert result.stdout == ("error: project is not exist\n"
                             "project p does not exist (projects: none)\n"
                             "etmem_client_recv failed.\n"
                             "etmem: error -70\n")


def test_a_failure_text_and_tag_in_separate_writes_like_upstreams_daemon():
    s = RecordingServer(b"error: project has been started\xfe", split=True)
    try:
        result = etmem("project", "start", "-n", "p", "-s", s.name)
    finally:
        s.close()
    assert result.returncode == 186
    assert result.stdout.startswith("error: project has been started\netmem_client_recv failed.\n")


def test_a_reply_cut_off_before_the_tag_is_a_failure():
    s = RecordingServer(b"half a repl")
    try:
        result = etmem("project", "show", "-s", s.name)
    finally:
        s.close()
    assert result.returncode == 186
    assert result.stdout.startswith("connection closed by peer: etmemd closed the connection without "
                                    "finishing its reply")
    assert "etmem_client_recv failed.\netmem: error -70\n" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_no_daemon_is_upstreams_message_and_status_111():
    name = unique_socket_name("none")
    result = etmem("project", "show", "-s", name)
    assert result.returncode == 111
    assert result.stdout == (f"etmem connect to server failed: Connection refused (is etmemd running on "
                             f"socket {name}?)\netmem_client_conn failed.\netmem: error 111\n")


def test_json_show_asks_with_eng_cmd_json_and_prints_the_json():
    s = RecordingServer(b'[{"name": "p", "tasks": []}]\n\xff')
    try:
        result = etmem("project", "show", "-o", "json", "-s", s.name)
    finally:
        s.close()
    assert s.requests == [b"proj_name - file_name - cmd 4 eng_name - eng_cmd json task_name -"]
    assert result.returncode == 0 and result.stdout == '[{"name": "p", "tasks": []}]\n'


def test_json_show_against_a_daemon_that_answers_text_says_so():
    s = RecordingServer(b"project: p\n\xff")
    try:
        result = etmem("project", "show", "--output=json", "-s", s.name)
    finally:
        s.close()
    assert result.returncode == 1
    assert "did not answer in JSON" in result.stderr


# Upstream's statuses: -EINVAL (234) for a bad option of obj/project, -1 (255) for a command
# they lack and for every usage error of engine, -E2BIG (249) for left-over words.
@pytest.mark.parametrize("argv, message, status", [
    (["obj", "add", "-s", "x"], "configuration file must be given", 234),
    (["obj", "add", "-f", "a.conf"], "socket name to connect must be given", 234),
    (["obj", "put", "-f", "a", "-s", "x"], "obj command put is not supported", 255),
    (["obj", "--help"], "obj command --help is not supported", 255),
    (["obj", "add", "-f", "a", "-s", "x", "more"], "useless parameters passed in: more", 249),
    (["project", "begin", "-n", "p", "-s", "x"], "project command begin is not supported", 255),
    (["project", "start", "-s", "x"], "project name must be given", 234),
    (["project", "start", "-n", "a b", "-s", "x"], "must not contain white space", 234),
    (["project", "start", "-n", "-x", "-s", "x"], "must not start with '-'", 234),
    (["project", "start", "-n", "p", "-s", "x", "extra"], "useless parameters passed in: extra", 249),
    (["project", "start", "-n", "p", "-s", "x", "-q"], "invalid option", 234),
    (["project", "start", "-n", "p", "-o", "json", "-s", "x"], "only to project show", 234),
    (["project", "start", "-n", "p", "-v", "-s", "x"], "only to project show", 234),
    (["project", "show", "-o", "yaml", "-s", "x"], "text or json", 234),
    (["project", "show", "-s", "s" * 107], "shorter than 107 bytes", 255),
    (["project", "start", "-n", "p" * 500, "-s", "x"], "at most 512", 255),
    (["engine", "showtaskpages", "-e", "cslide", "-s", "x"], "project name must be given", 255),
    (["engine", "showtaskpages", "-n", "p", "-s", "x"], "engine name must be given", 255),
    (["engine", "-n", "p", "-e", "cslide", "-s", "x"], "engine command must be given", 255),
    (["engine", "x", "-n", "p", "-e", "e", "-s", "x", "more"], "useless parameters passed in: more", 255),
    (["engine", "x", "-n", "p", "-e", "e", "-s", "x", "-q"], "invalid option", 255),
    (["obj", "add", "-f", "my file.conf", "-s", "x"], "must not contain white space", 234),
])
def test_usage_errors_exit_with_upstreams_status_the_reason_and_the_usage_on_stdout(argv, message, status):
    result = etmem(*argv)
    assert result.returncode == status, result
    assert result.stderr == ""
    assert result.stdout.startswith(message) or message in result.stdout.splitlines()[0]
    assert f"\netmem: error {status - 256}\n" in result.stdout
    assert result.stdout.endswith(client.HELP[argv[0]])


@pytest.mark.parametrize("group", ["obj", "project", "engine"])
def test_group_help_exits_0_and_a_bare_group_exits_234(group):
    helped = etmem(group, "help")
    assert (helped.returncode, helped.stdout) == (0, client.HELP[group])
    bare = etmem(group)
    assert (bare.returncode, bare.stdout, bare.stderr) == (234, client.HELP[group], "")


def test_engine_help_lists_history_with_what_it_prints():
    notes = etmem("engine", "help").stdout.split("Notes:")[1]
    (line,) = [n for n in notes.splitlines() if "history" in n]
    assert line.strip().startswith("7. Every engine's command history: the task's last rounds")
    assert "JSON" in notes and "etmem report --input" in notes and "without -t every task's" in notes


def test_help_lists_every_command_with_one_line_each():
    result = etmem("help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for command in ("obj add|del", "project start|stop", "project show", "engine CMD",
                    "config", "plugins", "demo", "help"):
        assert sum(1 for line in lines if line.strip().startswith(command)) == 1, command


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"], ["help", "extra"], ["migrate", "start"]])
def test_etmem_without_a_known_object_prints_the_usage_and_exits_234_as_upstream(argv):
    result = etmem(*argv)
    assert (result.returncode, result.stderr) == (234, "")
    assert result.stdout.endswith(etmem("help").stdout)
    if argv[:1] == ["migrate"]:
        assert result.stdout.startswith("etmem: unknown object 'migrate'\n")


def test_obj_help_layout_matches_upstream():
    assert client.OBJ_HELP.splitlines()[:5] == [
        "", "Usage:", "    etmem obj add [options]", "    etmem obj del [options]", "    etmem obj help"]
    assert "    -f|--file <conf_file>       Add configuration file" in client.OBJ_HELP
    assert "    -s|--socket <socket_name>   Socket name to connect" in client.OBJ_HELP


def _full_queue(name: str) -> tuple[socket.socket, list[socket.socket]]:
    """A socket listening on `name` whose queue of connections waiting to be accepted is
    full (a busy etmemd's), and the connections filling it."""
    address = b"\0" + name.encode()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(0)
    held = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(address)
        except BlockingIOError:
            s.close()
            return listener, held
        held.append(s)


def test_a_busy_daemon_is_waited_for_within_the_timeout():
    """A full queue made connect() fail at once with EAGAIN: `is etmemd running?`."""
    name = unique_socket_name("busy")
    listener, held = _full_queue(name)

    done = threading.Event()

    def serve_later():      # accept the queue in order; answer whoever sends a request
        time.sleep(1.5)
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.2)
                try:
                    if conn.recv(4096):
                        conn.sendall(b"no project exists\n\n\xff")
                except TimeoutError:
                    pass

    server = threading.Thread(target=serve_later, daemon=True)
    server.start()
    try:
        began = time.monotonic()
        result = etmem("project", "show", "-s", name)
        took = time.monotonic() - began
    finally:
        done.set()
        server.join(10)
        for s in held:
            s.close()
        listener.close()
    assert (result.returncode, result.stdout) == (0, "no project exists\n\n"), result
    assert took >= 1.5


def test_a_daemon_busy_for_the_whole_timeout_is_reported_busy():
    name = unique_socket_name("busy")
    listener, held = _full_queue(name)
    try:
        began = time.monotonic()
        with pytest.raises(client.ConnectError) as caught:
            client.request(name, client.Request(client.Command.PROJECT_SHOW), send_timeout=1.0)
        took = time.monotonic() - began
    finally:
        for s in held:
            s.close()
        listener.close()
    assert str(caught.value) == (f"etmem connect to server failed: etmemd on socket {name} is busy: its queue "
                                 f"of connections waiting to be accepted stayed full for 1 s")
    assert (caught.value.status, caught.value.step) == (11, client.CONN_FAILED)   # EAGAIN, connect()'s errno
    assert 1.0 <= took < 3
