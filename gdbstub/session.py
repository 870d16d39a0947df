"""One debugger connection: packet dispatch and the all-stop run/stop cycle.

The session owns the protocol state (selected threads, negotiated features,
inserted breakpoints) and talks to a :class:`~gdbstub.target.Target`. It never
lets an exception escape because of what the peer sent: malformed packets are
answered with ``E`` replies (or ignored) and the session keeps serving.
"""

from __future__ import annotations

import enum
import errno
import itertools
import logging
from collections import deque
from typing import Callable, Sequence

from .arch.base import TARGET_XML, RegisterFormatError
from .connection import ConnectionClosed, PacketConnection
from .packet import Interrupt, Malformed, Packet
from .protocol import (
    ALL_THREADS,
    ANY_THREAD,
    ProtocolError,
    assign_vcont,
    format_thread_id,
    hex_to_bytes,
    parse_hex,
    parse_thread_id,
    parse_vcont,
    split_address_length,
    stop_reply,
    text_to_hex,
    threads_xml,
    xfer_chunk,
)
from .target import (
    ConsoleOutput,
    ResumeAction,
    ResumeKind,
    SstepFlags,
    StopEvent,
    StopReason,
    Target,
    TargetError,
    WatchKind,
)

log = logging.getLogger(__name__)

Reply = bytes | None  # None: send nothing

ERR_INVALID = b"E%02x" % errno.EINVAL
ERR_INTERNAL = b"E01"
ERR_NO_SPACE = b"E%02x" % errno.ENOSPC
ERR_NOT_FOUND = b"E%02x" % errno.ENOENT
ERR_BAD_ANNEX = b"E00"
UNSUPPORTED = b""
OK = b"OK"

ALL_SSTEP_FLAGS = int(SstepFlags.ENABLE | SstepFlags.NOIRQ | SstepFlags.NOTIMER)

#: How long one wait on the target lasts before the socket is polled for Ctrl-C.
RUN_POLL_SECONDS = 0.02
#: How long to wait for a running target to stop when the debugger vanishes.
DISCONNECT_STOP_TIMEOUT = 5.0
#: Packets kept while the target runs (GDB sends none in all-stop mode).
MAX_DEFERRED_PACKETS = 64
#: Bytes of monitor output per ``O`` packet (hex doubles it).
CONSOLE_CHUNK = 1024
#: Memory is read in chunks of this size after a failed read, to return the readable prefix.
PARTIAL_READ_CHUNK = 4096


class SessionEnd(enum.Enum):
    DISCONNECTED = "disconnected"
    DETACHED = "detached"
    KILLED = "killed"


class _Console(ConsoleOutput):
    def __init__(self, conn: PacketConnection) -> None:
        self._conn = conn

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        for i in range(0, len(data), CONSOLE_CHUNK):
            self._conn.send_packet(b"O" + data[i : i + CONSOLE_CHUNK].hex().encode())


