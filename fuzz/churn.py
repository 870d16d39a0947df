"""Connection churn against a running ``hvdbg run --gdb``: debuggers that connect,
detach, vanish mid-packet or get SIGKILLed, over and over, while the guest runs.

Each :data:`ACTIONS` entry is one debugger lifetime on one port; after each, the
stub must accept the next debugger (checked by the next action's handshake), and
at the end the guest must still finish its work correctly (exit status 0).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from gdbstub.packet import decode_payload, frame

from fuzz.common import SMP_ELF

HANDSHAKE = frame(b"qSupported:multiprocess+;swbreak+;hwbreak+")
BUSY = b"another debugger is already connected"
#: Refusals seen per port while the previous debugger's session was still ending.
REFUSALS: dict[int, int] = {}


class ChurnError(AssertionError):
    """The stub misbehaved (refused, silent or wrong answer) during churn."""


@dataclass
class RawDebugger:
    """A minimal RSP client (ack mode) for churn: just enough to hold a session."""

    sock: socket.socket

    @classmethod
    def connect(cls, port: int, timeout: float = 20.0) -> RawDebugger:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def request(self, payload: bytes, timeout: float = 30.0) -> bytes:
        self.sock.sendall(frame(payload))
        return self.reply(timeout)

    def reply(self, timeout: float = 30.0) -> bytes:
        """The next packet's payload (escapes and run-length encoding undone)."""
        deadline = time.monotonic() + timeout
        buf = bytearray()
        while True:
            start = buf.find(b"$")
            end = buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(buf) >= end + 3:
                self.sock.sendall(b"+")
                return decode_payload(bytes(buf[start + 1 : end]))
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChurnError(f"no reply within {timeout} s (got {bytes(buf)[:100]!r})")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ChurnError(f"stub closed the connection (got {bytes(buf)[:100]!r})")
            buf += data

    @classmethod
    def session(cls, port: int, timeout: float = 30.0) -> RawDebugger:
        """Connect and complete the handshake, retrying while the stub is busy with the
        previous debugger (refused with :data:`BUSY`: that one's cleanup is not over)."""
        deadline = time.monotonic() + timeout
        while True:
            dbg = cls.connect(port)
            try:
                if dbg.handshake():
                    return dbg
            except BaseException:
                dbg.close()
                raise
            dbg.close()
            if time.monotonic() > deadline:
                raise ChurnError(f"still refused after {timeout} s")
            REFUSALS[port] = REFUSALS.get(port, 0) + 1
            time.sleep(0.05)

    def handshake(self) -> bool:
        """qSupported and '?'; False when refused because another debugger is connected."""
        reply = self.request(b"qSupported:multiprocess+;swbreak+;hwbreak+")
        if BUSY in reply:
            return False
        if not reply.startswith(b"PacketSize="):
            raise ChurnError(f"qSupported answered {reply[:120]!r}")
        stop = self.request(b"?")
        if not stop[:1] in (b"T", b"S", b"W", b"X"):
            raise ChurnError(f"'?' answered {stop[:120]!r}")
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _raw_child_script(port: int, partial: bytes) -> str:
    """A separate process that holds a session and stops mid-packet (for SIGKILL)."""
    return (
        "import socket,sys,time\n"
        "while True:\n"
        f"    s=socket.create_connection(('127.0.0.1',{port}),timeout=30)\n"
        f"    s.sendall({HANDSHAKE!r})\n"
        "    buf=b''\n"
        "    while b'#' not in buf:\n"
        "        chunk=s.recv(65536)\n"
        "        if not chunk: sys.exit('the stub closed the connection')\n"  # the guest ended
        "        buf+=chunk\n"
        f"    if {BUSY!r} not in buf: break\n"
        "    s.close(); time.sleep(0.05)\n"
        "s.sendall(b'+')\n"
        f"s.sendall({partial!r})\n"
        "print('ready',flush=True)\n"
        "time.sleep(600)\n"
    )


# ---------------------------------------------------------------------- actions


