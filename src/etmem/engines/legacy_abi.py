"""The C side of legacy engines: upstream's structures as ctypes types, GLib key files,
and the scan library (libetmemd_scan.so) whose functions C engines call.

The structures follow include/etmem_engine.h (upstream's ABI). The scan library is a
small C shared object shipped in the package that works in any C program on its own
(VMAs from /proc, page passes from the kernel's sources); in a C engine's helper process
(legacy_host.py) this module registers a Python callback with it for the page passes
(ctypes callbacks take the GIL, so engines may call from their own threads) and answers
them with etmem's Scanner, so a C engine's scans use the project's scanner source and
stop with its task. `symbol_at` reads the dynamic linker's symbol entry of an address
(what kind of symbol ops_name names, and its size).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char, c_char_p, c_float, c_int, c_int32,
                    c_ubyte, c_uint, c_uint16, c_uint32, c_uint64, c_ulong, c_void_p)
from typing import NamedTuple

import numpy as np

from ..errors import EtmemError
from ..kernel.abi import SCAN_AS_HUGE, SCAN_IGN_HOST, VMA_SCAN_FLAG, libc

log = logging.getLogger("etmem.legacy")

THIRDPARTY_ENGINE = 7
SCAN_TYPES = {"page": 0, "region": 1, "psi": 2}
PAGE_TYPES = {4096: 0, 2 << 20: 1, 1 << 30: 2}  # PTE, PMD, PUD


class PageScan(Structure):
    _fields_ = [("interval", c_int), ("loop", c_int), ("sleep", c_int)]


class Project(Structure):
    pass


class Engine(Structure):
    pass


class Task(Structure):
    pass


class TaskPid(Structure):
    pass


class PageRefs(Structure):
    pass


class Vma(Structure):
    pass


class Vmas(Structure):
    _fields_ = [("vma_cnt", c_uint64), ("vma_list", POINTER(Vma))]


GKeyFileP = c_void_p
FILL_ENG = CFUNCTYPE(c_int, GKeyFileP, POINTER(Engine))
CLEAR_ENG = CFUNCTYPE(None, POINTER(Engine))
FILL_TASK = CFUNCTYPE(c_int, GKeyFileP, POINTER(Task))
CLEAR_TASK = CFUNCTYPE(None, POINTER(Task))
START_TASK = CFUNCTYPE(c_int, POINTER(Engine), POINTER(Task))
STOP_TASK = CFUNCTYPE(None, POINTER(Engine), POINTER(Task))
ALLOC_PID = CFUNCTYPE(c_int, POINTER(Engine), POINTER(POINTER(TaskPid)))
FREE_PID = CFUNCTYPE(None, POINTER(Engine), POINTER(POINTER(TaskPid)))
ENG_MGT = CFUNCTYPE(c_int, POINTER(Engine), POINTER(Task), c_char_p, c_int)


class EngineOps(Structure):
    _fields_ = [
        ("fill_eng_params", FILL_ENG),
        ("clear_eng_params", CLEAR_ENG),
        ("fill_task_params", FILL_TASK),
        ("clear_task_params", CLEAR_TASK),
        ("start_task", START_TASK),
        ("stop_task", STOP_TASK),
        ("alloc_pid_params", ALLOC_PID),
        ("free_pid_params", FREE_PID),
        ("eng_mgt_func", ENG_MGT),
    ]


Project._fields_ = [
    ("name", c_char_p),
    ("type", c_int),
    ("scan_param", c_void_p),
    ("sysmem_threshold", c_int),
    ("swapcache_high_wmark", c_int),
    ("swapcache_low_wmark", c_int),
    ("start", c_bool),
    ("wmark_set", c_bool),
    ("engs", POINTER(Engine)),
    ("next_entry", POINTER(Project)),
]
Engine._fields_ = [
    ("engine_type", c_int),
    ("name", c_char_p),
    ("params", c_void_p),
    ("proj", POINTER(Project)),
    ("page_ref", POINTER(PageRefs)),
    ("ops", POINTER(EngineOps)),
    ("tasks", POINTER(Task)),
    ("page_cnt", c_uint64),
    ("next", POINTER(Engine)),
    ("handler", c_void_p),
]
Task._fields_ = [
    ("type", c_char_p),
    ("value", c_char_p),
    ("name", c_char_p),
    ("max_threads", c_int),
    ("swap_flag", c_int),
    ("pids", POINTER(TaskPid)),
    ("eng", POINTER(Engine)),
    ("params", c_void_p),
    ("task_pt", c_ulong),  # pthread_t
    ("timer_inst", c_void_p),
    ("threadpool_inst", c_void_p),
    ("next", POINTER(Task)),
]
TaskPid._fields_ = [
    ("pid", c_uint),
    ("rt_swapin_rate", c_float),
    ("params", c_void_p),
    ("tk", POINTER(Task)),
    ("next", POINTER(TaskPid)),
]
PageRefs._fields_ = [("addr", c_uint64), ("count", c_int), ("type", c_int), ("next", POINTER(PageRefs))]
Vma._fields_ = [
    ("start", c_uint64),
    ("end", c_uint64),
    ("stat", c_bool * 4),
    ("offset", c_uint64),
    ("inode", c_uint64),
    ("path", c_char * 256),
    ("major", c_char * 8),
    ("minor", c_char * 8),
    ("next", POINTER(Vma)),
]


# --- libc and GLib -----------------------------------------------------------------

libc.calloc.restype = c_void_p
libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
libc.malloc.restype = c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.restype = None
libc.free.argtypes = [c_void_p]
libc.dlsym.restype = c_void_p
libc.dlsym.argtypes = [c_void_p, c_char_p]
libc.dlerror.restype = c_char_p
libc.dlerror.argtypes = []
libc.dlclose.restype = c_int
libc.dlclose.argtypes = [c_void_p]


# --- symbol entries (what ops_name names) -------------------------------------------

class DlInfo(Structure):
    _fields_ = [("dli_fname", c_char_p), ("dli_fbase", c_void_p), ("dli_sname", c_char_p), ("dli_saddr", c_void_p)]


class Elf64Sym(Structure):
    _fields_ = [("st_name", c_uint32), ("st_info", c_ubyte), ("st_other", c_ubyte), ("st_shndx", c_uint16),
                ("st_value", c_uint64), ("st_size", c_uint64)]


class Elf32Sym(Structure):
    _fields_ = [("st_name", c_uint32), ("st_value", c_uint32), ("st_size", c_uint32), ("st_info", c_ubyte),
                ("st_other", c_ubyte), ("st_shndx", c_uint16)]


ElfSym = Elf64Sym if ctypes.sizeof(c_void_p) == 8 else Elf32Sym
RTLD_DL_SYMENT = 1
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_GNU_IFUNC = 0, 1, 2, 10
STT_NAMES = {0: "STT_NOTYPE", 1: "STT_OBJECT", 2: "STT_FUNC", 3: "STT_SECTION", 4: "STT_FILE", 5: "STT_COMMON",
             6: "STT_TLS", 10: "STT_GNU_IFUNC"}

_dl = libc if hasattr(libc, "dladdr1") else ctypes.CDLL("libdl.so.2")   # glibc before 2.34 keeps it in libdl
_dl.dladdr1.restype = c_int
_dl.dladdr1.argtypes = [c_void_p, POINTER(DlInfo), POINTER(POINTER(ElfSym)), c_int]


class SymbolEntry(NamedTuple):
    type: int       # STT_*
    size: int       # st_size
    address: int    # where the symbol starts


def symbol_at(address: int) -> SymbolEntry | None:
    """The dynamic symbol table entry (ELF st_info, st_size) of the loaded object that the
    dynamic linker finds for an address, or None when there is none."""
    info = DlInfo()
    entry = POINTER(ElfSym)()
    if not _dl.dladdr1(address, ctypes.byref(info), ctypes.byref(entry), RTLD_DL_SYMENT) or not entry:
        return None
    return SymbolEntry(entry.contents.st_info & 0xF, entry.contents.st_size, info.dli_saddr or 0)


_glib = None
_glib_lock = threading.Lock()


def glib():
    """The system's libglib-2.0 (the one C engines link with), loaded once."""
    global _glib
    with _glib_lock:
        if _glib is None:
            name = ctypes.util.find_library("glib-2.0") or "libglib-2.0.so.0"
            try:
                lib = ctypes.CDLL(name)
            except OSError as exc:
                raise EtmemError(f"legacy C engines need GLib (libglib-2.0.so.0), which cannot be loaded: {exc}; "
                                 "install it (Debian: libglib2.0-0)") from None
            lib.g_key_file_new.restype = c_void_p
            lib.g_key_file_new.argtypes = []
            lib.g_key_file_set_string.restype = None
            lib.g_key_file_set_string.argtypes = [c_void_p, c_char_p, c_char_p, c_char_p]
            lib.g_key_file_free.restype = None
            lib.g_key_file_free.argtypes = [c_void_p]
            _glib = lib
        return _glib


