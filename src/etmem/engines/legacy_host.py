"""The helper process of one legacy C engine: it loads the engine's library (and the scan
library), drives its nine functions with upstream's structures and answers etmemd's
requests over a socket, so a crash of the engine ends this process, not etmemd.

etmemd's side is engines/legacy.py, which starts `python -m etmem.engines.legacy_host
SOCKET_FD LIBRARY_FD` with the socket and the already checked library as open
descriptors. `Wire` is the framing both sides speak.
"""
from __future__ import annotations

import argparse
import array
import collections
import ctypes
import errno
import itertools
import json
import logging
import os
import queue
import select
import socket
import struct
import sys
import threading

from ..errors import EtmemError, LegacyLoadError, ProtocolError
from . import legacy_abi as abi

log = logging.getLogger("etmem.legacy")

OPS = [name for name, _ in abi.EngineOps._fields_]
_LENGTH = struct.Struct("!I")
MAX_MESSAGE = 64 << 20
MAX_FDS = 4
CLAIM_WAIT = 10.0   # seconds a page pass waits for etmemd to grant a scan claim


class Wire:
    """One end of the socket between etmemd and a helper: JSON objects, each after its
    4-byte length; file descriptors ride along as SCM_RIGHTS and queue up in `fds`.
    Any thread may send; one thread receives."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fds: collections.deque[int] = collections.deque()
        self._send_lock = threading.Lock()
        self._buf = bytearray()

    def send(self, message: dict, fds=()) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        frame = memoryview(_LENGTH.pack(len(data)) + data)
        with self._send_lock:
            if fds:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                frame = frame[self.sock.sendmsg([frame], rights):]
            if frame:
                self.sock.sendall(frame)

    def receive(self, until: int | None = None) -> dict | None:
        """The next message, or None once the other end has closed the connection, or once
        the descriptor `until` (the other end's pidfd) polls readable and nothing more is queued."""
        while True:
            if len(self._buf) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(self._buf)
                if size > MAX_MESSAGE:
                    raise ProtocolError(f"a message of {size} bytes (at most {MAX_MESSAGE})")
                end = _LENGTH.size + size
                if len(self._buf) >= end:
                    message = json.loads(bytes(self._buf[_LENGTH.size:end]))
                    del self._buf[:end]
                    if not isinstance(message, dict):
                        raise ProtocolError(f"a message that is not an object: {message!r:.80}")
                    return message
            if until is not None and self.sock not in select.select([self.sock, until], [], [])[0]:
                return None   # the process has ended; a child it forked may still hold its socket
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(MAX_FDS * 4),
                                                      socket.MSG_CMSG_CLOEXEC)
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[:len(payload) - len(payload) % received.itemsize])
                    self.fds.extend(received)
            if not data:
                if self._buf:
                    raise ProtocolError("the connection closed in the middle of a message")
                return None
            self._buf += data

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()


# --- the helper's side ----------------------------------------------------------------------

class EtmemdClaims:
    """Scan claims taken in etmemd (etmem.scan.CLAIMS there) for the scan library's page
    passes, so a C engine and etmemd's own engines never scan one process at the same time."""

    def __init__(self, wire: Wire):
        self.wire = wire
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, list] = {}   # id -> [answered Event, granted]

    def claim(self, pid: int) -> int | None:
        """An id to hand to release(), or None when etmemd refused (another task scans the process)."""
        ident = next(self._ids)
        slot = [threading.Event(), False]
        with self._lock:
            self._waiting[ident] = slot
        self.wire.send({"claim": pid, "id": ident})
        answered = slot[0].wait(CLAIM_WAIT)
        with self._lock:
            self._waiting.pop(ident, None)
        if answered and slot[1]:
            return ident
        if not answered:
            self.release(ident)   # etmemd may grant it later: it reads this release after the claim
        return None

    def release(self, ident: int) -> None:
        self.wire.send({"release": ident})

    def answer(self, message: dict) -> None:
        with self._lock:
            slot = self._waiting.get(message["claimed"])
        if slot is not None:
            slot[1] = bool(message["ok"])
            slot[0].set()


