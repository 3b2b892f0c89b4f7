"""The `etmemd` command: upstream's daemon options, logging and systemd fork mode.

`etmemd -s NAME [-l 0..3] [-m]` serves the `Manager` on abstract socket NAME
(`etmem.daemon`). Logs, errors only unless `-l` says otherwise, go to syslog under
upstream's ident `[etmemd] ` and facility user where there is a /dev/log to take them,
to stderr in the foreground or under systemd (where journald reads it), and to the file
of `--log-file`; `log_targets` decides. A bad command line is answered on stdout with exit status
255, as upstream's. With `-m` the socket is bound first (a second etmemd on a socket in
use stops there, before touching the pid file), then the process forks: the parent
writes the pid file (the pid, no newline, mode 0600; a new file renamed into place, so
no symlink is followed) and exits once the child listens, as systemd's Type=forking
expects. SIGTERM or SIGINT stops every project and removes the pid file.
`--metrics [HOST:]PORT` also serves Prometheus metrics over HTTP (etmem.metrics), on
loopback unless `--metrics-allow-remote` is given.
"""
from __future__ import annotations

import getopt
import grp
import logging
import os
import signal
import socket
import stat
import sys
import syslog
from dataclasses import dataclass

from ..errors import EtmemError

USAGE = """
usage of etmemd:
    etmemd [options]

options:
    -l|--log-level <log-level>  Log level (0 debug, 1 info, 2 warning, 3 error; default 3)
    -s|--socket <sockect name>  Socket name to listen to
    -m|--mode-systemctl         mode used to start(systemctl)
    -h|--help                   Show this message

etmem for Python options:
    --allow-group <group>       Also accept uid 0 clients whose gid is this group
                                (name or number; may be repeated; default: gid 0 only)
    --config-perms <rule>       strict (default, upstream's): config files owned by
                                root:root with mode 0400 or 0600; relaxed: owned by
                                root and not writable by group or others
    --pid-file <path>           Pid file written in -m mode (default /run/etmemd.pid)
    --log-file <path>           Also log to this file (appended to; made with mode 0600)
    --metrics <[host:]port>     Serve Prometheus metrics over HTTP at /metrics (host
                                default 127.0.0.1; port 0: any free port, logged)
    --metrics-allow-remote      Let --metrics listen on an address other than loopback
    --version                   Show the version and exit
"""

DEFAULT_PID_FILE = "/run/etmemd.pid"
SYSLOG_IDENT = "[etmemd] "
#: syslog(3)'s socket; without it (a container, a bare VM) syslog drops every message.
DEV_LOG = "/dev/log"
LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
DEFAULT_LEVEL = 3          # upstream: errors only
#: Upstream's etmemd returns -1 from main for a bad command line.
EXIT_BAD_COMMAND_LINE = 255
_SYSLOG_PRIORITY = {logging.DEBUG: syslog.LOG_DEBUG, logging.INFO: syslog.LOG_INFO,
                    logging.WARNING: syslog.LOG_WARNING, logging.ERROR: syslog.LOG_ERR,
                    logging.CRITICAL: syslog.LOG_CRIT}

log = logging.getLogger("etmem.etmemd")


class SyslogHandler(logging.Handler):
    """Logs through libc syslog(3) (journald takes it where it runs), like upstream."""

    def __init__(self) -> None:
        super().__init__()
        syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_USER)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            syslog.syslog(_SYSLOG_PRIORITY.get(record.levelno, syslog.LOG_INFO),
                          self.format(record))
        except Exception:
            self.handleError(record)


@dataclass(frozen=True)
class LogTargets:
    """Where etmemd logs: syslog or not; stderr as `terminal` (etmemd: LEVEL: message),
    as `journal` (<priority>message, which journald reads), or not; a file or not."""

    syslog: bool
    stderr: str | None
    file: str | None = None

    @property
    def nowhere(self) -> bool:
        return not (self.syslog or self.stderr or self.file)


def _stderr_is_journal(environ) -> bool:
    """systemd connected stderr to the journal: $JOURNAL_STREAM names fd 2's device and inode
    (a shell started from a service inherits the variable with another stderr)."""
    stream = environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def log_targets(foreground: bool, log_file: str | None = None, environ=os.environ,
                dev_log: str = DEV_LOG) -> LogTargets:
    """Where to log: syslog where `dev_log` takes it; stderr in the foreground or under
    systemd ($INVOCATION_ID, or $JOURNAL_STREAM naming stderr); `log_file` as given.
    When stderr is the journal and syslog is there too, journald would get every line
    twice, so syslog alone is kept (it has upstream's ident)."""
    have_syslog = _is_socket(dev_log)
    if _stderr_is_journal(environ):
        stderr = None if have_syslog else "journal"
    elif foreground or environ.get("INVOCATION_ID"):
        stderr = "terminal"
    else:
        stderr = None
    return LogTargets(have_syslog, stderr, log_file)