class KeyFile:
    """A GLib GKeyFile holding one group, for fill_eng_params / fill_task_params."""

    def __init__(self, group: str, values: dict[str, str]):
        self.lib = glib()
        self.ptr = self.lib.g_key_file_new()
        for k, v in values.items():
            self.lib.g_key_file_set_string(self.ptr, group.encode(), str(k).encode(), str(v).encode())

    def close(self) -> None:
        if self.ptr:
            self.lib.g_key_file_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> "KeyFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def c_string(text: str) -> c_char_p:
    """A char * that C may keep: malloc'ed, never freed while etmem runs (as upstream's names)."""
    raw = text.encode()
    ptr = libc.calloc(len(raw) + 1, 1)
    ctypes.memmove(ptr, raw, len(raw))
    return ctypes.cast(ptr, c_char_p)


# --- the scan library --------------------------------------------------------------

class PagePass(Structure):
    _fields_ = [("n", c_uint64), ("addr", POINTER(c_uint64)), ("count", POINTER(c_int32)), ("type", POINTER(c_int32))]


INIT_FN = CFUNCTYPE(c_int)
EXIT_FN = CFUNCTYPE(None)
PAGE_PASS_FN = CFUNCTYPE(c_int, POINTER(Vmas), c_char_p, c_int, POINTER(PagePass))


