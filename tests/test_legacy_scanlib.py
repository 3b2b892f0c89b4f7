"""libetmemd_scan.so called as a C engine calls it (through ctypes here): VMAs of a live
process, page_refs lists merged pass by pass in address order, failures as -1/NULL."""
from __future__ import annotations

import ctypes
import os
import subprocess
import time
from ctypes import POINTER, byref, c_char_p

import numpy as np
import pytest

from etmem import procfs
from etmem.engines import legacy_abi as abi


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


def test_passes_merge_into_one_sorted_list(lib):
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

    scan = abi.scan_library()
    backend = abi.ScanBackend(abi.INIT_FN(scan._init), abi.EXIT_FN(scan._exit), abi.GET_VMAS_FN(scan._get_vmas),
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


def test_a_scan_of_a_process_that_exited_fails_and_leaves_the_list_alone(lib):
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


def test_without_a_backend_every_call_fails_cleanly(lib):
    scan = abi.scan_library()
    scan.lib.etmem_scan_set_backend(None)
    try:
        assert lib.etmemd_scan_init() == -1
        assert not lib.etmemd_get_vmas(str(os.getpid()).encode(), None, 0, False)
        lib.etmemd_scan_exit()
    finally:
        scan.lib.etmem_scan_set_backend(byref(scan.backend))
    assert lib.etmemd_scan_init() == 0
