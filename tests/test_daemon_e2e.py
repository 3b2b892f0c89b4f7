"""End to end: a real etmemd process on a unique socket, driven by the real `etmem`
command and by raw bytes as upstream's C client sends them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etmemd_harness import (Etmemd, probe_config, raw_exchange, script,
                            unique_socket_name, write_config)

pytestmark = pytest.mark.usefixtures("need_root")


@pytest.fixture
def conf(tmp_path, target):
    return write_config(tmp_path / "p1.conf", probe_config("p1", target))


def show_json(d: Etmemd, *extra: str) -> list[dict]:
    result = d.etmem("project", "show", "-o", "json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_add_start_show_stop_delete(daemon, conf, target):
    added = daemon.etmem("obj", "add", "-f", str(conf))
    assert (added.returncode, added.stdout, added.stderr) == (0, "", "")

    shown = daemon.etmem("project", "show")
    assert (shown.returncode, shown.stdout) == (0, (
        "project: p1\n"
        "number   type     value            name             engine           started \n"
        f"1        pid      {str(target):<16} t1               probe            false   \n"))

    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    deadline = time.monotonic() + 15
    while True:
        [project] = show_json(daemon, "-n", "p1")
        task = project["tasks"][0]
        if task["stats"]["extra"].get("ticks", 0) >= 1:
            break
        assert time.monotonic() < deadline, project
        time.sleep(0.2)
    assert project["started"] is True and task["started"] is True
    assert (task["name"], task["type"], task["value"], task["engine"]) == ("t1", "pid", str(target), "probe")
    text = daemon.etmem("project", "show", "-n", "p1").stdout
    assert "stats" not in text and text.count("t1") == 1
    verbose = daemon.etmem("project", "show", "-n", "p1", "-v").stdout
    assert verbose.startswith(text + "\nstats of task t1 (engine probe):\n  rounds ")
    assert "\n  extra.ticks " in verbose

    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
    assert show_json(daemon)[0]["started"] is False
    assert daemon.etmem("obj", "del", "-f", str(conf)).returncode == 0
    assert show_json(daemon) == []
    assert daemon.etmem("project", "show").stdout == "no project exists\n\n"
    gone = daemon.etmem("project", "show", "-n", "p1")
    assert (gone.returncode, gone.stdout) == (0, "project: project p1 is not existed\n\n")


def test_engine_commands(daemon, conf):
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    early = daemon.etmem("engine", "hello", "-n", "p1", "-e", "probe")
    assert early.returncode == 186
    assert early.stdout.startswith("error: invalid parameters\nproject p1 is not started")
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0

    hello = daemon.etmem("engine", "hello", "-n", "p1", "-e", "probe")
    assert (hello.returncode, hello.stdout) == (0, "hello from probe\n")
    with_task = daemon.etmem("engine", "hello", "-n", "p1", "-e", "probe", "-t", "t1")
    assert (with_task.returncode, with_task.stdout) == (0, "hello from probe task t1\n")

    for argv, message in [
        (["engine", "dance", "-n", "p1", "-e", "probe"], "error: invalid parameters\n"
                                                         "engine probe has no command 'dance'"),
        (["engine", "hello", "-n", "p1", "-e", "slide"], "error: engine is not exist\n"
                                                         "project p1 has no engine slide"),
        (["engine", "hello", "-n", "p1", "-e", "probe", "-t", "t9"], "error: task is not exist\n"
                                                                     "engine probe of project p1 has no task t9"),
        (["engine", "hello", "-n", "p9", "-e", "probe"], "error: project is not exist\nproject p9 does not exist"),
    ]:
        result = daemon.etmem(*argv)
        assert result.returncode == 186, result
        assert result.stdout.startswith(message)
        assert result.stdout.endswith("etmem_client_recv failed.\netmem: error -70\n")  # no usage: a right command line


def test_a_slow_engine_command_does_not_block_project_show(daemon, conf, plugin_dir):
    for marker in ("nap.started", "nap.gate"):
        (plugin_dir / marker).unlink(missing_ok=True)
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    nap = subprocess.Popen([script("etmem"), "engine", "nap", "-n", "p1", "-e", "probe", "-s", daemon.name],
                           stdout=subprocess.PIPE, text=True, env=daemon.env)
    try:
        deadline = time.monotonic() + 30
        while not (plugin_dir / "nap.started").exists():
            assert time.monotonic() < deadline, "the nap never began"
            time.sleep(0.02)
        # the nap holds its connection until the gate opens; show must not wait for it
        shown = daemon.etmem("project", "show", timeout=20)
        assert shown.returncode == 0 and "project: p1" in shown.stdout
        assert daemon.raw(b"proj_name p1 file_name - cmd 4 eng_name - eng_cmd - task_name -",
                          timeout=10).startswith(b"project: p1\n")
        assert nap.poll() is None, "the nap should still be running"
    finally:
        (plugin_dir / "nap.gate").touch()
    assert nap.wait(30) == 0 and nap.stdout.read() == "awake\n"


def test_object_and_state_errors(daemon, conf, tmp_path, target):
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    again = daemon.etmem("obj", "add", "-f", str(conf))
    assert again.returncode == 186
    assert again.stdout.startswith(f"error: project has been existed\n{conf}:1: [project] project p1 already exists\n")
    assert [p["name"] for p in show_json(daemon)] == ["p1"]

    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    twice = daemon.etmem("project", "start", "-n", "p1")
    assert twice.returncode == 186
    assert twice.stdout.startswith("error: project has been started\nproject p1 is already started\n")
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
    stopped = daemon.etmem("project", "stop", "-n", "p1")
    assert stopped.returncode == 186
    assert stopped.stdout.startswith("error: project has been stopped\nproject p1 is not started\n")
    missing = daemon.etmem("project", "start", "-n", "nope")
    assert missing.returncode == 186
    assert missing.stdout.startswith("error: project is not exist\nproject nope does not exist")

    # deleting goes on past missing objects and names them
    other = write_config(tmp_path / "other.conf", probe_config("p2", target))
    gone = daemon.etmem("obj", "del", "-f", str(other))
    assert gone.returncode == 186
    assert gone.stdout.startswith("error: project is not exist\n")
    assert "project p2 does not exist" in gone.stdout


def test_a_bad_file_adds_nothing(daemon, tmp_path, target):
    half = write_config(tmp_path / "half.conf", probe_config("p3", target) + """
        [task]
        project=p3
        engine=nosuchengine
        name=t2
        type=pid
        value=1
        """)
    result = daemon.etmem("obj", "add", "-f", str(half))
    assert result.returncode == 186
    assert result.stdout.startswith("error: engine is not exist\n") and "nosuchengine" in result.stdout
    assert show_json(daemon) == []
    broken = write_config(tmp_path / "broken.conf", "[project]\nname=p4\nloop=banana\n")
    result = daemon.etmem("obj", "add", "-f", str(broken))
    assert result.returncode == 186 and "loop" in result.stdout
    assert show_json(daemon) == []


def test_engines_and_tasks_can_join_an_existing_project(daemon, tmp_path, target):
    base = write_config(tmp_path / "base.conf", probe_config("p5", target))
    assert daemon.etmem("obj", "add", "-f", str(base)).returncode == 0
    more = write_config(tmp_path / "more.conf", """
        [task]
        project=p5
        engine=probe
        name=t2
        type=name
        value=sleep
        """)
    assert daemon.etmem("obj", "add", "-f", str(more)).returncode == 0
    assert [t["name"] for t in show_json(daemon, "-n", "p5")[0]["tasks"]] == ["t1", "t2"]
    assert daemon.etmem("obj", "del", "-f", str(more)).returncode == 0
    assert [t["name"] for t in show_json(daemon, "-n", "p5")[0]["tasks"]] == ["t1"]


@pytest.mark.parametrize("setup, message", [
    (lambda p: os.chmod(p, 0o644), "must have mode 0400 or 0600 (it has 0644)"),
    (lambda p: os.chmod(p, 0o660), "must have mode 0400 or 0600 (it has 0660)"),
    (lambda p: os.chown(p, 1000, 0), "must be owned by root:root (it is owned by 1000:0)"),
    (lambda p: os.chown(p, 0, 1000), "must be owned by root:root (it is owned by 0:1000)"),
    (lambda p: os.unlink(p), "No such file or directory"),
])
def test_config_files_must_be_roots_and_private(daemon, conf, setup, message):
    setup(conf)
    result = daemon.etmem("obj", "add", "-f", str(conf))
    assert result.returncode == 186
    assert result.stdout.startswith("error: invalid parameters\nconfig file ") and message in result.stdout
    assert show_json(daemon) == []


def test_a_directory_is_not_a_config_file(daemon, tmp_path):
    result = daemon.etmem("obj", "add", "-f", str(tmp_path))
    assert result.returncode == 186 and "is not a regular file" in result.stdout


def test_relaxed_config_permissions_accept_a_readable_root_file(tmp_path, plugin_dir, target):
    d = Etmemd(tmp_path, ("--config-perms", "relaxed"), plugin_dir=plugin_dir).start()
    try:
        conf = write_config(tmp_path / "r.conf", probe_config("p6", target), mode=0o644)
        assert d.etmem("obj", "add", "-f", str(conf)).returncode == 0
        os.chmod(conf, 0o664)
        conf2 = write_config(tmp_path / "r2.conf", probe_config("p7", target), mode=0o664)
        refused = d.etmem("obj", "add", "-f", str(conf2))
        assert refused.returncode == 186 and "must not be writable by group or others" in refused.stdout
    finally:
        assert d.stop() == 0


def test_relative_paths_are_resolved_against_the_clients_directory(daemon, tmp_path, target):
    (tmp_path / "sub").mkdir()
    write_config(tmp_path / "sub" / "rel.conf", probe_config("p8", target))
    # etmemd runs in /, so only the client's directory makes this path work
    result = daemon.etmem("obj", "add", "-f", "sub/rel.conf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p["name"] for p in show_json(daemon)] == ["p8"]
    assert daemon.etmem("obj", "del", "-f", "../sub/rel.conf", cwd=tmp_path / "sub").returncode == 0
    assert show_json(daemon) == []


# -- raw bytes, as upstream's C client sends them ------------------------------------

def test_raw_upstream_requests_get_exact_reply_bytes(daemon, conf, target):
    send = daemon.raw
    assert send(b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -") == b"no project exists\n\n\xff"
    assert send(f"proj_name - file_name {conf} cmd 0 eng_name - eng_cmd - task_name -".encode()) == b"\xff"
    assert send(b"proj_name p1 file_name - cmd 2 eng_name - eng_cmd - task_name -") == b"\xff"
    assert send(b"proj_name p1 file_name - cmd 2 eng_name - eng_cmd - task_name -") == \
        b"error: project has been started\nproject p1 is already started\xfe"
    assert send(b"proj_name p1 file_name - cmd 5 eng_name probe eng_cmd hello task_name t1") == \
        b"hello from probe task t1\n\xff"
    assert send(b"proj_name p1 file_name - cmd 4 eng_name - eng_cmd - task_name -") == (
        b"project: p1\n"
        b"number   type     value            name             engine           started \n"
        + f"1        pid      {str(target):<16} t1               probe            true    \n".encode() + b"\xff")
    assert send(b"proj_name p1 file_name - cmd 3 eng_name - eng_cmd - task_name -") == b"\xff"
    assert send(b"proj_name nope file_name - cmd 3 eng_name - eng_cmd - task_name -") == \
        b"error: project is not exist\nproject nope does not exist (projects: p1)\xfe"


@pytest.mark.parametrize("data, reply", [
    (b"proj_name -p1 file_name - cmd 2 eng_name - eng_cmd - task_name -",
     b"project name '-p1' must not start with '-'"),
    (b"proj_name p1 file_name - cmd 6 eng_name - eng_cmd - task_name -",
     b"unknown command number 6 (known: 0 obj add, 1 obj del, 2 project start, 3 project stop, "
     b"4 project show, 5 engine command)"),
    (b"proj_name p 1 file_name - cmd 2 eng_name - eng_cmd - task_name -",
     b"malformed request: expected 12 space-separated words (proj_name VALUE file_name VALUE cmd VALUE "
     b"eng_name VALUE eng_cmd VALUE task_name VALUE), got 13"),
    (b"proj_name p1 file_name - cmd 2 eng_name - eng_cmd - task_name - " + b"x" * 600,
     b"request longer than 512 bytes"),
    (b"GET / HTTP/1.0\r\n\r\n",
     b"malformed request: expected 12 space-separated words (proj_name VALUE file_name VALUE cmd VALUE "
     b"eng_name VALUE eng_cmd VALUE task_name VALUE), got 3"),
])
def test_bad_raw_requests_get_a_clear_failure_reply(daemon, data, reply):
    assert daemon.raw(data, shutdown=True) == b"error: invalid parameters\n" + reply + b"\xfe"
    assert daemon.raw(b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -") == b"no project exists\n\n\xff"


VALID = b"proj_name p1 file_name - cmd 4 eng_name - eng_cmd - task_name -"


@st.composite
def malformed(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=700))
    words = VALID.split(b" ")
    if kind == 1:  # replace some words by junk
        for _ in range(draw(st.integers(1, 4))):
            words[draw(st.integers(0, len(words) - 1))] = draw(st.binary(max_size=30))
        return b" ".join(words)
    if kind == 2:  # cut or extend
        return VALID[:draw(st.integers(0, len(VALID)))] + draw(st.binary(max_size=40))
    cmd = draw(st.integers(-3, 12))
    names = st.sampled_from([b"-", b"p1", b"-x", b"", b"a\tb", b"\xff\xfe", b"nope", b"/etc/passwd", b"."])
    return b" ".join([b"proj_name", draw(names), b"file_name", draw(names), b"cmd", str(cmd).encode(),
                      b"eng_name", draw(names), b"eng_cmd", draw(names), b"task_name", draw(names)])


def test_fuzzed_requests_never_stop_the_daemon(daemon, conf):
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    answers = {"ok": 0, "failed": 0}

    @settings(max_examples=2500, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=malformed())
    def exchange(data):
        reply = daemon.raw(data, shutdown=True)
        assert reply[-1:] in (b"\xff", b"\xfe"), (data, reply)
        assert b"\xff" not in reply[:-1] and b"\xfe" not in reply[:-1]
        answers["ok" if reply[-1:] == b"\xff" else "failed"] += 1

    exchange()
    assert answers["failed"] > 1000
    assert daemon.proc.poll() is None
    assert [p["name"] for p in show_json(daemon)] == ["p1"]


# -- who may talk ------------------------------------------------------------------

def _exchange_as(socket_name: str, uid: int, gid: int, data: bytes) -> bytes:
    """Send `data` from a forked child running as uid:gid; returns the reply bytes."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, talk, report, exit
        status = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.write(w, raw_exchange(socket_name, data))
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        reply = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return reply


