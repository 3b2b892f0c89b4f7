"""`etmem report wss|heatmap|age|rounds`: a task's recent rounds as reports, from a running etmemd or a recorded file.

From etmemd (`-n PROJECT -t TASK -s SOCKET`, `-e ENGINE` when the task name is not enough)
the history comes through the `etmem engine history` request; from a file (`--input FILE`)
it is what that request wrote, or `--save FILE` kept. The reports are etmem.report's.
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import history as history_mod
from .. import report
from ..errors import EtmemError, ProtocolError
from ..history import HistoryFormatError, TaskHistory
from ..protocol import SHOW_JSON, Command, Request
from .client import ConnectError, request

REPORTS = {
    "wss": "working-set size per round and its percentiles",
    "heatmap": "address x time access heat (in the terminal, or --png FILE)",
    "age": "resident memory by how long ago it was last accessed",
    "rounds": "what each round did, or in a dry run would have done, per target",
}


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Reports on what etmem's scans saw: a task's recent rounds (etmemd keeps the last "
                          f"{history_mod.HISTORY_ROUNDS} of each task), read from a running etmemd or a file.")
    sub = parser.add_subparsers(dest="report", metavar="REPORT", required=True)
    for name, text in REPORTS.items():
        p = sub.add_parser(name, help=text, description=text)
        where = p.add_argument_group("where the history comes from (etmemd, or --input)")
        where.add_argument("-s", "--socket", help="etmemd's socket name")
        where.add_argument("-n", "--name", "--proj_name", dest="project", help="project")
        where.add_argument("-e", "--engine", help="engine (needed only when the task name is in several engines)")
        where.add_argument("-t", "--task_name", "--task", dest="task", help="task")
        where.add_argument("-i", "--input", metavar="FILE",
                           help="a history file (JSON lines, as `etmem engine history` prints or --save writes)")
        p.add_argument("--save", metavar="FILE", help="also write the history read to FILE, for --input later")
        if name in ("heatmap", "age"):
            p.add_argument("--pid", type=int, help="the target process to draw (default: the one most rounds scanned)")
            p.add_argument("--columns", type=int, default=report.COLUMNS,
                           help=f"address ranges across (default {report.COLUMNS})")
        if name == "heatmap":
            p.add_argument("--png", metavar="FILE", help="draw the heat map into a PNG file (needs etmem[plots])")
        if name == "rounds":
            p.add_argument("--last", type=int, help="only the last N rounds")


def main(args: argparse.Namespace) -> int:
    try:
        section = _history(args)
        if args.save:
            _save(section, args.save)
        sys.stdout.write(_render(args, section))
        return 0
    except EtmemError as exc:
        print(f"etmem report: {exc}", file=sys.stderr)
        return 1


def _render(args, section: TaskHistory) -> str:
    h, title = section.history, section.label
    if args.report == "wss":
        return report.wss_text(h, title)
    if args.report == "heatmap":
        if args.png:
            pic = report.heatmap_png(h, args.png, args.columns, args.pid, title)
            return (f"wrote {args.png}: access heat of process {pic.heat.pid}, {len(pic.heat.rounds)} rounds x "
                    f"{args.columns} columns\n")
        return report.heatmap_text(h, args.columns, args.pid, title)
    if args.report == "age":
        return report.age_text(h, args.columns, args.pid, title)
    return report.rounds_text(h, title, args.last)


def _history(args) -> TaskHistory:
    if args.input:
        if args.socket:
            raise EtmemError("give either --input FILE or -s SOCKET, not both")
        return _pick(history_mod.load_file(args.input), args, args.input)
    if not args.socket:
        raise EtmemError("say where the history is: -s SOCKET -n PROJECT -t TASK (a running etmemd) or --input FILE")
    if not args.project or not args.task:
        raise EtmemError("reading etmemd needs the project (-n) and the task (-t)")
    engine = args.engine or _engine_of(args.socket, args.project, args.task)
    text = _ask(args.socket, engine_cmd="history", project=args.project, engine=engine, task=args.task)
    return _pick(history_mod.load_jsonl(text.splitlines(), f"etmemd @{args.socket}"), args, f"etmemd @{args.socket}")


def _pick(sections: list[TaskHistory], args, where: str) -> TaskHistory:
    found = [s for s in sections
             if (args.project is None or s.project == args.project) and (args.engine is None or s.engine == args.engine)
             and (args.task is None or s.task == args.task)]
    if len(found) == 1:
        return found[0]
    have = ", ".join(s.label for s in sections)
    if not found:
        raise EtmemError(f"{where} has no history of the task asked for (it has: {have})")
    raise EtmemError(f"{where} holds the history of several tasks ({have}): choose one with -n, -e and -t")


def _engine_of(socket_name: str, project: str, task: str) -> str:
    """The engine of the project that has a task of that name, from `project show -o json`."""
    shown = json.loads(_ask(socket_name, Command.PROJECT_SHOW, project=project, engine_cmd=SHOW_JSON))
    engines = sorted({t["engine"] for p in shown for t in p.get("tasks", []) if t["name"] == task})
    if not engines:
        raise EtmemError(f"project {project} has no task {task}")
    if len(engines) > 1:
        raise EtmemError(f"project {project} has a task {task} in engines {', '.join(engines)}: choose one with -e")
    return engines[0]


def _ask(socket_name: str, command: Command = Command.ENGINE, **fields) -> str:
    """The text of etmemd's successful reply to one request; EtmemError with its message otherwise."""
    try:
        reply = request(socket_name, Request(command, **fields))
    except ConnectError as exc:
        raise EtmemError(str(exc)) from None
    except ProtocolError as exc:
        raise EtmemError(f"cannot ask etmemd: {exc}") from None
    if not reply.ok:
        raise EtmemError(reply.text.replace("\n", ": ", 1))
    return reply.text


def _save(section: TaskHistory, path: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            history_mod.dump_jsonl([section], f)
    except OSError as exc:
        raise HistoryFormatError(f"cannot write {path}: {exc.strerror or exc}") from None
