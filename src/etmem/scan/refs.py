"""`PageRefs`, what a scan returns: per page (or huge page) its address, access count and size."""
from __future__ import annotations

import numpy as np


class PageRefs:
    """The result of a scan: one entry per page (or huge page) seen, sorted by address.

    addr (uint64), count (int32, summed over passes), size (uint64 bytes), vma (int32 index
    into vmas). source names the source that ran; per_vma is True when every page of a VMA
    got its VMA's verdict (smaps); passes is how many passes completed; error is set when
    a pass was cut short. sampling is the refault source's `Sampling` (what it paged out and
    what came back; sources/refault.py), None for every other source.
    """

    def __init__(self, addr, count, size, vma, vmas, source, per_vma=False, passes=0, error=None, sampling=None):
        self.addr = addr
        self.count = count
        self.size = size
        self.vma = vma
        self.vmas = vmas
        self.source = source
        self.per_vma = per_vma
        self.passes = passes
        self.error = error
        self.sampling = sampling

    def __len__(self) -> int:
        return len(self.addr)

    def __repr__(self) -> str:
        err = f", error={self.error!r}" if self.error else ""
        return (f"PageRefs({len(self)} entries, {self.total_bytes() >> 10} KiB in {len(self.vmas)} VMAs, "
                f"source={self.source!r}, passes={self.passes}{err})")

    def cold(self, threshold: int) -> np.ndarray:
        """Boolean mask of the entries whose count is below threshold (upstream's `count < T`)."""
        return self.count < threshold

    def total_bytes(self, mask=None) -> int:
        """Bytes covered by all entries, or by those selected by mask."""
        return int(self.size.sum() if mask is None else self.size[mask].sum())

    def groups(self):
        """Yield (Vma, slice) for each scanned VMA: its entries are self.addr[slice] etc."""
        bounds = np.searchsorted(self.vma, np.arange(len(self.vmas) + 1), side="left")
        for i, vma in enumerate(self.vmas):
            yield vma, slice(int(bounds[i]), int(bounds[i + 1]))

    @classmethod
    def empty(cls, source: str, vmas=(), per_vma=False, passes=0, error=None) -> "PageRefs":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.uint64),
                   np.zeros(0, np.int32), list(vmas), source, per_vma, passes, error)
