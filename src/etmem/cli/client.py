"""`etmem obj|project|engine`: upstream's client commands, talking to etmemd.

Options are parsed like upstream's getopt_long (options and values in any order,
`-s NAME`, `--socket NAME`, `--socket=NAME`), the request bytes are exactly what
upstream's client sends, everything is written to stdout as upstream's client does, and
the exit status is upstream's: 0 on success, else its negative return value as a byte
(234 for a bad option, 255 for an unknown command or a bad `engine` command line, 249 for
left-over words, 186 after a failure reply, 111 when no etmemd listens). A daemon whose
queue of connections waiting to be accepted is full is waited for, up to the send timeout,
and then reported busy (status 11, EAGAIN, connect()'s errno as upstream returns it).
"""
from __future__ import annotations

import errno
import getopt
import json
import socket
import sys
import time
from dataclasses import dataclass

from .. import protocol
from ..protocol import Command, ProtocolError, Reply, Request

#: How long to wait for etmemd to accept and take a request (upstream: 10 s).
SEND_TIMEOUT = 10.0
#: While etmemd's queue of waiting connections is full, try again this often (at most).
BUSY_RETRY_PAUSE = 0.1
#: How long to wait for each part of the reply; engine commands may take a while.
RECV_TIMEOUT = 60.0

OBJ_HELP = """
Usage:
    etmem obj add [options]
    etmem obj del [options]
    etmem obj help

Options:
    -f|--file <conf_file>       Add configuration file
    -s|--socket <socket_name>   Socket name to connect

Notes:
    1. Configuration file must be given.
    2. Socket name must be given.
"""

PROJECT_HELP = """
Usage:
    etmem project start [options]
    etmem project stop [options]
    etmem project show [options]
    etmem project help

Options:
    -n|--name <proj_name>       Add project name
    -s|--socket <socket_name>   Socket name to connect
    -v|--verbose                show: each task's statistics below the table
    -o|--output <format>        show: text (default) or json

Notes:
    1. Project name and socket name must be given when execute start or stop option.
    2. Socket name must be given when execute show option.
"""

ENGINE_HELP = """
Usage:
    etmem engine eng_cmd [options]
    etmem engine help

Options:
    -n|--proj_name <proj_name>  Project the engine belongs to
    -s|--socket <socket_name>   Socket name to connect
    -e|--engine <engine_name>   Engine to execute the command
    -t|--task_name <task_name>  Task for the command

Notes:
    1. Project name must be given.
    2. Socket name must be given.
    3. Engine name must be given.
    4. Engine command must be given.
    5. Engine commands are supported by each engine itself.
    6. cslide engine commands: showtaskpages, showhostpages.
    7. Every engine's command history: the task's last rounds (what each
       scanned, found cold and did, or in a dry run would have done) as JSON
       lines, the format of etmem report --input; without -t every task's.
"""

HELP = {"obj": OBJ_HELP, "project": PROJECT_HELP, "engine": ENGINE_HELP}

#: The lines upstream's client prints after a failed connection or reply.
CONN_FAILED = "etmem_client_conn failed."
RECV_FAILED = "etmem_client_recv failed."

#: Exit statuses: upstream's client returns a negative errno (or -1) from main, which the
#: shell sees modulo 256; `etmem: error N` shows the number itself.
CODE_USAGE = -errno.EINVAL        # 234: a missing or bad option of obj or project
CODE_FAILED = -1                  # 255: a command obj/project lacks, any usage error of engine,
                                  #      a socket name too long, a request too long to send
CODE_TOO_MANY = -errno.E2BIG      # 249: words left over after obj's or project's options
CODE_FAILED_REPLY = -errno.ECOMM  # 186: a failure reply, or the reply was cut off
EXIT_USAGE = CODE_USAGE % 256
EXIT_FAILED_REPLY = CODE_FAILED_REPLY % 256
EXIT_NO_DAEMON = errno.ECONNREFUSED     # 111: upstream returns connect()'s errno as it is


class UsageError(Exception):
    """A command line that cannot be turned into a request; `code` is upstream's return value."""

    def __init__(self, message: str, code: int = CODE_USAGE):
        super().__init__(message)
        self.code = code


class ConnectError(Exception):
    """No etmemd could be reached, or the conversation broke off.

    `code` is what upstream's client returns in that case, `step` the line it prints
    after its own message (`etmem_client_conn failed.` ...).
    """

    def __init__(self, message: str, code: int, step: str):
        super().__init__(message)
        self.code = code
        self.step = step

    @property
    def status(self) -> int:
        return self.code % 256


