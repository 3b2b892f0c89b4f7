"""libetmemd_scan.so called as a C engine calls it: through ctypes in this process with
etmemd's backend (VMAs of a live process, page_refs lists merged pass by pass in address
order, failures as -1/NULL), and from a plain C program with no etmemd at all, which must
follow upstream's rules and see what the backend sees."""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from ctypes import POINTER, byref, c_char_p
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from etmem import procfs
from etmem.engines import legacy_abi as abi
import scanlib_programs
from kernel_emulation import encode_idle_pages
from test_scan_decode import cython_decode, layouts, window_for


@pytest.fixture(scope="module")
def lib():
    scan = abi.scan_library()
    c = scan.lib
    c.etmemd_get_vmas.restype = POINTER(abi.Vmas)
    c.etmemd_get_vmas.argtypes = [c_char_p, POINTER(c_char_p), ctypes.c_int, ctypes.c_bool]
    c.etmemd_free_vmas.argtypes = [POINTER(abi.Vmas)]
    c.etmemd_get_page_refs.argtypes = [POINTER(abi.Vmas), c_char_p, POINTER(POINTER(abi.PageRefs)), ctypes.c_int]
    c.etmemd_free_page_refs.argtypes = [POINTER(abi.PageRefs)]
    return c


@pytest.fixture
def inited(lib):
    """etmemd_scan_init() for the test (the library allows one at a time), exit after."""
    assert lib.etmemd_scan_init() == 0
    yield lib
    lib.etmemd_scan_exit()


def listed(head) -> list[tuple[int, int, int]]:
    out = []
    while head:
        out.append((head.contents.addr, head.contents.count, head.contents.type))
        head = head.contents.next
    return out


def vma_list(vmas) -> list:
    out, node = [], vmas.contents.vma_list
    while node:
        out.append(node.contents)
        node = node.contents.next
    return out


@pytest.fixture
def quiet_pid():
    """A process whose memory map stays still while it is compared."""
    child = subprocess.Popen(["sleep", "60"])
    # wait until it sleeps with a settled map: right after exec the loader is still mapping
    deadline = time.monotonic() + 10
    last = None
    while True:
        state = procfs.read_text(child.pid, "stat").rsplit(")", 1)[1].split()[0]
        now = procfs.read_text(child.pid, "maps")
        if state == "S" and now == last:
            break
        assert time.monotonic() < deadline, "sleep never settled"
        last = now
        time.sleep(0.05)
    yield child.pid
    child.kill()
    child.wait()


def test_get_vmas_describes_the_process_as_maps_does(lib, quiet_pid):
    pid = str(quiet_pid).encode()
    vmas = lib.etmemd_get_vmas(pid, None, 0, False)
    try:
        got = vma_list(vmas)
        assert vmas.contents.vma_cnt == len(got) > 5
        maps = {v.start: v for v in procfs.maps(quiet_pid)}
        for v in got:
            m = maps[v.start]
            assert v.end == m.end and v.offset == m.offset and v.inode == m.inode
            assert v.path.decode() == m.path[:255]
            assert f"{v.major.decode()}:{v.minor.decode()}" == m.dev
            assert [bool(x) for x in v.stat] == [m.perms[i] == f for i, f in enumerate("rwxs")]
    finally:
        lib.etmemd_free_vmas(vmas)

    anon = lib.etmemd_get_vmas(pid, None, 0, True)
    try:
        assert vma_list(anon) and all(v.inode == 0 and not v.stat[3] for v in vma_list(anon))
        assert [v.start for v in vma_list(anon)] == [v.start for v in procfs.maps(quiet_pid)
                                                     if v.is_anonymous and v.is_private]
        assert anon.contents.vma_cnt < len(got)
    finally:
        lib.etmemd_free_vmas(anon)

    flags = (c_char_p * 2)(b"rd", b"mr")
    readable = lib.etmemd_get_vmas(pid, flags, 2, False)
    try:
        smaps = {v.start: v for v in procfs.smaps(quiet_pid)}
        chosen = [v.start for v in vma_list(readable)]
        assert chosen
        assert chosen == sorted(s for s, v in smaps.items() if {"rd", "mr"} <= v.vmflags)
    finally:
        lib.etmemd_free_vmas(readable)
    assert not lib.etmemd_get_vmas(b"999999999", None, 0, False)


