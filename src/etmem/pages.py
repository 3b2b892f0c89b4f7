"""Page sets as numpy arrays: address ranges merged, and ranges expanded to their pages.

The scanner and the actions both work on sets of 4 KiB pages given as (start, end)
ranges or (addr, size) entries; the arithmetic lives here once, vectorised.
"""
from __future__ import annotations

import os

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")   # the unit of pagemap, swap_pages, process_madvise and PageRefs (4 KiB on x86)


def union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge ranges, sorted by start, that overlap or touch into maximal runs."""
    if starts.size <= 1:
        return starts, ends
    reach = np.maximum.accumulate(ends)
    new_run = np.empty(starts.size, dtype=bool)
    new_run[0] = True
    new_run[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new_run)
    last = np.append(first[1:] - 1, starts.size - 1)
    return starts[first], reach[last]


def page_addresses(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The address of every page in the page-aligned ranges [start, end), in range order."""
    starts = np.asarray(starts, dtype=np.uint64)
    counts = ((np.asarray(ends, dtype=np.uint64) - starts) // np.uint64(PAGE)).astype(np.int64)
    first = np.repeat(np.cumsum(counts) - counts, counts).astype(np.uint64)
    offset = np.arange(int(counts.sum()), dtype=np.uint64) - first
    return np.repeat(starts, counts) + offset * np.uint64(PAGE)
