"""A packet connection over a stream socket: acks, retransmission, no-ack mode.

GDB manual, "Packet Acknowledgment": in ack mode every packet is answered with
``+`` (checksum good) or ``-`` (bad, please resend); after ``QStartNoAckMode``
both sides stop sending acknowledgments.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque

from .packet import (
    Ack,
    BadChecksum,
    Event,
    Interrupt,
    Malformed,
    Nak,
    Packet,
    PacketDecoder,
    frame,
)

log = logging.getLogger(__name__)

RECV_CHUNK = 65536
#: Events decoded but not yet consumed; beyond this the peer is not reading acks.
MAX_PENDING_EVENTS = 1024


class ConnectionClosed(Exception):
    """The peer closed the connection (or the socket failed)."""


class PacketConnection:
    """Reads events from and writes packets to one connected socket."""

    def __init__(
        self,
        sock: socket.socket,
        max_packet_size: int,
        *,
        rle: bool = False,
        rle_from: int = 0,
        ack_timeout: float = 2.0,
        max_retransmits: int = 3,
    ) -> None:
        self.sock = sock
        self.ack_mode = True
        self.rle = rle
        self.rle_from = rle_from    # (with rle) payloads shorter than this go plain
        self.ack_timeout = ack_timeout
        self.max_retransmits = max_retransmits
        self._decoder = PacketDecoder(max_packet_size)
        self._pending: deque[Event] = deque()

    # ------------------------------------------------------------------ receiving

    def next_event(self, timeout: float | None) -> Packet | Interrupt | Malformed | None:
        """The next packet, interrupt or malformed-packet notice; None on timeout.

        Acknowledgments are sent here, when an event is consumed (not when it is
        decoded), so that a packet arriving together with the ``+`` that ends ack
        mode is not acknowledged: good packets get ``+`` and bad checksums ``-``
        (in ack mode only); stray ``+``/``-`` are dropped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._pending:
                event = self._acknowledge(self._pending.popleft())
                if event is not None:
                    return event
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._receive(remaining):
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def _receive(self, timeout: float | None) -> bool:
        """Read once from the socket and queue decoded events; False on timeout."""
        try:
            if timeout is not None or self.sock.gettimeout() is not None:
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if not ready:
                    return False
            data = self.sock.recv(RECV_CHUNK)   # (no timeout: block here, one system call)
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(str(exc)) from exc
        if not data:
            raise ConnectionClosed("peer closed the connection")
        self._pending.extend(self._decoder.feed(data))
        return True

    def _acknowledge(self, event: Event) -> Packet | Interrupt | Malformed | None:
        if isinstance(event, Packet):
            if self.ack_mode:
                self._send_raw(b"+")
            return event
        if isinstance(event, BadChecksum):
            log.warning("bad checksum on packet %r", event.raw[:64])
            if self.ack_mode:
                self._send_raw(b"-")
            return None
        if isinstance(event, Malformed):
            log.warning("malformed packet dropped: %s", event.reason)
            if self.ack_mode and event.complete:
                self._send_raw(b"+")  # a resend would be just as malformed
            return event
        if isinstance(event, Interrupt):
            return event
        return None  # stray '+' / '-'

    # ------------------------------------------------------------------ sending

    def send_packet(self, payload: bytes) -> None:
        """Send one packet; in ack mode wait for ``+`` and resend on ``-``."""
        wire = frame(payload, rle=self.rle and len(payload) >= self.rle_from)
        for _attempt in range(1 + self.max_retransmits):
            self._send_raw(wire)
            if not self.ack_mode or self._wait_for_ack():
                return
        log.warning("no acknowledgment after %d retransmissions", self.max_retransmits)

    def _wait_for_ack(self) -> bool:
        """True on ``+`` (or timeout: assume it got through), False on ``-``."""
        deadline = time.monotonic() + self.ack_timeout
        while True:
            for i, event in enumerate(self._pending):
                if isinstance(event, (Ack, Nak)):
                    del self._pending[i]
                    return isinstance(event, Ack)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self._pending) > MAX_PENDING_EVENTS:
                log.warning("no acknowledgment received; assuming the packet arrived")
                return True
            self._receive(remaining)

    def _send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
