"""procfs.vmas: maps where it says enough, smaps where VmFlags matter."""
import subprocess
import sys
import textwrap

from etmem import procfs

LOCKER = textwrap.dedent("""
    import ctypes, mmap, sys
    m = mmap.mmap(-1, 1 << 20)
    m.write(b"x" * len(m))
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if sys.argv[1] == "lock":
        assert ctypes.CDLL(None, use_errno=True).mlock(ctypes.c_void_p(addr), len(m)) == 0
    print(hex(addr), flush=True)
    sys.stdin.read()
""")


def start(mode):
    child = subprocess.Popen([sys.executable, "-c", LOCKER, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return child, int(child.stdout.readline(), 16)


def test_a_process_without_locked_or_hugetlb_memory_gets_the_cheap_maps(need_root):
    child, addr = start("plain")
    try:
        vmas = procfs.vmas(child.pid)
        assert [v[:7] for v in vmas] == [v[:7] for v in procfs.maps(child.pid)]
        assert not any(v.vmflags for v in vmas), "maps carries no VmFlags"
        assert any("rd" in v.vmflags for v in procfs.vmas(child.pid, flags=True)), "flags=True reads smaps"
    finally:
        child.kill()
        child.wait()


def test_locked_memory_is_seen_with_its_lo_flag(need_root):
    child, addr = start("lock")
    try:
        vma = next(v for v in procfs.vmas(child.pid) if v.start <= addr < v.end)
        assert "lo" in vma.vmflags
    finally:
        child.kill()
        child.wait()