def request(socket_name: str, req: Request, *, send_timeout: float = SEND_TIMEOUT,
            recv_timeout: float = RECV_TIMEOUT) -> Reply:
    """Send `req` to the etmemd listening on `socket_name` and return its reply.

    Raises ProtocolError for a request that cannot be sent, ConnectError when the
    daemon cannot be reached or the reply is cut off.
    """
    data = req.encode()
    with _connect(socket_name, send_timeout) as sock:
        try:
            sock.sendall(data)
        except OSError as e:
            raise ConnectError(f"send failed: {e.strerror or e}", CODE_FAILED, "etmem_client_send failed.") from None
        try:
            sock.settimeout(recv_timeout)
            received = bytearray()
            while protocol.find_tag(received) < 0:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            raise ConnectError(f"recv failed: etmemd on socket {socket_name} did not answer in time",
                               CODE_FAILED_REPLY, RECV_FAILED) from None
        except OSError as e:
            raise ConnectError(f"recv failed: {e.strerror or e}", CODE_FAILED_REPLY, RECV_FAILED) from None
    try:
        return Reply.decode(bytes(received))
    except ProtocolError as e:
        raise ConnectError(f"connection closed by peer: {e} (socket {socket_name})",
                           CODE_FAILED_REPLY, RECV_FAILED) from None


def _connect(socket_name: str, timeout: float) -> socket.socket:
    """A socket connected to etmemd, its timeout set to `timeout`.

    A full queue of connections waiting to be accepted makes connect() fail at once with
    EAGAIN (a unix socket never waits in connect once it has a timeout); that is a busy
    daemon, not an absent one, so it is tried again until `timeout` has passed.
    """
    address = protocol.socket_address(socket_name)
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except BlockingIOError:
            sock.close()
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectError(f"etmem connect to server failed: etmemd on socket {socket_name} is busy: "
                                   f"its queue of connections waiting to be accepted stayed full for "
                                   f"{timeout:g} s", errno.EAGAIN, CONN_FAILED) from None
            time.sleep(min(pause, left))
            pause = min(2 * pause, BUSY_RETRY_PAUSE)
        except TimeoutError:
            sock.close()
            raise ConnectError(f"etmem connect to server failed: etmemd on socket {socket_name} did not "
                               f"accept the connection in time", errno.ETIMEDOUT, CONN_FAILED) from None
        except OSError as e:
            sock.close()
            hint = " (is etmemd running on socket " + socket_name + "?)" if e.errno == errno.ECONNREFUSED else ""
            raise ConnectError(f"etmem connect to server failed: {e.strerror or e}{hint}",
                               e.errno or errno.ECONNREFUSED, CONN_FAILED) from None


@dataclass
class Invocation:
    """A parsed `etmem obj|project|engine` command line."""

    group: str
    socket_name: str
    request: Request
    output: str = "text"


_GETOPT = {
    "obj": ("f:s:", ["file=", "socket="]),
    "project": ("n:s:o:v", ["name=", "socket=", "output=", "verbose"]),
    "engine": ("n:s:e:t:", ["proj_name=", "socket=", "engine=", "task_name="]),
}
_OPTION_FIELD = {
    "-f": "file", "--file": "file",
    "-s": "socket", "--socket": "socket",
    "-n": "project", "--name": "project", "--proj_name": "project",
    "-e": "engine", "--engine": "engine",
    "-t": "task", "--task_name": "task",
    "-o": "output", "--output": "output",
    "-v": "verbose", "--verbose": "verbose",
}
_COMMANDS = {
    "obj": {"add": Command.OBJ_ADD, "del": Command.OBJ_DEL},
    "project": {"start": Command.PROJECT_START, "stop": Command.PROJECT_STOP, "show": Command.PROJECT_SHOW},
}


