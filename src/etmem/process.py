"""Target processes held by pidfd, so a pid that exits and is reused is never acted on.

A `ProcessHandle` pairs a pidfd (pidfd_open, Linux 5.3+) with the process's start
time and name. The pidfd stays bound to the process it was opened for: once that
process exits the pidfd polls readable, even if another process later gets the same
pid number. `resolve_targets` turns a task's `type`/`value` into handles: by pid, or
by exact `comm` name (every match, as upstream), plus the whole tree of descendants
(upstream took only direct children).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import select

from . import kernel, procfs
from .errors import EtmemError, KernelFeatureMissing, ProcessGone
from .kernel.abi import SYS_pidfd_open, libc

log = logging.getLogger("etmem.process")


def _pidfd_open(pid: int) -> int:
    fd = libc.syscall(SYS_pidfd_open, ctypes.c_int(pid), ctypes.c_uint(0))
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err == errno.ESRCH:
        raise ProcessGone(f"process {pid} does not exist (it may have exited)")
    if err == errno.ENOSYS:
        raise KernelFeatureMissing(kernel.missing("pidfd"))
    if err == errno.EINVAL:  # pid <= 0, or a thread id that is not a thread-group leader
        raise ProcessGone(f"{pid} is not a process id (a thread id or an invalid number)")
    raise EtmemError(f"pidfd_open({pid}) failed: {os.strerror(err)}")


class ProcessHandle:
    """One target process, held by a pidfd; `fd` is the pidfd.

    `alive()` is true only while the very process the handle was opened for runs:
    the pidfd has not polled readable (exit) and /proc/PID still shows the same
    start time. Actions call `check()` before touching memory.
    """

    def __init__(self, pid: int, fd: int, start_time: int, comm: str):
        self.pid = pid
        self.fd = fd
        self.start_time = start_time
        self.comm = comm

    @classmethod
    def open(cls, pid: int) -> "ProcessHandle":
        """Open a handle to pid; raises ProcessGone when there is no such process."""
        pid = int(pid)
        fd = _pidfd_open(pid)
        try:
            start = procfs.start_time(pid)
            name = procfs.comm(pid)
        except procfs.ProcError:
            os.close(fd)
            raise ProcessGone(f"process {pid} exited while etmem opened it") from None
        handle = cls(pid, fd, start, name)
        # The /proc reads above describe our process only if it was still alive after them:
        # a pid cannot be reused before its process is reaped, and reaping makes the pidfd readable.
        if handle._exited():
            handle.close()
            raise ProcessGone(f"process {pid} exited while etmem opened it")
        return handle

    def _exited(self) -> bool:
        if self.fd < 0:
            return True
        ready, _, _ = select.select([self.fd], [], [], 0)
        return bool(ready)

    def alive(self) -> bool:
        """True while the process this handle was opened for still runs (not a namesake)."""
        if self._exited():
            return False
        try:
            return procfs.start_time(self.pid) == self.start_time
        except procfs.ProcError:
            return False

    def check(self) -> None:
        """Raise ProcessGone unless the original process is still alive."""
        if self.fd < 0:
            raise ProcessGone(f"the handle of process {self.pid} ({self.comm}) is closed")
        if not self.alive():
            raise ProcessGone(f"process {self.pid} ({self.comm}) has exited; its pid is not acted on "
                              "even if another process now has it")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ProcessHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.fd < 0 else f"pidfd {self.fd}"
        return f"<ProcessHandle pid={self.pid} comm={self.comm!r} {state}>"


def resolve_targets(kind: str, value: str, descendants: bool = True) -> list[ProcessHandle]:
    """Handles for a task's targets, sorted by pid.

    kind 'pid': the process `value`; kind 'name': every process whose comm equals
    `value` exactly. With `descendants`, every process below each of them (children,
    grandchildren, ...) is added too. Processes that exit while being resolved are left
    out; a 'pid' target that does not exist raises ProcessGone.
    """
    if kind == "pid":
        try:
            roots = [int(value)]
        except ValueError:
            raise EtmemError(f"task value {value!r} is not a pid (type=pid needs a number)") from None
    elif kind == "name":
        roots = procfs.pids_by_comm(str(value))
    else:
        raise EtmemError(f"unknown task type {kind!r}: expected 'pid' or 'name'")

    wanted: list[int] = []
    for root in roots:
        if root not in wanted:
            wanted.append(root)
        if descendants:
            wanted.extend(p for p in procfs.descendants(root) if p not in wanted)

    handles: list[ProcessHandle] = []
    for pid in wanted:
        try:
            handles.append(ProcessHandle.open(pid))
        except ProcessGone:
            if kind == "pid" and pid == roots[0]:
                for h in handles:
                    h.close()
                raise
            log.debug("process %d exited while resolving targets", pid)
    handles.sort(key=lambda h: h.pid)
    return handles
