"""The wire protocol between `etmem` and `etmemd`, byte-compatible with upstream etmem.

A client connects to an abstract unix socket (`"\\0" + name`, no trailing NUL), sends
one request line of at most 512 bytes and no newline::

    proj_name P file_name F cmd N eng_name E eng_cmd C task_name T

with `-` for each absent value, and reads the reply: optional UTF-8 text, then one
tag byte, 0xFF for success or 0xFE for failure. Neither byte can occur in UTF-8
text, so the tag is unambiguous. A failure's text starts with upstream's fixed line
for its cause (`error: project is not exist`), has no newline at its end (a client
prints one in place of the tag) and may go on with our detail on the next line.

This module holds only the formats and limits: encoding and decoding requests,
framing replies and rendering `project show`. Sockets live in `daemon` and
`cli.client`.
"""
from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

from .errors import Cause, ProtocolError

#: Upstream reads a request into a 512-byte buffer; anything longer is refused.
MAX_REQUEST = 512
#: Upstream refuses socket names of 107 bytes or more ("@" + name must fit sun_path[108]).
MAX_SOCKET_NAME = 106
#: Reply tags.
SUCCESS = 0xFF
FAILURE = 0xFE
SUCCESS_TAG = bytes([SUCCESS])
FAILURE_TAG = bytes([FAILURE])
#: The value sent for an absent field.
ABSENT = "-"
#: The request keys, in the order upstream sends (and its daemon expects) them.
KEYS = ("proj_name", "file_name", "cmd", "eng_name", "eng_cmd", "task_name")
#: `eng_cmd` values of a `project show` request asking for JSON, or for the table with each
#: task's statistics (extensions: upstream's daemon ignores eng_cmd for show, and its client
#: never sends it there).
SHOW_JSON = "json"
SHOW_VERBOSE = "verbose"
SHOW_FORMATS = (SHOW_JSON, SHOW_VERBOSE)


class Command(enum.IntEnum):
    """The `cmd` numbers of upstream's protocol."""

    OBJ_ADD = 0
    OBJ_DEL = 1
    PROJECT_START = 2
    PROJECT_STOP = 3
    PROJECT_SHOW = 4
    ENGINE = 5

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Command.OBJ_ADD: "obj add",
    Command.OBJ_DEL: "obj del",
    Command.PROJECT_START: "project start",
    Command.PROJECT_STOP: "project stop",
    Command.PROJECT_SHOW: "project show",
    Command.ENGINE: "engine command",
}

# Which fields each command needs (True), may take (None) or must leave absent (False).
_FIELDS = {
    Command.OBJ_ADD: dict(file=True, project=False, engine=False, engine_cmd=False, task=False),
    Command.OBJ_DEL: dict(file=True, project=False, engine=False, engine_cmd=False, task=False),
    Command.PROJECT_START: dict(file=False, project=True, engine=False, engine_cmd=False, task=False),
    Command.PROJECT_STOP: dict(file=False, project=True, engine=False, engine_cmd=False, task=False),
    Command.PROJECT_SHOW: dict(file=False, project=None, engine=False, engine_cmd=None, task=False),
    Command.ENGINE: dict(file=False, project=True, engine=True, engine_cmd=True, task=None),
}
_KEY_OF_FIELD = dict(project="proj_name", file="file_name", engine="eng_name",
                     engine_cmd="eng_cmd", task="task_name")
_WHAT = dict(project="project name", file="config file name", engine="engine name",
             engine_cmd="engine command", task="task name")
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")


def check_value(what: str, value: str) -> None:
    """Raise ProtocolError unless `value` can travel as one request field.

    The line is split on spaces and upstream's daemon reads a value starting with
    `-` as "absent", so neither white space nor a leading `-` can be sent.
    """
    if value == "":
        raise ProtocolError(f"{what} must not be empty")
    if _BAD_CHAR.search(value):
        raise ProtocolError(f"{what} {value!r} must not contain white space or control characters")
    if value.startswith("-"):
        raise ProtocolError(f"{what} {value!r} must not start with '-'")


