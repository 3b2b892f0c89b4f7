"""etmem's config language: the key-file parser and the spec classes it fills.

A file is a list of `[project]`, `[engine]` and `[task]` groups of `key=value`
lines. Every group header opens a new object (upstream's GKeyFile silently
merged repeated groups; we keep them apart). Values are structured into attrs
spec classes by cattrs, one key type per field, and every problem becomes a
`ConfigError` naming file, line, group and key.

Engines declare their own keys as spec classes built with `key(...)`; the
same machinery validates them, so a plugin's keys get the same messages.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import stat
import unicodedata
from typing import Any, Callable, Iterable

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from . import units
from .errors import ConfigError
from .errors import ConfigErrors  # noqa: F401  (re-exported)

GROUPS = ("project", "engine", "task")
#: A file with no group: upstream's etmemd refuses it (invalid parameters).
NO_GROUPS = "has no [project], [engine] or [task] group: there is nothing to add or delete"
MAX_NAME = 64
MAX_COMM = 15
MAX_FILE_BYTES = 10 << 20  # upstream refuses config files above 10 MiB


# --- key types: parse a raw value (str from a file, or a Python value) ---------

class KeyType:
    """How one key's value is read and what it allows (`allowed` is shown in errors)."""

    allowed = "a value"

    def __call__(self, raw: Any) -> Any:
        raise NotImplementedError


class Int(KeyType):
    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi
        if lo is not None and hi is not None:
            self.allowed = f"an integer from {lo} to {hi}"
        elif lo is not None:
            self.allowed = f"an integer >= {lo}"
        else:
            self.allowed = "an integer"

    def __call__(self, raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"must be {self.allowed}")
        if isinstance(raw, int):
            value = raw
        else:
            text = str(raw).strip()
            if not re.fullmatch(r"[+-]?[0-9]+", text):
                raise ValueError(f"must be {self.allowed}")
            value = int(text)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise ValueError(f"must be {self.allowed}")
        return value


#: A decimal number in ASCII digits, as upstream's strtod reads one in the C locale.
_DECIMAL = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"


class Float(KeyType):
    """A decimal number above `above` (upstream's doubles: psi's pressure and rates)."""

    def __init__(self, above: float = 0.0):
        self.above = above
        self.allowed = f"a number above {above:g}"

    def __call__(self, raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"must be {self.allowed}")
        if isinstance(raw, (int, float)):
            value = float(raw)
        elif re.fullmatch(_DECIMAL, str(raw).strip()):
            value = float(str(raw).strip())
        else:   # float() would take digits of any script, and nan or inf
            raise ValueError(f"must be {self.allowed}")
        if not math.isfinite(value) or value <= self.above:
            raise ValueError(f"must be {self.allowed}")
        return value


