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
from libc.string cimport memcpy, memset

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
cdef uint64_t C_LOW_BIT_OF_EACH_BYTE = 0x0101010101010101

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


cdef inline void _fill(int32_t *counts, uint8_t *kinds, uint64_t base, uint64_t nslots,
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
    memset(kinds + lo, C_KIND_PTE, hi - lo)


cdef inline void _fill_short_run(int32_t *counts, uint8_t *kinds, int nr, int32_t weight) noexcept nogil:
    """_fill for a 4 KiB run of nr <= 15 pages whose 16 slots from counts/kinds are all in the window.

    Fixed 16-slot loops that leave slots past nr as they were: the compiler makes them
    vector code with no branch on the run length, which is random in a real stream and
    would be mispredicted on most records.
    """
    cdef int k
    for k in range(16):
        counts[k] += weight & -(<int32_t>(k < nr))
    for k in range(16):
        kinds[k] = C_KIND_PTE if k < nr else kinds[k]


cdef inline void _huge(int32_t *counts, uint8_t *kinds, uint64_t base, uint64_t nslots,
                       uint64_t start, int shift, int nr, int32_t weight, uint8_t kind) noexcept nogil:
    """Record nr huge pages starting at start, each once, on its first slot in the window."""
    cdef uint64_t top = base + (nslots << 12)
    cdef uint64_t head, end, first, s
    cdef int k
    for k in range(nr):
        head = start + (<uint64_t>k << shift)
        end = head + (<uint64_t>1 << shift)
        first = head if head > base else base
        if end <= base or first >= top:   # (first >= top also when the window is empty)
            continue
        s = (first - base) >> 12
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
    cdef uint64_t hva, offset
    cdef int32_t *count_at = &counts[0] if nslots else NULL
    cdef uint8_t *kind_at = &kinds[0] if nslots else NULL
    # a 4 KiB run starting at a page offset up to this many bytes into the window has 16
    # slots inside it: room for the longest run (15) without clipping
    cdef bint short_runs_fit = nslots >= 16
    cdef uint64_t last_short_run = (nslots - 16) << 12 if short_runs_fit else 0
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
                offset = addr - base   # wraps to a huge value below the window
                if shift == 12 and short_runs_fit and offset <= last_short_run and not offset & 4095:
                    _fill_short_run(count_at + (offset >> 12), kind_at + (offset >> 12), nr, _WEIGHT[t])
                elif shift == 12 or not keep_huge or t == C_PMD_IDLE_PTES:
                    _fill(count_at, kind_at, base, nslots, addr, addr + (<uint64_t>nr << shift), _WEIGHT[t])
                else:
                    _huge(count_at, kind_at, base, nslots, addr, shift, nr, _WEIGHT[t],
                          C_KIND_PUD if t == C_PUD_PRESENT else C_KIND_PMD)
            addr += <uint64_t>nr << shift
    if i < n and not (buf[i] == C_SET_HVA and i + 9 > n):
        raise ValueError(f"idle_pages stream: unknown record 0x{buf[i]:02x} at byte {i}")
    return addr, i


def decode_pagemap(const uint64_t[::1] raw, uint8_t[::1] present, uint8_t[::1] swapped,
                   uint8_t[::1] exclusive, uint8_t[::1] file, uint64_t[::1] pfn):
    """Split pagemap entries into flag arrays (0/1) and PFNs (0 where not present).

    All outputs must be at least len(raw) long; pass slices to decode in chunks. pfn may
    be raw itself (decoding in place). PFNs read as 0 without CAP_SYS_ADMIN, as the
    kernel hides them.
    """
    cdef Py_ssize_t i, k, n = raw.shape[0]
    cdef uint64_t e, top_bytes, word
    cdef const uint64_t *entry
    cdef uint64_t *pfn_at
    cdef uint8_t *present_at
    cdef uint8_t *swapped_at
    cdef uint8_t *exclusive_at
    cdef uint8_t *file_at
    if present.shape[0] < n or swapped.shape[0] < n or exclusive.shape[0] < n or file.shape[0] < n or pfn.shape[0] < n:
        raise ValueError("an output array is shorter than the input")
    if not n:
        return
    entry, pfn_at = &raw[0], &pfn[0]
    present_at, swapped_at, exclusive_at, file_at = &present[0], &swapped[0], &exclusive[0], &file[0]
    with nogil:
        # Eight entries at a time: their top bytes (flag bits 63, 62, 61, 56) gathered
        # into one word, so each flag array gets one 8-byte store per eight entries
        # instead of eight byte stores.
        i = 0
        while i + 8 <= n:
            top_bytes = 0
            for k in range(8):
                e = entry[i + k]
                top_bytes |= (e >> 56) << (8 * k)
                pfn_at[i + k] = e & C_PFN_MASK & (<uint64_t>0 - (e >> 63))
            word = (top_bytes >> 7) & C_LOW_BIT_OF_EACH_BYTE
            memcpy(present_at + i, &word, 8)
            word = (top_bytes >> 6) & C_LOW_BIT_OF_EACH_BYTE
            memcpy(swapped_at + i, &word, 8)
            word = (top_bytes >> 5) & C_LOW_BIT_OF_EACH_BYTE
            memcpy(file_at + i, &word, 8)
            word = top_bytes & C_LOW_BIT_OF_EACH_BYTE
            memcpy(exclusive_at + i, &word, 8)
            i += 8
        while i < n:
            e = entry[i]
            present_at[i] = e >> 63
            swapped_at[i] = (e >> 62) & 1
            file_at[i] = (e >> 61) & 1
            exclusive_at[i] = (e >> 56) & 1
            pfn_at[i] = e & C_PFN_MASK & (<uint64_t>0 - (e >> 63))
            i += 1


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
