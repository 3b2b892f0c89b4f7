"""Project, Engine, Task and the Manager that holds them.

This is the one object model behind every face of etmem: Python programs
drive a `Manager` directly, the daemon is a thin socket shell around one, and
the CLI talks to the daemon. A project holds engines, an engine holds tasks;
started tasks run their engine's rounds on the round timer (rounds.py). Engines
see only the views of the plugin API (strategy.py), never these objects. A few engine
commands belong to every engine and are answered here before the engine sees them
(`GENERIC_COMMANDS`: `history`, each task's recent rounds as JSON lines).

The Manager's and the projects' locks guard names and dicts only, never a call into an
engine: an engine that takes long to build, start or stop (a C engine's helper process, a
20 s stop_task) holds up requests for its own objects, never `show` or other projects.
Only a task's own start/stop lock is held through its engine's start_task or stop_task.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import config, history, loader
from .config import ProjectSpec
from .errors import Cause, ConfigError, EtmemError, ObjectError, cause_of
from .loader import ConfigFile, EngineConfig, TaskConfig
from .plugins import Plugins, default_plugins
from .rounds import RoundTimer
from .stats import TaskStats
from .strategy import EngineView, TaskView

log = logging.getLogger("etmem")

#: On Manager.close (etmemd's SIGTERM) each task gets this many seconds to stop, as running
#: requests get on a daemon stop (daemon.SHUTDOWN_TIMEOUT); they stop all at once.
TASK_STOP_TIMEOUT = 5.0

#: `etmem engine CMD` commands every engine answers, read from what the rounds kept: they
#: work on a stopped project too.
GENERIC_COMMANDS = ("history",)


def _where(origin: config.Origin | None) -> str:
    if origin is None or origin.path is None:
        return ""
    return f"{origin.path}:{origin.line}: " if origin.line else f"{origin.path}: "


class Project:
    """A named scan rhythm (loop, interval, sleep) and the engines working to it.

    `Project(name="web", loop=3, interval=5, sleep=1)` validates exactly as a
    [project] group of a config file does.
    """

    def __init__(self, name: str | None = None, *, spec: ProjectSpec | None = None,
                 plugins: Plugins | None = None, **keys):
        if spec is None:
            values = {k: v for k, v in dict(keys, name=name).items() if v is not None}
            spec = loader.build_project(values)
        self.spec = spec
        self.plugins = plugins or default_plugins()
        self.engines: dict[str, Engine] = {}
        self.started = False
        self.origin: config.Origin | None = None
        self.shared: dict = {}   # what the engines of this project share (EngineView.shared)
        self.lock = threading.RLock()   # guards the project's engines, their tasks and `started`
        self._switches = 0              # how many times `started` changed: a failed start undoes only its own

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"<Project {self.name} {'started' if self.started else 'stopped'} engines={list(self.engines)}>"

    def add_engine(self, name: str, **keys) -> "Engine":
        """Make an engine of type `name` (slide, cslide, ...) in this project."""
        engine = Engine(self, name, **keys)
        try:
            self.attach_engine(engine)
        except ObjectError:
            engine.close()
            raise
        return engine

    def attach_engine(self, engine: "Engine") -> None:
        """Make an engine built for this project one of its engines."""
        with self.lock:
            if engine.name in self.engines:
                raise ObjectError(f"engine {engine.name} already exists in project {self.name}", Cause.ENGINE_EXISTS)
            self.engines[engine.name] = engine

    def remove_engine(self, name: str) -> None:
        """Stop the engine's tasks, remove them and the engine, and release what it holds."""
        with self.lock:
            engine = self.engine(name)
            del self.engines[name]
        engine.stop_tasks()
        engine.close()

    def engine(self, name: str) -> "Engine":
        try:
            return self.engines[name]
        except KeyError:
            raise ObjectError(f"project {self.name} has no engine {name} (it has: {', '.join(self.engines) or 'none'})",
                              Cause.ENGINE_MISSING) from None

    @property
    def tasks(self) -> list["Task"]:
        return [t for e in list(self.engines.values()) for t in list(e.tasks.values())]

    def start(self) -> None:
        """Start every task; on a failure the project is stopped again.

        The project counts as started from the first task on, outside the lock (a C
        start_task may take its whole call timeout): a task attached meanwhile starts by
        itself, and a `stop` meanwhile leaves the tasks not yet reached alone.
        """
        with self.lock:
            if self.started:
                raise ObjectError(f"project {self.name} is already started", Cause.PROJECT_STARTED)
            self.started = True
            self._switches += 1
            mine = self._switches
            tasks = self.tasks
        started = 0
        try:
            for task in tasks:
                started += task.start_if_project_started()
        except Exception:
            with self.lock:
                undo = self._switches == mine   # else a stop (and maybe a start) came since
                if undo:
                    self.started = False
                    self._switches += 1
                    tasks = self.tasks
            if undo:
                for task in tasks:
                    _quietly(task.stop)
            raise
        log.info("project %s started (%d tasks)", self.name, started)

    def stop(self) -> None:
        tasks = self._mark_stopped()
        if tasks is None:
            raise ObjectError(f"project {self.name} is not started", Cause.PROJECT_STOPPED)
        for task in tasks:
            task.stop()
        log.info("project %s stopped", self.name)

    def _mark_stopped(self) -> list["Task"] | None:
        """Count the project as stopped; the tasks to stop, or None if it was not started."""
        with self.lock:
            if not self.started:
                return None
            self.started = False
            self._switches += 1
            return self.tasks

    def show(self) -> dict:
        rows = []
        for number, task in enumerate(self.tasks, start=1):
            rows.append({"number": number, "type": task.type, "value": task.value, "name": task.name,
                         "engine": task.engine.name, "started": task.started, "stats": task.stats.as_dict()})
        return {"name": self.name, "started": self.started, "scan_type": self.spec.scan_type, "tasks": rows}


