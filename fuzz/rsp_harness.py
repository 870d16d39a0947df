"""Drive a GDB stub with raw inputs and check its invariants after every one.

Invariants (checked by :meth:`RspFuzzer.run_one`):

* no crash: the session thread never dies of an exception, and nothing in gdbstub or
  hvdbg logs an error (``log.exception`` = an exception the stub had to swallow);
* no hang: after the input, Ctrl-C (0x03) plus a sync packet gets its answer within
  the hang timeout (Ctrl-C is resent while waiting: a resume in the input may have
  left the target running);
* still serving: a valid ``qC`` right after is answered ``QC<tid>`` with a thread of
  the target, and (every few inputs) ``?`` gets a stop reply;
* the connection only ends when the input asked for it (``D``, ``k``, ``vKill``).

Stubs under test (all in-process, so crashes and logged errors are visible):

* :class:`FakeTargetStub` - a :class:`~gdbstub.session.GdbSession` over a socketpair
  serving the fake 3-CPU machine of ``tests/gdbstub_fake_target.py`` (fast);
* :class:`VmStub` - :class:`~gdbstub.server.GdbServer` over TCP serving
  :class:`hvdbg.debug.gdb_target.VmTarget` on a :class:`hvdbg.debug.session.DebugSession` of the SMP
  kernel (the real thing; the VM is rebuilt when it ends or is killed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import select
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gdbstub import GdbServer
from gdbstub.arch.x86_64 import X86_64
from gdbstub.connection import PacketConnection
from gdbstub.packet import BadChecksum, Packet, PacketDecoder, frame
from gdbstub.session import GdbSession, SessionEnd

from fuzz.common import CORPUS, ROOT, SMP_ELF, write_config
from fuzz.rsp_gen import TargetProfile

# Unicorn prints a deprecation warning per read of some x87 registers; not our concern here.
os.environ.setdefault("UC_IGNORE_REG_BREAK", "1")

STOP_REPLY = re.compile(rb"^(S[0-9a-f]{2}|T[0-9a-f]{2}.*|W[0-9a-f]{2}|X[0-9a-f]{2})$", re.S)
CONSOLE_PACKET = re.compile(rb"^O(?:[0-9a-f]{2})+$")
SESSION_ENDERS = (b"D", b"k", b"vKill")
RSP_CORPUS = CORPUS / "rsp"


class PeerClosed(Exception):
    """The stub closed the connection."""


@dataclass
class Finding:
    """An invariant that broke; ``history`` holds the inputs that came before."""

    kind: str  # crash | hang | internal_error | bad_reply | disconnected | stub_checksum
    detail: str
    input: bytes
    history: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> str:
        return hashlib.sha1(self.input).hexdigest()[:12]

    @property
    def signature(self) -> str:
        """Kind plus the last line of the diagnosis, numbers blanked: one per distinct bug."""
        lines = [ln for ln in self.detail.strip().splitlines() if ln.strip() and not ln.startswith("---")]
        first = self.detail.strip().splitlines()[0] if self.detail.strip() else ""
        last = lines[-1] if self.kind not in ("hang", "crash") else first
        return self.kind + ": " + re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{6,}\b|\d+", "N", last.strip())[:160]

    def save(self, directory: Path = RSP_CORPUS, target: str = "fake", known_bug: str | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.kind}-{self.key}.bin"
        path.write_bytes(self.input)
        path.with_suffix(".json").write_text(json.dumps({
            "kind": self.kind, "target": target, "known_bug": known_bug, "detail": self.detail[-4000:],
            "history": [h.hex() for h in self.history],
        }, indent=1) + "\n")
        return path


def thread_dump() -> str:
    """Stacks of every thread of this process except the caller (for hang diagnoses)."""
    import traceback

    me = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame_ in sys._current_frames().items():
        if ident != me:
            stack = "".join(traceback.format_stack(frame_)[-14:])
            parts.append(f"--- thread {names.get(ident, ident)}\n{stack}")
    return "\n".join(parts)


# ====================================================================== raw peer


class RspPeer:
    """The fuzzer's side of the connection: raw bytes out, decoded packets in (acked)."""

    def __init__(self, sock: socket.socket, send_timeout: float = 20.0) -> None:
        self.sock = sock
        self.sock.settimeout(send_timeout)  # sends; reads wait in select()
        self._decoder = PacketDecoder(1 << 22)
        self._packets: deque[bytes] = deque()
        self.corrupt_from_stub = 0

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:  # includes the send timeout: a stub that stopped reading
            raise PeerClosed(f"send failed: {exc}") from exc

    def read_packet(self, deadline: float) -> bytes | None:
        """The next packet from the stub, or None when ``deadline`` passes."""
        while not self._packets:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    return None
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                raise PeerClosed(str(exc)) from exc
            if not data:
                raise PeerClosed("stub closed the connection")
            acks = 0
            for event in self._decoder.feed(data):
                if isinstance(event, Packet):
                    self._packets.append(event.data)
                    acks += 1
                elif isinstance(event, BadChecksum):
                    self.corrupt_from_stub += 1
            if acks:
                # ack every packet (harmless in no-ack mode: stray '+' are dropped)
                self.send_raw(b"+" * acks)
        return self._packets.popleft()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ====================================================================== log capture


