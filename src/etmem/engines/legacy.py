"""thirdparty: upstream's C engines (a .so with a `struct engine_ops`), loaded through ctypes.

`[engine] name=thirdparty` with `eng_name`, `libname` and `ops_name` loads the library
(after safety checks on the file), finds the ops table and drives its nine functions
with upstream's structures (legacy_abi.py), a GLib GKeyFile holding the engine's or
task's group, and a real file descriptor for private commands. The engine's own keys
pass through untouched. docs/plugins.md says when each function is called.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import stat
import threading

import attrs

from ..config import Name, Text, key
from ..errors import EtmemError, LegacyLoadError, ObjectError
from ..hookspecs import hookimpl
from ..process import resolve_targets
from ..strategy import Strategy
from . import legacy_abi as abi

log = logging.getLogger("etmem.legacy")

# Modes a library may have. Upstream accepts 0500 and 0700 only; ETMEM_LEGACY_LIB_MODES=any
# accepts any mode without group/other write permission (the file stays root-owned).
UPSTREAM_MODES = (0o500, 0o700)


@attrs.frozen
class LegacyEngineKeys:
    eng_name: str = key(Name(), help="the engine's name in its project; tasks name it in engine=")
    libname: str = key(Text(4096, absolute_path=True), help="absolute path of the engine's .so (owned by root:root, mode 0500 or 0700)")
    ops_name: str = key(Name(), help="symbol of the library's struct engine_ops")


def check_library_file(path: str) -> int:
    """Open the library and check the file opened; returns the read-only descriptor.

    Loading goes through /proc/self/fd/N of this descriptor, so the file checked is
    the file loaded, even if the path is swapped meanwhile.
    """
    if not os.path.isabs(path):
        raise LegacyLoadError(f"libname {path}: must be an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LegacyLoadError(f"libname {path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LegacyLoadError(f"libname {path}: not a regular file")
        if st.st_uid != 0 or st.st_gid != 0:
            raise LegacyLoadError(f"libname {path}: owned by {st.st_uid}:{st.st_gid}; it must be owned by "
                                  "root:root as upstream requires")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            raise LegacyLoadError(f"libname {path}: mode {mode:04o} lets group or others write it; "
                                  "use chmod 0500 or 0700")
        if os.environ.get("ETMEM_LEGACY_LIB_MODES", "upstream") != "any" and mode not in UPSTREAM_MODES:
            raise LegacyLoadError(f"libname {path}: mode {mode:04o}; it must be 0500 or 0700 as upstream requires "
                                  "(ETMEM_LEGACY_LIB_MODES=any accepts any mode without group/other write)")
    except BaseException:
        os.close(fd)
        raise
    return fd


class CProject:
    """The `struct project` the C engines of one project share."""

    def __init__(self, spec):
        self.struct = abi.Project()
        self.struct.name = abi.c_string(spec.name)
        self.struct.type = abi.SCAN_TYPES.get(spec.scan_type, 0)
        self.scan = abi.PageScan(spec.interval or 0, spec.loop or 0, spec.sleep or 0)
        if spec.scan_type == "page":
            self.struct.scan_param = ctypes.addressof(self.scan)
        self.struct.sysmem_threshold = -1 if spec.sysmem_threshold is None else spec.sysmem_threshold
        if spec.swapcache_high_wmark is not None:
            self.struct.wmark_set = True
            self.struct.swapcache_high_wmark = spec.swapcache_high_wmark
            self.struct.swapcache_low_wmark = spec.swapcache_low_wmark or 0
        self.engines: list["Legacy"] = []
        self.started_tasks = 0   # tasks of the project's C engines that run: `start` is true while any does

    def relink(self) -> None:
        """Rebuild the engs list (newest first, as upstream inserts)."""
        nxt = None
        for eng in self.engines:
            eng.struct.next = nxt
            nxt = ctypes.pointer(eng.struct)
        self.struct.engs = nxt


_projects_lock = threading.Lock()


def _c_project(engine) -> CProject:
    """The `struct project` of the engine's project, shared through the project's EngineView.shared."""
    with _projects_lock:
        found = engine.shared.get("thirdparty.project")
        if found is None:
            found = engine.shared["thirdparty.project"] = CProject(engine.project)
        return found


class CTask:
    """A task's `struct task`, its pid list and its stop event."""

    def __init__(self, task):
        self.struct = abi.Task()
        self.struct.type = abi.c_string(task.type)
        self.struct.value = abi.c_string(str(task.value))
        self.struct.name = abi.c_string(task.name)
        self.struct.max_threads = task.max_threads
        self.struct.swap_flag = 1 if task.swap_flag else 0
        self.pids: list[int] = []
        self.stop = threading.Event()