def check_socket_name(name: str) -> None:
    """Raise ProtocolError unless `name` is a usable socket name (1..106 bytes, no NUL)."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise ProtocolError("socket name must not be empty")
    if b"\0" in raw:
        raise ProtocolError("socket name must not contain a NUL byte")
    if len(raw) > MAX_SOCKET_NAME:
        raise ProtocolError(f"socket name is {len(raw)} bytes long; it must be shorter than "
                            f"{MAX_SOCKET_NAME + 1} bytes")


def socket_address(name: str) -> bytes:
    """The abstract-namespace address of socket `name`: a NUL, then the name."""
    check_socket_name(name)
    return b"\0" + name.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Request:
    """One client request; None is an absent value."""

    cmd: Command
    project: str | None = None
    file: str | None = None
    engine: str | None = None
    engine_cmd: str | None = None
    task: str | None = None

    def validate(self) -> None:
        """Raise ProtocolError unless every field is present exactly as `cmd` needs."""
        for field, need in _FIELDS[self.cmd].items():
            value = getattr(self, field)
            if need and value is None:
                raise ProtocolError(f"{self.cmd.label} needs a {_WHAT[field]} "
                                    f"({_KEY_OF_FIELD[field]})")
            if need is False and value is not None:
                raise ProtocolError(f"{self.cmd.label} takes no {_WHAT[field]} "
                                    f"({_KEY_OF_FIELD[field]} {value})")
            if value is not None:
                check_value(_WHAT[field], value)
        if self.cmd == Command.PROJECT_SHOW and self.engine_cmd not in (None, *SHOW_FORMATS):
            raise ProtocolError(f"project show takes no engine command other than "
                                f"{SHOW_JSON!r} or {SHOW_VERBOSE!r} (got {self.engine_cmd!r})")

    @property
    def wants_json(self) -> bool:
        return self.cmd == Command.PROJECT_SHOW and self.engine_cmd == SHOW_JSON

    @property
    def wants_stats(self) -> bool:
        return self.cmd == Command.PROJECT_SHOW and self.engine_cmd == SHOW_VERBOSE

    def encode(self) -> bytes:
        """The exact bytes upstream's client sends for this request."""
        self.validate()

        def v(x: str | None) -> str:
            return ABSENT if x is None else x

        line = (f"proj_name {v(self.project)} file_name {v(self.file)} cmd {int(self.cmd)} "
                f"eng_name {v(self.engine)} eng_cmd {v(self.engine_cmd)} task_name {v(self.task)}")
        data = line.encode("utf-8", "surrogateescape")
        if len(data) > MAX_REQUEST:
            raise ProtocolError(f"request is {len(data)} bytes long; etmemd accepts at most "
                                f"{MAX_REQUEST} (use shorter names or paths)")
        return data


def decode_request(data: bytes) -> Request:
    """Parse one request line; raise ProtocolError saying what is wrong with it.

    Accepts exactly what upstream's client sends. A trailing newline or NUL (as a
    hand-written client might send) is tolerated; keys must come in upstream's order.
    """
    if len(data) > MAX_REQUEST:
        raise ProtocolError(f"request longer than {MAX_REQUEST} bytes")
    data = data.rstrip(b"\0").removesuffix(b"\n").removesuffix(b"\r")
    if not data:
        raise ProtocolError("empty request")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"request is not UTF-8 text (byte {e.start})") from None
    tokens = text.split(" ")
    if len(tokens) != 2 * len(KEYS):
        raise ProtocolError(f"malformed request: expected {2 * len(KEYS)} space-separated "
                            f"words ({' '.join(k + ' VALUE' for k in KEYS)}), got {len(tokens)}")
    values: dict[str, str | None] = {}
    for i, key in enumerate(KEYS):
        got, value = tokens[2 * i], tokens[2 * i + 1]
        if got != key:
            raise ProtocolError(f"malformed request: word {2 * i + 1} is {got[:40]!r}, "
                                f"expected {key!r}")
        if value == "":
            raise ProtocolError(f"malformed request: empty value for {key}")
        values[key] = None if value == ABSENT else value
    raw_cmd = values["cmd"]
    if raw_cmd is None or not re.fullmatch(r"[0-9]{1,9}", raw_cmd):
        raise ProtocolError(f"malformed request: cmd must be a number, got {raw_cmd or ABSENT!r}")
    try:
        cmd = Command(int(raw_cmd))
    except ValueError:
        raise ProtocolError(f"unknown command number {int(raw_cmd)} (known: "
                            f"{', '.join(f'{int(c)} {c.label}' for c in Command)})") from None
    request = Request(cmd=cmd, project=values["proj_name"], file=values["file_name"],
                      engine=values["eng_name"], engine_cmd=values["eng_cmd"],
                      task=values["task_name"])
    request.validate()
    return request


def encode_reply(text: str, ok: bool) -> bytes:
    """Reply text followed by the success or failure tag."""
    return text.encode("utf-8", "replace") + (SUCCESS_TAG if ok else FAILURE_TAG)


def find_tag(data: bytes) -> int:
    """Index of the first reply tag in `data`, or -1."""
    positions = [i for i in (data.find(SUCCESS_TAG), data.find(FAILURE_TAG)) if i >= 0]
    return min(positions) if positions else -1


