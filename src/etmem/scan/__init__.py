"""The page access scanner: how often each page of a process was used, from the best source the kernel has.

`Scanner(pid).scan(loop, sleep)` runs `loop` passes `sleep` seconds apart and returns one
`PageRefs` (numpy arrays of address, access count and page size). Four built-in sources
(scan/sources/, one module each), and any a plugin registers:

- `idle_pages`: openEuler's /proc/PID/idle_pages (per page, accessed/dirty/idle);
- `page_idle`: upstream idle page tracking, /proc/PID/pagemap + /sys/kernel/mm/page_idle/bitmap;
- `damon`: DAMON virtual-address monitoring through /sys/kernel/mm/damon/admin;
- `smaps`: /proc/PID/clear_refs + smaps `Referenced:`, one verdict per VMA.

Every pass is a test-and-clear: it reports what was accessed since the previous pass (the
first pass: since the last time anything cleared the bits), then clears. docs/scanner.md
gives the exact count each source adds, the module layout and how to add a source.
"""
from __future__ import annotations

from ..errors import ScanError
from ..pages import PAGE
from .claims import CLAIMS, ScanClaims
from .pagemap import PAGEMAP_CHUNK, decode_pagemap, present_pages, read_pagemap
from .refs import PageRefs
from .registry import SOURCES, available_sources, best_source, choose_source, names, register, source_class
from .scanner import Scanner
from .sources.base import PassEnded, Source

_PAGEMAP_CHUNK = PAGEMAP_CHUNK   # the name benchmarks/bench_scan.py imports

__all__ = [
    "CLAIMS", "PAGE", "PAGEMAP_CHUNK", "SOURCES", "PageRefs", "PassEnded", "ScanClaims", "ScanError",
    "Scanner", "Source", "available_sources", "best_source", "choose_source", "decode_pagemap", "names",
    "present_pages", "read_pagemap", "register", "source_class",
]
