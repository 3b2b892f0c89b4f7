# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The scanner's per-page inner loops, in Cython: no Python work per page.

* `decode_idle_pages` turns an openEuler `/proc/PID/idle_pages` byte stream into
  per-4-KiB-slot access counts (accumulated over passes) and page kinds.
* `decode_pagemap` splits raw `/proc/PID/pagemap` entries into flag and PFN arrays.
* `test_bits` / `set_bits` read and build words of `/sys/kernel/mm/page_idle/bitmap`.

All outputs are caller-owned numpy arrays, so a caller can decode chunk by chunk
into slices and accumulate several passes into the same arrays.
"""
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t

cdef enum:
    # idle_pages record types (the high nibble of each byte)
    C_PTE_ACCESSED = 0
    C_PMD_ACCESSED = 1
    C_PUD_PRESENT = 2
    C_PTE_DIRTY_M = 3
    C_PMD_DIRTY_M = 4
    C_PTE_IDLE = 5
    C_PMD_IDLE = 6
    C_PMD_IDLE_PTES = 7
    C_PTE_HOLE = 8
    C_PMD_HOLE = 9
    C_PIP_CMD = 10
    C_SET_HVA = 0xA0
    # values of the `kinds` array: what page, if any, each 4 KiB slot was reported as
    C_KIND_NONE = 0
    C_KIND_PTE = 1
    C_KIND_PMD = 2
    C_KIND_PUD = 3

cdef uint64_t C_PFN_MASK = (<uint64_t>1 << 55) - 1

PTE_ACCESSED, PMD_ACCESSED, PUD_PRESENT = C_PTE_ACCESSED, C_PMD_ACCESSED, C_PUD_PRESENT
PTE_DIRTY_M, PMD_DIRTY_M = C_PTE_DIRTY_M, C_PMD_DIRTY_M
PTE_IDLE, PMD_IDLE, PMD_IDLE_PTES = C_PTE_IDLE, C_PMD_IDLE, C_PMD_IDLE_PTES
PTE_HOLE, PMD_HOLE, PIP_CMD, PIP_CMD_SET_HVA = C_PTE_HOLE, C_PMD_HOLE, C_PIP_CMD, C_SET_HVA
KIND_NONE, KIND_PTE, KIND_PMD, KIND_PUD = C_KIND_NONE, C_KIND_PTE, C_KIND_PMD, C_KIND_PUD

# pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_FILE = 1 << 61
PM_EXCLUSIVE = 1 << 56
PM_PFN_MASK = (1 << 55) - 1

cdef int _SHIFT[10]
_SHIFT[:] = [12, 21, 30, 12, 21, 12, 21, 21, 12, 21]
cdef int _WEIGHT[10]
_WEIGHT[:] = [1, 1, 1, 3, 3, 0, 0, 0, 0, 0]


cdef inline void _fill(int32_t[::1] counts, uint8_t[::1] kinds, uint64_t base, uint64_t nslots,
                       uint64_t start, uint64_t end, int32_t weight) noexcept nogil:
    """Add weight to every 4 KiB slot of [start, end) that lies inside the window."""
    cdef uint64_t lo, hi, s
    cdef uint64_t top = base + (nslots << 12)
    lo = start if start > base else base
    hi = end if end < top else top
    if lo >= hi:
        return
    lo = (lo - base) >> 12
    hi = (hi - base + 4095) >> 12
    if weight:
        for s in range(lo, hi):
            counts[s] += weight
            kinds[s] = 1
    else:
        for s in range(lo, hi):
            kinds[s] = 1


cdef inline void _huge(int32_t[::1] counts, uint8_t[::1] kinds, uint64_t base, uint64_t nslots,
                       uint64_t start, int shift, int nr, int32_t weight, uint8_t kind) noexcept nogil:
    """Record nr huge pages starting at start, each once, on its first slot in the window."""
    cdef uint64_t top = base + (nslots << 12)
    cdef uint64_t head, end, s
    cdef int k
    for k in range(nr):
        head = start + (<uint64_t>k << shift)
        end = head + (<uint64_t>1 << shift)
        if end <= base or head >= top:
            continue
        s = ((head if head > base else base) - base) >> 12
        counts[s] += weight
        kinds[s] = kind


def decode_idle_pages(const uint8_t[::1] buf, uint64_t addr, uint64_t base,
                      int32_t[::1] counts, uint8_t[::1] kinds, bint keep_huge=False):
    """Decode one read of /proc/PID/idle_pages into counts and kinds.

    buf      the bytes read; addr the virtual address the read started at (the
             file offset before the read).
    base     the address of slot 0: counts[i] and kinds[i] describe the 4 KiB page at
             base + i*4096. Records outside [base, base + len(counts)*4096) only
             advance the address.
    counts   int32, accumulated: accessed +1, dirty +3, idle and holes 0.
    kinds    uint8, set to KIND_PTE / KIND_PMD / KIND_PUD for every page reported
             (holes leave it alone).
    keep_huge  False: a PMD/PUD page adds its weight to each 4 KiB slot it covers
             (KIND_PTE). True: it is counted once, on its first slot inside the window
             (KIND_PMD / KIND_PUD). PMD_IDLE_PTES are 4 KiB pages either way.

    Returns (next_addr, consumed): the address after the last decoded record and how
    many bytes were decoded; consumed < len(buf) only when the buffer ends inside a
    SET_HVA command, whose bytes the caller should prepend to the next read.
    Raises ValueError on an unknown record type.
    """
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t i = 0
    cdef uint64_t nslots = counts.shape[0]
    cdef uint8_t b
    cdef int t, nr, j, shift
    cdef uint64_t hva
    if kinds.shape[0] < counts.shape[0]:
        raise ValueError("kinds is shorter than counts")
    with nogil:
        while i < n:
            b = buf[i]
            t = b >> 4
            nr = b & 15
            if t == C_PIP_CMD:
                if b != C_SET_HVA:
                    break
                if i + 9 > n:
                    break
                hva = 0
                for j in range(1, 9):
                    hva = (hva << 8) | buf[i + j]
                addr = hva
                i += 9
                continue
            if t > C_PMD_HOLE:
                break
            i += 1
            shift = _SHIFT[t]
            if t < C_PTE_HOLE:
                if shift == 12 or not keep_huge or t == C_PMD_IDLE_PTES:
                    _fill(counts, kinds, base, nslots, addr, addr + (<uint64_t>nr << shift), _WEIGHT[t])
                else:
                    _huge(counts, kinds, base, nslots, addr, shift, nr, _WEIGHT[t],
                          C_KIND_PUD if t == C_PUD_PRESENT else C_KIND_PMD)
            addr += <uint64_t>nr << shift
    if i < n and not (buf[i] == C_SET_HVA and i + 9 > n):
        raise ValueError(f"idle_pages stream: unknown record 0x{buf[i]:02x} at byte {i}")
    return addr, i


def decode_pagemap(const uint64_t[::1] raw, uint8_t[::1] present, uint8_t[::1] swapped,
                   uint8_t[::1] exclusive, uint8_t[::1] file, uint64_t[::1] pfn):
    """Split pagemap entries into flag arrays (0/1) and PFNs (0 where not present).

    All outputs must be at least len(raw) long; pass slices to decode in chunks.
    PFNs read as 0 without CAP_SYS_ADMIN, as the kernel hides them.
    """
    cdef Py_ssize_t i, n = raw.shape[0]
    cdef uint64_t e
    if present.shape[0] < n or swapped.shape[0] < n or exclusive.shape[0] < n or file.shape[0] < n or pfn.shape[0] < n:
        raise ValueError("an output array is shorter than the input")
    with nogil:
        for i in range(n):
            e = raw[i]
            present[i] = e >> 63
            swapped[i] = (e >> 62) & 1
            file[i] = (e >> 61) & 1
            exclusive[i] = (e >> 56) & 1
            pfn[i] = (e & C_PFN_MASK) if (e >> 63) else 0


def test_bits(const uint64_t[::1] words, uint64_t first_word, const uint64_t[::1] pfns, uint8_t[::1] out):
    """out[i] = bit pfns[i] of a bitmap whose words[0] holds PFNs first_word*64 .. +63.

    PFNs outside the words read as 0. Used on /sys/kernel/mm/page_idle/bitmap, where 1
    means idle (not accessed since it was set).
    """
    cdef Py_ssize_t i, n = pfns.shape[0]
    cdef uint64_t w, nwords = words.shape[0]
    if out.shape[0] < n:
        raise ValueError("out is shorter than pfns")
    with nogil:
        for i in range(n):
            w = (pfns[i] >> 6) - first_word
            if (pfns[i] >> 6) >= first_word and w < nwords:
                out[i] = (words[w] >> (pfns[i] & 63)) & 1
            else:
                out[i] = 0


def set_bits(uint64_t[::1] words, uint64_t first_word, const uint64_t[::1] pfns):
    """Set bit pfns[i] in words (words[0] holds PFNs first_word*64 ..); others untouched."""
    cdef Py_ssize_t i, n = pfns.shape[0]
    cdef uint64_t w, nwords = words.shape[0]
    with nogil:
        for i in range(n):
            w = (pfns[i] >> 6) - first_word
            if (pfns[i] >> 6) >= first_word and w < nwords:
                words[w] |= (<uint64_t>1) << (pfns[i] & 63)


def add_where(int32_t[::1] counts, const uint8_t[::1] mask, int32_t weight):
    """counts[i] += weight where mask[i]: the per-pass accumulation of bitmap sources."""
    cdef Py_ssize_t i, n = counts.shape[0]
    if mask.shape[0] < n:
        raise ValueError("mask is shorter than counts")
    with nogil:
        for i in range(n):
            if mask[i]:
                counts[i] += weight