def test_passes_merge_into_one_sorted_list(inited):
    """The C side merges each pass into the list; the pass itself comes from Python."""
    passes = [
        ([0x3000, 0x5000], [1, 0], [0, 0]),
        ([0x1000, 0x3000, 0x4000, 0x200000, 0x40000000], [3, 1, 0, 1, 1], [0, 0, 0, 1, 2]),
    ]

    def fake_pass(self, vmas_p, pid_text, flags, out_p):
        addr, count, types = passes.pop(0)
        sizes = np.array([{0: 4096, 1: 2 << 20, 2: 1 << 30}[t] for t in types], dtype=np.uint64)
        abi._fill_pass(out_p.contents, np.array(addr, np.uint64), np.array(count, np.int32), sizes)
        return 0

    lib = inited
    scan = abi.scan_library()
    backend = abi.ScanBackend(abi.INIT_FN(scan._init), abi.EXIT_FN(scan._exit),
                              abi.PAGE_PASS_FN(lambda *a: fake_pass(scan, *a)))
    scan.lib.etmem_scan_set_backend(byref(backend))
    try:
        vmas = lib.etmemd_get_vmas(str(os.getpid()).encode(), None, 0, True)
        head = POINTER(abi.PageRefs)()
        assert lib.etmemd_get_page_refs(vmas, str(os.getpid()).encode(), byref(head), 0) == 0
        assert listed(head) == [(0x3000, 1, 0), (0x5000, 0, 0)]
        assert lib.etmemd_get_page_refs(vmas, str(os.getpid()).encode(), byref(head), 0) == 0
        assert listed(head) == [(0x1000, 3, 0), (0x3000, 2, 0), (0x4000, 0, 0), (0x5000, 0, 0),
                                (0x200000, 1, 1), (0x40000000, 1, 2)]
        lib.etmemd_free_page_refs(head)
        lib.etmemd_free_vmas(vmas)
    finally:
        scan.lib.etmem_scan_set_backend(byref(scan.backend))


def test_a_scan_of_a_process_that_exited_fails_and_leaves_the_list_alone(inited):
    lib = inited
    child = subprocess.Popen(["sleep", "30"])
    pid = str(child.pid).encode()
    vmas = lib.etmemd_get_vmas(pid, None, 0, False)
    child.kill()
    child.wait()
    head = POINTER(abi.PageRefs)()
    try:
        assert lib.etmemd_get_page_refs(vmas, pid, byref(head), 0) == -1
        assert not head
        assert lib.etmemd_get_page_refs(None, pid, byref(head), 0) == -1
    finally:
        lib.etmemd_free_vmas(vmas)


# -- with no etmemd: the library on its own ---------------------------------------------

@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, str]:
    return scanlib_programs.build(tmp_path_factory.mktemp("standalone"))


@pytest.fixture
def steady(programs):
    """A scan_target process: (pid, hot range, cold range), its memory in place."""
    proc, hot, cold = scanlib_programs.start_target(programs["scan_target"])
    yield proc.pid, hot, cold
    proc.kill()
    proc.wait()


