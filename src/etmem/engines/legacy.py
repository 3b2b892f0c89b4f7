"""thirdparty: upstream's C engines (a .so with a `struct engine_ops`), each run in a helper process of its own.

`[engine] name=thirdparty` with `eng_name`, `libname` and `ops_name` checks the library
file here, then starts the engine's helper (legacy_host.py), which loads the library,
checks that ops_name is a struct engine_ops, and drives its nine functions with
upstream's structures (legacy_abi.py), GLib key files and a real file descriptor for
private commands. `Legacy` is etmemd's side: every call is a request to the helper,
answered within a bounded time. A helper that crashes (or hangs and is killed) fails
its engine's calls and tasks with a message naming the engine, library, function and
signal or exit status; etmemd and every other engine run on. The engine's own keys pass
through untouched. docs/plugins.md says when each function is called.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading

import attrs

from ..config import Name, Text, file_type, key
from ..errors import EtmemError, LegacyLoadError, ObjectError, ProtocolError
from ..hookspecs import hookimpl
from ..process import resolve_targets
from ..scan import CLAIMS
from ..strategy import Strategy
from .legacy_host import Wire

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
    the file loaded, even if the path is swapped meanwhile. Symlinks are resolved first
    (libfoo.so -> libfoo.so.1 is common), then the file is opened without following one
    and without blocking (O_NOFOLLOW, O_NONBLOCK): a FIFO or a device named as libname is
    refused at once instead of hanging obj add.
    """
    if not os.path.isabs(path):
        raise LegacyLoadError(f"libname {path}: must be an absolute path")
    try:
        fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise LegacyLoadError(f"libname {path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LegacyLoadError(f"libname {path}: is {file_type(st)}, not a regular file")
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


# The helper runs `python -m etmem.engines.legacy_host` from the directory this etmem
# package is in, so it imports the same etmem (and never anything from etmemd's cwd).
HOST_MODULE = "etmem.engines.legacy_host"
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CALL_TIMEOUT = 30.0   # seconds; ETMEM_LEGACY_CALL_TIMEOUT changes it
START_TIMEOUT = 30.0          # seconds for the helper's Python to start
DRAIN_TIMEOUT = 10.0          # seconds a command's output may go on after its function returned


def call_timeout() -> float:
    """How long one request to a helper may take (ETMEM_LEGACY_CALL_TIMEOUT, seconds)."""
    text = os.environ.get("ETMEM_LEGACY_CALL_TIMEOUT")
    if text is None:
        return DEFAULT_CALL_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise LegacyLoadError(f"ETMEM_LEGACY_CALL_TIMEOUT={text}: must be a number of seconds above 0")
    return value


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _during(at: str | None) -> str:
    if at is None:
        return "while none of its functions was running (in a thread of its own)"
    if at == "start-up":
        return "while its helper process started (see etmemd's log)"
    return f"in {at}"


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"


class Helper:
    """etmemd's end of one C engine's helper process: requests and their replies, the
    helper's log lines and scan claims, and the helper's end.

    A reader thread takes everything the helper sends; when the connection ends it reaps
    the process, and unless etmemd let it go, says why it ended (`ended`), logs it, tells
    `on_crash`, and fails the call waiting for a reply. Nothing restarts it.
    """

    def __init__(self, label: str, lib_fd: int, on_crash):
        self.label = label
        self.on_crash = on_crash
        self.replies: queue.Queue = queue.Queue()
        self.at: str | None = "start-up"   # what the helper runs now, as it last said
        self.advice = ""                    # said after why it ended, once the engine is in its project
        self.ended: str | None = None      # why the helper is gone, once it is
        self._kill_reason: str | None = None
        self._let_go = False                # etmemd ended it: its exit is no crash
        self._claims: dict = {}             # etmemd scan claims the helper holds, by its id
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", HOST_MODULE, str(theirs.fileno()), str(lib_fd),
                 "--log-level", str(logging.getLogger("etmem").getEffectiveLevel()), "--cwd", _cwd(), "--engine", label],
                pass_fds=(theirs.fileno(), lib_fd), stdin=subprocess.DEVNULL, cwd=PACKAGE_PARENT,
                start_new_session=True)
        except OSError as exc:
            ours.close()
            raise LegacyLoadError(f"{label}: cannot start its helper process: {exc}") from None
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.pidfd = os.pidfd_open(self.pid)   # polls readable once the helper has ended
        self.wire = Wire(ours)
        self.reader = threading.Thread(target=self._read, name=f"etmem-helper-{self.pid}", daemon=True)
        self.reader.start()
        self._wait(START_TIMEOUT, "start-up")
        log.info("%s: helper process %d", label, self.pid)

    # -- calls --------------------------------------------------------------------------------
    def call(self, op: str, timeout: float, fds=(), **fields) -> dict:
        """Send one request and wait for its reply; LegacyLoadError when the helper fails it or is gone."""
        if self.ended:
            raise LegacyLoadError(self.ended)
        try:
            self.wire.send(dict(fields, op=op), fds)
        except OSError:
            pass   # the helper is gone: the reader says why
        reply = self._wait(timeout, op)
        if "error" in reply:
            raise LegacyLoadError(str(reply["error"]))
        return reply["reply"]

    def _wait(self, timeout: float, what: str) -> dict:
        try:
            message = self.replies.get(timeout=timeout)
        except queue.Empty:
            if what == "start-up":
                self.kill(f"{self.label}: its helper process did not start within {timeout:g} s; "
                          f"etmemd killed it (pid {self.pid})")
            else:
                self.kill(f"{self.label} did not return from {self.at or what} within {timeout:g} s: "
                          f"etmemd killed its helper process (pid {self.pid})")
            message = self._wait_for_end()
        if "ended" in message:
            raise LegacyLoadError(message["ended"])
        return message

    def _wait_for_end(self) -> dict:
        while True:
            try:
                message = self.replies.get(timeout=DRAIN_TIMEOUT)
            except queue.Empty:
                return {"ended": self._kill_reason + self.advice}
            if "ended" in message:
                return message

    def kill(self, reason: str) -> None:
        """End the helper with SIGKILL; `reason` becomes why it ended."""
        if self._kill_reason is None:
            self._kill_reason = reason
        try:
            self.proc.kill()
        except OSError:
            pass

    def let_go(self) -> None:
        """etmemd needs nothing more from the helper: it exits once its connection ends."""
        self._let_go = True
        try:
            self.wire.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.reader.join(DRAIN_TIMEOUT)
        if self.reader.is_alive():
            self.kill(f"{self.label}: its helper process did not exit when let go: etmemd killed it (pid {self.pid})")
            self.reader.join()

    # -- the reader thread --------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while (message := self.wire.receive(until=self.pidfd)) is not None:
                self._take(message)
        except OSError:
            pass   # the connection ended (ECONNRESET: the helper died with a request unread)
        except (ValueError, TypeError, KeyError, EtmemError) as exc:
            self.kill(f"{self.label} sent etmemd a message it cannot read ({exc}): etmemd killed its helper "
                      f"process (pid {self.pid})")
        self._end()

    def _take(self, message: dict) -> None:
        if "at" in message:
            self.at = str(message["at"])
        elif "log" in message:
            level, name, text = message["log"]
            logging.getLogger(str(name)).log(int(level), "%s: %s", self.label, text)
        elif "claim" in message:
            claim = CLAIMS.claim(int(message["claim"]))
            if claim is not None:
                self._claims[message["id"]] = claim
            try:
                self.wire.send({"claimed": message["id"], "ok": claim is not None})
            except OSError:
                pass   # the helper is gone; its end follows
        elif "release" in message:
            claim = self._claims.pop(message["release"], None)
            if claim is not None:
                CLAIMS.release(claim)
        elif {"reply", "error", "ready"} & message.keys():
            self.at = None
            if isinstance(message.get("reply"), dict) and message["reply"].get("bye"):
                self._let_go = True
            self.replies.put(message)
        else:
            raise ProtocolError(f"a message of unknown kind ({', '.join(sorted(message))})")

    def _end(self) -> None:
        for claim in self._claims.values():
            CLAIMS.release(claim)   # on this thread, which took them
        self._claims.clear()
        try:
            returncode = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill(f"{self.label} closed its connection to etmemd but did not exit: etmemd killed its "
                      f"helper process (pid {self.pid})")
            returncode = self.proc.wait()
        self.wire.close()
        os.close(self.pidfd)
        if self._kill_reason is None and self._let_go and returncode == 0:
            self.ended = f"{self.label} is closed"
            log.debug("%s: helper process %d ended", self.label, self.pid)
        else:
            self.ended = (self._kill_reason or
                          f"{self.label} crashed: {_exit_text(returncode)} {_during(self.at)}") + self.advice
            log.error("%s", self.ended)
            self.on_crash(self.ended)
        self.replies.put({"ended": self.ended})


