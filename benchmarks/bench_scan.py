"""Benchmark: the scanner's decoders against their floors, in the same run.

1. idle_pages decoding: etmem._scan.decode_idle_pages vs a plain C loop with the same
   semantics, compiled here with the system C compiler (-O2), on the same bytes: a stream
   in the kernel's format (SET_HVA at every 8000-byte chunk, runs up to 15) describing a
   4 GiB address range of mixed accessed / dirty / idle / hole pages and some THPs.
   Target: Cython rate >= 0.9 x the C rate.
2. pagemap scan of a 4 GiB resident target: etmem.scan.read_pagemap (reads + decoding)
   vs the same reads alone. Target: <= 1.15 x the raw reads. Needs root for the target's
   pagemap (without it the second figure is skipped with a message).

Times are this thread's CPU time (user + kernel, page faults included), not wall time:
on a machine whose other core runs someone else's tests, wall time also counts the
moments this thread waits for a core, which moved single reps by a third or more. Each
figure is the median over --reps of the ratio within one rep, a rep timing the
reference and etmem's side back to back (which goes first alternates); the _p10/_p90
lines give the spread of those per-rep ratios. Times (ms, MB/s) are medians too.

Prints one JSON line per figure; exits 0 even when a target is missed.

    python benchmarks/bench_scan.py [--reps 31] [--target 4G]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from etmem import _scan, units
from etmem.scan import PAGEMAP_CHUNK, read_pagemap

PAGE = 4096

C_DECODER = r"""
#include <stdint.h>
#include <stddef.h>

static const int shift_of[10] = {12, 21, 30, 12, 21, 12, 21, 21, 12, 21};
static const int weight_of[10] = {1, 1, 1, 3, 3, 0, 0, 0, 0, 0};