class Engine:
    """One configured engine of a project: a Strategy instance, its tasks and its round timers."""

    def __init__(self, project: Project, name: str | None = None, *, config: EngineConfig | None = None, **keys):
        if config is None:
            values = {k: v for k, v in dict(keys, name=name, project=project.name).items() if v is not None}
            config, _ = loader.build_engine(values, plugins=project.plugins)
        self.project = project
        self.config = config
        self.kind = config.common.name
        self.name = config.name
        self.keys = config.keys
        self.extra = config.extra
        self.tasks: dict[str, Task] = {}
        self.view = EngineView(self.name, self.kind, config.keys, config.extra, project.spec,
                               config.origin, shared=project.shared, round_finished=self._finished)
        self.strategy = config.strategy(self.view)
        self.schedule = self.strategy.schedule
        self._timer: RoundTimer | None = None   # schedule "engine": one timer for every task

    def __repr__(self) -> str:
        return f"<Engine {self.name} ({self.kind}) of {self.project.name} tasks={list(self.tasks)}>"

    def add_task(self, name: str, type: str | None = None, value: Any = None, **keys) -> "Task":
        """Make a task of this engine; it starts at once when the project is started.

        type/value name its processes (slide, cslide); engines whose tasks name their
        target otherwise leave them out (psi: `add_task("web", cg_dir="web.slice")`).
        """
        task = Task(self, name, type, value, **keys)
        self.join(task)
        self.attach_task(task)
        return task

    def join(self, task: "Task") -> None:
        """Let the strategy take the task on (it may refuse); not yet attached."""
        self.strategy.add_task(task.view)

    def attach_task(self, task: "Task") -> None:
        """Make a joined task one of this engine's tasks, and start it if the project runs."""
        try:
            self.adopt(task)
        except ObjectError:
            _quietly(self.strategy.remove_task, task.view)
            raise
        task.start_if_project_started()

    def adopt(self, task: "Task") -> None:
        """Make a joined task one of this engine's tasks, without starting it."""
        with self.project.lock:
            if task.name in self.tasks:
                raise ObjectError(f"task {task.name} already exists in engine {self.name} of project {self.project.name}",
                                  Cause.TASK_EXISTS)
            self.tasks[task.name] = task
            self.view.tasks.append(task.view)

    def remove_task(self, name: str) -> None:
        """Stop the task and take it out of the engine. Its name stays taken until the
        engine has let go of it, so a task added again under that name meets no remnant."""
        with self.project.lock:
            task = self.task(name)
            if task.leaving:
                raise ObjectError(f"task {name} of engine {self.name} of project {self.project.name} "
                                  f"is being deleted already", Cause.TASK_MISSING)
            task.leaving = True
        try:
            task.stop()
            self.strategy.remove_task(task.view)
        finally:
            with self.project.lock:
                if self.tasks.get(name) is task:
                    del self.tasks[name]
                if task.view in self.view.tasks:
                    self.view.tasks.remove(task.view)

    def stop_tasks(self) -> None:
        for task in list(self.tasks.values()):
            task.stop()

    def close(self) -> None:
        """Remove every task and release what the strategy holds (the engine is deleted)."""
        for name in list(self.tasks):
            _quietly(self.remove_task, name)
        if self._timer is not None:
            self._timer.close()
        self.strategy.close()

    def task(self, name: str) -> "Task":
        try:
            return self.tasks[name]
        except KeyError:
            raise ObjectError(f"engine {self.name} of project {self.project.name} has no task {name} "
                              f"(it has: {', '.join(self.tasks) or 'none'})", Cause.TASK_MISSING) from None

    def command(self, cmd: str, task: str | None = None) -> str:
        if cmd == "history":
            return history.dumps_jsonl(self.histories(task))
        return self.strategy.command(cmd, self.task(task).view if task else None)

    def histories(self, task: str | None = None) -> list[history.TaskHistory]:
        """The kept rounds of one task, or of every task of the engine (etmem.history)."""
        tasks = [self.task(task)] if task else list(self.tasks.values())
        return [history.TaskHistory(self.project.name, self.name, t.name, t.stats.history) for t in tasks]

    def timer_for(self, task: "Task") -> RoundTimer:
        """The round timer a task's rounds run on: the engine's own, or the task's."""
        interval = self.project.spec.interval or 1
        if self.schedule == "engine":
            if self._timer is None:
                self._timer = RoundTimer(f"{self.project.name}-{self.name}", interval,
                                         self.strategy.run_engine_round, self._finished)
            return self._timer
        if task._timer is None:
            task._timer = RoundTimer(f"{self.project.name}-{self.name}-{task.name}", interval,
                                     self.strategy.run_engine_round, self._finished)
        return task._timer

    def _finished(self, view: TaskView, stats: TaskStats) -> None:
        self.project.plugins.round_finished(view, stats)


