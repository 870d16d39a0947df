"""Stateless pieces of the RSP: argument parsing and reply formatting.

References are to the GDB manual, "Remote Protocol" -> "Packets",
"Stop Reply Packets" and "General Query Packets".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence
from xml.sax.saxutils import escape as xml_escape, quoteattr

from .target import ResumeAction, ResumeKind, StopEvent, StopReason, WatchKind

#: Thread-id wildcards of ``H``/``vCont``: -1 = all threads, 0 = any thread.
ALL_THREADS = -1
ANY_THREAD = 0

#: GDB's qXfer replies: ``m`` = more data follows, ``l`` = last chunk.
XFER_MORE = b"m"
XFER_LAST = b"l"


class ProtocolError(ValueError):
    """A packet's arguments are malformed; answered with ``E16`` (EINVAL)."""


def parse_hex(text: bytes) -> int:
    """A non-negative hex number; raises ProtocolError for anything else."""
    if not text or text.translate(None, b"0123456789abcdefABCDEF"):  # a non-digit is left
        raise ProtocolError(f"not a hex number: {text[:32]!r}")
    return int(text, 16)


def hex_to_bytes(text: bytes) -> bytes:
    if len(text) % 2:
        raise ProtocolError("odd number of hex digits")
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("invalid hex data") from exc


def text_to_hex(text: str) -> bytes:
    return text.encode("utf-8", "replace").hex().encode()


def parse_thread_id(text: bytes) -> int:
    """``-1``, ``0`` or a hex thread id; a ``p<pid>.`` prefix is accepted and ignored."""
    if text.startswith(b"p") and b"." in text:
        text = text.split(b".", 1)[1]
    if text == b"-1":
        return ALL_THREADS
    return parse_hex(text)


def format_thread_id(tid: int) -> bytes:
    return b"%x" % tid


def split_address_length(text: bytes) -> tuple[int, int]:
    """``addr,length`` as used by ``m``, ``M``, ``X`` and ``qXfer``."""
    addr, sep, length = text.partition(b",")
    if not sep:
        raise ProtocolError("expected addr,length")
    return parse_hex(addr), parse_hex(length)


# ------------------------------------------------------------------ stop replies

_WATCH_KEYS = {
    WatchKind.WRITE: b"watch",
    WatchKind.READ: b"rwatch",
    WatchKind.ACCESS: b"awatch",
}


def stop_reply(event: StopEvent, gdb_features: frozenset[str], registers: bytes = b"") -> bytes:
    """``T``/``W``/``X`` stop reply for ``event``; a ``T`` reply carries ``registers``
    (``n:value;`` pairs, already encoded) after the signal.

    ``swbreak``/``hwbreak`` are only sent when GDB announced support for them in
    its ``qSupported``; the thread is always named so multi-CPU stops are unambiguous.
    """
    if event.reason is StopReason.EXITED:
        return b"W%02x" % ((event.exit_status or 0) & 0xFF)
    if event.reason is StopReason.TERMINATED:
        return b"X%02x" % (event.signal & 0xFF)
    reply = b"T%02x" % (event.signal & 0xFF) + registers
    if event.tid is not None:
        reply += b"thread:" + format_thread_id(event.tid) + b";"
    if event.reason is StopReason.SW_BREAKPOINT and "swbreak" in gdb_features:
        reply += b"swbreak:;"
    elif event.reason is StopReason.HW_BREAKPOINT and "hwbreak" in gdb_features:
        reply += b"hwbreak:;"
    elif event.reason is StopReason.WATCHPOINT:
        kind = event.watch_kind or WatchKind.WRITE
        reply += _WATCH_KEYS[kind] + b":%x;" % (event.watch_address or 0)
    return reply


# ------------------------------------------------------------------ vCont


@dataclass(frozen=True)
class VContAction:
    action: ResumeAction | None  # None = 't' (stay stopped)
    tid: int  # ALL_THREADS when no thread-id was given


def parse_vcont(args: bytes) -> list[VContAction]:
    """Parse ``;action[:thread-id]...`` (the text after ``vCont``)."""
    if not args.startswith(b";"):
        raise ProtocolError("vCont needs at least one action")
    actions = []
    for item in args[1:].split(b";"):
        verb, sep, tid_text = item.partition(b":")
        tid = parse_thread_id(tid_text) if sep else ALL_THREADS
        actions.append(VContAction(_parse_vcont_verb(verb), tid))
    return actions


def _parse_vcont_verb(verb: bytes) -> ResumeAction | None:
    if verb == b"c":
        return ResumeAction(ResumeKind.CONTINUE)
    if verb == b"s":
        return ResumeAction(ResumeKind.STEP)
    if verb[:1] == b"C" and len(verb) == 3:
        return ResumeAction(ResumeKind.CONTINUE, parse_hex(verb[1:]))
    if verb[:1] == b"S" and len(verb) == 3:
        return ResumeAction(ResumeKind.STEP, parse_hex(verb[1:]))
    if verb == b"t":
        return None
    raise ProtocolError(f"unsupported vCont action {verb!r}")


def assign_vcont(actions: Sequence[VContAction], tids: Sequence[int]) -> dict[int, ResumeAction]:
    """Per thread, the leftmost applicable action wins; ``t`` keeps a thread stopped."""
    result: dict[int, ResumeAction] = {}
    decided: set[int] = set()
    for item in actions:
        targets = tids if item.tid in (ALL_THREADS, ANY_THREAD) else [item.tid]
        for tid in targets:
            if tid not in tids:
                raise ProtocolError(f"unknown thread {tid:#x}")
            if tid in decided:
                continue
            decided.add(tid)
            if item.action is not None:
                result[tid] = item.action
    return result


# ------------------------------------------------------------------ qXfer / XML


def xfer_chunk(document: bytes, offset: int, length: int) -> bytes:
    """A ``qXfer`` read reply: ``m<data>`` if more follows, else ``l<data>``."""
    chunk = document[offset : offset + length]
    more = offset + length < len(document)
    return (XFER_MORE if more else XFER_LAST) + chunk


def threads_xml(entries: Sequence[tuple[int, str, str]]) -> bytes:
    """``qXfer:threads:read`` document from (tid, name, extra info) triples."""
    lines = ['<?xml version="1.0"?>', "<threads>"]
    for tid, name, extra in entries:
        lines.append(
            f'  <thread id="{tid:x}" name={quoteattr(name)}>{xml_escape(extra)}</thread>'
        )
    lines.append("</threads>")
    return ("\n".join(lines) + "\n").encode()