/* The same contract as etmem._scan.decode_idle_pages; returns bytes consumed. */
size_t decode(const uint8_t *buf, size_t n, uint64_t addr, uint64_t base,
              int32_t *counts, uint8_t *kinds, uint64_t nslots, int keep_huge,
              uint64_t *addr_out)
{
    uint64_t top = base + (nslots << 12);
    size_t i = 0;
    while (i < n) {
        uint8_t b = buf[i];
        int t = b >> 4, nr = b & 15;
        if (t == 10) {
            if (b != 0xA0 || i + 9 > n)
                break;
            uint64_t hva = 0;
            for (int j = 1; j < 9; j++)
                hva = (hva << 8) | buf[i + j];
            addr = hva;
            i += 9;
            continue;
        }
        if (t > 9)
            break;
        i++;
        int shift = shift_of[t];
        uint64_t end = addr + ((uint64_t)nr << shift);
        if (t < 8) {
            int w = weight_of[t];
            if (shift == 12 || !keep_huge || t == 7) {
                uint64_t lo = addr > base ? addr : base;
                uint64_t hi = end < top ? end : top;
                if (lo < hi) {
                    uint64_t s0 = (lo - base) >> 12, s1 = (hi - base + 4095) >> 12;
                    for (uint64_t s = s0; s < s1; s++) {
                        counts[s] += w;
                        kinds[s] = 1;
                    }
                }
            } else {
                for (int k = 0; k < nr; k++) {
                    uint64_t head = addr + ((uint64_t)k << shift);
                    uint64_t hend = head + ((uint64_t)1 << shift);
                    if (hend <= base || head >= top)
                        continue;
                    uint64_t s = ((head > base ? head : base) - base) >> 12;
                    counts[s] += w;
                    kinds[s] = t == 2 ? 3 : 2;
                }
            }
        }
        addr = end;
    }
    *addr_out = addr;
    return i;
}
"""


def emit(metric: str, value, unit: str, target: str | None) -> None:
    print(json.dumps({"bench": "scan", "metric": metric, "value": value, "target": target, "unit": unit}), flush=True)


def build_c_decoder(workdir: str):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc/gcc) on PATH"
    src = os.path.join(workdir, "decode.c")
    lib = os.path.join(workdir, "decode.so")
    with open(src, "w") as f:
        f.write(C_DECODER)
    res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", lib, src], capture_output=True, text=True)
    if res.returncode:
        return None, f"{cc} failed: {res.stderr.strip()[:300]}"
    dll = ctypes.CDLL(lib)
    dll.decode.restype = ctypes.c_size_t
    dll.decode.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
    return dll, None


def make_stream(span: int, base: int, seed: int = 1) -> bytes:
    """An idle_pages stream for [base, base + span) in the kernel's format, built with numpy.

    Mostly 4 KiB records (accessed, dirty, idle, holes) with run lengths 1..15, a tenth of
    the 2 MiB blocks as THP / PMD_IDLE_PTES records; SET_HVA starts every 8000-byte chunk.
    """
    rng = np.random.default_rng(seed)
    blocks = span // (2 << 20)
    records = []
    for blk in range(blocks):
        if rng.random() < 0.1:
            records.append(np.array([rng.choice([0x11, 0x41, 0x61, 0x71])], dtype=np.uint8))
            continue
        nrs = []
        left = 512
        while left:
            nr = int(min(left, rng.integers(1, 16)))
            nrs.append(nr)
            left -= nr
        types = rng.choice([0, 3, 5, 5, 8], size=len(nrs))
        records.append((types.astype(np.uint8) << 4) | np.array(nrs, dtype=np.uint8))
    rec = np.concatenate(records)
    sizes = np.where((rec >> 4) % 3 == 1, 2 << 20, 0).astype(np.uint64)  # types 1, 4, 7 are 2 MiB here
    sizes[(rec >> 4) == 6] = 2 << 20
    small = sizes == 0
    sizes[small] = (rec[small] & 15).astype(np.uint64) * PAGE
    addr_before = np.uint64(base) + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    per_chunk = 8000 - 9
    out = bytearray()
    for first in range(0, len(rec), per_chunk):
        out += bytes([0xA0]) + int(addr_before[first]).to_bytes(8, "big")
        out += rec[first:first + per_chunk].tobytes()
    return bytes(out)


def time_pairs(reference, candidate, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """CPU seconds of reference() and candidate() in reps back-to-back pairs, the order alternating."""
    times = np.empty((reps, 2))
    for rep in range(reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for side in order:
            fn = (reference, candidate)[side]
            t0 = time.thread_time()
            fn()
            times[rep, side] = time.thread_time() - t0
    return times[:, 0], times[:, 1]


def emit_ratio(metric: str, ratios: np.ndarray, target: str) -> None:
    """The median of the per-rep ratios against target, and their 10th/90th percentiles."""
    emit(f"{metric}_p10", round(float(np.percentile(ratios, 10)), 3), "ratio", None)
    emit(f"{metric}_p90", round(float(np.percentile(ratios, 90)), 3), "ratio", None)
    emit(metric, round(float(np.median(ratios)), 3), "ratio", target)


def bench_decode(reps: int) -> None:
    base = 0x7F00_0000_0000
    span = 4 << 30
    stream = make_stream(span, base)
    buf = np.frombuffer(stream, dtype=np.uint8)
    nslots = span // PAGE
    counts_cy = np.zeros(nslots, np.int32)
    kinds_cy = np.zeros(nslots, np.uint8)
    counts_c = np.zeros(nslots, np.int32)
    kinds_c = np.zeros(nslots, np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        dll, why = build_c_decoder(tmp)
        if dll is None:
            print(f"bench_scan: idle_pages decode vs C skipped: {why}", file=sys.stderr)
            return
        after = ctypes.c_uint64()

        def run_c():
            dll.decode(buf.ctypes.data, len(buf), base, base, counts_c.ctypes.data, kinds_c.ctypes.data, nslots, 0,
                       ctypes.byref(after))

        def run_cy():
            _scan.decode_idle_pages(stream, base, base, counts_cy, kinds_cy, False)

        run_c(), run_cy()  # warm caches and page in the arrays
        t_c, t_cy = time_pairs(run_c, run_cy, reps)
        assert np.array_equal(counts_c, counts_cy) and np.array_equal(kinds_c, kinds_cy), "decoders disagree"
    mb = len(stream) / 1e6
    emit("idle_pages_decode_reps", reps, "reps", None)
    emit("idle_pages_decode_cython_MBps", round(mb / np.median(t_cy), 1), "MB/s", None)
    emit("idle_pages_decode_c_MBps", round(mb / np.median(t_c), 1), "MB/s", None)
    emit("idle_pages_decode_cython_Mpages_per_s", round(nslots / np.median(t_cy) / 1e6, 1), "Mpages/s", None)
    emit_ratio("idle_pages_decode_cython_vs_c", t_c / t_cy, ">= 0.9")


def bench_pagemap(reps: int, target_mb: int) -> None:
    if os.geteuid() != 0:
        print("bench_scan: pagemap scan skipped: needs root to read another process's pagemap", file=sys.stderr)
        return
    from etmem.workload import Workload

    with Workload(total_mb=target_mb, hot_mb=16, pause=1.0) as w:
        start, end = w.cold[0], w.cold[1]
        # the whole target: both regions, as a scan of its anonymous memory reads them
        spans = sorted([tuple(w.cold), tuple(w.hot)])
        buf = np.empty(PAGEMAP_CHUNK, dtype=np.uint64)
        raw = memoryview(buf).cast("B")

        def raw_reads():
            with open(f"/proc/{w.pid}/pagemap", "rb", buffering=0) as f:
                for lo, hi in spans:
                    f.seek(lo // PAGE * 8)
                    left = (hi - lo) // PAGE * 8
                    while left > 0:
                        got = f.readinto(raw[:min(left, len(raw))])
                        if not got:
                            break
                        left -= got

        def decoded():
            for lo, hi in spans:
                read_pagemap(w.pid, lo, hi)

        raw_reads(), decoded()
        t_raw, t_dec = time_pairs(raw_reads, decoded, reps)
        pages = sum(hi - lo for lo, hi in spans) // PAGE
        present = int(read_pagemap(w.pid, start, end)["present"].sum())
    emit("pagemap_scan_reps", reps, "reps", None)
    emit("pagemap_scan_raw_reads_ms", round(float(np.median(t_raw)) * 1e3, 2), "ms", None)
    emit("pagemap_scan_decoded_ms", round(float(np.median(t_dec)) * 1e3, 2), "ms", None)
    emit("pagemap_scan_pages", pages, "pages", None)
    emit("pagemap_scan_present_cold_pages", present, "pages", None)
    emit_ratio("pagemap_scan_decoded_vs_raw", t_dec / t_raw, "<= 1.15")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--target", "--target-mb", dest="target_mb", type=units.size_arg("M", 1 << 20, "MiB"), default=4096, metavar="SIZE",
                        help="pagemap target size, e.g. 4G (a bare number is MiB)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    bench_decode(args.reps)
    bench_pagemap(args.reps, args.target_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
