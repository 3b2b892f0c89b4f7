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


def protected_pids() -> set[int]:
    """This process (etmemd, or the program driving a Manager) and its ancestors up to pid 1.

    They are never targets: swapping out the daemon, or the supervisor and shells it runs
    under, would stall the thing doing the work, and pid 1's tree holds them all.
    """
    found: set[int] = set()
    pid = os.getpid()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            pid = procfs.parent(pid)
        except procfs.ProcError:
            break
    return found


def resolve_targets(kind: str, value: str, descendants: bool = True, *, start_time: int | None = None,
                    allow_init: bool = False) -> list[ProcessHandle]:
    """Handles for a task's targets, sorted by pid.

    kind 'pid': the process `value`; kind 'name': every process whose comm equals
    `value` exactly. With `descendants`, every process below each of them (children,
    grandchildren, ...) is added too. Processes that exit while being resolved are left
    out; a 'pid' target that does not exist raises ProcessGone.

    `start_time` is the start time of the process a 'pid' task was configured for: a
    process of that pid that started at another time is another process, and raises
    ProcessGone. This process and its ancestors are never among the targets (a 'pid'
    naming one raises EtmemError), and pid 1 only with `allow_init`: its tree is every
    process of the machine.
    """
    protected = protected_pids()
    if kind == "pid":
        try:
            pid = int(value)
        except ValueError:
            raise EtmemError(f"task value {value!r} is not a pid (type=pid needs a number)") from None
        _refuse_protected_root(pid, protected, allow_init)
        root = ProcessHandle.open(pid)
        if start_time is not None and root.start_time != start_time:
            root.close()
            raise ProcessGone(f"process {pid} ({root.comm}) is not the process this task was configured for: that one "
                              "has exited, and its pid now belongs to another process, which is never acted on")
        roots = [root]
    elif kind == "name":
        roots, refused = [], []
        for pid in procfs.pids_by_comm(str(value)):
            if pid in protected or (pid == 1 and not allow_init):
                refused.append(pid)
                continue
            try:
                handle = ProcessHandle.open(pid)
            except ProcessGone:
                continue
            if handle.comm == value:   # not a process that got the pid after the listing
                roots.append(handle)
            else:
                handle.close()
        if refused and not roots:
            raise EtmemError(f"the only processes named {value} ({', '.join(map(str, refused))}) are etmemd itself, its "
                             "ancestors or init, which are never acted on (init only with allow_init=yes)")
    else:
        raise EtmemError(f"unknown task type {kind!r}: expected 'pid' or 'name'")

    handles = [h for h in roots if h.pid not in protected]
    if descendants:
        handles += _descendants(roots, {h.pid for h in handles} | protected)
    for h in roots:
        if h.pid in protected:   # init with allow_init: its tree only
            h.close()
    handles.sort(key=lambda h: h.pid)
    return handles


def _refuse_protected_root(pid: int, protected: set[int], allow_init: bool) -> None:
    if pid == 1 and not allow_init:
        raise EtmemError("type=pid value=1 is init: its tree is every process of the machine, etmemd included; "
                         "set allow_init=yes in the task to act on all of them but etmemd and its ancestors")
    if pid == os.getpid():
        raise EtmemError(f"process {pid} is etmemd itself, which never acts on its own memory")
    if pid in protected and pid != 1:
        raise EtmemError(f"process {pid} is an ancestor of etmemd (pid {os.getpid()}), which never acts on "
                         "the processes it runs under")


def _descendants(roots: list[ProcessHandle], skip: set[int]) -> list[ProcessHandle]:
    """Handles of every process below the roots but those in `skip`.

    The tree is read by pid number, so each process is checked to still hang in it once
    held: a pid whose process exited in between and was given to another is left out.
    """
    tree: dict[int, int] = {}   # pid -> its root
    for root in roots:
        for pid in procfs.descendants(root.pid):
            tree.setdefault(pid, root.pid)
    alive_roots = {r.pid for r in roots if r.alive()}   # their children lists were theirs, not a namesake's
    held: list[ProcessHandle] = []
    for pid, root in tree.items():
        if pid in skip or root not in alive_roots:
            continue
        try:
            handle = ProcessHandle.open(pid)
        except ProcessGone:
            log.debug("process %d exited while resolving targets", pid)
            continue
        try:
            parent = procfs.parent(pid)
        except procfs.ProcError:
            parent = -1
        if (parent in tree or parent in alive_roots) and handle.alive():
            held.append(handle)
        else:
            handle.close()
    return held
