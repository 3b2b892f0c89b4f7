"""The `idle_pages` source: openEuler's /proc/PID/idle_pages (module etmem_scan), per page
accessed, dirty or idle, read as a run-length stream that test-and-clears the accessed bits."""
from __future__ import annotations

import fcntl
import struct
import logging

from ... import _scan
from ...kernel.abi import IDLE_SCAN_ADD_FLAGS, SCAN_AS_HUGE, SCAN_IGN_HOST, VMA_SCAN_ADD_FLAGS, VMA_SCAN_FLAG
from ...pages import PAGE
from .base import PassEnded, Source, errno_message, probe_open

log = logging.getLogger("etmem.scan")

_IDLE_READ_MAX = 1 << 20  # bytes per idle_pages read


class IdlePagesSource(Source):
    name = "idle_pages"
    rank = 10

    @classmethod
    def probe(cls, opener=None):
        return probe_open(opener, "/proc/self/idle_pages", "idle_pages")

    def _ioctl(self, f, request: int, arg: int) -> None:
        try:
            if hasattr(f, "ioctl"):
                f.ioctl(request, arg)
            else:
                # _IOW(..., unsigned int): the kernel reads the flags through a pointer
                fcntl.ioctl(f.fileno(), request, struct.pack("I", arg))
        except OSError as exc:
            # Older etmem_scan modules lack the IDLE_SCAN ioctls: scan without the flag.
            log.warning("idle_pages of pid %d: scan flag 0x%x not set (%s); scanning without it",
                        self.pid, arg, exc.strerror or exc)

    def one_pass(self, windows, index, last):
        s = self.scanner
        path = f"/proc/{self.pid}/idle_pages"
        try:
            f = self.opener(path, "rb")
        except OSError as exc:
            raise PassEnded(errno_message(exc, self.pid, path)) from None
        try:
            scan_flags = (SCAN_AS_HUGE if s.as_huge else 0) | (SCAN_IGN_HOST if s.ign_host else 0)
            if scan_flags:
                self._ioctl(f, IDLE_SCAN_ADD_FLAGS, scan_flags)
            if s.swap_flag:
                self._ioctl(f, VMA_SCAN_ADD_FLAGS, VMA_SCAN_FLAG)
            self._scan_windows(f, windows, s.huge == "keep")
        except OSError as exc:
            raise PassEnded(errno_message(exc, self.pid, path)) from None
        except ValueError as exc:
            raise PassEnded(f"{path}: {exc}") from None
        finally:
            f.close()

    def _scan_windows(self, f, windows, keep: bool) -> None:
        """Read the windows in address order, decoding each read into every window it covers.

        Reading test-and-clears what it covers, and a read covers at least 19 bytes x 8
        pages: a read for a small VMA may reach into the next one. Its records are decoded
        into that window too and reading goes on from the kernel's offset, so no VMA's
        accessed bits are cleared before they are counted.
        """
        i, carry = 0, b""
        f.seek(windows[0].base) if windows else None
        while i < len(windows):
            pos = f.tell()
            while i < len(windows) and windows[i].vma.end <= pos:
                i += 1
            if i == len(windows):
                break
            if pos < windows[i].base:
                f.seek(windows[i].base)  # skip VMAs that are not scanned
                pos, carry = windows[i].base, b""
            # ask for no more than this window needs (the kernel's minimum is 19 bytes)
            want = max(19, min(_IDLE_READ_MAX, -(-(windows[i].vma.end - pos) // PAGE // 8)))
            data = f.read(want)
            if not data:
                if f.tell() > pos:
                    continue  # nothing mapped in the range read; the offset moved past it
                break  # the kernel found nothing more to report up to TASK_SIZE
            if carry:
                data = carry + data
            after = f.tell()
            used = len(data)
            for w in windows[i:]:
                if w.base >= max(after, pos + 1):
                    break
                # The stream sets its own address with SET_HVA; pos covers one that does not.
                _, used = _scan.decode_idle_pages(data, pos, w.base, w.counts, w.kinds, keep)
            carry = bytes(data[used:])
            if after <= pos:
                break


SOURCE = IdlePagesSource