SHOW = b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -"


def test_a_non_root_peer_is_refused_and_logged(daemon):
    reply = _exchange_as(daemon.name, 65534, 65534, SHOW)
    assert reply == (b"error: permission denied: etmemd accepts requests only from uid 0 with gid 0 "
                     b"(you are uid 65534 gid 65534)\xfe")
    assert _exchange_as(daemon.name, 0, 1000, SHOW).startswith(b"error: permission denied")
    began = time.monotonic()  # a refused peer is answered before it sends anything
    assert _exchange_as(daemon.name, 65534, 65534, b"").startswith(b"error: permission denied")
    assert time.monotonic() - began < 5
    time.sleep(0.2)
    assert "refused a request from pid" in daemon.log() and "uid 65534 gid 65534" in daemon.log()
    assert daemon.raw(SHOW) == b"no project exists\n\n\xff"


def test_allow_group_admits_root_with_that_group(tmp_path, plugin_dir):
    d = Etmemd(tmp_path, ("--allow-group", "1000")).start()
    try:
        assert _exchange_as(d.name, 0, 1000, SHOW) == b"no project exists\n\n\xff"
        assert _exchange_as(d.name, 1000, 1000, SHOW).startswith(b"error: permission denied: etmemd accepts "
                                                                 b"requests only from uid 0 with gid 0 or 1000")
    finally:
        assert d.stop() == 0


