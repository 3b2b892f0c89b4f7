"""The `etmem` command: upstream's client commands plus etmem-for-Python's own.

`obj`, `project` and `engine` talk to etmemd exactly as upstream's client does
(`cli.client`), and `etmem`, `etmem help` and `etmem --help` answer as upstream's do.
`config`, `plugins`, `kernel` and `demo` are modules of their own, imported only when
used, each with `set_argparser(parser)` and `main(args)`. This file only wires them, and
makes sure no command ends in a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .._version import __version__

USAGE = """
Usage:
    etmem OBJECT COMMAND [options]
    etmem help
    etmem --version

Parameters:
    OBJECT  := { project | obj | engine }
    COMMAND := { add | del | start | stop | show | eng_cmd | help }

Commands:
    obj add|del -f FILE -s SOCK        add or delete the projects, engines and tasks of a config file
    project start|stop -n NAME -s SOCK start or stop a project
    project show [-n NAME] -s SOCK     show projects and their tasks (-v: statistics too, -o json: as JSON)
    engine CMD -n PROJ -e ENG -s SOCK  run an engine's own command, e.g. showtaskpages (-t TASK)
    config check|keys ...              validate config files offline, list each group's keys
    plugins                            list the strategy plugins etmem has loaded
    kernel [-o json]                   what the running kernel offers etmem, and what is missing
    systemd-unit [-s SOCK] ...         print a systemd unit that runs this installation's etmemd
    demo ...                           run a demonstration of memory tiering (etmem demo --help)
    report wss|heatmap|age|rounds ...  what a task's scans saw: working set, heat, ages (etmem report --help)
    help                               show this message

Run 'etmem OBJECT help' for the options of obj, project and engine.
"""

#: Our own subcommands: name -> module under etmem.cli.
EXTRA_COMMANDS = {"config": "config_cmd", "plugins": "plugins_cmd", "kernel": "kernel_cmd",
                  "systemd-unit": "systemd_cmd", "demo": "demo", "report": "report_cmd"}
CLIENT_GROUPS = ("obj", "project", "engine")
USAGE_STATUS = 234   # upstream: -EINVAL


def _run_extra(name: str, argv: list[str]) -> int:
    module_name = f"{__name__}.{EXTRA_COMMANDS[name]}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"etmem: the '{name}' command is not available in this installation",
              file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(prog=f"etmem {name}")
    module.set_argparser(parser)
    args = parser.parse_args(argv)
    return int(module.main(args) or 0)


def _dispatch(argv: list[str]) -> int:
    """Upstream's top level: `etmem help` alone prints the usage and exits 0; no object, an
    unknown one, `--help` or anything after `help` prints it (on stdout) and exits 234."""
    if not argv:
        sys.stdout.write(USAGE)
        return USAGE_STATUS
    head, rest = argv[0], argv[1:]
    if head in ("--version", "-V"):
        print(f"etmem {__version__}")
        return 0
    if head == "help":
        sys.stdout.write(USAGE)
        return USAGE_STATUS if rest else 0
    if head in CLIENT_GROUPS:
        from . import client

        return client.main(head, rest)
    if head in EXTRA_COMMANDS:
        return _run_extra(head, rest)
    if head not in ("-h", "--help"):
        sys.stdout.write(f"etmem: unknown object {head!r}\n")
    sys.stdout.write(USAGE)
    return USAGE_STATUS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..errors import EtmemError

    try:
        return _dispatch(argv)
    except EtmemError as e:
        print(f"etmem: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("etmem: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except SystemExit:
        raise
    except Exception as e:
        print(f"etmem: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
