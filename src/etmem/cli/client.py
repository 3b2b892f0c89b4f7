"""`etmem obj|project|engine`: upstream's client commands, talking to etmemd.

Options are parsed like upstream's getopt_long (options and values in any order,
`-s NAME`, `--socket NAME`, `--socket=NAME`), the request bytes are exactly what
upstream's client sends, and the exit status follows upstream: 0 on success, the
negative errno as a byte otherwise (234 for a usage error, 186 after a failure
reply, 111 when no etmemd listens).
"""
from __future__ import annotations

import errno
import getopt
import json
import socket
import sys
from dataclasses import dataclass

from .. import protocol
from ..protocol import Command, ProtocolError, Reply, Request

#: How long to wait for etmemd to accept and take a request (upstream: 10 s).
SEND_TIMEOUT = 10.0
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
    -o|--output <format>        Output of show: text (default) or json

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
"""

HELP = {"obj": OBJ_HELP, "project": PROJECT_HELP, "engine": ENGINE_HELP}

#: Exit statuses: upstream returns a negative errno from main, which the shell sees
#: as that value modulo 256.
EXIT_USAGE = -errno.EINVAL % 256        # 234
EXIT_FAILED_REPLY = -errno.ECOMM % 256  # 186
EXIT_NO_DAEMON = errno.ECONNREFUSED     # 111


class UsageError(Exception):
    """A command line that cannot be turned into a request."""


class ConnectError(Exception):
    """No etmemd could be reached, or the conversation broke off."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def request(socket_name: str, req: Request, *, send_timeout: float = SEND_TIMEOUT,
            recv_timeout: float = RECV_TIMEOUT) -> Reply:
    """Send `req` to the etmemd listening on `socket_name` and return its reply.

    Raises ProtocolError for a request that cannot be sent, ConnectError when the
    daemon cannot be reached or the reply is cut off.
    """
    data = req.encode()
    address = protocol.socket_address(socket_name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(send_timeout)
        try:
            sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            raise ConnectError(f"cannot connect to etmemd on socket {socket_name}: "
                               f"is etmemd running?", EXIT_NO_DAEMON) from None
        except OSError as e:
            raise ConnectError(f"cannot connect to etmemd on socket {socket_name}: "
                               f"{e.strerror or e}", EXIT_NO_DAEMON) from None
        try:
            sock.sendall(data)
            sock.settimeout(recv_timeout)
            received = bytearray()
            while protocol.find_tag(received) < 0:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            raise ConnectError(f"etmemd on socket {socket_name} did not answer in time",
                               EXIT_FAILED_REPLY) from None
        except OSError as e:
            raise ConnectError(f"talking to etmemd on socket {socket_name} failed: "
                               f"{e.strerror or e}", EXIT_FAILED_REPLY) from None
    try:
        return Reply.decode(bytes(received))
    except ProtocolError as e:
        raise ConnectError(f"{e} (socket {socket_name})", EXIT_FAILED_REPLY) from None


@dataclass
class Invocation:
    """A parsed `etmem obj|project|engine` command line."""

    group: str
    socket_name: str
    request: Request
    output: str = "text"


_GETOPT = {
    "obj": ("f:s:", ["file=", "socket="]),
    "project": ("n:s:o:", ["name=", "socket=", "output="]),
    "engine": ("n:s:e:t:", ["proj_name=", "socket=", "engine=", "task_name="]),
}
_OPTION_FIELD = {
    "-f": "file", "--file": "file",
    "-s": "socket", "--socket": "socket",
    "-n": "project", "--name": "project", "--proj_name": "project",
    "-e": "engine", "--engine": "engine",
    "-t": "task", "--task_name": "task",
    "-o": "output", "--output": "output",
}


def parse(group: str, argv: list[str]) -> Invocation:
    """Turn `etmem GROUP ARGV...` into a request; UsageError says what is wrong.

    argv[0] is the command (add, del, start, stop, show, or an engine command).
    """
    command = argv[0]
    if group == "obj":
        commands = {"add": Command.OBJ_ADD, "del": Command.OBJ_DEL}
    elif group == "project":
        commands = {"start": Command.PROJECT_START, "stop": Command.PROJECT_STOP,
                    "show": Command.PROJECT_SHOW}
    else:
        commands = {}
    if group == "engine" and command.startswith("-"):
        raise UsageError("engine command must be given, please check.")
    if commands and command not in commands:
        raise UsageError(f"{group} command {command} is not supported "
                         f"(use one of: {', '.join(commands)}, help)")
    shortopts, longopts = _GETOPT[group]
    try:
        opts, rest = getopt.gnu_getopt(argv[1:], shortopts, longopts)
    except getopt.GetoptError as e:
        raise UsageError(f"invalid option: {e.msg}") from None
    if rest:
        raise UsageError(f"useless parameters passed in: {' '.join(rest)}")
    values: dict[str, str] = {}
    for opt, value in opts:
        field = _OPTION_FIELD[opt]
        if field in values:
            raise UsageError(f"option {opt} given more than once")
        values[field] = value
    socket_name = values.get("socket")
    if not socket_name:
        raise UsageError("socket name to connect must be given, please check.")
    output = values.get("output", "text")
    if output not in ("text", "json"):
        raise UsageError(f"output format must be text or json, not {output!r}")
    if group == "obj":
        if not values.get("file"):
            raise UsageError("configuration file must be given, please check.")
        req = Request(commands[command], file=values["file"])
    elif group == "project":
        cmd = commands[command]
        if cmd != Command.PROJECT_SHOW and not values.get("project"):
            raise UsageError("project name must be given, please check.")
        if output == "json" and cmd != Command.PROJECT_SHOW:
            raise UsageError("-o/--output applies only to project show")
        req = Request(cmd, project=values.get("project"),
                      engine_cmd=protocol.SHOW_JSON if output == "json" else None)
    else:
        if not values.get("project"):
            raise UsageError("project name must be given, please check.")
        if not values.get("engine"):
            raise UsageError("engine name must be given, please check.")
        req = Request(Command.ENGINE, project=values["project"], engine=values["engine"],
                      engine_cmd=command, task=values.get("task"))
    try:
        protocol.check_socket_name(socket_name)
        req.encode()
    except ProtocolError as e:
        raise UsageError(str(e)) from None
    return Invocation(group, socket_name, req, output)


def _write(stream, text: str) -> None:
    if text:
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()


def main(group: str, argv: list[str]) -> int:
    """Run `etmem GROUP ARGV...`; returns the exit status."""
    help_text = HELP[group]
    if not argv:
        sys.stderr.write(help_text)
        return EXIT_USAGE
    if argv[0] in ("help", "-h", "--help"):
        sys.stdout.write(help_text)
        return 0
    try:
        inv = parse(group, argv)
    except UsageError as e:
        sys.stderr.write(f"{e}\netmem: error {-errno.EINVAL}\n{help_text}")
        return EXIT_USAGE
    try:
        reply = request(inv.socket_name, inv.request)
    except ConnectError as e:
        sys.stderr.write(f"etmem: {e}\n")
        return e.status
    except ProtocolError as e:
        sys.stderr.write(f"etmem: {e}\n")
        return EXIT_USAGE
    if not reply.ok:
        # upstream's client prints the reply, these two lines and the usage
        _write(sys.stderr, reply.text)
        sys.stderr.write(f"etmem_client_recv failed.\netmem: error {-errno.ECOMM}\n{help_text}")
        return EXIT_FAILED_REPLY
    if inv.output == "json":
        try:
            json.loads(reply.text)
        except ValueError:
            sys.stderr.write("etmem: etmemd did not answer in JSON (an upstream etmemd "
                             "cannot; drop -o json)\n")
            _write(sys.stderr, reply.text)
            return 1
    _write(sys.stdout, reply.text)
    return 0
