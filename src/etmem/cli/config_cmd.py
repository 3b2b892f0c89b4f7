"""`etmem config check FILE...` and `etmem config keys [ENGINE]`: offline config work.

Upstream has no offline check; this one validates files exactly as `etmemd`
would on `obj add`, without a daemon, and lists every key an engine accepts. As etmemd,
it warns of unknown and repeated keys (`--strict` refuses them), and it warns of what it
cannot know offline: a project the file's engines and tasks name but do not define must
already exist in etmemd.
"""
from __future__ import annotations

import argparse
import json
import sys

import attrs

from .. import config, loader, units
from ..errors import ConfigError, ConfigErrors
from ..plugins import default_plugins


def set_argparser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="{check,keys}", required=True)
    check = sub.add_parser("check", help="validate config files without a daemon",
                           description="Validate etmem config files as etmemd would on 'obj add'. "
                                       "Exit 0 when every file is valid, 1 otherwise.")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--strict", action="store_true",
                       help="refuse keys an engine does not know and keys given twice in a group "
                            "(etmemd, as upstream, warns and ignores them or keeps the last value)")
    check.add_argument("-o", "--output", choices=("text", "json"), default="text",
                       help="json: one JSON list on stdout, an object per file (ok, what it declares, "
                            "warnings, errors with file, line, group, key and value)")
    keys = sub.add_parser("keys", help="list the keys of the project group and of each engine",
                          description="List every key etmem accepts, with what each allows.")
    keys.add_argument("engine", nargs="?", help="only this engine type (slide, cslide, thirdparty, ...)")


def main(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        return (check_json if args.output == "json" else check)(args.files, args.strict)
    return show_keys(args.engine)


def offline_warnings(cfg: loader.ConfigFile) -> list[str]:
    """The file's warnings, and one per engine or task whose project the file does not
    define: offline there is no telling whether etmemd has it."""
    defined = {p.name for p in cfg.projects}
    out = list(cfg.warnings)
    for kind, objects in (("engine", cfg.engines), ("task", cfg.tasks)):
        for obj in objects:
            if obj.project not in defined:
                where = f"{obj.origin.path}:{obj.origin.line}: " if obj.origin.path else ""
                out.append(f"{where}[{kind}] project={obj.project} is not defined in this file: it must "
                           f"already exist in etmemd when the file is added")
    return out


def check(paths: list[str], strict: bool = False) -> int:
    failed = 0
    for path in paths:
        try:
            cfg = loader.load_config(path, strict=strict)
        except ConfigError as exc:
            failed += 1
            print(str(exc), file=sys.stderr)
            continue
        for warning in offline_warnings(cfg):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{path}: ok: {cfg.summary()}")
    return 1 if failed else 0


def _error(e: ConfigError) -> dict:
    return {"file": e.path, "line": e.line, "group": e.group, "key": e.key, "value": e.value,
            "message": e.message, "text": ConfigError.__str__(e)}


def check_json(paths: list[str], strict: bool = False) -> int:
    results = []
    for path in paths:
        try:
            cfg = loader.load_config(path, strict=strict)
        except ConfigError as exc:
            results.append({"file": path, "ok": False, "errors": [_error(e) for e in (exc.errors if isinstance(exc, ConfigErrors) else [exc])]})
            continue
        results.append({"file": path, "ok": True,
                        "projects": [p.name for p in cfg.projects],
                        "engines": [{"project": e.project, "name": e.name} for e in cfg.engines],
                        "tasks": [{"project": t.project, "engine": t.engine, "name": t.name} for t in cfg.tasks],
                        "warnings": offline_warnings(cfg), "errors": []})
    print(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


def _rows(group: str, cls: type) -> list[str]:
    rows = []
    for attr in attrs.fields(cls):
        required = attr.default is attrs.NOTHING
        default = "" if required or attr.default is None else f" (default {_show(attr.default, attr)})"
        rows.append(f"  {attr.name:<22} {'required' if required else 'optional'}  {config.describe(attr)}{default}"
                    f"\n  {'':<22} {attr.metadata.get('warn') or attr.metadata.get('help', '')}")
    return [f"[{group}]"] + (rows or ["  (no keys of its own)"])


def _show(value, attr: attrs.Attribute) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(attr.metadata.get("etmem"), config.Size):
        return units.format_size(value)
    return str(value)


def show_keys(engine: str | None) -> int:
    plugins = default_plugins()
    lines: list[str] = []
    if engine is None:
        lines += _rows("project", config.ProjectSpec) + [""]
        lines += _rows("engine (every engine)", config.EngineCommon) + [""]
        lines += _rows("task (every task)", config.TaskCommon) + [""]
    names = [engine] if engine else sorted(plugins.engines)
    for name in names:
        strategy = plugins.engine_type(name)
        if strategy is None:
            print(f"etmem: engine '{name}' is not installed (installed engines: {plugins.installed()})", file=sys.stderr)
            return 1
        passthrough = "; other keys are handed to the engine" if strategy.pass_unknown_keys else ""
        lines += _rows(f"engine name={name}{passthrough}", strategy.engine_keys) + [""]
        lines += _rows(f"task of a {name} engine{passthrough}", strategy.task_keys) + [""]
    print("\n".join(lines).rstrip())
    return 0