# -- the etmemd command --------------------------------------------------------------

def etmemd(*args, timeout=30):
    return subprocess.run([script("etmemd"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, message, usage", [
    ([], "socket name of rpc to listen must be provided", True),
    (["-s", "x" * 107], "shorter than 107 bytes", False),
    (["-s", "a", "-s", "b"], "parse sock parameter repeated", False),
    (["-s", "a", "-l", "4"], "log level must be 0, 1, 2 or 3", False),
    (["-s", "a", "-l", "x"], "log level must be 0, 1, 2 or 3", False),
    (["-s", "a", "--bogus"], "parse parameters failed", True),
    (["-s", "a", "extra"], "useless parameters passed in", False),
    (["-h", "extra"], "useless parameters passed in", False),
    (["-s", "a", "--allow-group", "no-such-group-here"], "unknown group", False),
    (["-s", "a", "--config-perms", "lax"], "strict or relaxed", False),
])
def test_etmemd_usage_errors_exit_255_on_stdout_as_upstream(argv, message, usage):
    result = etmemd(*argv)
    assert (result.returncode, result.stderr) == (255, "")
    assert result.stdout.startswith("error: ") and message in result.stdout.splitlines()[0]
    assert ("usage of etmemd:" in result.stdout) == usage
    assert result.stdout.endswith("\nfail to parse parameters to start etmemd\n")


def test_etmemd_help():
    result = etmemd("-h")
    assert result.returncode == 0
    for option in ("-l|--log-level <log-level>", "-s|--socket <sockect name>", "-m|--mode-systemctl",
                   "-h|--help", "--allow-group", "--config-perms", "--pid-file"):
        assert option in result.stdout


def test_a_second_etmemd_on_the_same_socket_fails_clearly(daemon):
    result = etmemd("-s", daemon.name, timeout=60)
    assert result.returncode == 1
    assert f"socket name {daemon.name} is already in use" in result.stderr


def test_sigterm_stops_every_project_and_exits_0(tmp_path, plugin_dir, conf):
    d = Etmemd(tmp_path, plugin_dir=plugin_dir).start()
    assert d.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert d.etmem("project", "start", "-n", "p1").returncode == 0
    assert d.stop() == 0
    log = d.log()
    assert "caught signal 15" in log and "project p1 stopped" in log and "etmemd stopped" in log
    assert not d.listening()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_systemctl_mode_forks_writes_the_pid_file_and_removes_it_on_sigterm(tmp_path, plugin_dir):
    name = unique_socket_name("m")
    pid_file = tmp_path / "etmemd.pid"
    result = etmemd("-s", name, "-m", "-l", "0", "--pid-file", str(pid_file))
    assert result.returncode == 0, result.stderr
    text = pid_file.read_text()
    assert text.isdigit() and os.stat(pid_file).st_mode & 0o777 == 0o600   # as upstream: no newline, 0600
    pid = int(text)
    try:
        probe = Etmemd(tmp_path, name=name)
        assert probe.listening(), "the parent must exit only once the child listens"
        assert raw_exchange(name, SHOW) == b"no project exists\n\n\xff"
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"etmemd" in f.read()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not pid_file.exists()


def test_systemctl_mode_fails_when_the_child_cannot_listen(daemon, tmp_path):
    pid_file = tmp_path / "x.pid"
    result = etmemd("-s", daemon.name, "-m", "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert not pid_file.exists()


def test_systemctl_mode_fails_when_the_pid_file_cannot_be_written(tmp_path):
    name = unique_socket_name("nopid")
    result = etmemd("-s", name, "-m", "--pid-file", str(tmp_path / "missing-dir" / "etmemd.pid"))
    assert result.returncode == 1
    assert "etmemd: cannot write pid file" in result.stderr
    probe = Etmemd(tmp_path, name=name)
    deadline = time.monotonic() + 20
    while probe.listening() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not probe.listening(), "the child must not stay behind"
