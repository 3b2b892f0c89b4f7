"""The project's error types: every failure a user can cause or meet is one of these.

Their message is meant to be shown as it is, with no traceback.
"""
from __future__ import annotations


class EtmemError(Exception):
    """Base of every error etmem reports to a person."""


class ConfigError(EtmemError):
    """A bad config value or file. `path`, `line`, `group` and `key` say where."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 group: str | None = None, key: str | None = None, value: str | None = None):
        self.message = message
        self.path = path
        self.line = line
        self.group = group
        self.key = key
        self.value = value
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


class ObjectError(EtmemError):
    """A project, engine or task that is missing, duplicated or in the wrong state."""


class KernelFeatureMissing(EtmemError):
    """The running kernel lacks an interface; the message names it and what provides it."""


class ProcessGone(EtmemError):
    """The target process exited, or its pid now belongs to another process."""
