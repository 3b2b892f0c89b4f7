"""`etmem systemd-unit`: print a systemd service unit that runs this installation's etmemd.

The unit names etmemd by the path it has here (a venv's, /usr/local/bin's, ...), so it is
right as written: `etmem systemd-unit > /etc/systemd/system/etmemd.service`. etmemd runs in
the foreground (Type=simple, no -m), so the journal gets its stderr as well as its syslog.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import sysconfig

from .._version import __version__
from ..errors import EtmemError
from ..protocol import check_socket_name

INSTALL = ("etmem systemd-unit > /etc/systemd/system/etmemd.service && "
           "systemctl daemon-reload && systemctl enable --now etmemd")


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.description = (f"Print a systemd unit for etmemd, naming this installation's etmemd. Install it with: "
                          f"{INSTALL}")
    parser.add_argument("-s", "--socket", default="etmemd_socket", metavar="NAME",
                        help="socket name etmemd listens on (default etmemd_socket)")
    parser.add_argument("-l", "--log-level", type=int, choices=range(4), default=1, metavar="0..3",
                        help="etmemd's log level: 0 debug, 1 info, 2 warning, 3 error (default 1)")
    parser.add_argument("--etmemd", metavar="PATH", help="the etmemd to run (default: this installation's)")
    parser.add_argument("etmemd_options", nargs=argparse.REMAINDER, metavar="-- OPTION",
                        help="further etmemd options, after --, e.g. -- --allow-group etmem")


def find_etmemd() -> str:
    """The etmemd installed with this etmem: beside the running `etmem` script, in this
    environment's scripts directory, or on PATH."""
    places = []
    if os.path.basename(sys.argv[0]) == "etmem":
        places.append(os.path.dirname(os.path.abspath(sys.argv[0])))
    places.append(sysconfig.get_path("scripts"))
    for place in places:
        path = os.path.join(place, "etmemd")
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("etmemd")
    if found:
        return os.path.abspath(found)
    raise EtmemError(f"cannot find this installation's etmemd (not in {' or '.join(places)}, not on PATH); "
                     "name it with --etmemd PATH")


def systemd_quote(arg: str) -> str:
    """One ExecStart= word: quoted when needed, % and $ escaped (systemd expands both)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_./:=@+,-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit(etmemd: str, socket: str, log_level: int, options: list[str]) -> str:
    command = " ".join(systemd_quote(a) for a in [etmemd, "-l", str(log_level), "-s", socket, *options])
    return f"""\
# etmemd, the etmem memory-tiering daemon (etmem for Python {__version__}), as written by
# `etmem systemd-unit`. Install, as root:
#   etmem systemd-unit > /etc/systemd/system/etmemd.service
#   systemctl daemon-reload && systemctl enable --now etmemd
# Options: etmemd --help; its log: journalctl -u etmemd
[Unit]
Description=etmem memory tiering daemon
After=local-fs.target

[Service]
# In the foreground: the journal takes its stderr and syslog; systemd tracks the process.
Type=simple
ExecStart={command}
# SIGTERM stops every project cleanly.
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def main(args: argparse.Namespace) -> int:
    options = args.etmemd_options[1:] if args.etmemd_options[:1] == ["--"] else args.etmemd_options
    if "-m" in options or "--mode-systemctl" in options:
        raise EtmemError("the unit runs etmemd in the foreground (Type=simple): leave out -m")
    check_socket_name(args.socket)
    etmemd = os.path.abspath(args.etmemd) if args.etmemd else find_etmemd()
    sys.stdout.write(unit(etmemd, args.socket, args.log_level, options))
    return 0
