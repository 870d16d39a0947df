"""GDB Remote Serial Protocol framing (GDB manual, "Remote Protocol" -> "Overview").

A packet on the wire is ``$<payload>#<two hex digits>``; the checksum is the sum of
the payload bytes (as transmitted, i.e. escaped/run-length encoded) modulo 256.
Inside the payload:

* ``}`` (0x7d) escapes the next byte, which is xor-ed with 0x20 ("Binary Data").
* ``c*N`` repeats ``c`` a further ``ord(N) - 29`` times ("run-length encoding").

Outside a packet, ``+``/``-`` acknowledge, and 0x03 is an out-of-band interrupt
(Ctrl-C). Everything else between packets is line noise and is ignored.

This module is pure (no I/O): :class:`PacketDecoder` is fed raw bytes and yields
events; :func:`frame` builds an outgoing packet.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Iterator, Union

START = ord("$")
END = ord("#")
ESCAPE = 0x7D
ESCAPE_XOR = 0x20
RLE_MARK = ord("*")
INTERRUPT_BYTE = 0x03
ACK = ord("+")
NAK = ord("-")

#: RLE count characters are ``n + 29``; counts giving '#' or '$' are forbidden,
#: and GDB only accepts printable counts (n <= 97).
RLE_OFFSET = 29
RLE_MIN_REPEAT = 3  # count character ' ' (0x20): the first printable one
RLE_MAX_REPEAT = 126 - RLE_OFFSET
RLE_FORBIDDEN_REPEATS = frozenset({END - RLE_OFFSET, START - RLE_OFFSET})

#: The encoder compresses only runs of at least this many equal bytes: shorter runs
#: save a byte or two on the wire but cost a Python-level step each (a kernel image
#: read as hex has a run of 4+ every ~30 characters, a run of 16+ every few KiB).
RLE_ENCODE_MIN_RUN = 16

#: Bytes that must be escaped in an outgoing payload.
BYTES_TO_ESCAPE = frozenset({START, END, ESCAPE, RLE_MARK})

HEX_DIGITS = b"0123456789abcdefABCDEF"


class PacketFormatError(ValueError):
    """The payload of a packet cannot be decoded (dangling escape, bad RLE...)."""


def checksum(data: bytes) -> int:
    """Modulo-256 sum of the bytes of a (wire-form) payload.

    A long payload is summed by ``zlib.adler32`` over 256-byte pieces (3-4x faster than
    ``sum``: a ``g`` reply, a memory dump): the low half of Adler-32 is 1 + the piece's
    byte sum modulo 65521, which is the exact sum while it stays below that
    (256 * 255 = 65280)."""
    if len(data) < _ADLER_FROM:
        return sum(data) & 0xFF
    view = memoryview(data)
    total = 0
    for i in range(0, len(data), 256):
        total += zlib.adler32(view[i:i + 256]) & 0xFFFF
    return (total - (len(data) + 255) // 256) & 0xFF


_ADLER_FROM = 64   # below this, sum() is faster


def _escaped(match: re.Match[bytes]) -> bytes:
    return bytes((ESCAPE, match[0][0] ^ ESCAPE_XOR))


def _escaped_or_run(match: re.Match[bytes]) -> bytes:
    """One regex match of :data:`_RUN_OR_SPECIAL`: a byte to escape, or a run of
    RLE_ENCODE_MIN_RUN..98 equal plain bytes, sent as the byte, ``*`` and the count of
    further repeats."""
    text = match[0]
    if len(text) == 1:
        return bytes((ESCAPE, text[0] ^ ESCAPE_XOR))
    repeat = len(text) - 1
    while repeat in RLE_FORBIDDEN_REPEATS:
        repeat -= 1
    # a count that would read as '#' or '$' is shortened; the rest of the run goes plain
    return bytes((text[0], RLE_MARK, repeat + RLE_OFFSET)) + text[: len(text) - 1 - repeat]


_SPECIAL_CLASS = b"[" + b"".join(b"\\x%02x" % b for b in sorted(BYTES_TO_ESCAPE)) + b"]"
_SPECIAL = re.compile(_SPECIAL_CLASS)
#: Scanning left to right, a match is either a byte to escape or the longest run
#: (at most 1 + RLE_MAX_REPEAT) of one plain byte, at least RLE_ENCODE_MIN_RUN long.
_RUN_OR_SPECIAL = re.compile(
    b"([^" + _SPECIAL_CLASS[1:-1] + b"])\\1{%d,%d}|" % (RLE_ENCODE_MIN_RUN - 1, RLE_MAX_REPEAT) + _SPECIAL_CLASS,
    re.DOTALL)


def escape(data: bytes) -> bytes:
    """Escape ``$ # } *`` so that arbitrary binary data survives framing."""
    return _SPECIAL.sub(_escaped, data)