class ScanBackend(Structure):
    """struct etmem_scan_backend of csrc/etmemd_scan.c."""

    _fields_ = [("init", INIT_FN), ("exit", EXIT_FN), ("page_pass", PAGE_PASS_FN)]


def include_dir() -> str:
    """Directory of etmem_engine.h."""
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "include")


def _packaged_scan_library() -> str | None:
    here = os.path.dirname(os.path.dirname(__file__))
    found = sorted(glob.glob(os.path.join(here, "libetmemd_scan*.so")))
    return found[0] if found else None


def _built_scan_library() -> str:
    """Compile the scan library with the system compiler (a source tree that was never built)."""
    here = os.path.dirname(os.path.dirname(__file__))
    source = os.path.join(here, "csrc", "etmemd_scan.c")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not os.path.exists(source):
        raise EtmemError("the scan library for C engines (libetmemd_scan.so) is not installed and cannot be built "
                         "here: reinstall etmem (pip install .) on a machine with a C compiler")
    out_dir = tempfile.mkdtemp(prefix="etmem-scanlib-")
    out = os.path.join(out_dir, "libetmemd_scan.so")
    result = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wl,-soname,libetmemd_scan.so", "-o", out, source],
                            capture_output=True, text=True)
    if result.returncode:
        raise EtmemError(f"building libetmemd_scan.so failed: {result.stderr.strip()}")
    return out


def scan_library_path() -> str:
    return _packaged_scan_library() or _built_scan_library()