class ErrorLog(logging.Handler):
    """Collects ERROR records of gdbstub and hvdbg (swallowed exceptions)."""

    LOGGERS = ("gdbstub", "hvdbg")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        with self._lock2:
            self.records.append(f"{record.name}: {text}")

    def install(self) -> ErrorLog:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            logger.setLevel(logging.ERROR)  # warnings (bad checksums...) are expected by the thousand
            logger.propagate = False
        return self

    def uninstall(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.setLevel(logging.NOTSET)
            logger.propagate = True

    def take(self) -> list[str]:
        with self._lock2:
            out, self.records = self.records, []
        return out


# ====================================================================== stubs under test


class Stub(Protocol):
    name: str
    profile: TargetProfile
    packet_size: int

    def connect(self) -> socket.socket: ...
    def after_disconnect(self, timeout: float) -> SessionEnd | None | str: ...
    def crashes(self) -> list[str]: ...
    def close(self) -> None: ...


def _fake_machine_module():
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import gdbstub_fake_target

    return gdbstub_fake_target


class FakeTargetStub:
    """GdbSession over a socketpair, serving the fake 3-CPU machine (in-process, fast)."""

    name = "fake"

    def __init__(self, packet_size: int = 0x4000, rng: random.Random | None = None) -> None:
        fake = _fake_machine_module()
        self.machine = fake.FakeMachine((1, 2, 7))
        self.packet_size = packet_size
        self.rng = rng or random.Random(0)
        self.profile = TargetProfile(
            tids=(1, 2, 7),
            addresses=(0, fake.VIRT_BASE, fake.code_base(0), fake.code_base(2), fake.DATA_BASE,
                       fake.STACK_TOP, fake.VIRT_BASE + fake.MEMORY_SIZE, fake.MEMORY_SIZE),
        )
        self._thread: threading.Thread | None = None
        self._result: SessionEnd | None = None
        self._crashes: list[str] = []

    def connect(self) -> socket.socket:
        self._join_previous()
        ours, theirs = socket.socketpair()
        conn = PacketConnection(theirs, self.packet_size, rle=self.rng.random() < 0.5)
        session = GdbSession(self.machine, conn, self.packet_size)
        self._result = None
        self._thread = threading.Thread(target=self._serve, args=(session,), daemon=True)
        self._thread.start()
        return ours

    def _serve(self, session: GdbSession) -> None:
        import traceback

        try:
            self._result = session.serve()
        except BaseException:  # noqa: BLE001 - that is what we are looking for
            self._crashes.append(traceback.format_exc())

    def _join_previous(self) -> None:
        if self._thread is not None:
            self._thread.join(10)
            if self._thread.is_alive():
                self._crashes.append("previous session thread did not end within 10 s")

    def after_disconnect(self, timeout: float) -> SessionEnd | None | str:
        if self._thread is None:
            return None
        self._thread.join(timeout)
        if self._thread.is_alive():
            return "still running"
        return self._result

    def crashes(self) -> list[str]:
        out, self._crashes = self._crashes, []
        return out

    def close(self) -> None:
        self._join_previous()
        self.machine.shutdown()


class VmStub:
    """GdbServer over TCP serving hvdbg's VmTarget on the SMP kernel (all vCPUs or one).

    The VM is rebuilt when it has ended and after ``rebuild_every`` sessions.
    """

    name = "vm"

    def __init__(self, vcpus: int = 2, per_vcpu: int | None = None, packet_size: int = 0x20000,
                 cmdline: str = "work_mib=64", rebuild_every: int = 200) -> None:
        from hvdbg.platform.symbols import SymbolTable

        self.vcpus = vcpus
        self.per_vcpu = per_vcpu
        self.packet_size = packet_size
        self.cmdline = cmdline
        self.rebuild_every = rebuild_every
        self._tmp = tempfile.TemporaryDirectory()
        self._config = write_config(Path(self._tmp.name) / "vm.toml", vcpus=vcpus, cmdline=cmdline,
                                    memory="32M", **{"budget.seconds": 100000})
        symbols = SymbolTable(SMP_ELF.read_bytes())
        named = [symbols.lookup(n) for n in ("kmain", "ap_entry", "ap_online", "boot_pml4", "_start")]
        tids = tuple(range(1, vcpus + 1)) if per_vcpu is None else (per_vcpu + 1,)
        self.profile = TargetProfile(
            tids=tids,
            addresses=tuple(s.address for s in named if s is not None) + (
                0, 0x8000, 0x100000, 0x100020, 0xFFFFFF8000100000, 0x1FFF000, 0x2000000,
                0xFEE00000, 0xFEE00300, 0xE0000, 0xFFFFFFFFFFFFF000, 0x7FFFFFFFF000, 0x800000000000),
        )
        self.sessions = 0
        self.vm_builds = 0
        self._crashes: list[str] = []
        self.server: GdbServer | None = None
        self.session = None
        self._connected_at: int | None = None
        self._build()

    def _build(self) -> None:
        from hvdbg.ui.commands import make_monitor
        from hvdbg.config import load_config
        from hvdbg.debug.session import DebugSession
        from hvdbg.debug.gdb_target import VmTarget
        from hvdbg.hv.machine import Machine

        self._teardown()
        vm = Machine(load_config(self._config))
        self.session = DebugSession(vm, start_paused=True)
        scope = None if self.per_vcpu is None else frozenset({self.per_vcpu})
        target = VmTarget(self.session, scope, make_monitor(self.session))
        self.server = GdbServer(target, packet_size=self.packet_size).start()
        self.session.start()
        self.vm_builds += 1
        self.sessions = 0
        self._connected_at = None

    def _teardown(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.session is not None:
            self.session.shutdown()
            if self.session.running:
                self._crashes.append("executor thread did not stop within 10 s of shutdown")
            self.session = None

    def connect(self) -> socket.socket:
        assert self.server is not None and self.session is not None
        if self._connected_at is not None:
            # one debugger at a time: the previous session must be over, or we are refused
            if not self.server.wait_for_session_end(self._connected_at + 1, 15):
                self._crashes.append("previous session still active 15 s after the disconnect")
        if self.session.vm.ended or self.sessions >= self.rebuild_every:
            self._build()
        assert self.server is not None
        self.sessions += 1
        self._connected_at = self.server.sessions_served
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def after_disconnect(self, timeout: float) -> SessionEnd | None | str:
        if self.server is None or self._connected_at is None:
            return None
        if not self.server.wait_for_session_end(self._connected_at + 1, timeout):
            return "still running"
        return self.server.last_session_end

    def crashes(self) -> list[str]:
        out, self._crashes = self._crashes, []
        if self.session is not None and self.session.vm.ending is not None \
                and self.session.vm.ending.outcome in ("internal_error", "fatal"):
            vm = self.session.vm
            tb = vm.vmm.internal_errors[-1] if vm.vmm.internal_errors else ""
            regs = "; ".join(f"vCPU {v.index}: " + " ".join(f"{k}={x:#x}" for k, x in v.registers().items())
                             for v in vm.vcpus)
            out.append(f"VM ended with {vm.ending.outcome}: {vm.ending.detail}\n{regs}\n{tb}")
            self._build()
        return out

    def close(self) -> None:
        self._teardown()
        self._tmp.cleanup()


# ====================================================================== the fuzzer


def ends_session(raw: bytes) -> bool:
    """Would the stub end the session on this input (a valid D / k / vKill packet)?"""
    decoder = PacketDecoder(1 << 22)
    return any(isinstance(e, Packet) and e.data.startswith(SESSION_ENDERS) for e in decoder.feed(raw))


@dataclass
class Stats:
    inputs: int = 0
    bytes: int = 0
    sessions: int = 0
    session_ends: int = 0
    findings: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class RspFuzzer:
    """Feed inputs to a stub one at a time and check the invariants after each."""

    def __init__(self, stub: Stub, *, seed: int = 0, hang_timeout: float = 20.0,
                 retry_every: float = 0.25, history: int = 16) -> None:
        self.stub = stub
        self.rng = random.Random(seed)
        self.hang_timeout = hang_timeout
        self.retry_every = retry_every
        self.errors = ErrorLog().install()
        self.stats = Stats()
        self.peer: RspPeer | None = None
        self._history: deque[bytes] = deque(maxlen=history)
        self._xml = X86_64.xml_files()["target.xml"].encode()

    # ---- connection

    def _connect(self) -> None:
        self.peer = RspPeer(self.stub.connect())
        self.stats.sessions += 1
        deadline = time.monotonic() + self.hang_timeout
        self.peer.send_raw(frame(b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+"))
        reply = self._expect(lambda p: p.startswith((b"PacketSize=", b"E.")), deadline)
        if reply.startswith(b"E."):
            raise PeerClosed(f"refused: {reply.decode(errors='replace')}")
        if self.rng.random() < 0.7:
            self.peer.send_raw(frame(b"QStartNoAckMode"))
            self._expect(lambda p: p == b"OK", deadline)

    def _expect(self, accept, deadline: float) -> bytes:
        assert self.peer is not None
        while True:
            packet = self.peer.read_packet(deadline)
            if packet is None:
                raise TimeoutError("no reply during the handshake")
            if accept(packet):
                return packet

    def _disconnect(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None

    # ---- one input

    def run_one(self, raw: bytes) -> Finding | None:
        """Send ``raw``, then check the invariants; returns the broken one, if any."""
        self.stats.inputs += 1
        self.stats.bytes += len(raw)
        finding = None
        try:
            if self.peer is None:
                self._connect()
            finding = self._exercise(raw)
        except TimeoutError as exc:
            finding = Finding("hang", f"handshake: {exc}", raw)
        except PeerClosed as exc:
            finding = self._closed(raw, str(exc))
        finding = finding or self._collect_errors(raw)
        self._history.append(raw)
        if finding is not None:
            if finding.kind in ("hang", "crash"):
                finding.detail += "\n" + thread_dump()
            finding.history = list(self._history)[:-1]
            self.stats.findings += 1
            self.stats.by_kind[finding.kind] = self.stats.by_kind.get(finding.kind, 0) + 1
            self._disconnect()
            self.stub.after_disconnect(10)
        return finding

    def _exercise(self, raw: bytes) -> Finding | None:
        assert self.peer is not None
        self.peer.send_raw(raw)
        if not self._sync():
            return Finding("hang", f"no answer to Ctrl-C + sync within {self.hang_timeout} s", raw)
        return self._probe(raw)

    def _sync(self) -> bool:
        """Ctrl-C and a qXfer window as a nonce until the nonce's reply arrives."""
        assert self.peer is not None
        give_up = time.monotonic() + self.hang_timeout
        while time.monotonic() < give_up:
            offset = self.rng.randrange(0, len(self._xml) - 48)
            length = self.rng.randrange(24, 48)
            expected = b"m" + self._xml[offset : offset + length]
            self.peer.send_raw(b"\x03" + frame(b"qXfer:features:read:target.xml:%x,%x" % (offset, length)))
            deadline = min(give_up, time.monotonic() + self.retry_every)
            while (packet := self.peer.read_packet(deadline)) is not None:
                if packet == expected:
                    return True
        return False

    def _probe(self, raw: bytes) -> Finding | None:
        assert self.peer is not None
        deadline = time.monotonic() + self.hang_timeout
        self.peer.send_raw(frame(b"qC"))
        reply = self.peer.read_packet(deadline)
        if reply is None:
            return Finding("hang", "qC not answered after a successful sync", raw)
        tids = {b"QC%x" % t for t in self.stub.profile.tids}
        if reply not in tids:
            return Finding("bad_reply", f"qC answered {reply[:200]!r}, expected one of {sorted(tids)}", raw)
        if self.rng.random() < 0.25:
            self.peer.send_raw(frame(b"?"))
            reply = self.peer.read_packet(deadline)
            if reply is None or not STOP_REPLY.match(reply):
                return Finding("bad_reply", f"'?' answered {reply!r}", raw)
        return None

    def _closed(self, raw: bytes, why: str) -> Finding | None:
        self._disconnect()
        end = self.stub.after_disconnect(10)
        self.stats.session_ends += 1
        if ends_session(raw) and end in (SessionEnd.DETACHED, SessionEnd.KILLED):
            return None
        return Finding("disconnected", f"stub closed the connection ({why}); session end: {end}", raw)

    def _collect_errors(self, raw: bytes) -> Finding | None:
        problems = self.stub.crashes()
        if problems:
            return Finding("crash", "\n".join(problems), raw)
        logged = self.errors.take()
        if logged:
            return Finding("internal_error", "\n".join(logged), raw)
        if self.peer is not None and self.peer.corrupt_from_stub:
            self.peer.corrupt_from_stub = 0
            return Finding("stub_checksum", "the stub sent a packet with a bad checksum", raw)
        return None

    # ---- special cases

    def close_mid_packet(self, raw: bytes) -> Finding | None:
        """Send part of ``raw`` and drop the connection: the session must end, cleanly."""
        self.stats.inputs += 1
        try:
            if self.peer is None:
                self._connect()
            assert self.peer is not None
            self.peer.send_raw(raw[: self.rng.randrange(len(raw) + 1)])
        except (PeerClosed, TimeoutError):
            pass
        self._disconnect()
        end = self.stub.after_disconnect(15)
        if end == "still running":
            return Finding("hang", "session did not end after the peer closed mid-packet", raw)
        return self._collect_errors(raw)

    def close(self) -> None:
        self._disconnect()
        self.stub.close()
        self.errors.uninstall()
