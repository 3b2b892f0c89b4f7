"""The `smaps` source: /proc/PID/clear_refs and smaps `Referenced:`, one verdict per VMA, on every kernel."""
from __future__ import annotations

import os

from ... import procfs
from .base import PassEnded, Source, covering_vma, errno_message, read_windows_pagemap


class SmapsSource(Source):
    name = "smaps"
    rank = 50
    per_vma = True

    @classmethod
    def probe(cls, opener=None):
        if os.path.exists("/proc/self/clear_refs"):
            return None
        return "/proc/PID/clear_refs is missing: the kernel needs CONFIG_PROC_PAGE_MONITOR=y"

    def one_pass(self, windows, index, last):
        path = f"/proc/{self.pid}/smaps"
        try:
            with self.opener(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            raise PassEnded(errno_message(exc, self.pid, path)) from None
        now = {(v.start, v.end): v for v in procfs.parse_smaps(text)}
        referenced = []
        for w in windows:
            v = now.get((w.vma.start, w.vma.end)) or covering_vma(now.values(), w.vma)
            if v is None:
                raise PassEnded(f"VMA {w.vma.start:#x}-{w.vma.end:#x} of process {self.pid} vanished during the scan")
            referenced.append(v.referenced_kb > 0)
        for w, pm in read_windows_pagemap(self.opener, self.pid, windows):
            w.kinds[pm["present"]] = 1
        for w, ref in zip(windows, referenced):
            if ref:
                w.counts += 1
        _clear_refs(self.opener, self.pid)


def _clear_refs(opener, pid: int) -> None:
    path = f"/proc/{pid}/clear_refs"
    try:
        f = opener(path, "wb")
        try:
            f.write(b"1")
        finally:
            f.close()
    except OSError as exc:
        raise PassEnded(errno_message(exc, pid, path)) from None


SOURCE = SmapsSource
