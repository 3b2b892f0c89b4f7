"""etmemd's socket server: peer checks, request handling, a thread per connection.

`Daemon` listens on an abstract unix socket, checks each peer's credentials
(SO_PEERCRED), reads one request line (`protocol`), runs it on a `Manager` and
answers with text and a 0xFF/0xFE tag. Every failure a peer can cause becomes a
failure reply that starts with upstream's text for its cause (errors.cause_of);
nothing a peer sends can stop the daemon. A refused peer is answered and closed by
the accepting thread itself, so it takes no connection slot and no thread: the slots
are root's.

Config files named in `obj add`/`obj del` are resolved and checked here, before the
Manager sees them: a relative path is taken relative to the *client's* working
directory (read from /proc/PEER_PID/cwd, since upstream's client sends the path as
typed), then it must be a regular file owned by root with upstream's modes.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from . import protocol
from .config import decode_config, kernel_tree
from .errors import Cause, EtmemError, ObjectError, RequestRefused, cause_of
from .protocol import Command, ProtocolError, Request

log = logging.getLogger("etmem.daemon")

#: Upstream refuses config files above 10 MiB.
MAX_CONFIG_SIZE = 10 << 20
#: A connection must deliver its request within this many seconds.
REQUEST_TIMEOUT = 10.0
#: After a chunk that is not yet a whole request, wait this long for more bytes.
REQUEST_IDLE_GAP = 0.2
#: At most this many (root) connections are served at once; more wait in the listen
#: backlog. Refused peers never take one.
MAX_CONNECTIONS = 128
#: Connections the kernel queues until etmemd accepts them (every peer's; a refused
#: peer leaves the queue as soon as it is accepted).
LISTEN_BACKLOG = 256
#: On stop, requests already running get this long in all to finish; connections
#: still sending their request are answered at once.
SHUTDOWN_TIMEOUT = 5.0
#: At most one log line about refused peers per this many seconds; the next one counts
#: the refusals in between, so a flood of refused connections cannot flood the log.
REFUSAL_LOG_INTERVAL = 1.0
#: Config permission rules: upstream's (root:root, mode 0400 or 0600) or relaxed
#: (owned by uid 0, no group or other write permission).
CONFIG_PERMS = ("strict", "relaxed")
#: Why a strict refusal refuses: a file names the processes and libraries etmemd acts on as root.
_STRICT_RULE = "as upstream's, etmemd reads only config files no one but root can read or write"
#: The reply to a request that arrives, or is still arriving, once etmemd is stopping.
STOPPING_TEXT = protocol.failure_text(Cause.INTERNAL, "etmemd is stopping; the request was not run")


class ManagerLike(Protocol):
    def add_text(self, text: str, path: str | None = None) -> list[str]: ...
    def delete_text(self, text: str, path: str | None = None) -> list[str]: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def show(self, name: str | None = None) -> list[dict]: ...
    def engine_command(self, project: str, engine: str, cmd: str, task: str | None = None) -> str: ...
    def close(self) -> list[str] | None: ...   # the tasks that did not stop in time


@dataclass(frozen=True)
class Peer:
    """The credentials of a connected client, as the kernel reports them."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, conn: socket.socket) -> Peer:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return cls(pid, uid, gid)

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def resolve_config_path(path: str, peer: Peer) -> str:
    """The absolute real path of config `path` as the peer meant it.

    A relative path is joined to the peer's working directory, read from
    /proc/PID/cwd (the pid comes from SO_PEERCRED).
    """
    if not os.path.isabs(path):
        try:
            cwd = os.readlink(f"/proc/{peer.pid}/cwd")
        except OSError as e:
            raise RequestRefused(f"cannot resolve relative config path {path}: the client's "
                                 f"working directory is unreadable ({e.strerror}); "
                                 f"give an absolute path") from None
        path = os.path.join(cwd, path)
    return os.path.realpath(path)


