"""The Cython decoders against plain-Python references, on streams in the exact kernel format."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from etmem import _scan
from kernel_emulation import (PAGE, PMD, PUD, PMD_IDLE_PTES, PUD_PRESENT, PTE_HOLE, PMD_HOLE, SET_HVA, TYPE_SIZE,
                              TYPE_WEIGHT, encode_idle_pages)

START = 0x7F00_0000_0000  # 1 GiB aligned, like a real mmap area
HUGE_TYPES = {1, 2, 4, 6}


def reference_decode(stream: bytes, base: int, nslots: int, keep_huge: bool, addr: int = 0):
    """Plain-Python reading of the idle_pages stream (record bytes `(type << 4) | nr`, SET_HVA
    0xA0 + a big-endian address; accessed +1, dirty +3): (counts, kinds) per 4 KiB slot of the window."""
    counts = [0] * nslots
    kinds = [0] * nslots
    top = base + nslots * PAGE
    i = 0
    while i < len(stream):
        byte = stream[i]
        if byte == SET_HVA:
            addr = struct.unpack(">Q", stream[i + 1:i + 9])[0]
            i += 9
            continue
        kind, nr = byte >> 4, byte & 15
        size = TYPE_SIZE[kind]
        weight = TYPE_WEIGHT.get(kind, 0)
        for k in range(nr):
            page = addr + k * size
            if kind in (PTE_HOLE, PMD_HOLE):
                continue
            if keep_huge and kind in HUGE_TYPES:
                if page + size <= base or page >= top:
                    continue
                slot = (max(page, base) - base) // PAGE
                counts[slot] += weight
                kinds[slot] = 3 if kind == PUD_PRESENT else 2
                continue
            lo, hi = max(page, base), min(page + size, top)
            for a in range(lo, hi, PAGE):
                counts[(a - base) // PAGE] += weight
                kinds[(a - base) // PAGE] = 1
        addr += nr * size
        i += 1
    return np.array(counts, dtype=np.int32), np.array(kinds, dtype=np.uint8), addr


@st.composite
def layouts(draw):
    """Runs of (addr, type, count) as a kernel walk would produce: ascending, with gaps."""
    runs = []
    addr = START
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()) and runs:
            addr += draw(st.integers(1, 600)) * PAGE  # a discontinuity: next VMA
        kind = draw(st.sampled_from([0, 1, 3, 4, 5, 6, 7, 8, 9] + [2] * draw(st.integers(0, 1))))
        if TYPE_SIZE[kind] == PMD:
            addr = -(-addr // PMD) * PMD
            count = draw(st.integers(1, 20))
        elif kind == PUD_PRESENT:
            addr = -(-addr // PUD) * PUD
            count = 1
        else:
            count = draw(st.integers(1, 80))
        runs.append((addr, kind, count))
        addr += count * TYPE_SIZE[kind]
    return runs


def window_for(draw, runs):
    end = runs[-1][0] + runs[-1][2] * TYPE_SIZE[runs[-1][1]]
    lo = START + draw(st.integers(0, 64)) * PAGE
    span = min(end - lo + 8 * PAGE, 96 * PMD)
    return lo, max(1, draw(st.integers(1, max(1, span // PAGE))))


def cython_decode(stream, base, nslots, keep, addr=0):
    counts = np.zeros(nslots, np.int32)
    kinds = np.zeros(nslots, np.uint8)
    after, used = _scan.decode_idle_pages(stream, addr, base, counts, kinds, keep)
    assert used == len(stream)
    return counts, kinds, after


@settings(max_examples=60, deadline=None)
@given(runs=layouts(), chunk=st.sampled_from([19, 40, 200, 8000]), keep=st.booleans(), data=st.data())
def test_decoder_matches_reference_on_generated_layouts(runs, chunk, keep, data):
    stream, after = encode_idle_pages(runs, chunk_size=chunk)
    base, nslots = window_for(data.draw, runs)
    got_counts, got_kinds, got_after = cython_decode(stream, base, nslots, keep)
    ref_counts, ref_kinds, ref_after = reference_decode(stream, base, nslots, keep)
    np.testing.assert_array_equal(got_counts, ref_counts)
    np.testing.assert_array_equal(got_kinds, ref_kinds)
    assert got_after == ref_after == after


@settings(max_examples=40, deadline=None)
@given(runs=layouts(), cuts=st.lists(st.integers(0, 10_000), max_size=6), data=st.data())
def test_decoding_in_pieces_with_carry_equals_decoding_whole(runs, cuts, data):
    """A stream read in arbitrary pieces (even inside SET_HVA) decodes to the same counts."""
    stream, _ = encode_idle_pages(runs, chunk_size=64)
    base, nslots = window_for(data.draw, runs)
    whole_counts, whole_kinds, _ = cython_decode(stream, base, nslots, False)
    counts = np.zeros(nslots, np.int32)
    kinds = np.zeros(nslots, np.uint8)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    carry, addr = b"", 0
    for a, b in zip(points, points[1:]):
        piece = carry + stream[a:b]
        addr, used = _scan.decode_idle_pages(piece, addr, base, counts, kinds, False)
        carry = piece[used:]
        assert len(carry) < 9
    assert carry == b""
    np.testing.assert_array_equal(counts, whole_counts)
    np.testing.assert_array_equal(kinds, whole_kinds)


@settings(max_examples=30, deadline=None)
@given(first=layouts(), second=layouts())
def test_passes_accumulate_into_the_same_arrays(first, second):
    nslots = 2048
    counts = np.zeros(nslots, np.int32)
    kinds = np.zeros(nslots, np.uint8)
    for runs in (first, second):
        stream, _ = encode_idle_pages(runs)
        _scan.decode_idle_pages(stream, 0, START, counts, kinds, False)
    c1, k1, _ = reference_decode(encode_idle_pages(first)[0], START, nslots, False)
    c2, k2, _ = reference_decode(encode_idle_pages(second)[0], START, nslots, False)
    np.testing.assert_array_equal(counts, c1 + c2)
    np.testing.assert_array_equal(kinds, np.maximum(k1, k2))


def test_encoder_splits_runs_at_15_and_starts_each_chunk_with_set_hva():
    stream, after = encode_idle_pages([(START, 0, 40)], chunk_size=19)
    assert stream[0] == SET_HVA and struct.unpack(">Q", stream[1:9])[0] == START
    assert stream[9:] == bytes([0x0F, 0x0F, 0x0A])
    assert after == START + 40 * PAGE


def test_set_hva_marks_every_chunk_start_with_the_address_of_its_first_record():
    runs = [(START, 5, 15 * 30)]  # 30 one-byte records
    stream, _ = encode_idle_pages(runs, chunk_size=19)
    i, addr, seen = 0, None, []
    while i < len(stream):
        if stream[i] == SET_HVA:
            hva = struct.unpack(">Q", stream[i + 1:i + 9])[0]
            assert addr is None or hva == addr
            seen.append(hva)
            i += 9
            continue
        addr = (addr if addr is not None else seen[-1]) + (stream[i] & 15) * PAGE
        i += 1
    assert len(seen) == 3  # 30 records, 10 per 19-byte chunk
    assert seen[1] == START + 10 * 15 * PAGE


def test_weights_are_upstreams_accessed_1_dirty_3_idle_0():
    base = START
    stream = bytes([SET_HVA]) + struct.pack(">Q", base) + bytes([0x01, 0x31, 0x51, 0x81, 0x01])
    counts, kinds, after = cython_decode(stream, base, 8, False)
    assert counts.tolist() == [1, 3, 0, 0, 1, 0, 0, 0]
    assert kinds.tolist() == [1, 1, 1, 0, 1, 0, 0, 0]
    assert after == base + 5 * PAGE


def test_pmd_idle_ptes_are_512_idle_small_pages_even_when_keeping_huge_pages():
    stream = bytes([SET_HVA]) + struct.pack(">Q", START) + bytes([(PMD_IDLE_PTES << 4) | 1, 0x11])
    counts, kinds, _ = cython_decode(stream, START, 1024, True)
    assert (kinds[:512] == 1).all() and counts[:512].sum() == 0
    assert kinds[512] == 2 and counts[512] == 1 and not kinds[513:].any()


def test_huge_pages_split_or_kept():
    stream = bytes([SET_HVA]) + struct.pack(">Q", START) + bytes([0x41, 0x21])
    counts, kinds, _ = cython_decode(stream, START, 512 + 262144 + 512, False)
    assert (counts[:512] == 3).all() and (counts[512:512 + 262144] == 1).all()
    counts, kinds, _ = cython_decode(stream, START, 512 + 262144 + 512, True)
    assert np.flatnonzero(kinds).tolist() == [0, 512] and kinds[0] == 2 and kinds[512] == 3


def test_unknown_record_type_is_an_error():
    with pytest.raises(ValueError, match="unknown record 0xb1"):
        cython_decode(bytes([0x01, 0xB1]), START, 4, False)


def test_truncated_set_hva_is_left_for_the_next_read():
    counts = np.zeros(4, np.int32)
    kinds = np.zeros(4, np.uint8)
    stream = bytes([0x01, SET_HVA, 0x00, 0x00])
    after, used = _scan.decode_idle_pages(stream, START, START, counts, kinds, False)
    assert (after, used) == (START + PAGE, 1)


# --- pagemap and the idle bitmap ---------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=300))
def test_pagemap_decoder_matches_bit_arithmetic(entries):
    raw = np.array(entries, dtype=np.uint64)
    n = len(raw)
    present, swapped, exclusive, file = (np.zeros(n, np.uint8) for _ in range(4))
    pfn = np.zeros(n, np.uint64)
    _scan.decode_pagemap(raw, present, swapped, exclusive, file, pfn)
    for i, e in enumerate(entries):
        assert present[i] == e >> 63
        assert swapped[i] == (e >> 62) & 1
        assert file[i] == (e >> 61) & 1
        assert exclusive[i] == (e >> 56) & 1
        assert pfn[i] == ((e & ((1 << 55) - 1)) if e >> 63 else 0)


@settings(max_examples=40, deadline=None)
@given(pfns=st.lists(st.integers(0, 1 << 20), max_size=200), first=st.integers(0, 1 << 14),
       nwords=st.integers(1, 1 << 12))
def test_idle_bits_set_then_tested_round_trip(pfns, first, nwords):
    pfns = np.array(pfns, dtype=np.uint64)
    words = np.zeros(nwords, np.uint64)
    _scan.set_bits(words, first, pfns)
    inside = {int(p) for p in pfns if first <= p >> 6 < first + nwords}
    expect = np.zeros(nwords, np.uint64)
    for p in inside:
        expect[(p >> 6) - first] |= np.uint64(1 << (p & 63))
    np.testing.assert_array_equal(words, expect)
    probe = np.arange(first * 64, (first + nwords) * 64 + 64, 7, dtype=np.uint64)
    out = np.zeros(len(probe), np.uint8)
    _scan.test_bits(words, first, probe, out)
    assert out.tolist() == [int(int(p) in inside) for p in probe]


def test_an_empty_window_is_never_written_even_with_huge_pages_kept():
    # The window's arrays are views of length 0 into larger buffers: a write one slot
    # past the end would change the sentinels behind them.
    counts_buf = np.full(4, -7, dtype=np.int32)
    kinds_buf = np.full(4, 0xEE, dtype=np.uint8)
    base = 0x7F0000000000
    stream = bytes([0xA0]) + base.to_bytes(8, "big") + bytes([(1 << 4) | 3, (0 << 4) | 5])   # 3 PMD_ACCESSED, 5 PTE_ACCESSED
    for keep in (False, True):
        _scan.decode_idle_pages(stream, base, base, counts_buf[:0], kinds_buf[:0], keep)
        assert (counts_buf == -7).all() and (kinds_buf == 0xEE).all()