class _JournalFormatter(logging.Formatter):
    """sd-daemon(3)'s `<N>` prefix: journald takes the line's priority from it."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, syslog.LOG_INFO)}>{super().format(record)}"


class Options:
    def __init__(self) -> None:
        self.socket_name: str | None = None
        self.level = DEFAULT_LEVEL
        self.systemctl = False
        self.help = False
        self.version = False
        self.allowed_gids: set[int] = {0}
        self.config_perms = "strict"
        self.pid_file = DEFAULT_PID_FILE
        self.log_file: str | None = None
        self.metrics: tuple[str, int] | None = None     # (host, port) of --metrics
        self.metrics_text: str | None = None
        self.metrics_allow_remote = False


class UsageError(Exception):
    """A command line etmemd cannot start with; `show_usage` where upstream prints the usage too."""

    def __init__(self, message: str, show_usage: bool = False):
        super().__init__(message)
        self.show_usage = show_usage


def _group_id(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise UsageError(f"unknown group {value!r} for --allow-group") from None


def parse_options(argv: list[str]) -> Options:
    from .. import protocol

    try:
        opts, rest = getopt.gnu_getopt(argv, "l:s:mh", [
            "log-level=", "log-file=", "socket=", "mode-systemctl", "help", "version",
            "allow-group=", "config-perms=", "pid-file=", "metrics=", "metrics-allow-remote"])
    except getopt.GetoptError as e:
        raise UsageError(f"parse parameters failed: {e.msg}", show_usage=True) from None
    if rest:
        raise UsageError(f"useless parameters passed in: {' '.join(rest)}")
    o = Options()
    for opt, value in opts:
        if opt in ("-h", "--help"):
            o.help = True
        elif opt == "--version":
            o.version = True
        elif opt in ("-s", "--socket"):
            if o.socket_name is not None:
                raise UsageError("parse sock parameter repeated")
            try:
                protocol.check_socket_name(value)
            except protocol.ProtocolError as e:
                raise UsageError(str(e)) from None
            o.socket_name = value
        elif opt in ("-l", "--log-level"):
            if not value.strip().lstrip("-").isdigit() or int(value) not in LEVELS:
                raise UsageError(f"log level must be 0, 1, 2 or 3, not {value!r}")
            o.level = int(value)
        elif opt in ("-m", "--mode-systemctl"):
            o.systemctl = True
        elif opt == "--allow-group":
            o.allowed_gids.add(_group_id(value))
        elif opt == "--config-perms":
            if value not in ("strict", "relaxed"):
                raise UsageError(f"--config-perms must be strict or relaxed, not {value!r}")
            o.config_perms = value
        elif opt == "--pid-file":
            o.pid_file = value
        elif opt == "--log-file":
            if not value:
                raise UsageError("--log-file needs a file name")
            o.log_file = os.path.abspath(value)
        elif opt == "--metrics":
            o.metrics_text = value
        elif opt == "--metrics-allow-remote":
            o.metrics_allow_remote = True
    if o.metrics_text is not None:
        from ..metrics import MetricsError, parse_address

        try:
            o.metrics = parse_address(o.metrics_text, o.metrics_allow_remote)
        except MetricsError as e:
            raise UsageError(str(e)) from None
    elif o.metrics_allow_remote:
        raise UsageError("--metrics-allow-remote goes with --metrics HOST:PORT")
    if not (o.help or o.version) and o.socket_name is None:
        raise UsageError("socket name of rpc to listen must be provided", show_usage=True)
    return o


def setup_logging(level: int, targets: LogTargets, detaching: bool = False) -> None:
    """Send the `etmem` loggers' records of `level` and above to `targets`. `detaching`
    (-m): stderr is about to become /dev/null, so its handler writes to a copy of it.
    OSError if the log file cannot be opened."""
    logger = logging.getLogger("etmem")
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = []
    if targets.file:
        fd = os.open(targets.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        file_handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
        file_handler.setFormatter(logging.Formatter("%(asctime)s etmemd[%(process)d]: %(levelname)s: %(message)s"))
        handlers.append(file_handler)
    if targets.syslog:
        handler = SyslogHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(handler)
    if targets.stderr:
        stream = os.fdopen(os.dup(2), "w", buffering=1) if detaching else sys.stderr
        stream_handler = logging.StreamHandler(stream)
        stream_handler.setFormatter(_JournalFormatter("%(message)s") if targets.stderr == "journal"
                                    else logging.Formatter("etmemd: %(levelname)s: %(message)s"))
        handlers.append(stream_handler)
    for handler in handlers:
        logger.addHandler(handler)


def _write_pid_file(path: str, pid: int) -> None:
    """The pid as upstream writes it: digits only, no newline, a file of mode 0600.

    It is written to a new file beside `path` (O_CREAT|O_EXCL|O_NOFOLLOW: no symlink is
    followed, no existing file opened) and renamed over `path`, which replaces whatever
    is there, a symlink included, instead of writing through it.
    """
    directory, name = os.path.split(os.path.abspath(path))
    temp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)   # whatever the umask
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def _remove_pid_file(path: str, pid: int) -> None:
    """Remove the pid file if it is a regular file that still names `pid`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.read(fd, 32).strip() != str(pid).encode():
            return
        os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fork_for_systemd(pid_file: str, listener: socket.socket) -> int | None:
    """Fork. In the parent: write the pid file, wait until the child listens (or dies),
    and return the exit status. In the child: return None, holding the pipe end
    that `_tell_parent_ready` writes to. `listener` is the bound socket the child serves
    on; the parent lets go of its copy."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        global _ready_fd
        _ready_fd = w
        return None
    os.close(w)
    listener.close()
    try:
        _write_pid_file(pid_file, pid)
    except OSError as e:
        print(f"etmemd: cannot write pid file {pid_file}: {e.strerror}", file=sys.stderr)
        os.kill(pid, signal.SIGTERM)
        return 1
    with os.fdopen(r, "rb") as pipe:
        ready = pipe.read(1)
    if ready == b"1":
        return 0
    _remove_pid_file(pid_file, pid)
    os.waitpid(pid, 0)
    return 1


_ready_fd: int | None = None


def _tell_parent_ready() -> None:
    """Child side of -m: stop writing to the parent's terminal and release it."""
    global _ready_fd
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    if _ready_fd is not None:
        os.write(_ready_fd, b"1")
        os.close(_ready_fd)
        _ready_fd = None