def check_config_file(path: str, perms: str = "strict") -> str:
    """The text of `path` if it is a config file etmemd may trust; else RequestRefused.

    The checks are made on the open file and the text is read from it, so the file
    that was checked is the file that is used (no window to swap it by path).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RequestRefused(f"config file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        tree = kernel_tree(os.path.realpath(path), st)
        if tree:   # root-owned and 0400 there too: etmemd would echo its own /proc files back
            raise RequestRefused(f"config file {path} is under {tree}: config files are never read from "
                                 "/proc, /sys or /dev (kernel and device files, not configuration)")
        if not stat.S_ISREG(st.st_mode):
            raise RequestRefused(f"config file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if perms == "strict":
            if st.st_uid != 0 or st.st_gid != 0:
                raise RequestRefused(f"config file {path} must be owned by root:root "
                                     f"(it is owned by {st.st_uid}:{st.st_gid}): {_STRICT_RULE}; "
                                     f"chown root:root {path}")
            if mode not in (0o400, 0o600):
                raise RequestRefused(f"config file {path} must have mode 0400 or 0600 "
                                     f"(it has {mode:04o}): {_STRICT_RULE}; chmod 600 {path} "
                                     f"(or start etmemd with --config-perms relaxed)")
        else:
            if st.st_uid != 0:
                raise RequestRefused(f"config file {path} must be owned by root "
                                     f"(it is owned by uid {st.st_uid})")
            if mode & 0o022:
                raise RequestRefused(f"config file {path} must not be writable by group or others "
                                     f"(it has mode {mode:04o})")
        if st.st_size > MAX_CONFIG_SIZE:
            raise RequestRefused(f"config file {path} is {st.st_size} bytes; at most "
                                 f"{MAX_CONFIG_SIZE} are accepted")
        chunks, size = [], 0
        while size <= MAX_CONFIG_SIZE:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_SIZE:
            raise RequestRefused(f"config file {path} grew past {MAX_CONFIG_SIZE} bytes while being read")
    except OSError as e:
        raise RequestRefused(f"config file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return decode_config(b"".join(chunks), path)


def listening_socket(socket_name: str) -> socket.socket:
    """A socket bound to abstract name `socket_name` and listening; EtmemError if the
    name is taken (another etmemd listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(protocol.socket_address(socket_name))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise EtmemError(f"socket name {socket_name} is already in use "
                             f"(is another etmemd running?)") from None
        raise EtmemError(f"cannot bind socket {socket_name}: {e.strerror}") from None
    sock.listen(LISTEN_BACKLOG)
    return sock


class Daemon:
    """The etmemd server: one listening socket, one thread per connection, one Manager."""

    def __init__(self, socket_name: str, manager: ManagerLike, *,
                 allowed_gids: frozenset[int] = frozenset({0}), config_perms: str = "strict",
                 request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS,
                 shutdown_timeout: float = SHUTDOWN_TIMEOUT):
        protocol.check_socket_name(socket_name)
        if config_perms not in CONFIG_PERMS:
            raise ValueError(f"config_perms must be one of {CONFIG_PERMS}")
        self.socket_name = socket_name
        self.manager = manager
        self.allowed_gids = frozenset(allowed_gids) | {0}
        self.config_perms = config_perms
        self.request_timeout = request_timeout
        self.shutdown_timeout = shutdown_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = threading.Event()
        # each connection's thread -> its socket; `_running` those whose request runs
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._running: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._refusals_unlogged = 0
        self._refusal_log_after = 0.0
        self.unstopped: list[str] = []   # after serve_forever: tasks Manager.close left behind

    # -- lifecycle ----------------------------------------------------------------

    def listen(self, sock: socket.socket | None = None) -> None:
        """Serve on `sock`, from listening_socket(self.socket_name), or bind one now;
        EtmemError if the name is taken."""
        self._sock = sock if sock is not None else listening_socket(self.socket_name)
        log.info("listening on abstract socket @%s", self.socket_name)

    def serve_forever(self) -> None:
        """Accept connections until `request_stop()`; then stop all projects."""
        assert self._sock is not None, "listen() first"
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([self._sock, self._wake_r], [], [])
                if self._stopping.is_set():
                    break
                if self._sock not in ready:
                    continue
                try:
                    conn, _ = self._sock.accept()
                except OSError as e:
                    log.warning("accept failed: %s", e.strerror)
                    continue
                try:
                    peer = Peer.of(conn)
                except OSError as e:
                    log.warning("cannot read a peer's credentials: %s", e.strerror)
                    conn.close()
                    continue
                if not self.peer_allowed(peer):
                    self._refuse(conn, peer)
                    continue
                while not self._slots.acquire(timeout=0.5):
                    if self._stopping.is_set():
                        break
                if self._stopping.is_set():
                    conn.close()
                    break
                thread = threading.Thread(target=self._serve_connection, args=(conn, peer),
                                          name="etmemd-conn", daemon=True)
                with self._threads_lock:
                    self._connections[thread] = conn
                thread.start()
        finally:
            self._shutdown()

    def request_stop(self) -> None:
        """Ask serve_forever() to return; safe from a signal handler or another thread."""
        self._stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _shutdown(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._refusals_unlogged:
            log.warning("refused %d more connections of peers that are not uid 0 with gid %s",
                        self._refusals_unlogged, self._gid_text())
        deadline = time.monotonic() + self.shutdown_timeout
        with self._threads_lock:
            threads = list(self._connections)
            for thread, conn in self._connections.items():
                if thread not in self._running:   # still reading: end that at once
                    try:
                        conn.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._threads_lock:
            running = len(self._running)
        if running:
            log.warning("%d request%s still running after %g s; not waiting any longer",
                        running, "" if running == 1 else "s", self.shutdown_timeout)
        log.info("stopping all projects")
        try:
            self.unstopped = list(self.manager.close() or [])
        except Exception:
            log.exception("stopping the projects failed")
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("etmemd stopped")

    # -- one connection -------------------------------------------------------------

    def _refuse(self, conn: socket.socket, peer: Peer) -> None:
        """Answer a peer that may not talk and close at once, on the accepting thread:
        nothing it sends is read or waited for. Closing with its bytes unread makes its
        next read after our reply fail (ECONNRESET) instead of seeing end of file; the
        reply itself is already queued to it."""
        text = (f"error: permission denied: etmemd accepts requests only from uid 0 "
                f"with gid {self._gid_text()} (you are uid {peer.uid} gid {peer.gid})")
        try:
            conn.send(protocol.encode_reply(text, False), socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()
        now = time.monotonic()
        if now < self._refusal_log_after:
            self._refusals_unlogged += 1
            return
        more = (f" ({self._refusals_unlogged} more refused since the last such line)"
                if self._refusals_unlogged else "")
        log.warning("refused a request from %s: etmemd accepts only uid 0 with gid %s%s",
                    peer, self._gid_text(), more)
        self._refusals_unlogged = 0
        self._refusal_log_after = now + REFUSAL_LOG_INTERVAL

    def _serve_connection(self, conn: socket.socket, peer: Peer) -> None:
        try:
            with conn:
                self.handle(conn, peer)
        except Exception:
            log.exception("unexpected error while serving a connection")
        finally:
            self._slots.release()
            with self._threads_lock:
                self._connections.pop(threading.current_thread(), None)
                self._running.discard(threading.current_thread())

    def handle(self, conn: socket.socket, peer: Peer) -> None:
        """Serve one connection of an allowed peer: read the request, run it, reply."""
        conn.settimeout(self.request_timeout)
        try:
            data = self._read_request(conn)
            log.debug("request from %s: %r", peer, data)
            request = protocol.decode_request(data)
        except ProtocolError as e:
            if self._stopping.is_set():   # cut short by the stop
                self._reply(conn, STOPPING_TEXT, ok=False)
                return
            log.warning("bad request from %s: %s", peer, e)
            self._reply(conn, protocol.failure_text(Cause.INVALID, str(e)), ok=False)
            return
        except OSError as e:
            log.warning("reading the request from %s failed: %s", peer, e)
            return
        if not self._begin_request():
            self._reply(conn, STOPPING_TEXT, ok=False)
            return
        text, ok = self.execute(request, peer)
        self._reply(conn, text, ok)

    def _begin_request(self) -> bool:
        """Count this connection's request as running, unless etmemd is stopping."""
        with self._threads_lock:
            if self._stopping.is_set():
                return False
            self._running.add(threading.current_thread())
            return True

    def peer_allowed(self, peer: Peer) -> bool:
        return peer.uid == 0 and peer.gid in self.allowed_gids

    def _gid_text(self) -> str:
        return " or ".join(str(g) for g in sorted(self.allowed_gids))

    def _read_request(self, conn: socket.socket) -> bytes:
        """Read one request: until EOF, or until the bytes form a whole request and no
        more follow at once, or until the sender pauses (REQUEST_IDLE_GAP), and never
        longer than the request timeout in all."""
        buf = b""
        deadline = time.monotonic() + self.request_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if buf:
                    return buf
                raise ProtocolError(f"no request within {self.request_timeout:g} s")
            conn.settimeout(min(left, REQUEST_IDLE_GAP) if buf else left)
            try:
                chunk = conn.recv(protocol.MAX_REQUEST + 1 - len(buf))
            except TimeoutError:
                if buf:
                    return buf
                raise ProtocolError(f"no request within {self.request_timeout:g} s") from None
            if not chunk:
                if not buf:
                    raise ProtocolError("empty request")
                return buf
            buf += chunk
            if len(buf) > protocol.MAX_REQUEST:
                self._drain(conn)
                raise ProtocolError(f"request longer than {protocol.MAX_REQUEST} bytes")
            if self._is_whole(buf):
                conn.settimeout(0.0)  # only what is already queued
                try:
                    more = conn.recv(protocol.MAX_REQUEST + 1 - len(buf))
                except (BlockingIOError, InterruptedError):
                    return buf
                if not more:
                    return buf
                buf += more
                if len(buf) > protocol.MAX_REQUEST:
                    self._drain(conn)
                    raise ProtocolError(f"request longer than {protocol.MAX_REQUEST} bytes")

    @staticmethod
    def _is_whole(buf: bytes) -> bool:
        """True when `buf` has all twelve words of a request line (valid or not)."""
        return len(buf.split(b" ")) == 2 * len(protocol.KEYS) and not buf.endswith(b" ")

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        """Read and drop (up to 1 MiB of) what a root client still sends of an over-long
        request, so that it reads end of file after our reply, not ECONNRESET."""
        conn.settimeout(REQUEST_IDLE_GAP)
        seen = 0
        try:
            while seen < 1 << 20:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                seen += len(chunk)
        except OSError:
            return

    @staticmethod
    def _reply(conn: socket.socket, text: str, ok: bool) -> None:
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(protocol.encode_reply(text, ok))
        except OSError as e:
            log.info("could not send the reply: %s", e)

    # -- running requests ---------------------------------------------------------

    def execute(self, request: Request, peer: Peer) -> tuple[str, bool]:
        """Run a decoded request; (reply text, success)."""
        what = request.cmd.label
        try:
            text = self._run(request, peer)
        except EtmemError as e:
            log.warning("%s failed (%s): %s", what, peer, e)
            return protocol.failure_text(cause_of(e), str(e)), False
        except Exception as e:  # a bug below us must not take the daemon down
            log.exception("%s failed with an internal error", what)
            return protocol.failure_text(Cause.INTERNAL, f"{type(e).__name__}: {e} "
                                                         f"(details in the etmemd log)"), False
        log.debug("%s succeeded (%s)", what, peer)
        return text, True

    def _run(self, request: Request, peer: Peer) -> str:
        m = self.manager
        cmd = request.cmd
        if cmd in (Command.OBJ_ADD, Command.OBJ_DEL):
            assert request.file is not None
            path = resolve_config_path(request.file, peer)
            text = check_config_file(path, self.config_perms)
            if cmd == Command.OBJ_ADD:
                added = m.add_text(text, path)
                log.debug("added %s from %s", ", ".join(added) or "nothing", path)
            else:
                removed = m.delete_text(text, path)
                log.debug("deleted %s from %s", ", ".join(removed) or "nothing", path)
            return ""
        if cmd == Command.PROJECT_START:
            m.start(request.project)
            log.debug("project %s started", request.project)
            return ""
        if cmd == Command.PROJECT_STOP:
            m.stop(request.project)
            log.debug("project %s stopped", request.project)
            return ""
        if cmd == Command.PROJECT_SHOW:
            try:
                projects = m.show(request.project)
            except ObjectError as e:
                if e.cause is not Cause.PROJECT_MISSING or request.wants_json:
                    raise
                return protocol.show_absent(request.project)   # upstream: a success
            if request.wants_json:
                return protocol.render_show_json(projects)
            return protocol.render_show_text(projects, stats=request.wants_stats)
        assert cmd == Command.ENGINE
        text = m.engine_command(request.project, request.engine, request.engine_cmd, request.task)
        return text or ""
