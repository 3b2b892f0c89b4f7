"""The project's error types: every failure a user can cause or meet is one of these.

Their message is meant to be shown as it is, with no traceback.
"""
from __future__ import annotations

import enum
import errno


class EtmemError(Exception):
    """Base of every error etmem reports to a person."""


class ConfigError(EtmemError):
    """A bad config value or file. `path`, `line`, `group` and `key` say where; `cause`, when
    set, the Cause a request fails with (else INVALID): a task naming an engine that is not
    there is ENGINE_MISSING, as upstream's."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 group: str | None = None, key: str | None = None, value: str | None = None,
                 cause: "Cause | None" = None):
        self.message = message
        self.path = path
        self.line = line
        self.group = group
        self.key = key
        self.value = value
        self.cause = cause
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path:
            where = f"{self.path}:{self.line}: " if self.line else f"{self.path}: "
        elif self.line:
            where = f"line {self.line}: "
        what = ""
        if self.group:
            what = f"[{self.group}] "
        if self.key:
            what += f"{self.key}={self.value}: " if self.value is not None else f"{self.key}: "
        return f"{where}{what}{self.message}"


class ConfigErrors(ConfigError):
    """Several config problems at once; the attributes are those of the first."""

    def __init__(self, errors: list[ConfigError]):
        first = errors[0]
        self.errors = list(errors)
        super().__init__(first.message, first.path, first.line, first.group, first.key, first.value, first.cause)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)


class Cause(enum.Enum):
    """Why a request failed, in the classes of upstream's etmemd: each value is the fixed
    text (after `error: `) that it answers with and scripts look for."""

    INVALID = "invalid parameters"
    PROJECT_EXISTS = "project has been existed"
    PROJECT_MISSING = "project is not exist"
    PROJECT_STARTED = "project has been started"
    PROJECT_STOPPED = "project has been stopped"
    ENGINE_EXISTS = "engine has been existed"
    ENGINE_MISSING = "engine is not exist"
    TASK_EXISTS = "task has been existed"
    TASK_MISSING = "task is not exist"
    INTERNAL = "etmemd has internal error, see reason details in messages"


class ObjectError(EtmemError):
    """A project, engine or task that is missing, duplicated or in the wrong state.

    `cause` says which (a `Cause`); an engine's own command errors are INVALID, as upstream's.
    """

    def __init__(self, message: str, cause: Cause = Cause.INVALID):
        super().__init__(message)
        self.cause = cause


class KernelFeatureMissing(EtmemError):
    """The running kernel lacks an interface; the message names it and what provides it."""


class ProcessGone(EtmemError):
    """The target process exited, or its pid now belongs to another process."""


class ScanError(EtmemError):
    """A scan could not run or was cut short, or a scanner source is unknown; the message says why."""


class ProcError(EtmemError):
    """A /proc read about one process failed; `pid` and `errno` say which and how."""

    def __init__(self, pid: int, message: str, err: int = 0):
        super().__init__(message)
        self.pid = pid
        self.message = message
        self.errno = err

    def __str__(self) -> str:
        return self.message


class NoSuchProcess(ProcError):
    """The process has exited (or never existed)."""

    def __init__(self, pid: int, what: str = ""):
        super().__init__(pid, f"process {pid} does not exist (it may have exited){': ' + what if what else ''}", errno.ESRCH)


class AccessDenied(ProcError):
    """The kernel refused access to the process's /proc files."""

    def __init__(self, pid: int, path: str):
        super().__init__(pid, f"permission denied reading {path} (etmem needs root / CAP_SYS_ADMIN)", errno.EACCES)


class ActionError(EtmemError):
    """A memory action that cannot be done as asked; the message says why."""


class LegacyLoadError(EtmemError):
    """A C engine library that cannot be used; the message names the library and function."""


class ProtocolError(EtmemError):
    """A request or reply that does not follow the protocol; the message says how."""


class RequestRefused(EtmemError):
    """A request the daemon will not run; the message is the reply text."""


class ZramUnavailable(EtmemError):
    """This machine cannot give us a zram swap device; the message says why."""


class WorkloadError(EtmemError):
    """The workload child could not be started."""


def cause_of(exc: BaseException) -> Cause:
    """The Cause of a failed request: an ObjectError's own; bad input (a config, a request,
    a refused file) INVALID; anything else, a C engine's failure or a bug, INTERNAL."""
    if isinstance(exc, ObjectError):
        return exc.cause
    if isinstance(exc, ConfigError) and exc.cause is not None:
        return exc.cause
    if isinstance(exc, (ConfigError, ProtocolError, RequestRefused)):
        return Cause.INVALID
    return Cause.INTERNAL


class CgroupError(EtmemError):
    """A cgroup file that cannot be read or written; the message names the cgroup and the file."""


class CgroupGone(CgroupError):
    """The cgroup does not exist (any more)."""

    def __init__(self, path: str, root: str):
        self.path = path
        super().__init__(f"cgroup {path} does not exist under {root}")
