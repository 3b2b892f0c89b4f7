"""Validated specs from config groups or Python keyword arguments.

The parser (config.py) knows the file format; this room knows which engine
declares which keys (through the plugin manager) and the rules that span
groups: a task's engine and project, slide's T against its project's loop.
The same functions serve files and `etmem.Project(...)` calls, so both get the
same checks and messages.
"""
from __future__ import annotations

import logging
import os
from importlib import metadata
from typing import Any, Callable

import attrs

from . import config
from .errors import Cause
from .config import (ConfigError, ConfigErrors, EngineCommon, Group, Origin, ProjectSpec,
                     TaskCommon, check_project, check_task_common, clamp_max_threads, spec_keys)
from .plugins import ENTRY_POINT_GROUP, Plugins, default_plugins
from .scan import registry as scan_registry
from .strategy import Strategy

log = logging.getLogger("etmem.config")

UPSTREAM_ONLY_ENGINES = {
    "memdcd": "upstream's memdcd engine is not part of etmem for Python",
}


@attrs.frozen
class EngineConfig:
    """A validated [engine] group."""

    common: EngineCommon
    strategy: type
    keys: Any
    extra: dict
    origin: Origin

    @property
    def project(self) -> str:
        return self.common.project

    @property
    def name(self) -> str:
        """The engine's identity in its project: its type, or its instance_key (eng_name)."""
        if self.strategy.instance_key:
            return getattr(self.keys, self.strategy.instance_key)
        return self.common.name


@attrs.frozen
class TaskConfig:
    """A validated [task] group."""

    common: TaskCommon
    strategy: type
    keys: Any
    extra: dict
    origin: Origin
    max_threads: int

    @property
    def project(self) -> str:
        return self.common.project

    @property
    def engine(self) -> str:
        return self.common.engine

    @property
    def name(self) -> str:
        return self.common.name


@attrs.frozen
class ConfigFile:
    """Everything one config file declares, validated, in file order; `project_origins`
    says where each project's group is."""

    path: str | None
    projects: tuple
    engines: tuple
    tasks: tuple
    warnings: tuple
    project_origins: tuple = ()

    def summary(self) -> str:
        return f"{len(self.projects)} project(s), {len(self.engines)} engine(s), {len(self.tasks)} task(s)"


@attrs.frozen
class OwnTargetsTaskCommon:
    """The keys every task of an engine that names its targets itself has (psi: cgroups, not processes).

    Such an engine declares `type` and `value` in its own task spec (optional there);
    there is no swap_flag, and one thread.
    """

    project: str = config.key(config.Name(), help="the project of the task")
    engine: str = config.key(config.Name(), help="the engine of the task")
    name: str = config.key(config.Name(), help="task name, unique in its engine")
    type = None
    value = None
    max_threads = 1
    swap_flag = False
    allow_init = False


def task_common_spec(strategy: type[Strategy] | None) -> type:
    """The common [task] keys for an engine: TaskCommon, or OwnTargetsTaskCommon when its spec has type and value."""
    own = spec_keys(strategy.task_keys) if strategy else {}
    return OwnTargetsTaskCommon if "type" in own and "value" in own else TaskCommon


@attrs.frozen
class _Empty:
    """Spec with no keys: stands in for an engine type that could not be found."""


# Callbacks a Manager passes so a file may refer to objects added before.
ProjectLookup = Callable[[str], "ProjectSpec | None"]
EngineLookup = Callable[[str, str], "type | None"]


def _raise(errors: list[ConfigError]) -> None:
    if errors:
        raise ConfigErrors(errors)


def build_project(values: dict, origin: Origin | None = None, plugins: Plugins | None = None) -> ProjectSpec:
    """Validate one [project] group; plugins: the loaded plugins (None: the default ones, if needed)."""
    origin = origin or Origin()
    spec, errors = config.structure(ProjectSpec, values, "project", origin)
    if spec is not None:
        problems = check_project(spec)
        unknown = scanner_problem(spec.scanner, plugins)
        if unknown:
            problems.append(("scanner", unknown))
        errors = [config._error(origin, "project", k, values, m) for k, m in problems]
    _raise(errors)
    return spec