def run(o: Options) -> int:
    from ..daemon import Daemon, listening_socket

    listener = None
    if o.systemctl:
        try:
            listener = listening_socket(o.socket_name)   # before the pid file is touched
        except EtmemError as e:
            print(f"etmemd: {e}", file=sys.stderr)
            return 1
        status = _fork_for_systemd(o.pid_file, listener)
        if status is not None:
            return status
    targets = log_targets(foreground=not o.systemctl, log_file=o.log_file)
    try:
        setup_logging(o.level, targets, detaching=o.systemctl)
    except OSError as e:
        print(f"etmemd: cannot open log file {o.log_file}: {e.strerror}", file=sys.stderr)
        return 1
    if o.systemctl and targets.nowhere:
        print(f"etmemd: warning: nothing will be logged: there is no {DEV_LOG} for syslog and -m "
              f"leaves no terminal; give --log-file FILE", file=sys.stderr)
    metrics = None
    try:
        from ..model import Manager

        manager = Manager()
        if o.metrics is not None:
            from ..metrics import MetricsServer

            metrics = MetricsServer(manager, *o.metrics)
        daemon = Daemon(o.socket_name, manager, allowed_gids=frozenset(o.allowed_gids),
                        config_perms=o.config_perms)
        daemon.listen(listener)
    except EtmemError as e:
        if metrics is not None:
            metrics.close()
        log.error("%s", e)
        if not targets.stderr:  # the terminal of -m's parent, or the foreground's, gets it once
            print(f"etmemd: {e}", file=sys.stderr)
        return 1

    def stop(signum, _frame):
        log.info("caught signal %d, stopping", signum)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("etmemd started (pid %d, socket @%s, log level %d)", os.getpid(),
             o.socket_name, o.level)
    if metrics is not None:
        metrics.start()
        log.info("etmemd serves metrics on %s", metrics.url)
    if o.systemctl:
        _tell_parent_ready()
    try:
        daemon.serve_forever()
    finally:
        if metrics is not None:
            metrics.close()
        if o.systemctl:
            _remove_pid_file(o.pid_file, os.getpid())
    if daemon.unstopped:
        # a task still in its round may hold a thread the interpreter's exit would wait for
        # (a ThreadPoolExecutor worker): the stop must not hang on it
        log.warning("etmemd exits with %d task%s still stopping: %s", len(daemon.unstopped),
                    "" if len(daemon.unstopped) == 1 else "s", ", ".join(daemon.unstopped))
        logging.shutdown()
        os._exit(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        o = parse_options(argv)
    except UsageError as e:
        sys.stdout.write(f"error: {e}\n{USAGE if e.show_usage else ''}"
                         "fail to parse parameters to start etmemd\n")
        return EXIT_BAD_COMMAND_LINE
    if o.help:
        sys.stdout.write(USAGE)
        return 0
    if o.version:
        from .._version import __version__

        print(f"etmemd {__version__}")
        return 0
    if os.geteuid() != 0:
        print("etmemd: warning: not running as root; scanning and swapping other "
              "processes will fail", file=sys.stderr)
    try:
        return run(o)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        logging.getLogger("etmem.etmemd").exception("etmemd failed")
        print(f"etmemd: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