class YesNo(KeyType):
    allowed = "yes or no"

    def __call__(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip()
        if text == "yes":
            return True
        if text == "no":
            return False
        raise ValueError("must be yes or no")


class Choice(KeyType):
    def __init__(self, *options: str):
        self.options = options
        self.allowed = " or ".join(options) if len(options) <= 2 else ", ".join(options[:-1]) + " or " + options[-1]

    def __call__(self, raw: Any) -> str:
        text = str(raw).strip()
        if text not in self.options:
            raise ValueError(f"must be {self.allowed}")
        return text


class SourceName(KeyType):
    """A scanner source: auto, a built-in source or one a plugin registers.

    Only the shape is checked here; which names exist is the scanner registry's to say
    (loader.scanner_problem), since plugins add sources.
    """

    def __init__(self, builtin: Iterable[str]):
        self.allowed = ", ".join(builtin) + " or an installed plugin's source"

    def __call__(self, raw: Any) -> str:
        text = str(raw).strip()
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", text):
            raise ValueError(f"must be {self.allowed}")
        return text


class Name(KeyType):
    """An object name: 1..64 printable characters, no whitespace, not starting with '-'.

    Names are typed on command lines and printed on terminals: a control or format
    character (an escape sequence, a right-to-left mark) would make a name that shows as
    another, or that no one can type to start or stop its project.
    """

    def __init__(self, max_len: int = MAX_NAME):
        self.max_len = max_len
        self.allowed = f"a name of 1 to {max_len} characters without spaces or control characters, not starting with '-'"

    def __call__(self, raw: Any) -> str:
        text = str(raw).strip()
        if not text or len(text) > self.max_len or not text.isprintable() or " " in text or text.startswith("-"):
            raise ValueError(f"must be {self.allowed}")
        return text


class Text(KeyType):
    """Free text of bounded length (library paths, symbol names)."""

    def __init__(self, max_len: int = 4096, absolute_path: bool = False):
        self.max_len, self.absolute_path = max_len, absolute_path
        self.allowed = "an absolute path" if absolute_path else f"text of 1 to {max_len} characters"

    def __call__(self, raw: Any) -> str:
        text = str(raw).strip()
        if not text or len(text) > self.max_len:
            raise ValueError(f"must be {self.allowed}")
        if self.absolute_path and not os.path.isabs(text):
            raise ValueError("must be an absolute path")
        return text


class Percent(KeyType):
    """A percentage with decimals, from lo to hi: `5`, `0.5` or `0.5%`."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.allowed = f"a percentage from {lo:g} to {hi:g} (e.g. 5 or 0.5)"

    def __call__(self, raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"must be {self.allowed}")
        if isinstance(raw, (int, float)):
            value = float(raw)
        else:
            text = str(raw).strip().removesuffix("%").strip()
            if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)", text):
                raise ValueError(f"must be {self.allowed}")
            value = float(text)
        if not self.lo <= value <= self.hi:   # also refuses nan
            raise ValueError(f"must be {self.allowed}")
        return value


class Size(KeyType):
    """A byte size like `10g`, `512M`, `1GiB`, `1.5G` or plain bytes, read as every size is (etmem.units)."""

    allowed = f"a size like {units.EXAMPLES}"

    def __call__(self, raw: Any) -> int:
        return units.parse_size(raw)


class NodePairs(KeyType):
    """cslide's `node_pair`: `hot,cold;hot,cold` (DRAM node first), every node once."""

    allowed = "pairs of NUMA nodes 'fast,slow;fast,slow' (e.g. 0,2;1,3), each node at most once"

    def __call__(self, raw: Any) -> tuple:
        if isinstance(raw, (list, tuple)):
            pairs = [tuple(int(n) for n in p) for p in raw]
        else:
            text = str(raw).strip().rstrip(";")
            if not re.fullmatch(r"\s*\d+\s*,\s*\d+\s*(;\s*\d+\s*,\s*\d+\s*)*", text, re.ASCII):
                raise ValueError(f"must be {self.allowed}")
            pairs = [tuple(int(n) for n in p.split(",")) for p in text.split(";")]
        nodes = [n for p in pairs for n in p]
        if any(len(p) != 2 for p in pairs) or not pairs:
            raise ValueError(f"must be {self.allowed}")
        twice = sorted({n for n in nodes if nodes.count(n) > 1})
        if twice:
            raise ValueError(f"node {twice[0]} appears more than once; every node may be in one pair only")
        return tuple(pairs)


class VmFlag(KeyType):
    """A two-letter smaps VmFlags mnemonic such as `ht` (upstream allowed only `ht`)."""

    allowed = "a two-letter smaps VmFlags mnemonic such as ht"

    def __call__(self, raw: Any) -> str:
        text = str(raw).strip()
        if not re.fullmatch(r"[a-z0-9]{2}", text):
            raise ValueError(f"must be {self.allowed}")
        return text


REQUIRED = attrs.NOTHING


def key(kind: KeyType, default: Any = REQUIRED, help: str = "", warn: str | None = None) -> Any:
    """A spec field read as `kind`; no default means the key is required.

    `warn` marks an accepted-but-ignored key (upstream's PMU keys): giving it
    logs that sentence instead of failing.
    """
    return attrs.field(default=default, metadata={"etmem": kind, "help": help, "warn": warn})


def spec_keys(cls: type) -> dict[str, attrs.Attribute]:
    """The config keys of a spec class, by name."""
    return {a.name: a for a in attrs.fields(cls)}


def describe(attr: attrs.Attribute) -> str:
    kind = attr.metadata.get("etmem")
    return kind.allowed if kind else "a value"


# --- cattrs: one structure hook per spec class, one key type per field ---------

_converter = cattrs.Converter(detailed_validation=True)


def _is_spec(cls: Any) -> bool:
    return isinstance(cls, type) and attrs.has(cls) and any("etmem" in a.metadata for a in attrs.fields(cls))


def _spec_hook_factory(cls: type) -> Callable:
    overrides = {}
    for a in attrs.fields(cls):
        kind = a.metadata.get("etmem")
        if kind is not None:
            overrides[a.name] = override(struct_hook=lambda value, _type, kind=kind: kind(value))
    return make_dict_structure_fn(cls, _converter, _cattrs_forbid_extra_keys=False, **overrides)


_converter.register_structure_hook_factory(_is_spec, _spec_hook_factory)


@attrs.frozen
class Origin:
    """Where a group came from: file path (None when built in Python) and header line."""

    path: str | None = None
    line: int | None = None
    lines: dict = attrs.field(factory=dict)  # key -> line number

    def line_of(self, key_name: str | None) -> int | None:
        return self.lines.get(key_name, self.line) if key_name else self.line


def _error(origin: Origin, group: str, key_name: str | None, values: dict, message: str) -> ConfigError:
    value = values.get(key_name) if key_name else None
    return ConfigError(message, path=origin.path, line=origin.line_of(key_name), group=group,
                       key=key_name if key_name is None else printable(key_name),
                       value=None if value is None else printable(str(value)))


def structure(cls: type, values: dict, group: str, origin: Origin | None = None,
              skip_unknown: bool = False) -> tuple[Any, list[ConfigError]]:
    """Build `cls` from `values`; return (instance or None, errors).

    Unknown keys are errors with a suggestion, unless `skip_unknown` (the
    caller then hands them on, as for third-party engines).
    """
    origin = origin or Origin()
    fields = spec_keys(cls)
    errors: list[ConfigError] = []
    known = {}
    for name, value in values.items():
        if name in fields:
            known[name] = value
        elif not skip_unknown:
            errors.append(_error(origin, group, name, values, unknown_key_message(name, fields)))
    if errors:
        return None, errors
    try:
        return _converter.structure(known, cls), []
    except cattrs.ClassValidationError as exc:
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            attr = fields.get(note.name)
            if isinstance(sub, KeyError):
                errors.append(_error(origin, group, note.name, values, f"missing; this key is required: {describe(attr)}"))
            else:
                errors.append(_error(origin, group, note.name, values, str(sub) + _digits_note(values.get(note.name))))
        for sub in without:
            errors.append(_error(origin, group, None, values, str(sub)))
    return None, errors


def _digits_note(value: Any) -> str:
    """A hint for a number written in another script's digits (٣, ３), which look like numbers."""
    text = str(value)
    odd = [c for c in text if c.isdigit() and not c.isascii()]
    if not odd:
        return ""
    return f", written with the digits 0-9 (this value has U+{ord(odd[0]):04X} {unicodedata.name(odd[0], 'a digit')})"


def unknown_key_message(name: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    same_but_case = [a for a in allowed if a.lower() == name.lower()]
    close = same_but_case or difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key{hint} (allowed here: {', '.join(allowed)})"


def warnings_for(spec: Any, given: Iterable[str], group: str, origin: Origin) -> list[str]:
    """One warning per given key that is accepted but ignored (upstream's PMU keys)."""
    out = []
    fields = spec_keys(type(spec))
    for name in given:
        attr = fields.get(name)
        if attr is not None and attr.metadata.get("warn"):
            where = f"{origin.path}:{origin.line_of(name)}: " if origin.path else ""
            out.append(f"{where}[{group}] {name}: {attr.metadata['warn']}")
    return out


# --- the common specs ------------------------------------------------------------

SCANNERS = ("auto", "idle_pages", "page_idle", "damon", "refault", "smaps")   # auto and the built-in sources


@attrs.frozen
class ProjectSpec:
    """The [project] group: scan rhythm and system-wide gates."""

    name: str = key(Name(), help="project name, unique in the daemon")
    scan_type: str = key(Choice("page", "region", "psi"), "page", help="page: per-page scans (slide, cslide); region: DAMON; psi: pressure")
    loop: int = key(Int(1, 120), None, help="scan passes per round (upstream's code allows 1..120; its README says 1..10)")
    interval: int = key(Int(1, 1200), None, help="seconds between rounds")
    sleep: int = key(Int(1, 1200), None, help="seconds between the passes of a round")
    sample_interval: int = key(Int(1), None, help="region scans: DAMON sampling interval (us)")
    aggr_interval: int = key(Int(1), None, help="region scans: DAMON aggregation interval (us)")
    update_interval: int = key(Int(1), None, help="region scans: DAMON regions update interval (us)")
    min_nr_regions: int = key(Int(3), None, help="region scans: at least 3, below max_nr_regions")
    max_nr_regions: int = key(Int(4), None, help="region scans: above min_nr_regions")
    sysmem_threshold: int = key(Int(0, 100), None, help="act only while free memory is below this percent of total")
    swapcache_high_wmark: int = key(Int(1, 100), None, help="swap cache high watermark, percent of RAM")
    swapcache_low_wmark: int = key(Int(1, 100), None, help="swap cache low watermark, percent of RAM")
    scanner: str = key(SourceName(SCANNERS), "auto", help="access source (new in etmem for Python)")
    refault_budget: float = key(Percent(0.01, 100), 5.0, help="scanner=refault: percent of a target's resident "
                                "pages that may come back per minute after being sampled out (docs/scanner.md)")


def check_project(spec: ProjectSpec) -> list[tuple[str, str]]:
    """Cross-key rules of a project: (key, message) pairs."""
    problems = []
    if spec.scan_type in ("page", "psi") and spec.interval is None:
        problems.append(("interval", f"is required for scan_type={spec.scan_type}: give {Int(1, 1200).allowed}"))
    if spec.scan_type == "page":
        for name in ("loop", "sleep"):
            if getattr(spec, name) is None:
                problems.append((name, f"is required for scan_type=page: give {Int(1, 120 if name == 'loop' else 1200).allowed}"))
    if spec.scan_type == "region":
        for name in ("sample_interval", "aggr_interval", "update_interval", "min_nr_regions", "max_nr_regions"):
            if getattr(spec, name) is None:
                problems.append((name, "is required for scan_type=region"))
        if spec.min_nr_regions is not None and spec.max_nr_regions is not None and spec.min_nr_regions >= spec.max_nr_regions:
            problems.append(("max_nr_regions", f"must be greater than min_nr_regions ({spec.min_nr_regions})"))
    high, low = spec.swapcache_high_wmark, spec.swapcache_low_wmark
    if (high is None) != (low is None):
        missing = "swapcache_low_wmark" if low is None else "swapcache_high_wmark"
        problems.append((missing, "is required too: give both swapcache watermarks or neither"))
    elif high is not None and high <= low:
        problems.append(("swapcache_high_wmark", f"must be greater than swapcache_low_wmark ({low})"))
    return problems


@attrs.frozen
class EngineCommon:
    """Keys every [engine] group has."""

    name: str = key(Name(), help="engine type: slide, cslide, thirdparty or an installed plugin's engine")
    project: str = key(Name(), help="the project the engine belongs to")


@attrs.frozen
class TaskCommon:
    """Keys every [task] group has."""

    project: str = key(Name(), help="the project of the task")
    engine: str = key(Name(), help="the engine of the task (a third-party C engine's eng_name)")
    name: str = key(Name(), help="task name, unique in its engine")
    type: str = key(Choice("pid", "name"), help="how value names the target: pid or process name")
    value: str = key(Text(256), help="a pid, or a process name as in /proc/PID/comm (15 characters at most)")
    max_threads: int = key(Int(), 1, help="worker threads per task, clamped to 1..2*nproc+1")
    swap_flag: bool = key(YesNo(), False, help="yes: swap only VMAs the process marked with MADV_SWAPFLAG")
    allow_init: bool = key(YesNo(), False, help="yes: type=pid value=1 may act on init's tree, every process of the "
                           "machine but etmemd and its ancestors (refused otherwise)")


def check_task_common(spec: TaskCommon) -> list[tuple[str, str]]:
    if spec.type == "pid":
        if not re.fullmatch(r"[0-9]+", spec.value) or int(spec.value) < 1 or int(spec.value) > (1 << 22):
            return [("value", "must be a process id (a positive integer) when type=pid")]
    elif len(spec.value) > MAX_COMM or any(c in spec.value for c in "/\n"):
        return [("value", f"must be a process name of 1 to {MAX_COMM} characters as in /proc/PID/comm when type=name")]
    return []


def clamp_max_threads(value: int, nproc: int) -> tuple[int, str | None]:
    """Upstream clamps max_threads to 1..2*nproc+1 and warns; so do we."""
    top = 2 * nproc + 1
    if value < 1:
        return 1, f"max_threads={value} is below 1; using 1"
    if value > top:
        return top, f"max_threads={value} is above 2 x {nproc} CPUs + 1; using {top}"
    return value, None


# --- the key-file parser ---------------------------------------------------------------

@attrs.frozen
class Group:
    """One [group] of a file: its kind, header line and key=value lines in order.

    `repeats` lists the keys given more than once, as (key, first line, line of the value
    kept): the last value is the one in `items`, as upstream's GKeyFile keeps it.
    """

    kind: str
    line: int
    items: tuple  # ((key, value, line), ...)
    path: str | None = None
    repeats: tuple = ()

    def repeat_warnings(self) -> list[str]:
        where = f"{self.path}:" if self.path else "line "
        return [f"{where}{line}: [{self.kind}] {key}: given twice in this group (first on line {first}); "
                f"the last value is used, as upstream etmem does" for key, first, line in self.repeats]

    @property
    def values(self) -> dict:
        return {k: v for k, v, _ in self.items}

    @property
    def origin(self) -> Origin:
        return Origin(self.path, self.line, {k: n for k, _, n in self.items})


def parse_keyfile(text: str, path: str | None = None, strict: bool = False) -> list[Group]:
    """Split a key file into groups; raises ConfigError for a malformed line.

    A key given twice in a group keeps its last value, as upstream's GKeyFile does (the
    group's `repeats` say so); strict=True makes it an error instead.
    """
    groups: list[Group] = []
    errors: list[ConfigError] = []
    current: tuple[str, int] | None = None
    items: list[tuple[str, str, int]] = []
    seen: dict[str, int] = {}
    repeats: list[tuple[str, int, int]] = []

    def close():
        if current is not None:
            groups.append(Group(current[0], current[1], tuple(items), path, tuple(repeats)))

    # Only a newline ends a line, as in GKeyFile and every editor: str.splitlines() also breaks
    # at \v, \f, \x1c-\x1e, U+0085, U+2028 and U+2029, numbering lines past the file's end.
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        raw = raw.removesuffix("\r")
        bad = _NOT_TEXT.search(raw)
        if bad:
            errors.append(ConfigError(f"column {bad.start() + 1} holds {printable(bad.group())}, a control character or "
                                      "line separator: a config line is plain text, and only a newline ends it",
                                      path, number))
            continue
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                errors.append(ConfigError("a group header must look like [project], [engine] or [task]", path, number))
                continue
            kind = line[1:-1].strip()
            if kind not in GROUPS:
                close()
                current, items, seen, repeats = None, [], {}, []
                close_match = difflib.get_close_matches(kind, GROUPS, n=1)
                hint = f"; did you mean [{close_match[0]}]?" if close_match else ""
                errors.append(ConfigError(f"unknown group [{printable(kind)}]{hint} (allowed: [project], [engine], [task])",
                                          path, number))
                continue
            close()
            current, items, seen, repeats = (kind, number), [], {}, []
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            errors.append(ConfigError(f"expected key=value, got '{_clip(printable(line))}'", path, number,
                                      current[0] if current else None))
            continue
        if current is None:
            errors.append(ConfigError("key outside any group: start the file with [project], [engine] or [task]", path, number,
                                      key=printable(name)))
            continue
        if name in seen:
            if strict:
                errors.append(ConfigError(f"given twice in this group (first on line {seen[name]})", path, number,
                                          current[0], printable(name), printable(value)))
                continue
            repeats.append((name, seen[name], number))
            items = [item for item in items if item[0] != name]
        else:
            seen[name] = number
        items.append((name, value, number))
    close()
    if errors:
        raise ConfigErrors(errors)
    return groups


#: What no config line may hold: control characters (C0 but the tab, DEL, C1) and the line
#: and paragraph separators, which some tools show as line ends and others do not.
_NOT_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` safe to print on a terminal: characters that are not printable (controls,
    format characters such as U+202E) are shown escaped, as Python writes them (\\x1b, \\u202e)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


#: Trees no config file is read from: kernel and device files, which may block, never end or
#: hold secrets that an error message would echo.
KERNEL_TREES = ("/proc", "/sys", "/dev")

_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_type(st: os.stat_result) -> str:
    """What a file that is not a regular one is, for a message: a FIFO, a character device, ..."""
    return next((name for test, name in _FILE_TYPES if test(st.st_mode)), "no file")


def _not_regular(st: os.stat_result) -> str | None:
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {file_type(st)}, not a regular file: a config file must be a regular file"


def kernel_tree(real: str, st: os.stat_result) -> str | None:
    """The kernel tree `real` is in, by path or by file system (a bind mount of /proc elsewhere)."""
    for tree in KERNEL_TREES:
        if real == tree or real.startswith(tree + "/"):
            return tree
        try:   # only a tree that is its own mount has a file system to recognise it by
            if os.path.ismount(tree) and os.stat(tree).st_dev == st.st_dev:
                return tree
        except OSError:
            continue
    return None


def read_config_file(path: str, check: Callable[[str, os.stat_result], None] | None = None) -> str:
    """The text of config file `path`, read with the limits etmemd and `etmem config check` share.

    Symlinks are resolved first (as upstream's realpath), then the file is opened without
    following one and without blocking (O_NOFOLLOW, O_NONBLOCK: a FIFO or device cannot hang
    the reader). It must be a regular file outside /proc, /sys and /dev, of at most
    MAX_FILE_BYTES; `check(real_path, stat)` may refuse it further (etmemd's owner and mode
    rules) by raising, before a byte is read. Every refusal is a ConfigError naming `path`.
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ConfigError("no such file", path) from None
    except PermissionError:
        raise ConfigError("permission denied", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    tree = kernel_tree(real, st)
    if tree:
        raise ConfigError(f"is under {tree}: config files are never read from /proc, /sys or /dev "
                          f"(kernel and device files, not configuration)", path)
    problem = _not_regular(st)
    if problem:
        raise ConfigError(problem, path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except PermissionError:
        raise ConfigError("permission denied", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    try:
        opened = os.fstat(fd)   # the file read; the checks above were made on the path
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise ConfigError("was replaced while being opened; try again", path)
        if opened.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"is {opened.st_size} bytes; a config file may be at most {MAX_FILE_BYTES} bytes (10 MiB)",
                              path)
        if check is not None:
            check(real, opened)
        data = _read_at_most(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"grew past {MAX_FILE_BYTES} bytes while being read; "
                          f"a config file may be at most {MAX_FILE_BYTES} bytes (10 MiB)", path)
    return decode_config(data, path)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def decode_config(data: bytes, path: str | None = None) -> str:
    """Config bytes as text; invalid UTF-8 is a ConfigError naming the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("is not valid UTF-8 text", path, line) from None