def test_upstreams_scan_library_rules_hold_in_a_plain_c_program(programs, steady):
    pid = steady[0]
    result = subprocess.run([programs["scan_standalone"], "check", str(pid)], capture_output=True, text=True,
                            timeout=60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and not [line for line in lines if not line.startswith("ok ")], result.stdout
    assert len(lines) == 19


def test_a_plain_c_program_scans_as_etmemd_does(lib, programs, steady, request):
    """The same process scanned by a C program on its own and, a moment later, through
    etmemd's backend for a project with scanner=smaps (the source the library picks on
    this kernel): the same VMAs, the same pages, and the same counts in the target's hot and
    cold regions (whose use never changes; each pass clears what it reads)."""
    pid, hot, cold = steady
    pid_text = str(pid).encode()
    scan = abi.scan_library()
    scan.watch([pid], threading.Event(), "smaps", 0)
    request.addfinalizer(lambda: scan.forget([pid]))

    def standalone() -> tuple[list, list]:
        out = subprocess.run([programs["scan_standalone"], "dump", str(pid)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stdout
        vmas = [(int(w[1], 16), int(w[2], 16)) for w in (line.split() for line in out.stdout.splitlines())
                if w[0] == "vma"]
        return vmas, scanlib_programs.pages(out.stdout)

    def in_etmemd() -> tuple[list, list]:
        assert lib.etmemd_scan_init() == 0
        vmas = lib.etmemd_get_vmas(pid_text, None, 0, True)
        head = POINTER(abi.PageRefs)()
        try:
            assert lib.etmemd_get_page_refs(vmas, pid_text, byref(head), 0) == 0
            return [(v.start, v.end) for v in vma_list(vmas)], listed(head)
        finally:
            lib.etmemd_free_page_refs(head)
            lib.etmemd_free_vmas(vmas)
            lib.etmemd_scan_exit()

    standalone()             # clears what the start-up used
    time.sleep(0.3)
    alone_vmas, alone = standalone()
    time.sleep(0.3)
    etmemd_vmas, etmemd = in_etmemd()
    assert alone_vmas == etmemd_vmas and hot in alone_vmas and cold in alone_vmas
    # the same pages everywhere; the same counts in the regions whose use the test controls
    # (the target's small TLS and stack mappings are touched now and then: their counts may differ)
    assert [(a, s) for a, _, s in alone] == [(a, s) for a, _, s in etmemd]
    controlled = [(hot[0] <= a < hot[1]) or (cold[0] <= a < cold[1]) for a, _, _ in alone]
    assert [p for p, keep in zip(alone, controlled) if keep] == [p for p, keep in zip(etmemd, controlled) if keep]
    in_hot = [c for a, c, _ in alone if hot[0] <= a < hot[1]]
    in_cold = [c for a, c, _ in alone if cold[0] <= a < cold[1]]
    assert len(in_hot) == len(in_cold) == scanlib_programs.REGION // 4096
    assert set(in_hot) == {1} and set(in_cold) == {0}


def test_without_a_backend_the_library_in_this_process_scans_on_its_own(lib, steady):
    pid, hot, _ = steady
    scan = abi.scan_library()
    scan.lib.etmem_scan_set_backend(None)
    try:
        assert lib.etmemd_scan_init() == 0
        vmas = lib.etmemd_get_vmas(str(pid).encode(), None, 0, True)
        head = POINTER(abi.PageRefs)()
        assert lib.etmemd_get_page_refs(vmas, str(pid).encode(), byref(head), 0) == 0
        assert len([a for a, _, _ in listed(head) if hot[0] <= a < hot[1]]) == scanlib_programs.REGION // 4096
        lib.etmemd_free_page_refs(head)
        lib.etmemd_free_vmas(vmas)
        lib.etmemd_scan_exit()
    finally:
        scan.lib.etmem_scan_set_backend(byref(scan.backend))


@settings(max_examples=60, deadline=None)
@given(runs=layouts(), chunk=st.sampled_from([19, 40, 200, 8000]), data=st.data())
def test_the_c_idle_pages_decoder_matches_etmems(lib, runs, chunk, data):
    """The library's own reading of openEuler's idle_pages stream (this kernel has none to
    read) against etmem's decoder, on streams in the kernel's format, huge pages kept."""
    decode = lib.etmem_scan_decode_idle_pages
    decode.restype = ctypes.c_long
    decode.argtypes = [c_char_p, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_uint64, POINTER(ctypes.c_int32),
                       POINTER(ctypes.c_uint8), ctypes.c_uint64, ctypes.c_int, POINTER(ctypes.c_uint64)]
    stream, _ = encode_idle_pages(runs, chunk_size=chunk)
    base, nslots = window_for(data.draw, runs)
    want_counts, want_kinds, want_after = cython_decode(stream, base, nslots, True)
    counts = np.zeros(nslots, np.int32)
    kinds = np.zeros(nslots, np.uint8)
    after = ctypes.c_uint64()
    used = decode(stream, len(stream), 0, base, counts.ctypes.data_as(POINTER(ctypes.c_int32)),
                  kinds.ctypes.data_as(POINTER(ctypes.c_uint8)), nslots, 1, byref(after))
    assert used == len(stream) and after.value == want_after
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(kinds, want_kinds)
    assert decode(b"\xb1", 1, 0, base, counts.ctypes.data_as(POINTER(ctypes.c_int32)),
                  kinds.ctypes.data_as(POINTER(ctypes.c_uint8)), nslots, 1, None) == -1
