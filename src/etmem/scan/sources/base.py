"""What every access source is built on: the `Source` base class, `PassEnded`, and the helpers
the sources share (errno messages, whole reads and writes, pagemap per scanned VMA)."""
from __future__ import annotations

import errno
import threading
from typing import ClassVar

import numpy as np

from ... import kernel, procfs
from ..pagemap import PAGEMAP_CHUNK, decode_pagemap_file, default_opener


class PassEnded(Exception):
    """The current pass cannot go on (target gone, VMA vanished, read refused); the message says why.

    Raised by a source's begin() or one_pass(): the scan then returns the passes that
    completed, with this message as its error.
    """


class Source:
    """One kernel interface that tells which pages of a process were used.

    A subclass sets `name` (what `scanner=` and `Scanner(source=...)` select), `rank`
    (auto's preference: the usable source of lowest rank wins; the built-ins have
    idle_pages 10, page_idle 20, damon 30, refault 40, smaps 50), `per_vma` (True when every page
    of a VMA gets its VMA's verdict) and `pages_out` (True when scanning pages memory out,
    as refault's sampling does: engines that must not swap, such as cslide, ask for a
    read-only scan and auto then passes such sources over), and implements `probe()` and
    `one_pass()`.

    The scanner makes one instance per scan and calls begin(windows, sleep) once, then for
    each pass waits wait_before(index, sleep) seconds and calls one_pass(windows, index,
    last), and always end(). A window is one scanned VMA: `.vma` (a procfs.Vma), `.base`
    (its start address), `.counts` (int32, one per 4 KiB page: the source adds this pass's
    count) and `.kinds` (uint8, one per 4 KiB page: non-zero for every page the pass saw;
    `_scan.KIND_PMD` / `KIND_PUD` for a page of a 2 MiB / 1 GiB mapping). Every pass is a
    test-and-clear: it counts what was used since the previous pass and clears the signal.
    """

    name: ClassVar[str] = ""
    rank: ClassVar[int] = 1000
    per_vma: ClassVar[bool] = False
    pages_out: ClassVar[bool] = False

    def __init__(self, scanner, stop: threading.Event | None = None):
        self.scanner = scanner
        self.opener = scanner.opener
        self.pid = scanner.pid
        self.stop = stop

    @classmethod
    def probe(cls, opener=None) -> str | None:
        """None when the running kernel offers this source, else the sentence why not.

        Only what does not change while the process runs (files, modules, kernel config):
        the registry keeps the answer. opener(path, mode) opens the files probed when given.
        """
        raise NotImplementedError

    @classmethod
    def live_problem(cls, opener=None) -> str | None:
        """Why the source cannot be used right now although the kernel has it, or None.

        For state that changes (DAMON taken by another owner): asked afresh every time the
        source is chosen, never kept.
        """
        return None

    def begin(self, windows, sleep: float) -> None:
        """Set up before the first pass."""

    def one_pass(self, windows, index: int, last: bool) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """Tear down after the last pass (always called)."""

    def wait_before(self, index: int, sleep: float) -> float:
        """Seconds to wait before pass index: passes are sleep apart."""
        return sleep if index else 0.0


def probe_open(opener, path: str, feature: str) -> str | None:
    """None when path opens for reading, else why not (kernel.missing(feature) when it is absent)."""
    try:
        (opener or default_opener)(path, "rb").close()
        return None
    except FileNotFoundError:
        return kernel.missing(feature)
    except PermissionError:
        return f"{path} exists but cannot be opened: permission denied (needs root / CAP_SYS_ADMIN)"
    except OSError as exc:
        return f"{path} cannot be opened: {exc.strerror or exc}"


def errno_message(exc: OSError, pid: int, what: str) -> str:
    """A failed kernel call on `what` of process pid, as a sentence."""
    if exc.errno in (errno.ESRCH, errno.ENOENT):
        return f"process {pid} exited during the scan ({what})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {what} of process {pid} (etmem needs root / CAP_SYS_ADMIN)"
    return f"{what} of process {pid}: {exc.strerror or exc}"


def read_fully(f, buf: memoryview) -> int:
    """Fill buf from f; sysfs hands out at most a page per read call. Stops at end of file."""
    done = 0
    while done < len(buf):
        got = f.readinto(buf[done:])
        if not got:
            break
        done += got
    return done


def write_fully(f, buf: memoryview) -> None:
    """Write all of buf to f; sysfs takes at most a page per write call."""
    done = 0
    while done < len(buf):
        put = f.write(buf[done:])
        if not put:
            raise OSError(errno.EIO, "short write")
        done += put


def read_windows_pagemap(opener, pid: int, windows):
    """Yield (window, decoded pagemap) for each window; a failure ends the pass."""
    path = f"/proc/{pid}/pagemap"
    try:
        f = opener(path, "rb")
    except OSError as exc:
        raise PassEnded(errno_message(exc, pid, path)) from None
    buf = np.empty(PAGEMAP_CHUNK, dtype=np.uint64)
    try:
        for w in windows:
            yield w, decode_pagemap_file(f, w.base, w.vma.end, buf)
    except OSError as exc:
        raise PassEnded(errno_message(exc, pid, path)) from None
    finally:
        f.close()


def covering_vma(vmas, want: procfs.Vma):
    """The first of vmas that contains all of want, or None."""
    for v in vmas:
        if v.start <= want.start and want.end <= v.end:
            return v
    return None