class HostProject:
    """The helper's `struct project`, as etmemd describes the engine's project. Its engs
    list holds this engine and a stand-in (name, type, proj) for each other C engine of the
    project, which runs in a helper of its own."""

    def __init__(self, spec: dict):
        self.struct = abi.Project()
        self.struct.name = abi.c_string(spec["name"])
        self.struct.type = abi.SCAN_TYPES.get(spec["scan_type"], 0)
        self.scan = abi.PageScan(spec["interval"], spec["loop"], spec["sleep"])
        if spec["scan_type"] == "page":
            self.struct.scan_param = ctypes.addressof(self.scan)
        self.struct.sysmem_threshold = spec["sysmem_threshold"]
        if spec["swapcache_high_wmark"] is not None:
            self.struct.wmark_set = True
            self.struct.swapcache_high_wmark = spec["swapcache_high_wmark"]
            self.struct.swapcache_low_wmark = spec["swapcache_low_wmark"]
        self.stand_ins: dict[str, abi.Engine] = {}   # never freed: engine threads may hold them
        self.listed: list[str] = []

    def update(self, engine: "HostEngine", names: list[str], start: bool) -> None:
        """proj->start and proj->engs (names newest first, as upstream inserts)."""
        self.struct.start = bool(start)
        if names == self.listed:
            return
        following = None
        for name in reversed(names):
            node = engine.struct if name == engine.name else self._stand_in(name)
            node.next = following
            following = ctypes.pointer(node)
        self.struct.engs = following
        self.listed = list(names)

    def _stand_in(self, name: str) -> abi.Engine:
        found = self.stand_ins.get(name)
        if found is None:
            found = self.stand_ins[name] = abi.Engine()
            found.engine_type = abi.THIRDPARTY_ENGINE
            found.name = abi.c_string(name)
            found.proj = ctypes.pointer(self.struct)
        return found


class HostTask:
    """A task's `struct task`, its pid list and its stop event."""

    def __init__(self, spec: dict):
        self.struct = abi.Task()
        self.struct.type = abi.c_string(spec["type"])
        self.struct.value = abi.c_string(spec["value"])
        self.struct.name = abi.c_string(spec["name"])
        self.struct.max_threads = spec["max_threads"]
        self.struct.swap_flag = 1 if spec["swap_flag"] else 0
        self.pids: list[int] = []
        self.stop = threading.Event()


def find_ops(handle: int, libname: str, ops_name: str) -> int:
    """The address of ops_name in the library, once the dynamic linker's symbol entry shows
    a data object the size of a struct engine_ops (never call through anything else)."""
    abi.libc.dlerror()
    address = abi.libc.dlsym(handle, ops_name.encode())
    what = f"libname {libname}: ops_name {ops_name}"
    if not address:
        err = abi.libc.dlerror()
        if err:
            raise LegacyLoadError(f"libname {libname}: no symbol {ops_name} (ops_name): "
                                  f"{err.decode(errors='replace').split(': ')[-1]}")
        raise LegacyLoadError(f"{what} is a NULL ops table")
    size = ctypes.sizeof(abi.EngineOps)
    entry = abi.symbol_at(address)
    if entry is None or entry.address != address:
        raise LegacyLoadError(f"{what} has no entry of its own in the dynamic symbol table; "
                              f"it must name a struct engine_ops ({size} bytes)")
    if entry.type in (abi.STT_FUNC, abi.STT_GNU_IFUNC):
        raise LegacyLoadError(f"{what} is a function, not a struct engine_ops: ops_name names the table "
                              f"of nine function pointers ({size} bytes)")
    if entry.type != abi.STT_OBJECT:
        raise LegacyLoadError(f"{what} is a symbol of type {abi.STT_NAMES.get(entry.type, entry.type)}, "
                              f"not a struct engine_ops data object ({size} bytes)")
    if entry.size != size:
        raise LegacyLoadError(f"{what} is a data object of {entry.size} bytes, not a struct engine_ops "
                              f"({size} bytes: nine function pointers)")
    return address