def detach_cleanly(port: int, rng: random.Random) -> str:
    dbg = RawDebugger.session(port)
    try:
        dbg.request(b"g")
        dbg.request(b"qfThreadInfo")
        if rng.random() < 0.5:
            dbg.request(b"mffffff8000100000,40")
        reply = dbg.request(b"D")
        if reply != b"OK":
            raise ChurnError(f"D answered {reply!r}")
    finally:
        dbg.close()
    return "detach"


def vanish_mid_packet(port: int, rng: random.Random) -> str:
    dbg = RawDebugger.session(port)
    packet = frame(rng.choice((b"mffffff8000100000,1000", b"vCont;c", b"qXfer:threads:read::0,1000",
                               b"Z0,ffffff8000101440,1")))
    dbg.sock.sendall(packet[: rng.randrange(1, len(packet))])
    dbg.close()
    return "close mid-packet"


def vanish_while_running(port: int, rng: random.Random) -> str:
    dbg = RawDebugger.session(port)
    dbg.sock.sendall(frame(b"vCont;c"))
    time.sleep(rng.uniform(0.05, 0.5))
    dbg.close()
    return "close while the guest runs"


def sigkill_raw_client(port: int, rng: random.Random) -> str:
    partial = frame(b"mffffff8000100000,100")[: rng.randrange(2, 12)]
    child = subprocess.Popen([sys.executable, "-c", _raw_child_script(port, partial)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if "ready" not in line:
            raise ChurnError(f"raw client did not get a session: {child.stderr.read()[-500:] if child.stderr else ''}")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    return "SIGKILL raw client mid-packet"


def sigkill_gdb(port: int, rng: random.Random) -> str:
    """A real gdb in the middle of a memory dump or a continue, killed with SIGKILL."""
    what = rng.choice((["-ex", "continue"], ["-ex", "x/20000xb 0xffffff8000100000"],
                       ["-ex", "info registers", "-ex", "stepi", "-ex", "continue"]))
    argv = ["gdb", "--nx", "--batch", "-ex", "set confirm off", "-ex", f"file {SMP_ELF}",
            "-ex", f"target remote 127.0.0.1:{port}", *what]
    gdb = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.3, 1.5))
    gdb.send_signal(signal.SIGKILL)
    gdb.wait(10)
    return "SIGKILL gdb (" + " ".join(what[1::2]) + ")"


ACTIONS: tuple[Callable[[int, random.Random], str], ...] = (
    detach_cleanly, vanish_mid_packet, vanish_while_running, sigkill_raw_client, sigkill_gdb,
)


def wait_for_stub(port: int, timeout: float = 30.0) -> None:
    """A new debugger gets a full session within ``timeout`` (the previous one is gone)."""
    dbg = RawDebugger.session(port, timeout)
    try:
        if dbg.request(b"D") != b"OK":
            raise ChurnError("D not answered OK")
    finally:
        dbg.close()


def churn(ports: list[int], cycles: int, seed: int = 0, log: Callable[[str], None] = lambda _s: None,
          alive: Callable[[], bool] = lambda: True) -> dict[str, int]:
    """Run up to ``cycles`` debugger lifetimes over ``ports``; returns counts per action
    (and ``cycles``). Stops early, without error, once ``alive()`` says the guest ended
    (``"stopped by"``: the error of the cycle that found the guest ending)."""
    rng = random.Random(seed)
    counts: dict[str, int] = {"cycles": 0}
    for i in range(cycles):
        if not alive():
            break
        port = rng.choice(ports)
        action = rng.choice(ACTIONS)
        try:
            wait_for_stub(port)
            what = action(port, rng)
        except (ChurnError, OSError) as e:
            deadline = time.monotonic() + 10  # the guest may be finishing: its stubs go away
            while alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive():
                raise
            counts["stopped by"] = f"cycle {i}, {action.__name__} on port {port}: {type(e).__name__}: {e}"
            break
        counts[action.__name__] = counts.get(action.__name__, 0) + 1
        counts["cycles"] += 1
        log(f"{i}: port {port}: {what}")
    return counts