class Task:
    """A set of target processes (a pid or a process name, and their descendants) an engine works on."""

    def __init__(self, engine: Engine, name: str | None = None, type: str | None = None, value: Any = None,
                 *, config: TaskConfig | None = None, **keys):
        if config is None:
            values = {k: v for k, v in dict(keys, name=name, type=type, value=value,
                                             project=engine.project.name, engine=engine.name).items() if v is not None}
            if "value" in values:
                values["value"] = str(values["value"])
            config, _ = loader.build_task(values, engine.strategy.__class__, engine.project.spec)
        self.engine = engine
        self.config = config
        self.name = config.name
        self.type = config.common.type
        self.value = config.common.value
        self.max_threads = config.max_threads
        self.swap_flag = config.common.swap_flag
        self.keys = config.keys
        self.extra = config.extra
        self.view = TaskView(self.name, self.type, self.value, config.keys, config.extra, self.max_threads,
                             self.swap_flag, engine.project.spec, engine.name, allow_init=config.common.allow_init)
        self._timer: RoundTimer | None = None
        self._switch = threading.Lock()   # one start or stop at a time
        self.leaving = False              # being removed (Engine.remove_task)

    def __repr__(self) -> str:
        return f"<Task {self.name} {self.type}={self.value} of {self.engine.name}>"

    @property
    def project(self) -> Project:
        return self.engine.project

    @property
    def stats(self) -> TaskStats:
        return self.view.stats

    @property
    def started(self) -> bool:
        return self.view.started

    def start(self) -> None:
        with self._switch:
            self._start()

    def start_if_project_started(self) -> bool:
        """Start, unless the project is not (or no longer) started: for a task attached
        to a project that a `project stop` may be stopping at the same time. True if the
        task runs now."""
        with self._switch:
            if self.project.started:
                self._start()
            return self.view.started

    def _start(self) -> None:
        if self.view.started:
            return
        if self.engine.schedule == "self":
            self.engine.strategy.start_task(self.view)
        else:
            self.engine.timer_for(self).add(self.view)
        self.view.started = True

    def stop(self) -> None:
        with self._switch:
            if not self.view.started:
                return
            self.view.started = False
            if self.engine.schedule == "self":
                self.engine.strategy.stop_task(self.view)
            else:
                self.engine.timer_for(self).remove(self.view)

    def run_round(self, round_fn: Callable | None = None, stop: threading.Event | None = None) -> TaskStats:
        """Run one round now, on the calling thread; errors end up in stats.last_error.

        round_fn(task_view, stop) stands in for the engine's run_round (for tests and experiments).
        """
        each = None if round_fn is None else (lambda tasks, s: {t: round_fn(t, s) for t in tasks})
        self.engine.timer_for(self).run_now([self.view], stop, each)
        return self.stats