class HostEngine:
    """The C engine in this process: its library, its `struct engine`, its tasks. Each
    request handler returns the reply; an EtmemError becomes an error reply."""

    def __init__(self, wire: Wire, lib_fd: int):
        self.wire = wire
        self.lib_fd = lib_fd
        self.claims = EtmemdClaims(wire)
        self.name = ""
        self.struct = abi.Engine()
        self.ops: abi.EngineOps | None = None
        self.project: HostProject | None = None
        self.tasks: dict[str, HostTask] = {}
        self.lib = None
        self.scan = None

    def _has(self, op: str) -> bool:
        return bool(getattr(self.ops, op))

    def _call(self, op: str, *args):
        """Call one of the engine's functions, telling etmemd first (a crash is blamed on it)."""
        self.wire.send({"at": op})
        return getattr(self.ops, op)(*args)

    # -- requests ----------------------------------------------------------------------------
    def open(self, req: dict) -> dict:
        libname, ops_name, self.name = req["libname"], req["ops_name"], req["eng_name"]
        self.scan = abi.scan_library()   # before the engine, so its DT_NEEDED libetmemd_scan.so is this one
        self.scan.claims = self.claims
        self.wire.send({"at": "dlopen (the library's constructors)"})
        try:
            self.lib = ctypes.CDLL(f"/proc/self/fd/{self.lib_fd}", mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:
            reason = str(exc).replace(f"/proc/self/fd/{self.lib_fd}: ", "")
            raise LegacyLoadError(f"libname {libname}: cannot load: {reason}") from None
        finally:
            os.close(self.lib_fd)
        self.wire.send({"at": "dlsym"})
        self.ops = abi.EngineOps.from_address(find_ops(self.lib._handle, libname, ops_name))
        self.project = HostProject(req["project"])
        self.struct.engine_type = abi.THIRDPARTY_ENGINE
        self.struct.name = abi.c_string(self.name)
        self.struct.ops = ctypes.pointer(self.ops)
        self.struct.handler = self.lib._handle
        self.struct.proj = ctypes.pointer(self.project.struct)
        self.project.update(self, req["engs"], req["start"])
        ret = 0
        if self._has("fill_eng_params"):
            with abi.KeyFile("engine", req["values"]) as kf:
                ret = self._call("fill_eng_params", kf.ptr, ctypes.pointer(self.struct))
        return {"ret": ret, "ops": [op for op in OPS if self._has(op)]}

    def add_task(self, req: dict) -> dict:
        spec = req["task"]
        task = HostTask(spec)
        task.struct.eng = ctypes.pointer(self.struct)
        task.struct.next = self.struct.tasks if self.struct.tasks else None
        self.struct.tasks = ctypes.pointer(task.struct)
        self.tasks[spec["name"]] = task
        ret = 0
        if self._has("fill_task_params"):
            with abi.KeyFile("task", req["values"]) as kf:
                ret = self._call("fill_task_params", kf.ptr, ctypes.pointer(task.struct))
        if ret != 0:
            self._unlink_task(spec["name"])
        return {"ret": ret}

    def remove_task(self, req: dict) -> dict:
        task = self.tasks.get(req["task"])
        if task is not None:
            if self._has("clear_task_params"):
                self._call("clear_task_params", ctypes.pointer(task.struct))
            self._unlink_task(req["task"])
        return {}

    def start_task(self, req: dict) -> dict:
        task = self.tasks[req["task"]]
        task.stop = threading.Event()
        left_out = self._fill_pids(task, req["pids"])
        self.scan.watch(task.pids, task.stop, req["scanner"], req["sleep"])
        kept = list(task.pids)
        ret = self._call("start_task", ctypes.pointer(self.struct), ctypes.pointer(task.struct))
        if ret != 0:
            self._free_pids(task)
            self.project.struct.start = bool(req["start_after"])
        return {"ret": ret, "pids": kept, "left_out": left_out}

    def stop_task(self, req: dict) -> dict:
        task = self.tasks.get(req["task"])
        if task is not None:
            task.stop.set()
            if self._has("stop_task"):
                self._call("stop_task", ctypes.pointer(self.struct), ctypes.pointer(task.struct))
            self._free_pids(task)
        self.project.struct.start = bool(req["start_after"])
        return {}

    def command(self, req: dict) -> dict:
        if not self.wire.fds:
            raise ProtocolError("a command request came without its output descriptor")
        fd = self.wire.fds.popleft()
        try:
            task = self.tasks.get(req["task"]) if req["task"] is not None else None
            buf = ctypes.create_string_buffer(req["cmd"].encode())
            ret = self._call("eng_mgt_func", ctypes.pointer(self.struct),
                             ctypes.pointer(task.struct) if task else None, ctypes.cast(buf, ctypes.c_char_p), fd)
        finally:
            os.close(fd)
        return {"ret": ret}

    def close(self, req: dict) -> dict:
        for name in list(self.tasks):
            self._unlink_task(name)
        if self._has("clear_eng_params"):
            self._call("clear_eng_params", ctypes.pointer(self.struct))
        self.wire.send({"at": "dlclose (the library's destructors)"})
        abi.libc.dlclose(self.lib._handle)
        return {"bye": True}

    # -- pids and task links ------------------------------------------------------------------
    def _fill_pids(self, task: HostTask, pids: list[int]) -> list[list[int]]:
        """tk->pids (in the order given), calling alloc_pid_params for each; [pid, ret] of those left out."""
        link = ctypes.pointer(task.struct)
        last = None   # the last struct task_pid kept
        kept, left_out = [], []
        for pid in pids:
            ptr = abi.libc.calloc(1, ctypes.sizeof(abi.TaskPid))
            node = abi.TaskPid.from_address(ptr)
            node.pid = pid
            node.tk = link
            holder = ctypes.pointer(node)
            if self._has("alloc_pid_params"):
                ret = self._call("alloc_pid_params", ctypes.pointer(self.struct), ctypes.byref(holder))
                if ret != 0:
                    abi.libc.free(ptr)
                    left_out.append([pid, ret])
                    continue
            if last is None:
                task.struct.pids = holder
            else:
                last.next = holder
            last = holder.contents
            kept.append(pid)
        task.pids = kept
        return left_out

    def _free_pids(self, task: HostTask) -> None:
        address = _address(task.struct.pids)
        task.struct.pids = None
        while address:
            node = abi.TaskPid.from_address(address)
            following = _address(node.next)
            holder = ctypes.pointer(node)
            if self._has("free_pid_params"):
                self._call("free_pid_params", ctypes.pointer(self.struct), ctypes.byref(holder))
            if holder:  # as upstream: free what the pointer holds after free_pid_params
                abi.libc.free(ctypes.addressof(holder.contents))
            address = following
        self.scan.forget(task.pids)
        task.pids = []

    def _unlink_task(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is None:
            return
        at, prev = self.struct.tasks, None
        while at:
            if ctypes.addressof(at.contents) == ctypes.addressof(task.struct):
                following = at.contents.next
                if prev is None:
                    self.struct.tasks = following if following else None
                else:
                    prev.next = following if following else None
                break
            prev, at = at.contents, at.contents.next
        task.struct.eng = None
        task.struct.next = None


HANDLERS = {"open": HostEngine.open, "add_task": HostEngine.add_task, "remove_task": HostEngine.remove_task,
            "start_task": HostEngine.start_task, "stop_task": HostEngine.stop_task,
            "command": HostEngine.command, "close": HostEngine.close}


def _address(pointer) -> int:
    """The address a ctypes pointer holds (0 for NULL), as a plain int that no later write changes."""
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0


class WireLog(logging.Handler):
    """Log records of the helper, sent to etmemd's log."""

    def __init__(self, wire: Wire):
        super().__init__()
        self.wire = wire

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.wire.send({"log": [record.levelno, record.name, record.getMessage()]})
        except OSError:
            pass


def serve(wire: Wire, engine: HostEngine) -> None:
    """Answer etmemd's requests one at a time, until `close` or until etmemd goes away."""
    requests: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            while (message := wire.receive()) is not None:
                if "claimed" in message:
                    engine.claims.answer(message)
                else:
                    requests.put(message)
        except (OSError, ValueError, EtmemError):
            pass
        # etmemd has gone (or dropped this engine): nothing of the engine may outlive it,
        # even while one of its functions never returns
        os._exit(0)

    def answer(message: dict) -> None:
        try:
            wire.send(message)
        except OSError:
            os._exit(0)   # etmemd has gone

    threading.Thread(target=read, name="etmem-helper-wire", daemon=True).start()
    answer({"ready": os.getpid()})
    while True:
        req = requests.get()
        op = req.get("op")
        try:
            handler = HANDLERS.get(op)
            if handler is None:
                raise ProtocolError(f"an unknown request {op!r}")
            if engine.project is not None:
                engine.project.update(engine, req["engs"], req["start"])
            answer({"reply": handler(engine, req)})
        except EtmemError as exc:
            answer({"error": str(exc)})
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                os._exit(0)   # etmemd has gone while a note was sent
            answer({"error": f"the helper of engine {engine.name} failed in {op}: {exc}"})
        except Exception as exc:   # a fault of this program, not of the engine: say so, keep serving
            answer({"error": f"the helper of engine {engine.name} failed in {op}: {type(exc).__name__}: {exc}"})
        if op == "close":
            os._exit(0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etmem.engines.legacy_host",
                                     description="The helper process of one C engine; etmemd starts it.")
    parser.add_argument("socket_fd", type=int)
    parser.add_argument("library_fd", type=int)
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    parser.add_argument("--cwd", default="/", help="etmemd's working directory, the engine's too")
    parser.add_argument("--engine", default="", help="the engine's label (for ps)")
    args = parser.parse_args(argv)
    # programs the engine runs (system(), popen()) have no business with etmemd's socket
    os.set_inheritable(args.socket_fd, False)
    wire = Wire(socket.socket(fileno=args.socket_fd))
    root = logging.getLogger()
    root.handlers[:] = [WireLog(wire)]
    root.setLevel(args.log_level)
    try:
        os.chdir(args.cwd)
    except OSError as exc:
        log.warning("cannot enter etmemd's working directory %s: %s", args.cwd, exc.strerror)
    serve(wire, HostEngine(wire, args.library_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
