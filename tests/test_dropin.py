"""Drop-in, byte for byte: what users' scripts see from `etmem` and `etmemd`.

A real etmemd gets upstream's exact request lines (one write, no newline, `-` for an
absent value, as upstream's C client sends them) and must answer upstream's exact bytes;
the real `etmem` must print (everything on stdout) and exit as upstream's client does.
The expected bytes are written out here from upstream's formats, not from our code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from etmemd_harness import (Etmemd, probe_config, raw_exchange, script,
                            unique_socket_name, write_config)

pytestmark = pytest.mark.usefixtures("need_root")

SHOW_ALL = b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -"
HEADER = b"number   type     value            name             engine           started \n"


def show_one(name: str) -> bytes:
    return f"proj_name {name} file_name - cmd 4 eng_name - eng_cmd - task_name -".encode()


def start(name: str) -> bytes:
    return f"proj_name {name} file_name - cmd 2 eng_name - eng_cmd - task_name -".encode()


def stop(name: str) -> bytes:
    return f"proj_name {name} file_name - cmd 3 eng_name - eng_cmd - task_name -".encode()


def obj_add(path) -> bytes:
    return f"proj_name - file_name {path} cmd 0 eng_name - eng_cmd - task_name -".encode()


def engine_cmd(project: str, engine: str, cmd: str, task: str = "-") -> bytes:
    return f"proj_name {project} file_name - cmd 5 eng_name {engine} eng_cmd {cmd} task_name {task}".encode()


def row(number: int, type_: str, value, name: str, engine: str, started: bool) -> bytes:
    """One task row as upstream's etmemd prints it: printf("%-8d %-8s %-16s %-16s %-16s %-8s\\n")."""
    return b"%-8d %-8s %-16s %-16s %-16s %-8s\n" % (number, type_.encode(), str(value).encode(), name.encode(),
                                                   engine.encode(), b"true" if started else b"false")


def fails_with(reply: bytes, line: str) -> bool:
    """A failure reply of upstream's shape: its line for the cause first, the tag, no newline before it."""
    return reply.startswith(line.encode() + b"\n") and reply.endswith(b"\xfe") and not reply.endswith(b"\n\xfe")


#: The probe's crash command makes etmemd log a traceback (the daemon fixture checks the log).
ETMEMD_LOG_MAY_HOLD_TRACEBACKS = True


def slide_task(project: str, name: str, pid: int) -> str:
    return f"""
        [engine]
        name=slide
        project={project}

        [task]
        project={project}
        engine=slide
        name={name}
        type=pid
        value={pid}
        T=1
        """


def probe_task(project: str, name: str, value: str, type_: str = "name") -> str:
    return f"""
        [task]
        project={project}
        engine=probe
        name={name}
        type={type_}
        value={value}
        """


# -- project show --------------------------------------------------------------------

def test_show_of_nothing_and_of_an_absent_project_are_upstreams_successes(daemon):
    assert daemon.raw(SHOW_ALL) == b"no project exists\n\n\xff"
    assert daemon.raw(show_one("ABSENT")) == b"project: project ABSENT is not existed\n\n\xff"
    nothing = daemon.etmem("project", "show")
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, "no project exists\n\n", "")
    absent = daemon.etmem("project", "show", "-n", "ABSENT")
    assert (absent.returncode, absent.stdout) == (0, "project: project ABSENT is not existed\n\n")


def test_show_is_upstreams_table_newest_first_numbered_per_engine(daemon, tmp_path, target):
    files = [
        probe_config("p1", target),                               # p1, its probe engine, t1
        slide_task("p1", "s1", target),                           # a second engine
        probe_task("p1", "t2", "a_process_name_"),                # a second probe task
        probe_config("p2", target, task="only"),                  # a newer project
    ]
    for i, text in enumerate(files):
        assert daemon.raw(obj_add(write_config(tmp_path / f"{i}.conf", text))) == b"\xff"

    def table(started: bool) -> bytes:
        return (b"project: p2\n" + HEADER + row(1, "pid", target, "only", "probe", started) +
                b"project: p1\n" + HEADER +
                row(1, "pid", target, "s1", "slide", started) +
                row(1, "name", "a_process_name_", "t2", "probe", started) +
                row(2, "pid", target, "t1", "probe", started))

    assert daemon.raw(SHOW_ALL) == table(False) + b"\xff"
    assert daemon.raw(show_one("p2")) == b"project: p2\n" + HEADER + row(1, "pid", target, "only", "probe", False) + b"\xff"
    assert daemon.raw(start("p1")) == b"\xff" and daemon.raw(start("p2")) == b"\xff"
    assert daemon.raw(SHOW_ALL) == table(True) + b"\xff"
    shown = daemon.etmem("project", "show")
    assert (shown.returncode, shown.stdout.encode(), shown.stderr) == (0, table(True), "")
    # a script's `grep TASK | awk` finds the task's row and nothing else; the statistics are behind -v
    assert [line for line in shown.stdout.splitlines() if "t1" in line] == [row(2, "pid", target, "t1", "probe", True)
                                                                              .decode().rstrip("\n")]
    verbose = daemon.etmem("project", "show", "-n", "p1", "-v").stdout
    assert verbose.startswith(daemon.etmem("project", "show", "-n", "p1").stdout + "\nstats of task s1 (engine slide):\n")
    assert "\nstats of task t1 (engine probe):\n  rounds " in verbose