def rle_encode(data: bytes) -> bytes:
    """Escape ``data`` and run-length encode runs of at least RLE_ENCODE_MIN_RUN plain
    (unescaped) bytes.

    The Python-level work is per run, not per byte (a 64 KiB memory read is a 128 KiB
    hex payload): runs are found by C-level searches, see :func:`_rle_plain`.
    """
    if not data.translate(None, _KEPT_BYTES):  # nothing to escape (one C pass, no regex scan)
        return _rle_plain(data)
    return _RUN_OR_SPECIAL.sub(_escaped_or_run, data)


#: every byte value but those to escape: ``data.translate(None, _KEPT_BYTES)`` leaves the specials
_KEPT_BYTES = bytes(b for b in range(256) if b not in BYTES_TO_ESCAPE)
_NONZERO = re.compile(b"[^\\x00]")
_RUN_START = b"\x00" * (RLE_ENCODE_MIN_RUN - 1)


def _rle_plain(data: bytes) -> bytes:
    """:func:`rle_encode` of a payload with nothing to escape (hex replies, ``g``/``m``).

    ``diff[i] = data[i] ^ data[i + 1]`` is zero where two neighbours are equal, so a run of
    ``RLE_ENCODE_MIN_RUN`` equal bytes starts where ``diff`` holds one zero fewer:
    ``bytes.find`` locates it and a regex search finds its end.  Same output as the regex
    path: the first long run from the left, cut into counts of at most RLE_MAX_REPEAT
    (a tail of RLE_ENCODE_MIN_RUN or more gets its own count, a shorter one goes plain).
    """
    n = len(data)
    if n < RLE_ENCODE_MIN_RUN:
        return data
    diff = (int.from_bytes(data[:-1], "big") ^ int.from_bytes(data[1:], "big")).to_bytes(n - 1, "big")
    out: list[bytes] = []
    pos = 0
    while (start := diff.find(_RUN_START, pos)) >= 0:
        end_match = _NONZERO.search(diff, start)
        end = end_match.start() + 1 if end_match else n  # data[start:end] is the run
        out.append(data[pos:start])
        byte = data[start]
        full, left = divmod(end - start, RLE_MAX_REPEAT + 1)  # (a full count is never forbidden)
        out.append(bytes((byte, RLE_MARK, RLE_MAX_REPEAT + RLE_OFFSET)) * full)
        if left >= RLE_ENCODE_MIN_RUN:
            repeat = left - 1
            while repeat in RLE_FORBIDDEN_REPEATS:
                repeat -= 1
            out.append(bytes((byte, RLE_MARK, repeat + RLE_OFFSET)))
            left -= repeat + 1
        out.append(data[end - left:end])
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def decode_payload(raw: bytes, max_size: int | None = None) -> bytes:
    """Undo escapes and run-length encoding of a received payload.

    Raises :class:`PacketFormatError` for a dangling escape, a ``*`` with no
    preceding byte or count, a count out of range, or (if ``max_size`` is given)
    an expansion larger than ``max_size``.  Plain stretches are copied whole (a 4 KiB
    ``M`` or ``X`` packet is one or a few slices, not a loop per byte).
    """
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        special = _DECODE_SPECIAL.search(raw, i)
        j = n if special is None else special.start()
        out += raw[i:j]
        if j >= n:
            break
        if raw[j] == ESCAPE:
            if j + 1 >= n:
                raise PacketFormatError("dangling escape at end of packet")
            out.append(raw[j + 1] ^ ESCAPE_XOR)
        else:
            if not out or j + 1 >= n:
                raise PacketFormatError("run-length marker without a byte or count")
            repeat = raw[j + 1] - RLE_OFFSET
            if repeat < 0 or repeat > RLE_MAX_REPEAT:
                raise PacketFormatError(f"run-length count {raw[j + 1]:#x} out of range")
            out += bytes((out[-1],)) * repeat
        i = j + 2
        if max_size is not None and len(out) > max_size:
            raise PacketFormatError("decoded packet exceeds the maximum size")
    if max_size is not None and len(out) > max_size:
        raise PacketFormatError("decoded packet exceeds the maximum size")
    return bytes(out)


_DECODE_SPECIAL = re.compile(b"[" + re.escape(bytes((ESCAPE, RLE_MARK))) + b"]")


def frame(payload: bytes, *, rle: bool = False) -> bytes:
    """Build ``$<escaped payload>#<checksum>`` for sending."""
    body = rle_encode(payload) if rle else escape(payload)
    return b"$" + body + b"#" + b"%02x" % checksum(body)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Packet:
    """A well-formed packet with verified checksum; ``data`` is decoded."""

    data: bytes


@dataclass(frozen=True)
class Interrupt:
    """Out-of-band 0x03 (Ctrl-C) received between packets."""


@dataclass(frozen=True)
class Ack:
    """``+`` received."""


