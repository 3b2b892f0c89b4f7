"""etmemd's logging: syslog with upstream's ident and facility where /dev/log takes it, the -l
level (errors only by default, as upstream), stderr in the foreground and under systemd,
a --log-file, and never nowhere without a word."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import syslog
import time

import pytest

from etmem.cli import etmemd
from etmem.cli.etmemd import LogTargets
from etmemd_harness import Etmemd, script, unique_socket_name


@pytest.fixture
def syslog_calls(monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: calls.append(("openlog", *a)))
    monkeypatch.setattr(syslog, "syslog", lambda *a: calls.append(("syslog", *a)))
    yield calls
    logger = logging.getLogger("etmem")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize("level, sent", [
    (0, ["debug", "info", "warning", "error"]),
    (1, ["info", "warning", "error"]),
    (2, ["warning", "error"]),
    (3, ["error"]),
])
def test_log_level_selects_what_reaches_syslog(syslog_calls, level, sent, capsys):
    etmemd.setup_logging(level, LogTargets(syslog=True, stderr=None))
    log = logging.getLogger("etmem.daemon")
    log.debug("debug")
    log.info("info")
    log.warning("warning")
    log.error("error")
    assert syslog_calls[0] == ("openlog", "[etmemd] ", syslog.LOG_PID, syslog.LOG_USER)
    priorities = {"debug": syslog.LOG_DEBUG, "info": syslog.LOG_INFO,
                  "warning": syslog.LOG_WARNING, "error": syslog.LOG_ERR}
    assert syslog_calls[1:] == [("syslog", priorities[m], m) for m in sent]
    assert capsys.readouterr().err == ""


def test_the_terminal_gets_level_and_message_and_the_journal_gets_priority_prefixes(syslog_calls, capsys):
    etmemd.setup_logging(1, LogTargets(syslog=True, stderr="terminal"))
    logging.getLogger("etmem.model").warning("project p stopped")
    assert ("syslog", syslog.LOG_WARNING, "project p stopped") in syslog_calls
    assert capsys.readouterr().err == "etmemd: WARNING: project p stopped\n"
    etmemd.setup_logging(1, LogTargets(syslog=False, stderr="journal"))
    logging.getLogger("etmem.model").warning("project p stopped")
    logging.getLogger("etmem.model").error("task t failed")
    assert capsys.readouterr().err == "<4>project p stopped\n<3>task t failed\n"


def test_the_log_file_is_appended_to_with_time_and_pid_and_made_0600(syslog_calls, tmp_path):
    path = tmp_path / "etmemd.log"
    path.write_text("an older line\n")
    path.chmod(0o600)
    etmemd.setup_logging(3, LogTargets(syslog=False, stderr=None, file=str(path)))
    logging.getLogger("etmem.daemon").info("not at level 3")
    logging.getLogger("etmem.daemon").error("bind failed")
    lines = path.read_text().splitlines()
    assert lines[0] == "an older line" and len(lines) == 2
    assert lines[1].endswith(f" etmemd[{os.getpid()}]: ERROR: bind failed")
    assert time.strptime(lines[1][:19], "%Y-%m-%d %H:%M:%S")
    fresh = tmp_path / "fresh.log"
    etmemd.setup_logging(3, LogTargets(syslog=False, stderr=None, file=str(fresh)))
    assert fresh.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def dev_log(tmp_path):
    """A socket standing in for /dev/log (syslog is there), and a path with none."""
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield {"there": str(path), "missing": str(tmp_path / "no-log")}
    sock.close()


def journal_stream() -> str:
    st = os.fstat(2)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.mark.parametrize("foreground, environ, syslog_, targets", [
    # a terminal: syslog where it is, and the terminal
    (True, {}, "there", LogTargets(True, "terminal")),
    (True, {}, "missing", LogTargets(False, "terminal")),
    # -m from a shell: syslog only, and nothing where there is no /dev/log (etmemd warns then)
    (False, {}, "there", LogTargets(True, None)),
    (False, {}, "missing", LogTargets(False, None)),
    # a systemd service: stderr is where systemd sends it
    (False, {"INVOCATION_ID": "0a1b"}, "missing", LogTargets(False, "terminal")),
    (False, {"INVOCATION_ID": "0a1b"}, "there", LogTargets(True, "terminal")),
    # stderr is the journal: priority prefixes, or syslog alone where journald has both
    (False, {"INVOCATION_ID": "0a1b", "JOURNAL_STREAM": "journal"}, "missing", LogTargets(False, "journal")),
    (True, {"JOURNAL_STREAM": "journal"}, "there", LogTargets(True, None)),
    # a shell started by a service inherits JOURNAL_STREAM, with a stderr of its own
    (True, {"JOURNAL_STREAM": "1:2"}, "missing", LogTargets(False, "terminal")),
])
def test_log_targets(dev_log, foreground, environ, syslog_, targets):
    environ = {k: journal_stream() if v == "journal" else v for k, v in environ.items()}
    assert etmemd.log_targets(foreground, None, environ, dev_log[syslog_]) == targets


def test_the_default_level_is_error_as_upstreams():
    assert etmemd.parse_options(["-s", "x"]).level == 3


def test_log_file_option_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert etmemd.parse_options(["-s", "x", "--log-file", "e.log"]).log_file == str(tmp_path / "e.log")


# -- a real etmemd ----------------------------------------------------------------------

def test_a_foreground_etmemd_logs_to_its_log_file_as_well(tmp_path):
    log_file = tmp_path / "etmemd.log"
    d = Etmemd(tmp_path, ("--log-file", str(log_file))).start()
    assert d.etmem("project", "start", "-n", "nothing").returncode == 186
    assert d.stop() == 0
    text = log_file.read_text()
    for line in (f"INFO: listening on abstract socket @{d.name}", "WARNING: project start failed",
                 "INFO: caught signal 15, stopping", "INFO: etmemd stopped"):
        assert line in text, text
    assert log_file.stat().st_mode & 0o777 == 0o600
    assert "etmemd: WARNING: project start failed" in d.log()      # and its terminal


def run_m(tmp_path, *args, env=None, stderr=None):
    """`etmemd -m` on a socket of its own; returns (the parent's result, the child's pid)."""
    pid_file = tmp_path / "etmemd.pid"
    result = subprocess.run([script("etmemd"), "-s", unique_socket_name("log"), "-m", "-l", "1",
                             "--pid-file", str(pid_file), *args], env=env, timeout=60,
                            stdout=subprocess.PIPE, stderr=stderr or subprocess.PIPE, text=True)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result, int(pid_file.read_text())


def stop_pid(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


def test_m_with_nowhere_to_log_says_so_before_it_detaches(tmp_path):
    result, pid = run_m(tmp_path)
    stop_pid(pid)
    warning = ("etmemd: warning: nothing will be logged: there is no /dev/log for syslog and -m leaves no "
               "terminal; give --log-file FILE\n")
    if os.path.exists("/dev/log"):        # syslog takes it: no warning
        assert warning not in result.stderr
    else:
        assert result.stderr == warning


def test_m_with_a_log_file_keeps_logging_after_it_detaches(tmp_path):
    log_file = tmp_path / "m.log"
    result, pid = run_m(tmp_path, "--log-file", str(log_file))
    assert result.stderr == ""
    stop_pid(pid)
    text = log_file.read_text()
    assert f"etmemd[{pid}]: INFO: etmemd started (pid {pid}" in text
    assert f"etmemd[{pid}]: INFO: etmemd stopped" in text            # logged after the detach


def test_m_under_systemd_logs_to_the_stderr_systemd_gave_it(tmp_path):
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        result, pid = run_m(tmp_path, env={**os.environ, "INVOCATION_ID": "0123abcd"}, stderr=err)
        stop_pid(pid)
    text = err_path.read_text()
    assert "etmemd: INFO: etmemd started" in text
    assert "etmemd: INFO: caught signal 15, stopping" in text and "etmemd: INFO: etmemd stopped" in text