class SharedProject:
    """What the C engines of one project share. Upstream's struct project lists them all
    (proj->engs) and says whether any of their tasks runs (proj->start); each engine's
    helper gets both with every request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.engines: list["Legacy"] = []   # in the order they were added

    def join(self, engine: "Legacy") -> None:
        with self.lock:
            self.engines.append(engine)

    def leave(self, engine: "Legacy") -> None:
        with self.lock:
            if engine in self.engines:
                self.engines.remove(engine)

    def state(self) -> dict:
        with self.lock:
            return {"engs": [e.engine.name for e in reversed(self.engines)],
                    "start": any(e.started and not e.helper.ended for e in self.engines)}


_projects_lock = threading.Lock()


def _shared_project(engine) -> SharedProject:
    """The SharedProject of the engine's project, kept in the project's EngineView.shared."""
    with _projects_lock:
        found = engine.shared.get("thirdparty.project")
        if found is None:
            found = engine.shared["thirdparty.project"] = SharedProject()
        return found


def _project_fields(spec) -> dict:
    """What the helper builds its struct project from."""
    return {"name": spec.name, "scan_type": spec.scan_type, "interval": spec.interval or 0, "loop": spec.loop or 0,
            "sleep": spec.sleep or 0,
            "sysmem_threshold": -1 if spec.sysmem_threshold is None else spec.sysmem_threshold,
            "swapcache_high_wmark": spec.swapcache_high_wmark, "swapcache_low_wmark": spec.swapcache_low_wmark or 0}


class Legacy(Strategy):
    name = "thirdparty"
    engine_keys = LegacyEngineKeys
    pass_unknown_keys = True
    instance_key = "eng_name"
    schedule = "self"   # the C engine runs its own threads from start_task, as under upstream's etmemd
    description = "an upstream C engine (.so with struct engine_ops), in a helper process of its own"

    def __init__(self, engine):
        super().__init__(engine)
        keys = engine.keys
        self.libname, self.ops_name = keys.libname, keys.ops_name
        self.label = f"engine {engine.name} ({self.libname}, {self.ops_name})"
        self.timeout = call_timeout()
        # one request at a time: upstream's etmemd served one request at a time, so C
        # engines may assume their functions never run concurrently
        self.calls = threading.Lock()
        self.started: set[str] = set()   # tasks whose start_task succeeded and that were not stopped since
        self.closed = False
        fd = check_library_file(self.libname)
        try:
            self.helper = Helper(self.label, fd, self._crashed)
        finally:
            os.close(fd)
        self.share = _shared_project(engine)
        self.share.join(self)
        values = {"name": "thirdparty", "project": engine.project.name, "eng_name": engine.name,
                  "libname": self.libname, "ops_name": self.ops_name}
        values.update({k: str(v) for k, v in engine.extra.items()})
        try:
            reply = self._request("open", libname=self.libname, ops_name=self.ops_name, eng_name=engine.name,
                                  project=_project_fields(engine.project), values=values)
            if reply["ret"] != 0:
                raise LegacyLoadError(f"{self._where('fill_eng_params')} failed (returned {reply['ret']})")
        except BaseException:
            self.share.leave(self)
            self.helper.let_go()
            raise
        self.ops = set(reply["ops"])
        self.helper.advice = ("; its tasks are stopped and its calls fail until the engine is deleted and "
                              "added again (etmem obj del / obj add)")

    def _where(self, fn: str) -> str:
        return f"engine {self.engine.name} ({self.libname}, {self.ops_name}.{fn})"

    def _request(self, op: str, fds=(), **fields) -> dict:
        with self.calls:
            return self.helper.call(op, self.timeout, fds, **{**self.share.state(), **fields})

    def _cleanup_request(self, op: str, **fields) -> None:
        """A request that releases something: once the helper is gone there is nothing to
        release (its end is logged and in the tasks' last_error), so it never fails."""
        if self.helper.ended:
            return
        try:
            self._request(op, **fields)
        except LegacyLoadError as exc:
            if not self.helper.ended:
                log.warning("%s", exc)

    def _crashed(self, message: str) -> None:
        for view in list(self.engine.tasks):
            view.stats.last_error = message

    # -- tasks ----------------------------------------------------------------------------
    def add_task(self, task) -> None:
        values = {"project": task.project.name, "engine": self.engine.name, "name": task.name,
                  "type": task.type, "value": str(task.value), "max_threads": str(task.max_threads),
                  "swap_flag": "yes" if task.swap_flag else "no"}
        values.update({k: str(v) for k, v in task.extra.items()})
        spec = {"name": task.name, "type": task.type, "value": str(task.value), "max_threads": task.max_threads,
                "swap_flag": bool(task.swap_flag)}
        reply = self._request("add_task", task=spec, values=values)
        if reply["ret"] != 0:
            raise LegacyLoadError(f"{self._where('fill_task_params')} failed for task {task.name} "
                                  f"(returned {reply['ret']})")

    def remove_task(self, task) -> None:
        self._cleanup_request("remove_task", task=task.name)

    def start_task(self, task) -> None:
        if self.helper.ended:
            raise LegacyLoadError(self.helper.ended)
        if "start_task" not in self.ops:
            raise LegacyLoadError(f"{self._where('start_task')} is NULL: the engine cannot start tasks")
        spec = task.project
        reply = self._request("start_task", task=task.name, pids=self._resolve(task), scanner=spec.scanner,
                              sleep=spec.sleep or 1, start=True, start_after=self.share.state()["start"])
        for pid, ret in reply["left_out"]:
            log.warning("%s returned %d for process %d: left out", self._where("alloc_pid_params"), ret, pid)
        task.stats.targets = len(reply["pids"])
        task.stats.extra["pids"] = reply["pids"]
        if reply["ret"] != 0:
            raise LegacyLoadError(f"{self._where('start_task')} failed for task {task.name} (returned {reply['ret']})")
        self.started.add(task.name)

    def stop_task(self, task) -> None:
        if task.name not in self.started:
            return
        self.started.discard(task.name)
        self._cleanup_request("stop_task", task=task.name, start_after=self.share.state()["start"])

    def _resolve(self, task) -> list[int]:
        """The task's processes, ascending (the engine's tk->pids)."""
        try:
            handles = resolve_targets(task.type, str(task.value), start_time=task.target_start,
                                      allow_init=task.allow_init)
        except EtmemError as exc:
            task.stats.last_error = str(exc)
            log.warning("task %s: %s; the engine starts with no process", task.name, exc)
            return []
        for h in handles:
            h.close()
        return [h.pid for h in handles]

    # -- commands and removal ---------------------------------------------------------
    def command(self, cmd: str, task) -> str:
        if self.helper.ended:
            raise LegacyLoadError(self.helper.ended)
        if "eng_mgt_func" not in self.ops:
            raise ObjectError(f"engine {self.engine.name} has no private commands "
                              f"({self.ops_name}.eng_mgt_func is NULL in {self.libname})")
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
        failure = None
        try:
            ret = self._request("command", fds=[write_fd], cmd=cmd, task=task.name if task is not None else None)["ret"]
        except LegacyLoadError as exc:
            failure = exc
        finally:
            os.close(write_fd)
            reader.join(DRAIN_TIMEOUT)
            if not reader.is_alive():
                os.close(read_fd)
            else:
                log.warning("%s kept its command fd open; its output is cut short", self._where("eng_mgt_func"))
        raw = b"".join(chunks)
        text = raw.replace(b"\xff", b"").replace(b"\xfe", b"").decode("utf-8", "replace")
        newline = "" if not text or text.endswith("\n") else "\n"
        if failure is not None:
            raise LegacyLoadError(f"{text}{newline}{failure}")
        if ret != 0:
            raise ObjectError(f"{text}{newline}{self._where('eng_mgt_func')} failed for command '{cmd}' (returned {ret})")
        return text

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._cleanup_request("close")
        finally:
            self.share.leave(self)
            self.helper.let_go()


@hookimpl
def etmem_engine_types():
    return [Legacy]