def scanner_problem(name: str, plugins: Plugins | None = None) -> str | None:
    """Why `scanner=name` names no access source, or None; the scanner registry says which exist.

    A plugin's source is registered when its plugins load: without `plugins`, a name not
    registered yet loads the default plugins before it counts as unknown.
    """
    if name == "auto" or name in scan_registry.names():
        return None
    if plugins is None:
        default_plugins()
        if name in scan_registry.names():
            return None
    return f"must be {config.Choice('auto', *scan_registry.names()).allowed}"


def unknown_keys(names, allowed, group: str, values: dict, origin: Origin,
                 strict: bool) -> tuple[list[ConfigError], list[str]]:
    """Keys no spec declares, with the nearest known key: errors when strict, else warnings
    (the keys are then ignored, as upstream's etmemd ignores keys it does not read)."""
    found = [config._error(origin, group, k, values, config.unknown_key_message(k, allowed)) for k in names]
    if strict:
        return found, []
    return [], [f"{e}; ignored, as upstream etmem ignores keys it does not know" for e in found]


def _split(values: dict, *specs: type) -> tuple[list[dict], dict]:
    """Distribute values over spec classes by their keys; the rest is left over."""
    parts = []
    rest = dict(values)
    for spec in specs:
        names = spec_keys(spec)
        parts.append({k: v for k, v in values.items() if k in names})
        for k in names:
            rest.pop(k, None)
    return parts, rest


def engine_project_problem(engine_type: str, project: ProjectSpec) -> str | None:
    """Which engines a project's scan_type takes: a region project only damon engines, damon only region projects."""
    if project.scan_type == "region" and engine_type != "damon":
        return (f"a region project (scan_type=region) has only damon engines; project {project.name} "
                f"cannot take a {engine_type} engine")
    if engine_type == "damon" and project.scan_type != "region":
        return (f"the damon engine needs a project with scan_type=region "
                f"(project {project.name} has scan_type={project.scan_type})")
    return None


def strategy_for(name: str, plugins: Plugins) -> type[Strategy]:
    strategy = plugins.engine_type(name)
    if strategy is None:
        note = UPSTREAM_ONLY_ENGINES.get(name)
        late = _installed_since_loading(plugins)
        if late:
            note = (f"plugin {', '.join(late)} was installed after this process started; restart etmemd "
                    f"to load newly installed plugins")
        restart = "" if late or name in UPSTREAM_ONLY_ENGINES else "; restart etmemd after installing a plugin"
        raise ValueError(f"engine '{name}' is not installed{'; ' + note if note else ''} "
                         f"(installed engines: {plugins.installed()}{restart})")
    return strategy


def _installed_since_loading(plugins: Plugins) -> list[str]:
    """The `etmem` entry points installed since the process-wide plugins were loaded (a pip
    install while etmemd runs), as `NAME (DIST VERSION)`; ETMEM_LOAD_PLUGINS is honoured.
    Plugins of a program's own making (loaded without entry points) are not asked about."""
    if plugins is not default_plugins():
        return []
    allow = os.environ.get("ETMEM_LOAD_PLUGINS")
    allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
    loaded = {info.name for info in plugins.infos}
    return list(dict.fromkeys(f"{ep.name} ({ep.dist.name} {ep.dist.version})" if ep.dist else ep.name
                              for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
                              if ep.name not in loaded and (allowed is None or ep.name in allowed)))