class GdbSession:
    """Serve one connected debugger until it detaches, kills or disconnects."""

    def __init__(self, target: Target, conn: PacketConnection, packet_size: int) -> None:
        self.target = target
        self.arch = target.arch
        self.conn = conn
        self.packet_size = packet_size
        self.gdb_features: frozenset[str] = frozenset()
        self.last_stop: StopEvent | None = None
        self.general_thread = ANY_THREAD
        self.continue_thread = ANY_THREAD
        self.physical_memory_mode = False
        self.breakpoints: set[tuple[int, int, int]] = set()  # (Z type, addr, kind)
        self._end: SessionEnd | None = None
        self._running = False
        self._deferred: deque[Packet] = deque()
        self._xml_files = {k: v.encode() for k, v in self.arch.xml_files().items()}
        self._commands: dict[bytes, Callable[[bytes], Reply]] = {
            b"?": self._cmd_stop_reason,
            b"g": self._cmd_read_registers,
            b"G": self._cmd_write_registers,
            b"p": self._cmd_read_register,
            b"P": self._cmd_write_register,
            b"m": self._cmd_read_memory,
            b"M": self._cmd_write_memory,
            b"X": self._cmd_write_memory_binary,
            b"c": self._cmd_continue,
            b"C": self._cmd_continue_signal,
            b"s": self._cmd_step,
            b"S": self._cmd_step_signal,
            b"H": self._cmd_set_thread,
            b"T": self._cmd_thread_alive,
            b"Z": self._cmd_insert_breakpoint,
            b"z": self._cmd_remove_breakpoint,
            b"D": self._cmd_detach,
            b"k": self._cmd_kill,
            b"q": self._cmd_query,
            b"Q": self._cmd_set,
            b"v": self._cmd_v,
        }
        self._queries: dict[bytes, Callable[[bytes], Reply]] = {
            b"Supported": self._q_supported,
            b"Xfer": self._q_xfer,
            b"fThreadInfo": self._q_first_thread_info,
            b"sThreadInfo": lambda _args: b"l",
            b"C": self._q_current_thread,
            b"ThreadExtraInfo": self._q_thread_extra_info,
            b"Attached": lambda _args: b"1",
            # Like QEMU system mode: no section offsets, so tools see no "Text=".
            b"Offsets": lambda _args: UNSUPPORTED,
            b"Rcmd": self._q_monitor,
            b"Symbol": lambda _args: OK,
            b"qemu.sstepbits": self._q_sstep_bits,
            b"qemu.sstep": self._q_sstep,
            b"qemu.PhyMemMode": self._q_phys_mem_mode,
        }
        self._sets: dict[bytes, Callable[[bytes], Reply]] = {
            b"StartNoAckMode": self._set_no_ack_mode,
            b"qemu.sstepbits": self._q_sstep_bits,  # pwndbg probes with the Q form
            b"qemu.sstep": self._set_sstep,
            b"qemu.PhyMemMode": self._set_phys_mem_mode,
        }

    # ------------------------------------------------------------------ main loop

    @property
    def ending(self) -> bool:
        """The session has decided to end (D, k, vKill or a closed connection) and is
        cleaning up or done; set before the reply to D is sent."""
        return self._end is not None

    def serve(self) -> SessionEnd:
        """Run until the session ends; always leaves the target cleaned up."""
        try:
            self.last_stop = self.target.attach()
            self._adopt_stop_thread(self.last_stop)
            while self._end is None:
                event = self._next_event()
                if isinstance(event, Packet):
                    self._handle_packet(event.data)
                elif isinstance(event, Malformed) and event.complete:
                    self.conn.send_packet(ERR_INVALID)
                # Interrupts while stopped are ignored (the stop was already reported).
                if self._running:
                    self._run_until_stop()
        except ConnectionClosed as exc:
            log.info("debugger connection closed: %s", exc)
            self._end = self._end or SessionEnd.DISCONNECTED
        finally:
            self._finish()
        return self._end

    def _next_event(self) -> Packet | Interrupt | Malformed:
        if self._deferred:
            return self._deferred.popleft()
        while True:
            event = self.conn.next_event(timeout=None)
            if event is not None:
                return event

    def _handle_packet(self, data: bytes) -> None:
        log.debug("<- %r", data[:200])
        reply = self._dispatch(data)
        if reply is not None:
            log.debug("-> %r", reply[:200])
            self.conn.send_packet(reply)

    def _dispatch(self, data: bytes) -> Reply:
        handler = self._commands.get(data[:1])
        if handler is None:
            return UNSUPPORTED
        try:
            return handler(data[1:])
        except (ProtocolError, RegisterFormatError) as exc:
            log.warning("malformed %r: %s", data[:40], exc)
            return ERR_INVALID
        except TargetError as exc:
            log.info("target error on %r: %s", data[:40], exc)
            return b"E%02x" % (exc.errno & 0xFF)
        except ConnectionClosed:
            raise
        except Exception:  # a target bug must not kill the session
            log.exception("internal error handling %r", data[:40])
            return ERR_INTERNAL

    # ------------------------------------------------------------------ run / stop

    def _resume(self, actions: dict[int, ResumeAction]) -> Reply:
        if not actions:
            raise ProtocolError("no thread to resume")
        self.target.resume(actions)
        self._running = True
        return None

    def _run_until_stop(self) -> None:
        """Wait for the stop while forwarding Ctrl-C to the target."""
        while True:
            event = self.target.wait_for_stop(RUN_POLL_SECONDS)
            if event is not None:
                self._running = False
                self._report_stop(event)
                return
            while (incoming := self.conn.next_event(timeout=0)) is not None:
                if isinstance(incoming, Interrupt):
                    log.debug("<- Ctrl-C")
                    self.target.interrupt()
                elif isinstance(incoming, Packet):  # not expected in all-stop mode
                    if len(self._deferred) < MAX_DEFERRED_PACKETS:
                        self._deferred.append(incoming)
                    else:
                        log.warning("dropping packet sent while running: %r", incoming.data[:40])

    def _report_stop(self, event: StopEvent) -> None:
        self.last_stop = event
        self._adopt_stop_thread(event)
        reply = stop_reply(event, self.gdb_features, self._expedited(event))
        log.debug("-> %r", reply)
        self.conn.send_packet(reply)

    def _adopt_stop_thread(self, event: StopEvent) -> None:
        # GDB assumes the stub's current thread becomes the one named in the stop reply.
        if event.tid is not None:
            self.general_thread = self.continue_thread = event.tid

    def _finish(self) -> None:
        """Leave the target consistent whatever ended the session."""
        try:
            if self._running:
                self.target.interrupt()
                stop = self.target.wait_for_stop(DISCONNECT_STOP_TIMEOUT)
                if stop is None:
                    log.warning("target did not stop after the debugger disconnected")
                self._running = False
            self._remove_all_breakpoints()
            if self._end is SessionEnd.KILLED or self._target_gone():
                return
            detach = self.target.support_detach()
            if detach is not None:
                detach.detach()
            else:
                self.target.resume(self._all_threads(ResumeAction(ResumeKind.CONTINUE)))
        except Exception:
            log.exception("error while cleaning up the target after the session")
        finally:
            self.conn.close()

    def _target_gone(self) -> bool:
        return self.last_stop is not None and self.last_stop.reason in (
            StopReason.EXITED,
            StopReason.TERMINATED,
        )

    # ------------------------------------------------------------------ threads

    def _tids(self) -> Sequence[int]:
        return self.target.thread_ids()

    def _all_threads(self, action: ResumeAction) -> dict[int, ResumeAction]:
        return {tid: action for tid in self._tids()}

    def _resolve_thread(self, selected: int) -> int:
        """A concrete thread for a selection that may be a wildcard."""
        tids = self._tids()
        if not tids:
            raise TargetError("target has no threads", errno.ESRCH)
        if selected in tids:
            return selected
        if self.last_stop is not None and self.last_stop.tid in tids:
            return self.last_stop.tid
        return tids[0]

    def _current_thread(self) -> int:
        return self._resolve_thread(self.general_thread)

    # ------------------------------------------------------------------ simple commands

    def _cmd_stop_reason(self, _args: bytes) -> Reply:
        if self.last_stop is None:
            return b"S05"
        return stop_reply(self.last_stop, self.gdb_features, self._expedited(self.last_stop))

    def _cmd_set_thread(self, args: bytes) -> Reply:
        op, tid = args[:1], parse_thread_id(args[1:])
        if tid not in (ALL_THREADS, ANY_THREAD) and tid not in self._tids():
            return ERR_NOT_FOUND
        if op == b"g":
            self.general_thread = tid
        elif op == b"c":
            self.continue_thread = tid
        else:
            raise ProtocolError(f"unknown H operation {op!r}")
        return OK

    def _cmd_thread_alive(self, args: bytes) -> Reply:
        return OK if parse_thread_id(args) in self._tids() else ERR_NOT_FOUND

    # ------------------------------------------------------------------ registers

    def _cmd_read_registers(self, _args: bytes) -> Reply:
        return self._registers_hex(self._current_thread())

    def _registers_hex(self, tid: int) -> bytes:
        """The ``g`` reply of ``tid``: the target's own (RawRegistersOps), else encoded."""
        raw = self.target.support_raw_registers()
        if raw is not None:
            reply = raw.read_registers_hex(tid)
            if len(reply) != 2 * self.arch.g_packet_size:
                raise ValueError(f"target's g reply has {len(reply)} hex digits, "
                                 f"the layout {2 * self.arch.g_packet_size}")
            return reply
        return self.arch.encode_registers(self.target.read_registers(tid))

    def _expedited(self, event: StopEvent) -> bytes:
        """The layout's expedited registers of the stopped thread as ``n:value;`` pairs
        (unavailable ones left out; nothing if they cannot be read)."""
        if not self.arch.expedite or event.tid is None or event.reason in (
                StopReason.EXITED, StopReason.TERMINATED):
            return b""
        names = self.arch.expedite
        spans = [self.arch.hex_spans[name] for name in names]
        try:
            raw = self.target.support_raw_registers()
            if raw is not None:     # the named registers' hex, one after the other
                image = raw.read_registers_hex(event.tid, names)
                ends = list(itertools.accumulate(end - start for start, end in spans))
                spans = list(zip([0] + ends, ends))
            else:
                image = self._registers_hex(event.tid)
        except TargetError:
            return b""
        values = [image[start:end] for start, end in spans]
        return b"".join(b"%02x:%s;" % (self.arch.regnum(name), value)
                        for name, value in zip(names, values) if value[:1] != b"x")

    def _cmd_write_registers(self, args: bytes) -> Reply:
        values = self.arch.decode_registers(args)
        self.target.write_registers(self._current_thread(), values)
        return OK

    def _register_number(self, text: bytes) -> int:
        regnum = parse_hex(text)
        if regnum >= len(self.arch.registers):
            # hex, never decimal: int -> decimal str is refused beyond 4300 digits
            shown = f"{regnum:#x}" if regnum.bit_length() <= 64 else f"of {regnum.bit_length()} bits"
            raise ProtocolError(f"no register {shown}")
        return regnum

    def _cmd_read_register(self, args: bytes) -> Reply:
        reg = self.arch.register(self._register_number(args))
        values = self.target.read_registers(self._current_thread())
        return self.arch.encode_value(reg, values.get(reg.name))

    def _cmd_write_register(self, args: bytes) -> Reply:
        num, sep, value = args.partition(b"=")
        if not sep:
            raise ProtocolError("P needs n=value")
        reg = self.arch.register(self._register_number(num))
        decoded = self.arch.decode_value(reg, value)
        self.target.write_registers(self._current_thread(), {reg.name: decoded})
        return OK

    # ------------------------------------------------------------------ memory

    def _read_memory(self, address: int, length: int) -> bytes:
        phys = self.target.support_physical_memory() if self.physical_memory_mode else None
        if phys is not None:
            return phys.read_physical_memory(address, length)
        return self.target.read_memory(self._current_thread(), address, length)

    def _write_memory(self, address: int, data: bytes) -> None:
        phys = self.target.support_physical_memory() if self.physical_memory_mode else None
        if phys is not None:
            phys.write_physical_memory(address, data)
        else:
            self.target.write_memory(self._current_thread(), address, data)

    def _cmd_read_memory(self, args: bytes) -> Reply:
        address, length = split_address_length(args)
        length = min(length, (self.packet_size - 4) // 2)
        if length == 0:
            return b""
        try:
            return self._read_memory(address, length).hex().encode()
        except TargetError:
            if address // PARTIAL_READ_CHUNK == (address + length - 1) // PARTIAL_READ_CHUNK:
                raise
        # Return the readable prefix, page by page (GDB then asks for the rest).
        data = bytearray()
        pos, end = address, address + length
        while pos < end:
            chunk_end = min(end, (pos // PARTIAL_READ_CHUNK + 1) * PARTIAL_READ_CHUNK)
            try:
                data += self._read_memory(pos, chunk_end - pos)
            except TargetError:
                if not data:
                    raise
                break
            pos = chunk_end
        return bytes(data).hex().encode()

    def _cmd_write_memory(self, args: bytes) -> Reply:
        header, sep, payload = args.partition(b":")
        if not sep:
            raise ProtocolError("M needs addr,length:data")
        address, length = split_address_length(header)
        data = hex_to_bytes(payload)
        if len(data) != length:
            raise ProtocolError("M length does not match its data")
        if data:
            self._write_memory(address, data)
        return OK

    def _cmd_write_memory_binary(self, args: bytes) -> Reply:
        header, sep, data = args.partition(b":")
        if not sep:
            raise ProtocolError("X needs addr,length:data")
        address, length = split_address_length(header)
        if len(data) != length:
            raise ProtocolError("X length does not match its data")
        if data:  # GDB probes X support with a zero-length write
            self._write_memory(address, data)
        return OK

    # ------------------------------------------------------------------ resume

    def _legacy_resume(self, kind: ResumeKind, args: bytes, with_signal: bool) -> Reply:
        """``c``/``s``/``C``/``S``: step the Hc thread alone, or continue all threads."""
        signal = None
        if with_signal:
            sig_text, _, args = args.partition(b";")
            signal = parse_hex(sig_text)
        tid = self._resolve_thread(self.continue_thread)
        if args:
            pc = self.arch.register(self.arch.regnum(self.arch.pc_register))
            self.target.write_registers(tid, {pc.name: parse_hex(args)})
        if kind is ResumeKind.STEP:
            return self._resume({tid: ResumeAction(kind, signal)})
        actions = self._all_threads(ResumeAction(kind))
        actions[tid] = ResumeAction(kind, signal)
        return self._resume(actions)

    def _cmd_continue(self, args: bytes) -> Reply:
        return self._legacy_resume(ResumeKind.CONTINUE, args, with_signal=False)

    def _cmd_continue_signal(self, args: bytes) -> Reply:
        return self._legacy_resume(ResumeKind.CONTINUE, args, with_signal=True)

    def _cmd_step(self, args: bytes) -> Reply:
        return self._legacy_resume(ResumeKind.STEP, args, with_signal=False)

    def _cmd_step_signal(self, args: bytes) -> Reply:
        return self._legacy_resume(ResumeKind.STEP, args, with_signal=True)

    # ------------------------------------------------------------------ v packets

    def _cmd_v(self, args: bytes) -> Reply:
        if args == b"Cont?":
            return b"vCont;c;C;s;S;t"
        if args.startswith(b"Cont;"):
            return self._resume(assign_vcont(parse_vcont(args[4:]), self._tids()))
        if args.startswith(b"Kill"):
            self._kill()
            return OK
        return UNSUPPORTED  # includes vMustReplyEmpty

    # ------------------------------------------------------------------ breakpoints

    def _breakpoint_op(self, args: bytes, insert: bool) -> Reply:
        fields = args.split(b";", 1)[0].split(b",")
        if len(fields) != 3:
            raise ProtocolError("Z/z needs type,addr,kind")
        type_, address, kind = (parse_hex(f) for f in fields)
        key = (type_, address, kind)
        if insert == (key in self.breakpoints):
            return OK  # idempotent, as the protocol asks
        operation = self._breakpoint_operation(type_, insert)
        if operation is None:
            return UNSUPPORTED
        if not operation(address, kind):
            return ERR_NO_SPACE if insert else ERR_NOT_FOUND
        if insert:
            self.breakpoints.add(key)
        else:
            self.breakpoints.discard(key)
        return OK

    def _breakpoint_operation(self, type_: int, insert: bool) -> Callable[[int, int], bool] | None:
        if type_ == 0:
            sw = self.target.support_sw_breakpoints()
            if sw is not None:
                return sw.add_sw_breakpoint if insert else sw.remove_sw_breakpoint
        elif type_ == 1:
            hw = self.target.support_hw_breakpoints()
            if hw is not None:
                return hw.add_hw_breakpoint if insert else hw.remove_hw_breakpoint
        elif type_ in (2, 3, 4):
            watch = self.target.support_watchpoints()
            if watch is not None:
                method = watch.add_watchpoint if insert else watch.remove_watchpoint
                kind = WatchKind(type_)
                return lambda address, length: method(address, length, kind)
        return None

    def _cmd_insert_breakpoint(self, args: bytes) -> Reply:
        return self._breakpoint_op(args, insert=True)

    def _cmd_remove_breakpoint(self, args: bytes) -> Reply:
        return self._breakpoint_op(args, insert=False)

    def _remove_all_breakpoints(self) -> None:
        for type_, address, kind in sorted(self.breakpoints):
            operation = self._breakpoint_operation(type_, insert=False)
            try:
                if operation is not None:
                    operation(address, kind)
            except Exception:
                log.exception("removing breakpoint type %d at %#x", type_, address)
        self.breakpoints.clear()

    # ------------------------------------------------------------------ detach / kill

    def _cmd_detach(self, _args: bytes) -> Reply:
        self._end = SessionEnd.DETACHED  # cleanup happens once OK is sent
        return OK

    def _cmd_kill(self, _args: bytes) -> Reply:
        self._kill()
        return None  # 'k' has no reply

    def _kill(self) -> None:
        self._remove_all_breakpoints()
        killer = self.target.support_kill()
        if killer is not None:
            killer.kill()
        self._end = SessionEnd.KILLED

    # ------------------------------------------------------------------ q / Q

    @staticmethod
    def _split_name(args: bytes) -> tuple[bytes, bytes]:
        """``name`` runs up to the first ``: , ; =``; the separator stays in the rest."""
        for i, c in enumerate(args):
            if c in b":,;=":
                return args[:i], args[i:]
        return args, b""

    def _cmd_query(self, args: bytes) -> Reply:
        name, rest = self._split_name(args)
        handler = self._queries.get(name)
        return handler(rest) if handler is not None else UNSUPPORTED

    def _cmd_set(self, args: bytes) -> Reply:
        name, rest = self._split_name(args)
        handler = self._sets.get(name)
        return handler(rest) if handler is not None else UNSUPPORTED

    def _q_supported(self, args: bytes) -> Reply:
        self.gdb_features = frozenset(
            f[:-1].decode("ascii", "replace")
            for f in args.lstrip(b":").split(b";")
            if f.endswith(b"+")
        )
        features = [
            b"PacketSize=%x" % self.packet_size,
            b"qXfer:features:read+",
            b"qXfer:threads:read+",
            b"vContSupported+",
            b"QStartNoAckMode+",
            b"multiprocess-",
        ]
        if self.target.support_sw_breakpoints() is not None:
            features.append(b"swbreak+")
        if self.target.support_hw_breakpoints() is not None:
            features.append(b"hwbreak+")
        return b";".join(features)

    def _set_no_ack_mode(self, _args: bytes) -> Reply:
        self.conn.send_packet(OK)  # acknowledged in ack mode, then acks stop
        self.conn.ack_mode = False
        return None

    def _q_xfer(self, args: bytes) -> Reply:
        # :object:read:annex:offset,length
        parts = args.split(b":", 4)
        if len(parts) != 5 or parts[0] != b"" or parts[2] != b"read":
            return UNSUPPORTED
        obj, annex, window = parts[1], parts[3].decode("ascii", "replace"), parts[4]
        offset, length = split_address_length(window)
        if obj == b"features":
            document = self._xml_files.get(annex or TARGET_XML)
        elif obj == b"threads" and not annex:
            document = self._threads_document()
        else:
            return UNSUPPORTED
        if document is None:
            return ERR_BAD_ANNEX
        return xfer_chunk(document, offset, min(length, self.packet_size - 16))

    def _threads_document(self) -> bytes:
        extra = self.target.support_thread_extra_info()
        return threads_xml([
            (t.tid, t.name, extra.thread_extra_info(t.tid) if extra is not None else "")
            for t in self.target.threads()
        ])

    def _q_first_thread_info(self, _args: bytes) -> Reply:
        return b"m" + b",".join(format_thread_id(tid) for tid in self._tids())

    def _q_current_thread(self, _args: bytes) -> Reply:
        return b"QC" + format_thread_id(self._current_thread())

    def _q_thread_extra_info(self, args: bytes) -> Reply:
        extra = self.target.support_thread_extra_info()
        if extra is None:
            return UNSUPPORTED
        tid = parse_thread_id(args.lstrip(b","))
        if tid not in self._tids():
            return ERR_NOT_FOUND
        return text_to_hex(extra.thread_extra_info(tid))

    def _q_monitor(self, args: bytes) -> Reply:
        monitor = self.target.support_monitor()
        if monitor is None:
            return UNSUPPORTED
        command = hex_to_bytes(args.lstrip(b",")).decode("utf-8", "replace")
        monitor.monitor_command(command, _Console(self.conn))
        return OK

    # ---- QEMU-compatible probes (qemu.sstepbits, qemu.sstep, qemu.PhyMemMode)

    def _q_sstep_bits(self, _args: bytes) -> Reply:
        if self.target.support_single_step_flags() is None:
            return UNSUPPORTED
        return b"ENABLE=%x,NOIRQ=%x,NOTIMER=%x" % (
            SstepFlags.ENABLE, SstepFlags.NOIRQ, SstepFlags.NOTIMER,
        )

    def _q_sstep(self, _args: bytes) -> Reply:
        ops = self.target.support_single_step_flags()
        if ops is None:
            return UNSUPPORTED
        return b"0x%x" % int(ops.single_step_flags())

    def _set_sstep(self, args: bytes) -> Reply:
        ops = self.target.support_single_step_flags()
        if ops is None:
            return UNSUPPORTED
        if not args.startswith(b"="):
            raise ProtocolError("Qqemu.sstep needs =flags")
        value = args[1:]
        value = value[2:] if value[:2].lower() == b"0x" else value
        ops.set_single_step_flags(SstepFlags(parse_hex(value) & ALL_SSTEP_FLAGS))
        return OK

    def _q_phys_mem_mode(self, _args: bytes) -> Reply:
        if self.target.support_physical_memory() is None:
            return UNSUPPORTED
        return b"1" if self.physical_memory_mode else b"0"

    def _set_phys_mem_mode(self, args: bytes) -> Reply:
        if self.target.support_physical_memory() is None:
            return UNSUPPORTED
        if args not in (b":0", b":1"):
            raise ProtocolError("Qqemu.PhyMemMode needs :0 or :1")
        self.physical_memory_mode = args == b":1"
        return OK