def _serialized(method):
    """Run a method holding the engine's call lock: upstream's etmemd served one request at
    a time, so C engines may assume their functions never run concurrently."""
    @functools.wraps(method)
    def wrapper(self, *args):
        with self.calls:
            return method(self, *args)
    return wrapper


class Legacy(Strategy):
    name = "thirdparty"
    engine_keys = LegacyEngineKeys
    pass_unknown_keys = True
    instance_key = "eng_name"
    schedule = "self"   # the C engine runs its own threads from start_task, as under upstream's etmemd
    description = "an upstream C engine (.so with struct engine_ops)"

    def __init__(self, engine):
        super().__init__(engine)
        keys = engine.keys
        self.libname, self.ops_name = keys.libname, keys.ops_name
        self.tasks: dict[str, CTask] = {}
        self.calls = threading.RLock()
        self.scan = abi.scan_library()
        fd = check_library_file(self.libname)
        try:
            try:
                self.lib = ctypes.CDLL(f"/proc/self/fd/{fd}", mode=os.RTLD_NOW | os.RTLD_LOCAL)
            except OSError as exc:
                raise LegacyLoadError(f"libname {self.libname}: cannot load: {_dl_reason(exc, fd)}") from None
        finally:
            os.close(fd)
        self.handle = self.lib._handle
        try:
            self.ops = self._find_ops()
            self.struct = abi.Engine()
            self.struct.engine_type = abi.THIRDPARTY_ENGINE
            self.struct.name = abi.c_string(keys.eng_name)
            self.struct.ops = ctypes.pointer(self.ops)
            self.struct.handler = self.handle
            self.cproject = _c_project(engine)
            self.struct.proj = ctypes.pointer(self.cproject.struct)
            self.cproject.engines.append(self)
            self.cproject.relink()
            try:
                self._fill_engine()
            except BaseException:
                self._unlink()
                raise
        except BaseException:
            self._unload()
            raise

    # -- loading ----------------------------------------------------------------------
    def _find_ops(self) -> abi.EngineOps:
        abi.libc.dlerror()
        address = abi.libc.dlsym(self.handle, self.ops_name.encode())
        if not address:
            err = abi.libc.dlerror()
            if err:
                raise LegacyLoadError(f"libname {self.libname}: no symbol {self.ops_name} (ops_name): "
                                      f"{err.decode(errors='replace').split(': ')[-1]}")
            raise LegacyLoadError(f"libname {self.libname}: ops_name {self.ops_name} is a NULL ops table")
        return abi.EngineOps.from_address(address)

    def _op(self, name: str):
        fn = getattr(self.ops, name)
        return fn if fn else None

    def _where(self, fn: str) -> str:
        return f"engine {self.engine.name} ({self.libname}, {self.ops_name}.{fn})"

    def _fill_engine(self) -> None:
        fill = self._op("fill_eng_params")
        if fill is None:
            return
        values = {"name": "thirdparty", "project": self.engine.project.name,
                  "eng_name": self.engine.name, "libname": self.libname, "ops_name": self.ops_name}
        values.update({k: str(v) for k, v in self.engine.extra.items()})
        with abi.KeyFile("engine", values) as kf:
            ret = fill(kf.ptr, ctypes.pointer(self.struct))
        if ret != 0:
            raise LegacyLoadError(f"{self._where('fill_eng_params')} failed (returned {ret})")

    def _unlink(self) -> None:
        if self in self.cproject.engines:
            self.cproject.engines.remove(self)
            self.cproject.relink()

    def _unload(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        self.lib = None
        if handle:
            abi.libc.dlclose(handle)

    # -- tasks ----------------------------------------------------------------------------
    @_serialized
    def add_task(self, task) -> None:
        ctask = CTask(task)
        ctask.struct.eng = ctypes.pointer(self.struct)
        ctask.struct.next = self.struct.tasks if self.struct.tasks else None
        self.struct.tasks = ctypes.pointer(ctask.struct)
        self.tasks[task.name] = ctask
        fill = self._op("fill_task_params")
        if fill is None:
            return
        values = {"project": task.project.name, "engine": self.engine.name, "name": task.name,
                  "type": task.type, "value": str(task.value), "max_threads": str(task.max_threads),
                  "swap_flag": "yes" if task.swap_flag else "no"}
        values.update({k: str(v) for k, v in task.extra.items()})
        with abi.KeyFile("task", values) as kf:
            ret = fill(kf.ptr, ctypes.pointer(ctask.struct))
        if ret != 0:
            self._unlink_task(task.name)
            raise LegacyLoadError(f"{self._where('fill_task_params')} failed for task {task.name} (returned {ret})")

    def _unlink_task(self, name: str) -> None:
        ctask = self.tasks.pop(name, None)
        if ctask is None:
            return
        at = self.struct.tasks
        prev = None
        while at:
            if ctypes.addressof(at.contents) == ctypes.addressof(ctask.struct):
                nxt = at.contents.next
                if prev is None:
                    self.struct.tasks = nxt if nxt else None
                else:
                    prev.next = nxt if nxt else None
                break
            prev = at.contents
            at = at.contents.next
        ctask.struct.eng = None
        ctask.struct.next = None

    @_serialized
    def remove_task(self, task) -> None:
        ctask = self.tasks.get(task.name)
        if ctask is None:
            return
        clear = self._op("clear_task_params")
        if clear is not None:
            clear(ctypes.pointer(ctask.struct))
        self._unlink_task(task.name)

    @_serialized
    def start_task(self, task) -> None:
        start = self._op("start_task")
        if start is None:
            raise LegacyLoadError(f"{self._where('start_task')} is NULL: the engine cannot start tasks")
        ctask = self.tasks[task.name]
        ctask.stop = threading.Event()
        self._fill_pids(task, ctask)
        spec = task.project
        self.scan.watch(ctask.pids, ctask.stop, spec.scanner, spec.sleep or 1)
        self.cproject.struct.start = True
        ret = start(ctypes.pointer(self.struct), ctypes.pointer(ctask.struct))
        if ret != 0:
            self._free_pids(ctask)
            self.cproject.struct.start = self.cproject.started_tasks > 0
            raise LegacyLoadError(f"{self._where('start_task')} failed for task {task.name} (returned {ret})")
        self.cproject.started_tasks += 1

    @_serialized
    def stop_task(self, task) -> None:
        ctask = self.tasks.get(task.name)
        if ctask is None:
            return
        ctask.stop.set()
        stop = self._op("stop_task")
        if stop is not None:
            stop(ctypes.pointer(self.struct), ctypes.pointer(ctask.struct))
        self._free_pids(ctask)
        self.cproject.started_tasks = max(0, self.cproject.started_tasks - 1)
        if not self.cproject.started_tasks:
            self.cproject.struct.start = False

    def _fill_pids(self, task, ctask: CTask) -> None:
        """Resolve the task's processes into tk->pids (ascending), calling alloc_pid_params for each."""
        try:
            handles = resolve_targets(task.type, str(task.value))
        except EtmemError as exc:
            task.stats.last_error = str(exc)
            log.warning("task %s: %s; the engine starts with no process", task.name, exc)
            handles = []
        pids = [h.pid for h in handles]
        for h in handles:
            h.close()
        alloc = self._op("alloc_pid_params")
        link = ctypes.pointer(ctask.struct)
        at = None  # last struct task_pid kept
        kept = []
        for pid in pids:
            ptr = abi.libc.calloc(1, ctypes.sizeof(abi.TaskPid))
            node = abi.TaskPid.from_address(ptr)
            node.pid = pid
            node.tk = link
            holder = ctypes.pointer(node)
            if alloc is not None:
                ret = alloc(ctypes.pointer(self.struct), ctypes.byref(holder))
                if ret != 0:
                    abi.libc.free(ptr)
                    log.warning("%s returned %d for process %d: left out", self._where("alloc_pid_params"), ret, pid)
                    continue
            if at is None:
                ctask.struct.pids = holder
            else:
                at.next = holder
            at = holder.contents
            kept.append(pid)
        ctask.pids = kept
        task.stats.targets = len(kept)
        task.stats.extra["pids"] = kept

    def _free_pids(self, ctask: CTask) -> None:
        free = self._op("free_pid_params")
        address = _address(ctask.struct.pids)
        ctask.struct.pids = None
        while address:
            node = abi.TaskPid.from_address(address)
            following = _address(node.next)
            holder = ctypes.pointer(node)
            if free is not None:
                free(ctypes.pointer(self.struct), ctypes.byref(holder))
            if holder:  # as upstream: free what the pointer holds after free_pid_params
                abi.libc.free(ctypes.addressof(holder.contents))
            address = following
        self.scan.forget(ctask.pids)
        ctask.pids = []

    # -- commands and removal ---------------------------------------------------------
    @_serialized
    def command(self, cmd: str, task) -> str:
        fn = self._op("eng_mgt_func")
        if fn is None:
            raise ObjectError(f"engine {self.engine.name} has no private commands "
                              f"({self.ops_name}.eng_mgt_func is NULL in {self.libname})")
        ctask = self.tasks.get(task.name) if task is not None else None
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        chunks: list[bytes] = []

        def drain():
            while True:
                data = os.read(read_fd, 65536)
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=drain, name=f"etmem-{self.engine.name}-cmd", daemon=True)
        reader.start()
        try:
            buf = ctypes.create_string_buffer(cmd.encode())
            ret = fn(ctypes.pointer(self.struct), ctypes.pointer(ctask.struct) if ctask else None,
                     ctypes.cast(buf, ctypes.c_char_p), write_fd)
        finally:
            os.close(write_fd)
            reader.join(10)
            if not reader.is_alive():
                os.close(read_fd)
            else:
                log.warning("%s kept its command fd open; its output is cut short", self._where("eng_mgt_func"))
        raw = b"".join(chunks)
        text = raw.replace(b"\xff", b"").replace(b"\xfe", b"").decode("utf-8", "replace")
        if ret != 0:
            raise ObjectError(f"{text}{'' if not text or text.endswith(chr(10)) else chr(10)}"
                              f"{self._where('eng_mgt_func')} failed for command '{cmd}' (returned {ret})")
        return text

    @_serialized
    def close(self) -> None:
        if getattr(self, "handle", None) is None:
            return
        for name in list(self.tasks):
            self._unlink_task(name)
        clear = self._op("clear_eng_params")
        if clear is not None:
            clear(ctypes.pointer(self.struct))
        self._unlink()
        self._unload()


def _address(pointer) -> int:
    """The address a ctypes pointer holds (0 for NULL), as a plain int that no later write changes."""
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0


def _dl_reason(exc: OSError, fd: int) -> str:
    return str(exc).replace(f"/proc/self/fd/{fd}: ", "")


@hookimpl
def etmem_engine_types():
    return [Legacy]