def parse(group: str, argv: list[str]) -> Invocation:
    """Turn `etmem GROUP ARGV...` into a request; UsageError says what is wrong, and its
    code is upstream's (every usage error of `engine` is -1, as upstream's engine command
    returns -1 for all of them).

    argv[0] is the command (add, del, start, stop, show, or an engine command). An option
    given twice keeps its last value, as getopt does.
    """
    command = argv[0]
    commands = _COMMANDS.get(group, {})
    usage_code = CODE_FAILED if group == "engine" else CODE_USAGE
    if group == "engine" and command.startswith("-"):
        raise UsageError("engine command must be given, please check.", CODE_FAILED)
    if commands and command not in commands:
        raise UsageError(f"{group} command {command} is not supported "
                         f"(use one of: {', '.join(commands)}, help)", CODE_FAILED)
    shortopts, longopts = _GETOPT[group]
    try:
        opts, rest = getopt.gnu_getopt(argv[1:], shortopts, longopts)
    except getopt.GetoptError as e:
        raise UsageError(f"invalid option: {e.msg}", usage_code) from None
    if rest and opts:  # upstream counts left-over words only when options were given
        raise UsageError(f"useless parameters passed in: {' '.join(rest)}",
                         CODE_FAILED if group == "engine" else CODE_TOO_MANY)
    values: dict[str, str] = {_OPTION_FIELD[opt]: value for opt, value in opts}
    socket_name = values.get("socket")
    if not socket_name:
        raise UsageError("socket name to connect must be given, please check.", usage_code)
    output = values.get("output", "text")
    if output not in ("text", "json"):
        raise UsageError(f"output format must be text or json, not {output!r}")
    verbose = "verbose" in values
    if group == "obj":
        if not values.get("file"):
            raise UsageError("configuration file must be given, please check.")
        req = Request(commands[command], file=values["file"])
    elif group == "project":
        cmd = commands[command]
        if cmd != Command.PROJECT_SHOW and not values.get("project"):
            raise UsageError("project name must be given, please check.")
        if (output == "json" or verbose) and cmd != Command.PROJECT_SHOW:
            raise UsageError("-o/--output and -v/--verbose apply only to project show")
        if output == "json" and verbose:
            raise UsageError("-v/--verbose is for the text output; -o json has the statistics already")
        show_format = protocol.SHOW_JSON if output == "json" else protocol.SHOW_VERBOSE if verbose else None
        req = Request(cmd, project=values.get("project"), engine_cmd=show_format)
    else:
        if not values.get("project"):
            raise UsageError("project name must be given, please check.", CODE_FAILED)
        if not values.get("engine"):
            raise UsageError("engine name must be given, please check.", CODE_FAILED)
        req = Request(Command.ENGINE, project=values["project"], engine=values["engine"],
                      engine_cmd=command, task=values.get("task"))
    try:
        protocol.check_socket_name(socket_name)
    except ProtocolError as e:
        raise UsageError(str(e), CODE_FAILED) from None
    try:
        req.validate()
    except ProtocolError as e:
        raise UsageError(str(e), usage_code) from None
    try:
        req.encode()
    except ProtocolError as e:
        raise UsageError(str(e), CODE_FAILED) from None
    return Invocation(group, socket_name, req, output)


def main(group: str, argv: list[str]) -> int:
    """Run `etmem GROUP ARGV...`; returns the exit status.

    Everything goes to stdout, as upstream's client writes it: the reply, and after a
    failure the reason, upstream's `... failed.` line and `etmem: error N`. The usage
    follows only when the command line was wrong (upstream printed it after every failure,
    burying a daemon's answer to a right command line under it).
    """
    help_text = HELP[group]
    out = sys.stdout
    if not argv:
        out.write(help_text)
        return EXIT_USAGE
    if argv[0] == "help":
        out.write(help_text)
        return 0
    try:
        inv = parse(group, argv)
    except UsageError as e:
        out.write(f"{e}\netmem: error {e.code}\n{help_text}")
        return e.code % 256
    try:
        reply = request(inv.socket_name, inv.request)
    except ConnectError as e:
        out.write(f"{e}\n{e.step}\netmem: error {e.code}\n")
        return e.status
    if not reply.ok:
        # as upstream's client: the reply with a newline in place of the tag, then these lines
        out.write(f"{reply.text}\n{RECV_FAILED}\netmem: error {CODE_FAILED_REPLY}\n")
        return EXIT_FAILED_REPLY
    if inv.output == "json":
        try:
            json.loads(reply.text)
        except ValueError:
            sys.stderr.write("etmem: etmemd did not answer in JSON (an upstream etmemd "
                             "cannot; drop -o json)\n")
            sys.stderr.write(reply.text)
            return 1
    out.write(reply.text)
    out.flush()
    return 0