def build_engine(values: dict, origin: Origin | None = None, plugins: Plugins | None = None,
                 strict: bool = True) -> tuple[EngineConfig, list[str]]:
    """Validate one [engine] group; returns the config and its warnings. strict=False: a key
    the engine does not know is a warning, not an error."""
    origin = origin or Origin()
    plugins = plugins or default_plugins()
    errors: list[ConfigError] = []
    try:
        strategy = strategy_for(str(values.get("name", "")).strip(), plugins) if "name" in values else None
    except ValueError as exc:
        raise ConfigErrors([config._error(origin, "engine", "name", values, str(exc))]) from None
    (common_values, own_values), extra = _split(values, EngineCommon, strategy.engine_keys if strategy else _Empty)
    notes: list[str] = []
    if extra and not (strategy and strategy.pass_unknown_keys):
        allowed = list(spec_keys(EngineCommon)) + list(spec_keys(strategy.engine_keys if strategy else _Empty))
        errs, notes = unknown_keys(extra, allowed, "engine", values, origin, strict)
        errors += errs
        extra = {}
    common, errs = config.structure(EngineCommon, common_values, "engine", origin)
    errors += errs
    keys = None
    if strategy is not None:
        keys, errs = config.structure(strategy.engine_keys, own_values, "engine", origin)
        errors += errs
        if keys is not None:
            errors += [config._error(origin, "engine", k, values, m) for k, m in strategy.check_engine(keys, extra)]
    _raise(errors)
    warnings = notes + config.warnings_for(keys, own_values, "engine", origin)
    return EngineConfig(common, strategy, keys, extra, origin), warnings


def build_task(values: dict, strategy: type[Strategy] | None, project: ProjectSpec | None,
               origin: Origin | None = None, nproc: int | None = None,
               strict: bool = True) -> tuple[TaskConfig, list[str]]:
    """Validate one [task] group for an engine of type `strategy` (None: engine unknown).
    strict=False: a key the engine does not know is a warning, not an error."""
    origin = origin or Origin()
    errors: list[ConfigError] = []
    own_cls = strategy.task_keys if strategy else _Empty
    common_cls = task_common_spec(strategy)
    (common_values, own_values), extra = _split(values, common_cls, own_cls)
    notes: list[str] = []
    if strategy is not None and "dry_run" in extra:
        # never ignored nor handed to the engine: one that cannot only observe would act
        errors.append(config._error(origin, "task", "dry_run", values,
                                    f"engine {strategy.name} has no dry run: its tasks act on their targets; "
                                    "remove the key (slide, cslide, psi and damon tasks can observe only)"))
        extra = {k: v for k, v in extra.items() if k != "dry_run"}
    if extra and not (strategy and strategy.pass_unknown_keys):
        allowed = list(spec_keys(common_cls)) + list(spec_keys(own_cls))
        errs, notes = unknown_keys(extra, allowed, "task", values, origin, strict)
        errors += errs
        extra = {}
    common, errs = config.structure(common_cls, common_values, "task", origin)
    errors += errs
    if common is not None and common_cls is TaskCommon:
        errors += [config._error(origin, "task", k, values, m) for k, m in check_task_common(common)]
    keys = None
    if strategy is not None:
        keys, errs = config.structure(own_cls, own_values, "task", origin)
        errors += errs
        if keys is not None:
            errors += [config._error(origin, "task", k, values, m) for k, m in strategy.check_task(keys, extra, project)]
    _raise(errors)
    warnings = notes + (config.warnings_for(keys, own_values, "task", origin) if keys is not None else [])
    max_threads, note = clamp_max_threads(common.max_threads, nproc or os.cpu_count() or 1)
    if note:
        where = f"{origin.path}:{origin.line_of('max_threads')}: " if origin.path else ""
        warnings.append(f"{where}[task] {note}")
    return TaskConfig(common, strategy, keys, extra, origin, max_threads), warnings