@dataclass(frozen=True)
class Nak:
    """``-`` received: the peer wants the last packet again."""


@dataclass(frozen=True)
class BadChecksum:
    """A complete packet whose checksum did not match (ack mode answers ``-``)."""

    raw: bytes


@dataclass(frozen=True)
class Malformed:
    """A packet that was dropped: truncated, oversized or undecodable.

    ``complete`` is True when the packet was fully framed (``$...#xx``), so the
    peer is waiting for a reply; a truncated packet was superseded by a new one.
    """

    reason: str
    complete: bool = True


Event = Union[Packet, Interrupt, Ack, Nak, BadChecksum, Malformed]


class PacketDecoder:
    """Incremental, bounded decoder of the byte stream coming from GDB.

    ``max_packet_size`` bounds the raw payload (between ``$`` and ``#``); an
    oversized packet is skipped up to its ``#xx`` trailer and reported as
    :class:`Malformed`. A ``$`` inside a packet abandons the partial packet
    (reported as truncated) and starts a new one. The decoder never raises.
    """

    _IDLE, _DATA, _CSUM1, _CSUM2 = range(4)

    def __init__(self, max_packet_size: int) -> None:
        self.max_packet_size = max_packet_size
        self._state = self._IDLE
        self._buf = bytearray()
        self._csum = bytearray()
        self._oversized = False

    def reset(self) -> None:
        self._state = self._IDLE
        self._buf.clear()
        self._csum.clear()
        self._oversized = False

    def feed(self, data: bytes) -> Iterator[Event]:
        pos, n = 0, len(data)
        while pos < n:
            if self._state == self._IDLE and data[pos] == START:
                # a whole packet in this chunk (gdb's usual case): taken at once
                end = data.find(b"#", pos + 1)
                if 0 < end <= n - 3 and end - pos - 1 <= self.max_packet_size \
                        and data.find(b"$", pos + 1, end + 3) < 0:
                    yield self._complete(data[pos + 1:end], data[end + 1:end + 3])
                    pos = end + 3
                    continue
            if self._state == self._DATA and not self._oversized:
                pos = self._take_payload(data, pos)
                if pos >= n:
                    break
            event = self._feed_byte(data[pos])
            pos += 1
            if event is not None:
                yield event

    def _take_payload(self, data: bytes, pos: int) -> int:
        """Inside a packet: append the plain bytes up to the next ``$`` or ``#`` at once
        (as many as fit under ``max_packet_size``; :meth:`_feed_byte` handles the rest),
        which is what the byte loop does with them, at C speed. Returns where it stopped."""
        end = data.find(b"#", pos)
        end = len(data) if end < 0 else end
        dollar = data.find(b"$", pos, end)
        end = end if dollar < 0 else dollar
        end = min(end, pos + max(0, self.max_packet_size - len(self._buf)))
        self._buf += data[pos:end]
        return end

    def _feed_byte(self, byte: int) -> Event | None:
        if self._state == self._IDLE:
            return self._idle_byte(byte)
        if self._state == self._DATA:
            if byte == START:
                self._start_packet()
                return Malformed("truncated packet (new '$' before '#')", complete=False)
            if byte == END:
                self._state = self._CSUM1
                return None
            if len(self._buf) >= self.max_packet_size:
                self._oversized = True
                self._buf.clear()
            elif not self._oversized:
                self._buf.append(byte)
            return None
        # checksum digits
        if byte == START:
            self._start_packet()
            return Malformed("truncated packet (new '$' inside checksum)", complete=False)
        self._csum.append(byte)
        if self._state == self._CSUM1:
            self._state = self._CSUM2
            return None
        return self._finish_packet()

    def _idle_byte(self, byte: int) -> Event | None:
        if byte == START:
            self._start_packet()
            return None
        if byte == INTERRUPT_BYTE:
            return Interrupt()
        if byte == ACK:
            return Ack()
        if byte == NAK:
            return Nak()
        return None  # line noise between packets

    def _start_packet(self) -> None:
        self._state = self._DATA
        self._buf.clear()
        self._csum.clear()
        self._oversized = False

    def _finish_packet(self) -> Event:
        raw = bytes(self._buf)
        digits = bytes(self._csum)
        oversized = self._oversized
        self.reset()
        if oversized:
            return Malformed(f"packet larger than {self.max_packet_size} bytes")
        return self._complete(raw, digits)

    def _complete(self, raw: bytes, digits: bytes) -> Event:
        """The event of a packet's raw payload and its two checksum digits."""
        if digits.translate(None, HEX_DIGITS) or int(digits, 16) != checksum(raw):
            return BadChecksum(raw)
        try:
            return Packet(decode_payload(raw, max_size=4 * self.max_packet_size))
        except PacketFormatError as exc:
            return Malformed(str(exc))