class ScanLibrary:
    """libetmemd_scan.so loaded RTLD_GLOBAL (so engines linked with -letmemd_scan resolve
    to it), its page passes answered through etmem's Scanner.

    `claims`, when set, is where a pass claims its process first (claim(pid) -> key or
    None, release(key)): a C engine's helper process sets it to etmemd's claims, so its
    passes and etmemd's own engines never scan one process at once.
    """

    def __init__(self):
        self.path = scan_library_path()
        self.lib = ctypes.CDLL(self.path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
        self.lib.etmem_scan_set_backend.restype = None
        self.lib.etmem_scan_set_backend.argtypes = [POINTER(ScanBackend)]
        self.claims = None
        self._lock = threading.Lock()
        self._stops: dict[int, threading.Event] = {}
        self._scanners: dict = {}  # project settings of a pid's task: (source, sleep)
        self.backend = ScanBackend(INIT_FN(self._init), EXIT_FN(self._exit), PAGE_PASS_FN(self._page_pass))
        self.lib.etmem_scan_set_backend(ctypes.byref(self.backend))

    def close(self) -> None:
        """Detach the callbacks (waits for calls in progress), before the interpreter ends."""
        self.lib.etmem_scan_set_backend(None)

    # -- what the shim tells the backend about its tasks' pids ---------------------
    def watch(self, pids, stop: threading.Event, source: str, sleep: float) -> None:
        with self._lock:
            for pid in pids:
                self._stops[pid] = stop
                self._scanners[pid] = (source, sleep)

    def forget(self, pids) -> None:
        with self._lock:
            for pid in pids:
                self._stops.pop(pid, None)
                self._scanners.pop(pid, None)

    # -- callbacks (any thread) --------------------------------------------------
    def _init(self) -> int:
        try:
            from ..scan import choose_source

            log.info("scan library: etmemd_scan_init, source %s", choose_source())
            return 0
        except Exception as exc:
            log.error("scan library: etmemd_scan_init failed: %s", exc)
            return -1

    def _exit(self) -> None:
        log.debug("scan library: etmemd_scan_exit")

    def _page_pass(self, vmas_p, pid_text, flags, out_p) -> int:
        try:
            from ..scan import Scanner

            pid = int(pid_text.decode())
            ranges = []
            node = vmas_p.contents.vma_list if vmas_p else None
            while node:
                ranges.append((node.contents.start, node.contents.end))
                node = node.contents.next
            out = out_p.contents
            out.n = 0
            if not ranges:
                return 0
            with self._lock:
                stop = self._stops.get(pid) or threading.Event()
                source, sleep = self._scanners.get(pid, ("auto", 1))
            claims = self.claims
            key = claims.claim(pid) if claims is not None else None
            if claims is not None and key is None:
                log.warning("scan library: scan of process %d failed: process %d is being scanned by "
                            "another task; not scanned now", pid, pid)
                return -1
            try:
                scanner = Scanner(pid, source=source, anon_only=False, ranges=ranges, huge="keep",
                                  ign_host=bool(flags & SCAN_IGN_HOST), as_huge=bool(flags & SCAN_AS_HUGE),
                                  swap_flag=bool(flags & VMA_SCAN_FLAG), read_only=True)
                refs = scanner.scan(loop=1, sleep=sleep, stop=stop)
            finally:
                if key is not None:
                    claims.release(key)
            if refs.passes < 1:
                log.warning("scan library: scan of process %d failed: %s", pid, refs.error or "stopped")
                return -1
            _fill_pass(out, refs.addr, refs.count, refs.size)
            return 0
        except Exception as exc:
            log.warning("scan library: etmemd_get_page_refs(%r) failed: %s", pid_text, exc)
            return -1


def _fill_pass(out: PagePass, addr: np.ndarray, count: np.ndarray, size: np.ndarray) -> None:
    n = len(addr)
    if not n:
        return
    types = np.zeros(n, dtype=np.int32)
    for nbytes, kind in PAGE_TYPES.items():
        types[size == nbytes] = kind
    arrays = [(np.ascontiguousarray(addr, dtype=np.uint64), c_uint64),
              (np.ascontiguousarray(count, dtype=np.int32), c_int32),
              (types, c_int32)]
    ptrs = []
    for arr, ctype in arrays:
        ptr = libc.malloc(arr.nbytes)
        if not ptr:
            for p in ptrs:
                libc.free(p)
            raise MemoryError("malloc failed")
        ctypes.memmove(ptr, arr.ctypes.data, arr.nbytes)
        ptrs.append(ptr)
    out.addr = ctypes.cast(ptrs[0], POINTER(c_uint64))
    out.count = ctypes.cast(ptrs[1], POINTER(c_int32))
    out.type = ctypes.cast(ptrs[2], POINTER(c_int32))
    out.n = n


_scan_library: ScanLibrary | None = None
_scan_lock = threading.Lock()


def scan_library() -> ScanLibrary:
    """The process's scan library, loaded (RTLD_GLOBAL) before any C engine."""
    global _scan_library
    with _scan_lock:
        if _scan_library is None:
            _scan_library = ScanLibrary()
            import atexit

            atexit.register(_scan_library.close)
        return _scan_library


def main(argv=None) -> int:
    """`python -m etmem.engines.legacy_abi --include | --scan-lib`: paths for building C engines."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--include"]:
        print(include_dir())
    elif args == ["--scan-lib"]:
        print(scan_library_path())
    else:
        print("usage: python -m etmem.engines.legacy_abi --include | --scan-lib", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