# -- failure replies -------------------------------------------------------------------

def test_every_failure_reply_starts_with_upstreams_line_for_its_cause(daemon, tmp_path, target):
    base = write_config(tmp_path / "base.conf", probe_config("p1", target))
    assert daemon.raw(obj_add(base)) == b"\xff"
    engine_again = write_config(tmp_path / "engine.conf", "[engine]\nname=probe\nproject=p1\n")
    task_again = write_config(tmp_path / "task.conf", probe_task("p1", "t1", str(target), "pid"))
    bad_value = write_config(tmp_path / "bad.conf", "[project]\nname=p9\nloop=0\ninterval=1\nsleep=1\n")
    unknown_engine = write_config(tmp_path / "unknown.conf", probe_task("p1", "t6", "x").replace("=probe", "=nosuch"))
    no_engine = write_config(tmp_path / "noengine.conf", "[task]\nproject=p1\nengine=slide\nname=t5\ntype=pid\n"
                                                         f"value={target}\nT=1\n")
    cases = [
        (obj_add(base), "error: project has been existed", f"{base}:1: [project] project p1 already exists"),
        (start("ABSENT"), "error: project is not exist", "project ABSENT does not exist (projects: p1)"),
        (stop("p1"), "error: project has been stopped", "project p1 is not started"),
        (engine_cmd("p1", "probe", "hello"), "error: invalid parameters", "project p1 is not started: engine commands "
                                                                          "need a started project"),
        (obj_add(engine_again), "error: engine has been existed", f"{engine_again}:1: [engine] engine probe already "
                                                                  "exists in project p1"),
        (obj_add(task_again), "error: task has been existed", f"{task_again}:1: [task] task t1 already exists"),
        (obj_add(bad_value), "error: invalid parameters", f"{bad_value}:3: [project] loop=0: must be an integer"),
        (obj_add(no_engine), "error: engine is not exist", f"{no_engine}:1: [task] engine slide does not exist in "
                                                           "project p1"),
        (obj_add(unknown_engine), "error: engine is not exist", f"{unknown_engine}:3: [task] engine=nosuch: no engine "
                                                                "'nosuch' in project 'p1'"),
        (start("p1"), None, None),
        (start("p1"), "error: project has been started", "project p1 is already started"),
        (engine_cmd("p1", "slide", "hello"), "error: engine is not exist", "project p1 has no engine slide"),
        (engine_cmd("p1", "probe", "hello", "t9"), "error: task is not exist", "engine probe of project p1 has no "
                                                                               "task t9"),
        (engine_cmd("p1", "probe", "dance"), "error: invalid parameters", "engine probe has no command 'dance'"),
        (engine_cmd("p1", "probe", "crash"), "error: etmemd has internal error, see reason details in messages",
         "ZeroDivisionError: division by zero in the probe"),
    ]
    for request, line, detail in cases:
        reply = daemon.raw(request)
        if line is None:
            assert reply == b"\xff", reply
            continue
        assert fails_with(reply, line), (request, reply)
        assert reply[len(line) + 1:-1].decode().startswith(detail), (request, reply)

    # the client: the reply with a newline in place of the tag, then upstream's two lines (the
    # usage only follows a wrong command line, and this one was right)
    failed = daemon.etmem("project", "start", "-n", "p1")
    assert failed.returncode == 186 and failed.stderr == ""
    assert failed.stdout == ("error: project has been started\nproject p1 is already started\n"
                             "etmem_client_recv failed.\netmem: error -70\n")


# -- config files ------------------------------------------------------------------------