class Manager:
    """Holds projects: add (from files or Python objects), delete, start, stop, show.

    Thread-safe: the daemon calls it from a thread per client connection. The lock
    guards `projects` and the names an add in progress has taken (`_reserved`); it is
    never held while an engine is built, started or stopped.
    """

    def __init__(self, plugins: Plugins | None = None):
        self.plugins = plugins or default_plugins()
        self.projects: dict[str, Project] = {}
        self._lock = threading.RLock()
        self._reserved: set[tuple] = set()   # ("project", p), ("engine", p, e), ("task", p, e, t)

    def project(self, name: str) -> Project:
        with self._lock:
            try:
                return self.projects[name]
            except KeyError:
                known = ", ".join(self.projects) or "none"
                raise ObjectError(f"project {name} does not exist (projects: {known})", Cause.PROJECT_MISSING) from None

    # -- adding ---------------------------------------------------------------
    def add(self, project: Project) -> None:
        """Add a project built in Python (with its engines and tasks)."""
        with self._lock:
            if project.name in self.projects or ("project", project.name) in self._reserved:
                raise ObjectError(f"project {project.name} already exists", Cause.PROJECT_EXISTS)
            self.projects[project.name] = project

    def add_file(self, path: str) -> list[str]:
        """Add everything a config file declares, all or nothing; returns what was added."""
        cfg = loader.load_config(path, self.plugins, find_project=self._find_project_spec, find_engine=self._find_engine_type)
        return self.add_config(cfg)

    def add_text(self, text: str, path: str | None = None) -> list[str]:
        cfg = loader.load_text(text, path, self.plugins, find_project=self._find_project_spec, find_engine=self._find_engine_type)
        return self.add_config(cfg)

    def _find_project_spec(self, name: str) -> ProjectSpec | None:
        with self._lock:
            project = self.projects.get(name)
            return project.spec if project else None

    def _find_engine_type(self, project: str, engine: str) -> type | None:
        with self._lock:
            p = self.projects.get(project)
            e = p.engines.get(engine) if p else None
            return type(e.strategy) if e else None

    def add_config(self, cfg: ConfigFile) -> list[str]:
        """Add what a loaded config file declares, all or nothing; returns what was added.

        Its names are checked and taken under the lock; its engines and tasks are made (a
        C engine: its helper process, fill_eng_params, fill_task_params) outside it, then
        attached under it once their parents are known to be still there, and started
        outside it again.
        """
        for text in cfg.warnings:
            log.warning("%s", text)
        with self._lock:
            plan = self._plan(cfg, self._reserved)
            self._reserved |= plan.names
        try:
            new_projects, new_engines, new_tasks = self._build(cfg, plan)
            try:
                with self._lock:
                    self._attach(cfg, plan, new_projects, new_engines, new_tasks)
            except Exception:
                _discard(new_engines, new_tasks)
                raise
        finally:
            with self._lock:
                self._reserved -= plan.names
        for task in new_tasks:
            try:
                task.start_if_project_started()
            except EtmemError as exc:
                task.stats.last_error = str(exc)
                log.error("task %s could not start: %s", task.name, exc)
        added = [f"project {p}" for p in new_projects] + [f"engine {e.name}" for e in new_engines] + [f"task {t.name}" for t in new_tasks]
        log.info("added %s", ", ".join(added) or "nothing")
        return added

    def _plan(self, cfg: ConfigFile, reserved: set[tuple]) -> "_Plan":
        """Check every name of the file against what exists and what other adds in
        progress have taken (`reserved`); the plan names the existing projects and
        engines the file adds to. Called under the lock."""
        plan = _Plan()
        for spec, origin in zip(cfg.projects, cfg.project_origins):
            name = ("project", spec.name)
            if spec.name in self.projects or name in plan.names or name in reserved:
                raise ObjectError(f"{_where(origin)}[project] project {spec.name} already exists"
                                  f"{_BEING_ADDED if name in reserved else ''}", Cause.PROJECT_EXISTS)
            plan.names.add(name)
        for ec in cfg.engines:
            project = self.projects.get(ec.project)
            if project is None and ("project", ec.project) not in plan.names:
                raise ObjectError(f"{_where(ec.origin)}[engine] project {ec.project} does not exist: "
                                  f"add a [project] group with name={ec.project} first", Cause.PROJECT_MISSING)
            name = ("engine", ec.project, ec.name)
            if (project is not None and ec.name in project.engines) or name in plan.names or name in reserved:
                raise ObjectError(f"{_where(ec.origin)}[engine] engine {ec.name} already exists in project {ec.project}"
                                  f"{_BEING_ADDED if name in reserved else ''}", Cause.ENGINE_EXISTS)
            plan.names.add(name)
            if project is not None:
                plan.projects.setdefault(ec.project, (project, f"{_where(ec.origin)}[engine] "))
        for tc in cfg.tasks:
            engine = None
            if ("engine", tc.project, tc.engine) not in plan.names:
                project = self.projects.get(tc.project)
                if project is None and ("project", tc.project) not in plan.names:
                    raise ObjectError(f"{_where(tc.origin)}[task] project {tc.project} does not exist",
                                      Cause.PROJECT_MISSING)
                engine = project.engines.get(tc.engine) if project is not None else None
                if engine is None:
                    raise ObjectError(f"{_where(tc.origin)}[task] engine {tc.engine} does not exist in project {tc.project}: "
                                      f"add an [engine] group for it first", Cause.ENGINE_MISSING)
                plan.engines.setdefault((tc.project, tc.engine), (engine, f"{_where(tc.origin)}[task] "))
            name = ("task", tc.project, tc.engine, tc.name)
            if (engine is not None and tc.name in engine.tasks) or name in plan.names or name in reserved:
                raise ObjectError(f"{_where(tc.origin)}[task] task {tc.name} already exists in engine {tc.engine} of project {tc.project}"
                                  f"{_BEING_ADDED if name in reserved else ''}", Cause.TASK_EXISTS)
            plan.names.add(name)
        return plan

    def _build(self, cfg: ConfigFile, plan: "_Plan") -> tuple[dict[str, Project], list[Engine], list[Task]]:
        """Make the file's projects, engines and tasks (the engines take their tasks on),
        attached to nothing yet; on a failure what was made is released again."""
        new_projects = {spec.name: Project(spec=spec, plugins=self.plugins) for spec in cfg.projects}
        new_engines: list[Engine] = []
        new_tasks: list[Task] = []
        try:
            engines_by_id: dict[tuple, Engine] = {}
            for ec in cfg.engines:
                project = new_projects.get(ec.project) or plan.projects[ec.project][0]
                engine = Engine(project, config=ec)
                new_engines.append(engine)
                engines_by_id[(ec.project, ec.name)] = engine
            for tc in cfg.tasks:
                engine = engines_by_id.get((tc.project, tc.engine)) or plan.engines[(tc.project, tc.engine)][0]
                task = Task(engine, config=tc)
                try:
                    engine.join(task)
                except ConfigError as exc:   # the strategy refused the task: say where it is in the file
                    if exc.path is None and tc.origin is not None:
                        exc.path, exc.line = tc.origin.path, tc.origin.line_of(exc.key)
                    raise
                new_tasks.append(task)
        except Exception:
            _discard(new_engines, new_tasks)
            raise
        return new_projects, new_engines, new_tasks

    def _attach(self, cfg: ConfigFile, plan: "_Plan", new_projects: dict[str, Project],
                new_engines: list[Engine], new_tasks: list[Task]) -> None:
        """Attach what _build made, if the projects and engines it goes into are still
        there (an obj del may have taken them meanwhile). Called under the lock. The
        locks of the existing projects it adds to are held too, so nothing the Python
        API adds to them (Project.add_engine, Engine.add_task) comes between the check
        and the attaching, and no attaching fails half way."""
        for name, (project, where) in plan.projects.items():
            if self.projects.get(name) is not project:
                raise ObjectError(f"{where}project {name} was deleted while this file was being added; "
                                  f"nothing of the file was added", Cause.PROJECT_MISSING)
        for (project_name, engine_name), (engine, where) in plan.engines.items():
            if self.projects.get(project_name) is not engine.project or engine.project.engines.get(engine_name) is not engine:
                raise ObjectError(f"{where}engine {engine_name} of project {project_name} was deleted while this "
                                  f"file was being added; nothing of the file was added", Cause.ENGINE_MISSING)
        existing = {id(p): p for p, _ in plan.projects.values()}
        existing.update((id(e.project), e.project) for e, _ in plan.engines.values())
        with contextlib.ExitStack() as held:
            for project in existing.values():   # only this thread, holding the Manager lock, takes several
                held.enter_context(project.lock)
            self._plan(cfg, self._reserved - plan.names)   # a name taken meanwhile through the Python API
            for engine in new_engines:
                engine.project.attach_engine(engine)
            for task in new_tasks:
                task.engine.adopt(task)
            self.projects.update(new_projects)

    # -- deleting -----------------------------------------------------------------
    def delete_file(self, path: str) -> list[str]:
        """Delete the tasks, engines and projects a config file names, in that order.

        Only the identifying keys are read. Goes on past a missing object and
        reports every failure at the end, as upstream does.
        """
        return self.delete_text(config.read_config_file(path), path)

    def delete_text(self, text: str, path: str | None = None) -> list[str]:
        groups = config.parse_keyfile(text, path)
        if not groups:
            raise ConfigError(config.NO_GROUPS, path)
        return self.delete_groups(groups)

    def delete_groups(self, groups: Iterable[config.Group]) -> list[str]:
        groups = list(groups)
        deleted, failures, cause = [], [], Cause.INVALID
        for kind in ("task", "engine", "project"):
            for group in (g for g in groups if g.kind == kind):
                v = group.values
                try:
                    if kind == "task":
                        self.delete_task(_need(group, "project"), _need(group, "engine"), _need(group, "name"))
                        deleted.append(f"task {v['name']}")
                    elif kind == "engine":
                        name = _need(group, "name")
                        kind_of = self.plugins.engine_type(name)
                        instance_key = kind_of.instance_key if kind_of is not None else None
                        if instance_key and v.get(instance_key):   # thirdparty's (or damon's) eng_name
                            name = v[instance_key]
                        self.delete_engine(_need(group, "project"), name)
                        deleted.append(f"engine {name}")
                    else:
                        self.delete_project(_need(group, "name"))
                        deleted.append(f"project {v['name']}")
                except EtmemError as exc:
                    failures.append(f"{group.path}:{group.line}: {exc}" if group.path and not isinstance(exc, ConfigError) else str(exc))
                    cause = cause_of(exc)   # as upstream, the request fails with the last failure's cause
        if failures:
            raise ObjectError("\n".join(failures), cause)
        return deleted

    def delete_task(self, project: str, engine: str, name: str) -> None:
        self.project(project).engine(engine).remove_task(name)

    def delete_engine(self, project: str, name: str) -> None:
        self.project(project).remove_engine(name)

    def delete_project(self, name: str) -> None:
        with self._lock:
            proj = self.project(name)
            del self.projects[name]
        if proj.started:
            _quietly(proj.stop)
        for engine_name in list(proj.engines):
            _quietly(proj.remove_engine, engine_name)

    # -- running ----------------------------------------------------------------------
    def start(self, name: str) -> None:
        self.project(name).start()

    def stop(self, name: str) -> None:
        self.project(name).stop()

    def show(self, name: str | None = None) -> list[dict]:
        with self._lock:
            projects = [self.project(name)] if name else list(self.projects.values())
        return [p.show() for p in projects]

    def engine_command(self, project: str, engine: str, cmd: str, task: str | None = None) -> str:
        proj = self.project(project)
        if not proj.started and cmd not in GENERIC_COMMANDS:
            raise ObjectError(f"project {project} is not started: engine commands need a started project "
                              f"(etmem project start -n {project})", Cause.INVALID)
        return proj.engine(engine).command(cmd, task)

    def close(self, timeout: float = TASK_STOP_TIMEOUT) -> list[str]:
        """Stop every started project (the daemon's SIGTERM path) within about `timeout` s.

        Every task stops on a thread of its own, all at once, and gets `timeout` s: one
        whose round or stop_task does not end by then (an engine that ignores its stop
        event) is logged and left behind. Returns those, as 'project/engine/task'.
        """
        with self._lock:
            projects = list(self.projects.values())
        stopping = [(proj, proj._mark_stopped()) for proj in projects]
        stoppers = []
        for proj, tasks in stopping:
            for task in tasks or ():
                thread = threading.Thread(target=_quietly, args=(task.stop,), daemon=True,
                                          name=f"etmem-stop-{proj.name}-{task.engine.name}-{task.name}")
                thread.start()
                stoppers.append((task, thread))
        deadline = time.monotonic() + timeout
        late = []
        for task, thread in stoppers:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                late.append(f"{task.project.name}/{task.engine.name}/{task.name}")
                log.error("task %s of engine %s of project %s did not stop within %g s; not waiting for it",
                          task.name, task.engine.name, task.project.name, timeout)
        for proj, tasks in stopping:
            if tasks is not None:
                log.info("project %s stopped", proj.name)
        return late


#: Added to an 'already exists' error when the name is taken by another add in progress.
_BEING_ADDED = " (another obj add is adding it)"


@dataclass
class _Plan:
    """What Manager._plan found: the names a file takes, and the existing projects and
    engines it adds to, each with the 'file:line: [group] ' of the first group naming it."""

    names: set[tuple] = field(default_factory=set)
    projects: dict[str, tuple[Project, str]] = field(default_factory=dict)
    engines: dict[tuple[str, str], tuple[Engine, str]] = field(default_factory=dict)


def _discard(engines: list[Engine], tasks: list[Task]) -> None:
    """Release what an add made and did not attach: the tasks the engines took on, the
    new engines."""
    for task in tasks:
        _quietly(task.engine.strategy.remove_task, task.view)
    for engine in engines:
        _quietly(engine.close)


def _need(group: config.Group, key_name: str) -> str:
    value = group.values.get(key_name)
    if not value:
        raise ConfigError("missing; needed to find the object to delete", group.path, group.line, group.kind, key_name)
    return value


def _quietly(fn: Callable, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.warning("while cleaning up: %s", exc)
