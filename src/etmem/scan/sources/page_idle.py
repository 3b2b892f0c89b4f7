"""The `page_idle` source: upstream's idle page tracking, /proc/PID/pagemap for the page frames
and /sys/kernel/mm/page_idle/bitmap (CONFIG_IDLE_PAGE_TRACKING) for their idle bits."""
from __future__ import annotations

import numpy as np

from ... import _scan
from ...kernel import PAGE_IDLE_BITMAP
from .base import PassEnded, Source, errno_message, probe_open, read_fully, read_windows_pagemap, write_fully

_BITMAP_WINDOW = 1 << 17  # bitmap words per read/write (1 MiB)


class PageIdleSource(Source):
    name = "page_idle"
    rank = 20

    @classmethod
    def probe(cls, opener=None):
        return probe_open(opener, PAGE_IDLE_BITMAP, "page_idle")

    # The idle flag has no history to report: mark every page idle first, then each
    # pass waits `sleep`, reads which pages were used since, and marks them idle again.
    def wait_before(self, index, sleep):
        return sleep

    def begin(self, windows, sleep):
        pfns = [pm["pfn"][pm["present"]] for _, pm in read_windows_pagemap(self.opener, self.pid, windows)]
        self._bitmap(np.concatenate(pfns) if pfns else np.zeros(0, np.uint64), read=False)

    def one_pass(self, windows, index, last):
        pfn_parts, slot_parts = [], []
        for w, pm in read_windows_pagemap(self.opener, self.pid, windows):
            present = pm["present"]
            w.kinds[present] = 1
            pfn_parts.append(pm["pfn"][present])
            slot_parts.append((w, np.flatnonzero(present)))
        pfns = np.concatenate(pfn_parts) if pfn_parts else np.zeros(0, np.uint64)
        if len(pfns) and not pfns.any():
            raise PassEnded(f"/proc/{self.pid}/pagemap hides page frame numbers: reading them needs CAP_SYS_ADMIN")
        idle = self._bitmap(pfns, read=True)
        accessed = (idle == 0).view(np.uint8)
        pos = 0
        for w, slots in slot_parts:
            k = len(slots)
            w.counts[slots[accessed[pos:pos + k].view(bool)]] += 1
            pos += k
        self._bitmap(pfns, read=False)

    def _bitmap(self, pfns: np.ndarray, read: bool):
        """Read the idle bits of pfns (read=True), or mark them all idle (read=False)."""
        out = np.zeros(len(pfns), dtype=np.uint8)
        if not len(pfns):
            return out
        words_of = pfns >> np.uint64(6)
        order = np.argsort(words_of, kind="stable")
        sorted_words = words_of[order]
        try:
            f = self.opener(PAGE_IDLE_BITMAP, "rb" if read else "r+b")
        except OSError as exc:
            raise PassEnded(errno_message(exc, self.pid, PAGE_IDLE_BITMAP)) from None
        try:
            i = 0
            n = len(sorted_words)
            while i < n:
                first = int(sorted_words[i])
                j = int(np.searchsorted(sorted_words, first + _BITMAP_WINDOW, side="left"))
                count = int(sorted_words[j - 1]) - first + 1
                sel = order[i:j]
                sub_pfns = np.ascontiguousarray(pfns[sel])
                f.seek(first * 8)
                words = np.zeros(count, dtype=np.uint64)
                if read:
                    read_fully(f, memoryview(words).cast("B"))
                    res = np.empty(len(sub_pfns), dtype=np.uint8)
                    _scan.test_bits(words, first, sub_pfns, res)
                    out[sel] = res
                else:
                    _scan.set_bits(words, first, sub_pfns)
                    write_fully(f, memoryview(words).cast("B"))
                i = j
        except OSError as exc:
            raise PassEnded(errno_message(exc, self.pid, PAGE_IDLE_BITMAP)) from None
        finally:
            f.close()
        return out


SOURCE = PageIdleSource