def test_a_stray_key_and_a_repeated_one_load_with_a_warning_as_upstreams_keyfile(daemon, tmp_path, target):
    conf = write_config(tmp_path / "p1.conf", probe_config("p1", target).replace("sleep=1", "sleep=1\n"
                                                                                "intervall=5\nloop=2"))
    assert daemon.raw(obj_add(conf)) == b"\xff"
    time.sleep(0.2)
    log = daemon.log()
    assert f"{conf}:6: [project] intervall=5: unknown key; did you mean 'interval'?" in log
    assert f"{conf}:7: [project] loop: given twice in this group (first on line 3); the last value is used" in log
    assert daemon.raw(show_one("p1")).startswith(b"project: p1\n")
    checked = subprocess.run([script("etmem"), "config", "check", "--strict", str(conf)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 1 and f"{conf}:7: [project] loop=2: given twice" in checked.stderr


def test_a_config_file_with_no_group_is_invalid_parameters(daemon, tmp_path):
    empty = write_config(tmp_path / "empty.conf", "# nothing but a comment\n")
    for request in (obj_add(empty), f"proj_name - file_name {empty} cmd 1 eng_name - eng_cmd - task_name -".encode()):
        reply = daemon.raw(request)
        assert fails_with(reply, "error: invalid parameters"), reply
        assert b"no [project], [engine] or [task] group" in reply



def test_config_check_says_a_project_the_file_does_not_define_must_exist_in_etmemd(tmp_path):
    conf = tmp_path / "engine.conf"
    conf.write_text("[engine]\nname=slide\nproject=web\n")
    checked = subprocess.run([script("etmem"), "config", "check", str(conf)], capture_output=True, text=True,
                             timeout=60)
    assert (checked.returncode, checked.stdout) == (0, f"{conf}: ok: 0 project(s), 1 engine(s), 0 task(s)\n")
    assert checked.stderr == (f"warning: {conf}:1: [engine] project=web is not defined in this file: it must "
                              "already exist in etmemd when the file is added\n")


def test_a_library_not_owned_by_root_root_is_refused(daemon, tmp_path, target):
    lib = tmp_path / "my_engine.so"
    lib.write_bytes(b"\x7fELF")            # refused before it is ever loaded
    os.chown(lib, 0, 1)                    # root:daemon
    os.chmod(lib, 0o500)
    conf = write_config(tmp_path / "c.conf", probe_config("p1", target) + f"""
        [engine]
        name=thirdparty
        project=p1
        eng_name=my_engine
        libname={lib}
        ops_name=my_engine_ops
        """)
    reply = daemon.raw(obj_add(conf))
    assert fails_with(reply, "error: etmemd has internal error, see reason details in messages"), reply
    assert f"libname {lib}: owned by 0:1; it must be owned by root:root".encode() in reply
    assert daemon.raw(SHOW_ALL) == b"no project exists\n\n\xff"


# -- the client's statuses ------------------------------------------------------------

@pytest.mark.parametrize("argv, status", [
    (["engine", "showtaskpages", "-n", "p", "-s", "S"], 255),            # engine without -e
    (["engine", "-n", "p", "-e", "cslide", "-s", "S"], 255),             # engine without a command
    (["obj", "put", "-f", "a.conf", "-s", "S"], 255),                    # a bad obj subcommand
    (["project", "begin", "-n", "p", "-s", "S"], 255),                   # a bad project subcommand
    (["project", "start", "-n", "p", "-s", "S", "extra"], 249),          # extra words
    (["obj", "add", "-f", "a.conf", "-s", "S", "extra", "words"], 249),
    (["project", "show", "-s", "s" * 107], 255),                         # a socket name of 107 bytes
    (["--help"], 234),
    (["help", "extra"], 234),
    ([], 234),
    (["project", "start", "-s", "S"], 234),                              # a missing option
    (["help"], 0),
    (["engine", "help"], 0),
])
def test_the_client_exits_as_upstreams_with_everything_on_stdout(argv, status):
    argv = [unique_socket_name("nobody") if a == "S" else a for a in argv]
    result = subprocess.run([script("etmem"), *argv], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (status, "")
    assert result.stdout
    if status not in (0, 234) or argv[:1] in (["project"], ["obj"]):
        assert f"\netmem: error {status - 256}\n" in result.stdout


def test_no_etmemd_is_upstreams_connect_failure():
    name = unique_socket_name("none")
    result = subprocess.run([script("etmem"), "project", "show", "-s", name], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr) == (111, "")
    assert result.stdout.startswith("etmem connect to server failed: Connection refused")
    assert "\netmem_client_conn failed.\netmem: error 111\n" in result.stdout


# -- etmemd --------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["-s", "a", "-l", "9"], ["-s", "a", "--bogus"], ["-s", "a", "extra"]])
def test_etmemd_refuses_a_bad_command_line_on_stdout_with_255(argv):
    result = subprocess.run([script("etmemd"), *argv], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (255, "")
    assert result.stdout.startswith("error: ") and result.stdout.endswith("fail to parse parameters to start etmemd\n")


def test_etmemd_logs_only_errors_by_default(tmp_path):
    """Without -l, a warning (a bad request) reaches neither syslog's level nor the terminal."""
    name = unique_socket_name("quiet")
    proc = subprocess.Popen([script("etmemd"), "-s", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")
    try:
        probe = Etmemd(tmp_path, name=name)
        deadline = time.monotonic() + 20
        while not probe.listening():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        assert fails_with(raw_exchange(name, b"hello"), "error: invalid parameters")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (0, "", "")


def test_etmemd_m_writes_the_pid_as_upstream(tmp_path):
    name = unique_socket_name("pid")
    pid_file = tmp_path / "etmemd.pid"
    result = subprocess.run([script("etmemd"), "-s", name, "-m", "--pid-file", str(pid_file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    raw = pid_file.read_bytes()
    try:
        assert raw.isdigit() and os.stat(pid_file).st_mode & 0o777 == 0o600
    finally:
        os.kill(int(raw), signal.SIGTERM)
