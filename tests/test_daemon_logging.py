"""etmemd's logging: syslog with upstream's ident and facility, the -l level (errors only by
default, as upstream), stderr only in the foreground."""
from __future__ import annotations

import logging
import syslog

import pytest

from etmem.cli import etmemd


@pytest.fixture
def syslog_calls(monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: calls.append(("openlog", *a)))
    monkeypatch.setattr(syslog, "syslog", lambda *a: calls.append(("syslog", *a)))
    yield calls
    logger = logging.getLogger("etmem")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize("level, sent", [
    (0, ["debug", "info", "warning", "error"]),
    (1, ["info", "warning", "error"]),
    (2, ["warning", "error"]),
    (3, ["error"]),
])
def test_log_level_selects_what_reaches_syslog(syslog_calls, level, sent, capsys):
    etmemd.setup_logging(level, foreground=False)
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


def test_the_foreground_also_logs_to_stderr(syslog_calls, capsys):
    etmemd.setup_logging(1, foreground=True)
    logging.getLogger("etmem.model").warning("project p stopped")
    assert ("syslog", syslog.LOG_WARNING, "project p stopped") in syslog_calls
    assert capsys.readouterr().err == "etmemd: WARNING: project p stopped\n"


def test_the_default_level_is_error_as_upstreams():
    assert etmemd.parse_options(["-s", "x"]).level == 3