@dataclass(frozen=True)
class Reply:
    """A daemon's reply: its text and whether it ended with the success tag."""

    text: str
    ok: bool

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        """Split reply bytes at the tag; ProtocolError if there is none."""
        at = find_tag(data)
        if at < 0:
            raise ProtocolError("etmemd closed the connection without finishing its reply")
        return cls(data[:at].decode("utf-8", "replace"), data[at] == SUCCESS)


def failure_text(cause: Cause, detail: str = "") -> str:
    """A failure reply's text: upstream's fixed line for the cause, then our detail on the
    next line; no newline at the end (upstream's client prints one in place of the tag)."""
    head = f"error: {cause.value}"
    detail = detail.strip("\n")
    return f"{head}\n{detail}" if detail else head


# -- project show -----------------------------------------------------------------

SHOW_COLUMNS = ("number", "type", "value", "name", "engine", "started")
#: Upstream's printf formats of the table's header and rows.
SHOW_HEADER = "%-8s %-8s %-16s %-16s %-16s %-8s\n" % SHOW_COLUMNS
SHOW_ROW = "%-8d %-8s %-16s %-16s %-16s %-8s\n"
#: Upstream's replies when there is nothing to show (both successes).
NO_PROJECTS = "no project exists\n\n"


def show_absent(name: str) -> str:
    """The reply to `project show -n NAME` for a project that does not exist (a success)."""
    return f"project: project {name} is not existed\n\n"


def _flatten(stats: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in stats.items():
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _by_engine_newest_first(tasks: list[dict]) -> list[list[dict]]:
    """The tasks of one project as upstream lists them: engines newest first, each engine's
    tasks newest first (upstream inserts both at the head of their lists)."""
    engines: dict[str, list[dict]] = {}
    for task in tasks:
        engines.setdefault(task["engine"], []).append(task)
    return [list(reversed(group)) for group in reversed(list(engines.values()))]


def _target_label(number: int, target: dict) -> str:
    """How a `-v` line names one target of the last round: its pid, else its cgroup, else its place."""
    if target.get("pid") is not None:
        return str(target["pid"])
    return str((target.get("detail") or {}).get("cgroup") or number)


def _stats_lines(task: dict) -> list[str]:
    stats = task.get("stats") or {}
    pairs = [(k, _cell(v).replace("\n", "; ")) for k, v in _flatten(stats)
             if v is not None and not isinstance(v, (list, tuple))]
    if not stats.get("skipped"):   # a round skipped as a whole left last_round as an older round had it
        pairs += [(f"last_round.{_target_label(i, t)}.skipped", _cell(t["skipped"]).replace("\n", "; "))
                  for i, t in enumerate(stats.get("last_round") or [], start=1)
                  if isinstance(t, dict) and t.get("skipped")]
    if not pairs:
        return []
    width = max(len(k) for k, _ in pairs)
    return ["", f"stats of task {task['name']} (engine {task['engine']}):"] + \
           [f"  {k.ljust(width)}  {v}" for k, v in pairs]


def render_show_text(projects: list[dict], stats: bool = False) -> str:
    """`project show` as upstream's etmemd writes it: projects newest first, each a
    `project: NAME` line and upstream's table (task numbers counting from 1 for each engine,
    `started` the project's state); `no project exists` and a blank line when there is none.

    stats=True (`-v`) adds each task's statistics below its project's table, one
    `key  value` line each (nested keys joined with `.`, empty values and per-target
    lists left out: those are in `-o json`), and why the last round did nothing to a
    target (`last_round.PID.skipped  REASON`), so every "did nothing because" is there."""
    if not projects:
        return NO_PROJECTS
    out: list[str] = []
    for project in reversed(projects):
        out.append(f"project: {project['name']}\n")
        out.append(SHOW_HEADER)
        started = "true" if project.get("started") else "false"
        shown: list[dict] = []
        for engine_tasks in _by_engine_newest_first(project.get("tasks", [])):
            for number, task in enumerate(engine_tasks, start=1):
                # a task with no type/value (psi's, named by cgroup) shows "-" where upstream's printf had "(null)"
                out.append(SHOW_ROW % (number, _cell(task["type"]), _cell(task["value"]), task["name"],
                                       task["engine"], started))
                shown.append(task)
        if stats:
            lines = [line for task in shown for line in _stats_lines(task)]
            out.extend(line + "\n" for line in lines + ([""] if lines else []))
    return "".join(out)


def render_show_json(projects: list[dict]) -> str:
    """`project show -o json`: the Manager's show() list as JSON, one document."""
    return json.dumps(projects, indent=2, sort_keys=False, default=str) + "\n"
