"""TCP front end: accepts debuggers, one at a time, each served by a GdbSession.

Policy for a second debugger while one is connected: it is *refused*. The server
waits (briefly) for its first packet, answers it with
``E.gdbstub: another debugger is already connected`` (GDB prints this as
"Remote failure reply") and closes the connection. After the active debugger
detaches, kills or disconnects, the server accepts the next one.

"Busy" is decided when the previous session has really ended, not at accept time: a
debugger that connects while the previous session is ending (after the ``OK`` to
``D``, while breakpoints are removed and the target resumed) waits for that cleanup;
one that connects while a session is live is refused after a short grace period (the
previous peer may have vanished without its session having noticed yet).
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import threading
import time

from .connection import ConnectionClosed, PacketConnection
from .packet import Packet
from .session import GdbSession, SessionEnd
from .target import Target

log = logging.getLogger(__name__)

DEFAULT_PACKET_SIZE = 0x20000
ACCEPT_POLL_SECONDS = 0.1
REFUSAL_READ_TIMEOUT = 5.0
#: How long a newcomer waits for a live session to end before it is refused (below
#: GDB's default 2 s ``remotetimeout`` for the reply to its first packet).
BUSY_GRACE_SECONDS = 0.5
#: How long a newcomer waits for a session that is already ending to finish its cleanup.
ENDING_WAIT_SECONDS = 20.0
BUSY_REPLY = b"E.gdbstub: another debugger is already connected"


#: Replies shorter than this are not run-length encoded to a debugger on this host.
LOOPBACK_RLE_FROM = 4096


class GdbServer:
    """Serve ``target`` to GDB over TCP from background threads.

    ``host`` defaults to loopback; pass e.g. ``"0.0.0.0"`` explicitly to listen
    on every interface. ``port=0`` picks a free port (see :attr:`port`).
    """

    def __init__(
        self,
        target: Target,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        packet_size: int = DEFAULT_PACKET_SIZE,
        rle: bool | None = None,
    ) -> None:
        """``rle``: run-length encode replies (GDB manual, "Overview"); None: all replies
        to a debugger off this host, on loopback only those of :data:`LOOPBACK_RLE_FROM`
        bytes or more (a small one costs more to encode than its bytes cost: 14 us of a
        ``g`` reply's round trip; a large one, such as a memory dump's, still gains: gdb
        decodes fewer bytes)."""
        self.target = target
        self.host = host
        self.requested_port = port
        self.packet_size = packet_size
        self.rle = rle
        self.sessions_served = 0
        self.last_session_end: SessionEnd | None = None
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._session_thread: threading.Thread | None = None
        self._active: PacketConnection | None = None
        self._session: GdbSession | None = None  # the active connection's, once created
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._session_done = threading.Condition(self._lock)

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("server not started")
        return self._listener.getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def client_connected(self) -> bool:
        with self._lock:
            return self._active is not None

    def start(self) -> GdbServer:
        """Bind, listen and start accepting in a daemon thread."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.requested_port))
            listener.listen(4)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._stopping.clear()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"gdbstub-accept-{self.port}", daemon=True
        )
        self._acceptor.start()
        log.info("gdbstub listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end the active session (as a disconnect) and join threads."""
        self._stopping.set()
        with self._session_done:
            active = self._active
            self._session_done.notify_all()  # newcomers waiting for a free slot give up
        if active is not None:
            try:
                active.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in (self._acceptor, self._session_thread):
            if thread is not None:
                thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._acceptor = self._session_thread = None

    def wait_for_session_end(self, count: int, timeout: float) -> bool:
        """Block until ``count`` sessions have finished in total (useful in tests)."""
        with self._session_done:
            return self._session_done.wait_for(lambda: self.sessions_served >= count, timeout)

    def __enter__(self) -> GdbServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ threads

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], ACCEPT_POLL_SECONDS)
                if not ready:
                    continue
                sock, peer = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local = self.rle is None and ipaddress.ip_address(peer[0]).is_loopback
            conn = PacketConnection(sock, self.packet_size, rle=self.rle is not False,
                                    rle_from=LOOPBACK_RLE_FROM if local else 0)
            if self._claim(conn, wait=False):
                self._start_session(conn, peer)
            else:
                threading.Thread(target=self._wait_or_refuse, args=(conn, peer), daemon=True,
                                 name="gdbstub-newcomer").start()

    def _claim(self, conn: PacketConnection, wait: bool) -> bool:
        """Make ``conn`` the active connection if none is, waiting (if ``wait``) for the
        active session to end: up to :data:`ENDING_WAIT_SECONDS` once it is ending, else
        :data:`BUSY_GRACE_SECONDS`."""
        start = time.monotonic()
        with self._session_done:
            while self._active is not None and not self._stopping.is_set():
                ending = self._session is not None and self._session.ending
                left = start + (ENDING_WAIT_SECONDS if ending else BUSY_GRACE_SECONDS) - time.monotonic()
                if not wait or left <= 0:
                    return False
                self._session_done.wait(min(left, 0.05))  # 'ending' is polled, the end notified
            if self._stopping.is_set():
                return False
            self._active = conn
            self._session = None
            return True

    def _wait_or_refuse(self, conn: PacketConnection, peer) -> None:
        if self._claim(conn, wait=True):
            self._start_session(conn, peer)
        elif self._stopping.is_set():
            conn.close()
        else:
            log.warning("refusing debugger from %s: one is already connected", peer)
            self._refuse(conn)

    def _start_session(self, conn: PacketConnection, peer) -> None:
        log.info("debugger connected from %s", peer)
        self._session_thread = threading.Thread(
            target=self._run_session, args=(conn,), name="gdbstub-session", daemon=True
        )
        self._session_thread.start()

    def _run_session(self, conn: PacketConnection) -> None:
        end: SessionEnd | None = None
        try:
            session = GdbSession(self.target, conn, self.packet_size)
            with self._lock:
                self._session = session
            end = session.serve()
            log.info("debugger session ended: %s", end.value)
        except Exception:
            log.exception("debugger session failed")
            conn.close()
        finally:
            with self._session_done:
                self._active = None
                self._session = None
                self.last_session_end = end
                self.sessions_served += 1
                self._session_done.notify_all()

    @staticmethod
    def _refuse(conn: PacketConnection) -> None:
        try:
            event = conn.next_event(timeout=REFUSAL_READ_TIMEOUT)
            if isinstance(event, Packet):
                conn.send_packet(BUSY_REPLY)
        except ConnectionClosed:
            pass
        finally:
            conn.close()