def load_groups(groups: list[Group], path: str | None = None, plugins: Plugins | None = None,
                find_project: ProjectLookup | None = None, find_engine: EngineLookup | None = None,
                strict: bool = False) -> ConfigFile:
    """Validate every group of a file; all problems are raised together as ConfigErrors.

    A task's engine is looked up among the file's engines first, then through
    `find_engine(project, name)` (objects added before), then as an engine
    type of the same name. As upstream's etmemd, a key no engine knows and a key given
    twice (the last value kept) are warnings; strict=True makes unknown keys errors (the
    parser's strict makes repeats errors). A file with no group is an error.
    """
    if not groups:
        raise ConfigError(config.NO_GROUPS, path)
    plugins = plugins or default_plugins()
    errors: list[ConfigError] = []
    warnings: list[str] = [w for g in groups for w in g.repeat_warnings()]
    projects, engines, tasks, project_origins = [], [], [], []
    known_project_keys = spec_keys(ProjectSpec)
    for group in (g for g in groups if g.kind == "project"):
        values = group.values
        if not strict:
            unknown = [k for k in values if k not in known_project_keys]
            warnings += unknown_keys(unknown, known_project_keys, "project", values, group.origin, False)[1]
            values = {k: v for k, v in values.items() if k not in unknown}
        try:
            projects.append(build_project(values, group.origin, plugins))
            project_origins.append(group.origin)
        except ConfigErrors as exc:
            errors += exc.errors
    for group in (g for g in groups if g.kind == "engine"):
        try:
            engine, notes = build_engine(group.values, group.origin, plugins, strict)
            engines.append(engine)
            warnings += notes
        except ConfigErrors as exc:
            errors += exc.errors
    project_specs = {p.name: p for p in projects}
    for engine in engines:
        project = project_specs.get(engine.project) or (find_project(engine.project) if find_project else None)
        problem = engine_project_problem(engine.common.name, project) if project else None
        if problem:
            errors.append(config._error(engine.origin, "engine", "name", {"name": engine.common.name}, problem))
    engine_types = {(e.project, e.name): e.strategy for e in engines}
    for group in (g for g in groups if g.kind == "task"):
        values = group.values
        proj_name, eng_name = str(values.get("project", "")).strip(), str(values.get("engine", "")).strip()
        project = project_specs.get(proj_name) or (find_project(proj_name) if find_project else None)
        strategy = engine_types.get((proj_name, eng_name)) or (find_engine(proj_name, eng_name) if find_engine else None)
        if strategy is None and "engine" in values:
            strategy = plugins.engine_type(eng_name)
            if strategy is not None and strategy.instance_key:
                strategy = None  # 'thirdparty' is not an engine name a task can use
            if strategy is None:
                error = config._error(group.origin, "task", "engine", values,
                                      f"no engine '{eng_name}' in project '{proj_name}' (neither in this file nor added before); "
                                      f"installed engine types: {plugins.installed()}")
                error.cause = Cause.ENGINE_MISSING if project is not None else Cause.PROJECT_MISSING
                errors.append(error)
                continue
        try:
            task, notes = build_task(values, strategy, project, group.origin, strict=strict)
            tasks.append(task)
            warnings += notes
        except ConfigErrors as exc:
            errors += exc.errors
    errors.sort(key=lambda e: (e.line or 0))
    _raise(errors)
    return ConfigFile(path, tuple(projects), tuple(engines), tuple(tasks), tuple(warnings), tuple(project_origins))


def load_config(path: str, plugins: Plugins | None = None, strict: bool = False, **lookups) -> ConfigFile:
    """Read and validate a config file; raises ConfigError (ConfigErrors for several).
    strict=True: unknown and repeated keys are errors, not warnings."""
    text = config.read_config_file(path)
    return load_groups(config.parse_keyfile(text, path, strict), path, plugins, strict=strict, **lookups)


def load_text(text: str, path: str | None = None, plugins: Plugins | None = None, strict: bool = False,
              **lookups) -> ConfigFile:
    return load_groups(config.parse_keyfile(text, path, strict), path, plugins, strict=strict, **lookups)
