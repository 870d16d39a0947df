"""Inputs for fuzzing the GDB Remote Serial Protocol stub.

Three sources, all producing *raw wire bytes* (what a peer writes on the socket):

* :class:`PacketGrammar` - random but valid-looking command payloads (``m``, ``M``,
  ``X``, ``g``, ``G``, ``p``, ``P``, ``Z``/``z``, ``c``/``s``/``C``/``S``, ``vCont``,
  ``qXfer``, ``qRcmd``, ``H``, ``T``, the QEMU probes...) with random arguments drawn
  from boundary values (GDB manual, "Remote Protocol" -> "Packets").
* :class:`Mutator` - byte/field mutations of seed payloads (captured from real GDB
  sessions, see ``fuzz/capture_gdb.py``) and of grammar payloads.
* :func:`wire` - framing of payloads, correct or mangled: wrong or missing checksum,
  truncation, oversize, run-length encoding, escapes, garbage, stray acks and 0x03
  (Ctrl-C) bytes between and inside packets.

Everything is driven by a :class:`random.Random`, so a seed replays a run exactly.
:func:`hypothesis_inputs` gives the same vocabulary as Hypothesis strategies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gdbstub.arch.x86_64 import X86_64
from gdbstub.packet import Packet, PacketDecoder, checksum, escape, rle_encode

#: Numbers at the edges of the ranges the stub and the targets handle.
INTERESTING_NUMBERS: tuple[int, ...] = (
    0, 1, 2, 3, 4, 7, 8, 0xF, 0x10, 0x3F, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x1001,
    0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 0x10000, 0x1FFFF, 0x20000, 0xFFFFF, 0x100000, 0x7FFFFFFF,
    0x80000000, 0xFFFFFFFF, 0x100000000, 0xFEE00000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000,
    0xFFFF800000000000, 0xFFFFFF8000000000, 0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFFFFF,
    1 << 64, (1 << 64) + 0x1000, (1 << 128) - 1,
)

#: Bytes with a meaning somewhere in the protocol.
SPECIAL_BYTES = b"$#}*\x03+-,:;=.pPxX\x00\xff\n\r 0-1"

MONITOR_WORDS: tuple[str, ...] = (
    "help", "vcpus", "regs", "regs 1", "vmcs", "vmcs guest", "vmcs control", "ept map",
    "ept walk 0x100000", "pt walk $rip", "pt map", "x/4xg $rsp", "x/1000000xb 0", "xp/8xb 0x100000",
    "mb", "disas", "disas $rip 1000", "cpuid 0 1", "apic", "exits 5", "exits 99999999",
    "break exit", "break kmain", "break", "delete", "serial", "sched", "sym kmain", "sym *",
    "cpus", "echo hello", "", " ", "continue", "step", "stop", "quit",
    "x/4xg -1", "x/4xg 0xffffffffffffffff", "regs 99", "vmcs NO_SUCH_FIELD", "help help help",
    "$(id)", "`id`", "; cat /etc/passwd", "| sh", "__import__('os').system('id')",
    "/etc/passwd", "x/s /etc/passwd", "\x00\xff", "%s%s%s%n", "A" * 3000,
)

#: GDB's qSupported features (GDB manual, "General Query Packets" -> qSupported).
GDB_FEATURES: tuple[str, ...] = (
    "multiprocess+", "swbreak+", "hwbreak+", "qRelocInsn+", "fork-events+", "vfork-events+",
    "exec-events+", "vContSupported+", "QThreadEvents+", "no-resumed+", "xmlRegisters=i386",
    "memory-tagging+", "error-message+",
)


@dataclass(frozen=True)
class TargetProfile:
    """What the fuzzer knows of the target: thread ids and interesting addresses."""

    tids: tuple[int, ...]
    addresses: tuple[int, ...]
    #: Packets that end a session (kept rare: the harness must reconnect after them).
    allow_session_end: bool = True


def load_seed_packets(paths: Sequence[Path]) -> list[bytes]:
    """Packet payloads of captured client->stub byte streams."""
    out: list[bytes] = []
    for path in paths:
        decoder = PacketDecoder(1 << 20)
        out += [e.data for e in decoder.feed(path.read_bytes()) if isinstance(e, Packet)]
    return out


# ====================================================================== grammar


class PacketGrammar:
    """Random valid-looking command payloads."""

    def __init__(self, rng: random.Random, profile: TargetProfile) -> None:
        self.rng = rng
        self.profile = profile
        self._commands: list[tuple[int, Callable[[], bytes]]] = [
            (8, self.read_memory), (5, self.write_memory), (5, self.write_binary),
            (3, lambda: b"g"), (3, self.write_registers), (4, self.read_register),
            (4, self.write_register), (6, self.breakpoint), (4, self.legacy_resume),
            (6, self.vcont), (4, self.set_thread), (2, self.thread_alive), (6, self.query),
            (3, self.qxfer), (4, self.monitor), (3, self.qemu), (2, lambda: b"?"),
            (2, self.unknown),
        ]
        self._weights = [w for w, _ in self._commands]
        if profile.allow_session_end:
            self._commands.append((1, self.session_end))
            self._weights.append(0.15)

    # ---- values

    def number(self) -> int:
        r = self.rng.random()
        if r < 0.5:
            return max(0, self.rng.choice(INTERESTING_NUMBERS) + self.rng.choice((0, 0, 0, -1, 1)))
        if r < 0.8:
            return self.rng.getrandbits(self.rng.choice((4, 8, 16, 32, 48, 64)))
        return self.rng.getrandbits(self.rng.choice((65, 80, 128, 512)))

    def hex(self, value: int | None = None) -> bytes:
        value = self.number() if value is None else value
        text = b"%x" % max(value, 0)
        r = self.rng.random()
        if r < 0.05:
            return text.upper()
        if r < 0.08:
            return b"0" * self.rng.randrange(1, 40) + text
        if r < 0.10:
            return b"-" + text
        if r < 0.12:
            return b""
        return text

    def address(self) -> int:
        if self.profile.addresses and self.rng.random() < 0.6:
            return (self.rng.choice(self.profile.addresses) + self.rng.choice(
                (0, 0, 1, -1, 0xFFF, 0x1000, -0x1000, 0x7, self.rng.randrange(0x2000)))) & ((1 << 64) - 1)
        return self.number()

    def length(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.choice((0, 1, 2, 4, 8, 16, 0x40, 0x100, 0xFFF, 0x1000, 0x1001, 0xFFFE))
        if r < 0.9:
            return self.rng.randrange(0, 0x200)
        return self.number()

    def tid(self) -> bytes:
        r = self.rng.random()
        if r < 0.55 and self.profile.tids:
            text = b"%x" % self.rng.choice(self.profile.tids)
        elif r < 0.7:
            text = self.rng.choice((b"-1", b"0"))
        elif r < 0.8:
            text = b"p1." + b"%x" % self.rng.choice(self.profile.tids or (1,))
        else:
            text = self.hex()
        return text

    def data(self, size: int) -> bytes:
        size = min(size, 0x3000)
        if self.rng.random() < 0.5:
            return bytes([self.rng.choice(b"\x90\xcc\xf4\x00\xff$#}*")]) * size
        return self.rng.randbytes(size)

    # ---- commands

    def read_memory(self) -> bytes:
        return b"m" + self.hex(self.address()) + b"," + self.hex(self.length())

    def _write_length(self) -> int:
        return min(self.length(), 0x800)

    def write_memory(self) -> bytes:
        n = self._write_length()
        data = self.data(n).hex().encode()
        claimed = n if self.rng.random() < 0.85 else self.number()
        return b"M" + self.hex(self.address()) + b"," + self.hex(claimed) + b":" + data

    def write_binary(self) -> bytes:
        n = self._write_length()
        claimed = n if self.rng.random() < 0.85 else self.number()
        return b"X" + self.hex(self.address()) + b"," + self.hex(claimed) + b":" + self.data(n)

    def write_registers(self) -> bytes:
        full = 2 * X86_64.g_packet_size
        size = self.rng.choice((full, full, 0, 2, full - 1, full + 2, self.rng.randrange(full)))
        if self.rng.random() < 0.3:
            return b"G" + b"x" * size
        return b"G" + self.rng.randbytes((size + 1) // 2).hex().encode()[:size]

    def _regnum(self) -> bytes:
        n = len(X86_64.registers)
        return self.hex(self.rng.choice((0, 16, n - 1, n, n + 1, self.rng.randrange(n), self.number())))

    def read_register(self) -> bytes:
        return b"p" + self._regnum()

    def write_register(self) -> bytes:
        regnum = self._regnum()
        width = self.rng.choice((1, 2, 4, 8, 10, 16, 17, 0))
        value = self.rng.randbytes(width).hex().encode()
        return b"P" + regnum + self.rng.choice((b"=", b"=", b"", b"==")) + value

    def breakpoint(self) -> bytes:
        op = self.rng.choice((b"Z", b"z"))
        type_ = self.hex(self.rng.choice((0, 0, 1, 2, 3, 4, 5, 9, self.number())))
        kind = self.hex(self.rng.choice((1, 2, 4, 8, 0, 3, 0x1000, self.number())))
        fields = [type_, self.hex(self.address()), kind]
        if self.rng.random() < 0.1:
            fields = fields[: self.rng.randrange(3)]
        tail = self.rng.choice((b"", b"", b";X1,cc", b";cmds:0,1", b";"))
        return op + b",".join(fields) + tail

    def legacy_resume(self) -> bytes:
        op = self.rng.choice((b"c", b"s", b"C", b"S"))
        out = op
        if op in (b"C", b"S"):
            out += self.hex(self.rng.choice((0, 2, 5, 9, 11, 0x13, 0xFF, self.number())))
            if self.rng.random() < 0.5:
                out += b";" + self.hex(self.address())
        elif self.rng.random() < 0.3:
            out += self.hex(self.address())
        return out

    def vcont(self) -> bytes:
        if self.rng.random() < 0.1:
            return b"vCont?"
        actions = []
        for _ in range(self.rng.choice((1, 1, 2, 3, 8))):
            verb = self.rng.choice((b"c", b"s", b"t", b"C05", b"S05", b"C", b"r1,2", b"q", b""))
            if self.rng.random() < 0.6:
                actions.append(verb + b":" + self.tid())
            else:
                actions.append(verb)
        return b"vCont;" + b";".join(actions)

    def set_thread(self) -> bytes:
        return b"H" + self.rng.choice((b"g", b"c", b"g", b"c", b"x", b"")) + self.tid()

    def thread_alive(self) -> bytes:
        return b"T" + self.tid()

    def query(self) -> bytes:
        simple = (b"qC", b"qfThreadInfo", b"qsThreadInfo", b"qAttached", b"qOffsets", b"qSymbol::",
                  b"qTStatus", b"vMustReplyEmpty", b"qAttached:1", b"QStartNoAckMode",
                  b"QNonStop:1", b"QThreadEvents:1", b"qGetTLSAddr:1,0,0", b"qCRC:0,10")
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(simple)
        if r < 0.6:
            return b"qThreadExtraInfo," + self.tid()
        features = self.rng.sample(GDB_FEATURES, self.rng.randrange(len(GDB_FEATURES)))
        return b"qSupported" + (b":" + ";".join(features).encode() if features else b"")

    def qxfer(self) -> bytes:
        obj = self.rng.choice((b"features", b"features", b"threads", b"libraries", b"memory-map", b""))
        annex = self.rng.choice((b"target.xml", b"x86_64-core.xml", b"x86_64-sse.xml", b"",
                                 b"../../etc/passwd", b"/etc/passwd", b"nope.xml"))
        op = self.rng.choice((b"read", b"read", b"read", b"write"))
        window = self.hex(self.rng.choice((0, 1, 0x100, 0x7FF, self.number()))) + b"," + self.hex(self.length())
        return b"qXfer:" + obj + b":" + op + b":" + annex + b":" + window

    def monitor(self) -> bytes:
        word = self.rng.choice(MONITOR_WORDS)
        if self.rng.random() < 0.2:
            word += " " + " ".join(self.rng.choice(MONITOR_WORDS) for _ in range(2))
        text = word.encode("utf-8", "surrogateescape")
        hexed = text.hex().encode()
        if self.rng.random() < 0.1:
            hexed = hexed[:-1]  # odd length
        return b"qRcmd," + hexed

    def qemu(self) -> bytes:
        return self.rng.choice((
            b"qqemu.sstepbits", b"qqemu.sstep", b"Qqemu.sstepbits", b"Qqemu.sstep=" + self.hex(),
            b"Qqemu.sstep=0x" + self.hex(), b"Qqemu.sstep", b"Qqemu.PhyMemMode:1",
            b"Qqemu.PhyMemMode:0", b"Qqemu.PhyMemMode:2", b"qqemu.PhyMemMode", b"Qqemu.PhyMemMode",
        ))

    def unknown(self) -> bytes:
        return self.rng.choice((b"!", b"bc", b"bs", b"jfoo", b"A", b"R00", b"r", b"i", b"I", b"t",
                                b"vFile:open:2f6574632f706173737764,0,0", b"vRun;", b"vAttach;1",
                                b"vStopped", b"QPassSignals:", b"qL1200000000000000000",
                                b"", b"q", b"Q", b"v", b"H", b"Z", b"m", b"M", b"X", b"P"))

    def session_end(self) -> bytes:
        return self.rng.choice((b"D", b"D;1", b"k", b"vKill;1", b"vKill"))

    def payload(self) -> bytes:
        _, make = self.rng.choices(self._commands, weights=self._weights)[0]
        return make()


# ====================================================================== wire framing


class Framer:
    """Turn payloads into raw wire bytes, sometimes mangled."""

    def __init__(self, rng: random.Random, max_packet: int = 0x20000) -> None:
        self.rng = rng
        self.max_packet = max_packet

    def frame(self, payload: bytes) -> bytes:
        rng = self.rng
        body = rle_encode(payload) if rng.random() < 0.2 else escape(payload)
        cs = b"%02x" % checksum(body)
        r = rng.random()
        if r < 0.06:
            cs = b"%02x" % ((checksum(body) + rng.randrange(1, 256)) & 0xFF)  # wrong checksum
        elif r < 0.08:
            cs = cs.upper()
        elif r < 0.10:
            cs = rng.choice((b"", b"g", b"zz", b"\x03\x03", b"$"))
        return b"$" + body + b"#" + cs

    def mangle(self, wire: bytes) -> bytes:
        """Wire-level damage: truncation, garbage, interleaved Ctrl-C, stray acks, oversize."""
        rng = self.rng
        r = rng.random()
        if r < 0.08 and wire:
            return wire[: rng.randrange(len(wire))]  # truncated
        if r < 0.14:
            pos = rng.randrange(len(wire) + 1)
            return wire[:pos] + b"\x03" * rng.randrange(1, 3) + wire[pos:]  # Ctrl-C inside
        if r < 0.18:
            return rng.randbytes(rng.randrange(1, 64)) + wire  # line noise first
        if r < 0.21:
            return rng.choice((b"+", b"-", b"++", b"-+-")) + wire
        if r < 0.23:
            filler = rng.choice((b"0", b"a", b"}", b"*"))
            size = self.max_packet + rng.choice((0, 1, 2, 100))
            body = b"m" + filler * size
            return b"$" + body + b"#" + b"%02x" % checksum(body)  # oversized
        if r < 0.25:
            return wire + wire  # the same packet twice
        if r < 0.27:
            return wire.replace(b"$", b"", 1)  # no start: the bytes are line noise
        if r < 0.29:
            return wire.replace(b"#", b"$", 1)
        return wire


# ====================================================================== mutation


class Mutator:
    """Mutations of seed payloads (classic byte-level operators plus field-aware ones)."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes], grammar: PacketGrammar) -> None:
        self.rng = rng
        self.seeds = [s for s in seeds if s] or [b"qC"]
        self.grammar = grammar
        self._ops: tuple[Callable[[bytes], bytes], ...] = (
            self.flip_bit, self.set_special, self.insert_bytes, self.delete_range,
            self.duplicate_range, self.splice, self.replace_number, self.truncate,
            self.change_command, self.extend_digits, self.swap_separators,
        )

    def seed(self) -> bytes:
        if self.rng.random() < 0.3:
            return self.grammar.payload()
        return self.rng.choice(self.seeds)

    def mutate(self, payload: bytes) -> bytes:
        for _ in range(self.rng.choice((1, 1, 1, 2, 3, 5))):
            payload = self.rng.choice(self._ops)(payload)
        return payload

    def _pos(self, data: bytes) -> int:
        return self.rng.randrange(len(data) + 1)

    def flip_bit(self, data: bytes) -> bytes:
        if not data:
            return bytes([self.rng.randrange(256)])
        i = self.rng.randrange(len(data))
        return data[:i] + bytes([data[i] ^ (1 << self.rng.randrange(8))]) + data[i + 1 :]

    def set_special(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + bytes([self.rng.choice(SPECIAL_BYTES)]) + data[i + 1 :]

    def insert_bytes(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + self.rng.randbytes(self.rng.randrange(1, 16)) + data[i:]

    def delete_range(self, data: bytes) -> bytes:
        if not data:
            return data
        i = self.rng.randrange(len(data))
        return data[:i] + data[i + self.rng.randrange(1, 8) :]

    def duplicate_range(self, data: bytes) -> bytes:
        if not data:
            return data
        i = self.rng.randrange(len(data))
        j = min(len(data), i + self.rng.randrange(1, 32))
        return data[:j] + data[i:j] * self.rng.randrange(1, 8) + data[j:]

    def splice(self, data: bytes) -> bytes:
        other = self.seed()
        return data[: self._pos(data)] + other[self.rng.randrange(len(other) + 1) :]

    def replace_number(self, data: bytes) -> bytes:
        """Swap one run of hex digits for a boundary number."""
        runs = []
        start = None
        for i, c in enumerate(data + b"/"):
            is_hex = chr(c) in "0123456789abcdefABCDEF"
            if is_hex and start is None:
                start = i
            elif not is_hex and start is not None:
                runs.append((start, i))
                start = None
        if not runs:
            return data + self.grammar.hex()
        a, b = self.rng.choice(runs)
        return data[:a] + self.grammar.hex() + data[b:]

    def truncate(self, data: bytes) -> bytes:
        return data[: self._pos(data)]

    def change_command(self, data: bytes) -> bytes:
        letter = self.rng.choice(b"?gGpPmMXcCsSHTZzDkqQvb!jA")
        return bytes([letter]) + data[1:]

    def extend_digits(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + self.rng.choice((b"f", b"0", b"9")) * self.rng.choice((8, 16, 17, 200, 5000)) + data[i:]

    def swap_separators(self, data: bytes) -> bytes:
        table = {ord(","): b":;", ord(":"): b",;=", ord(";"): b",:", ord("="): b":,"}
        spots = [i for i, c in enumerate(data) if c in table]
        if not spots:
            return data
        i = self.rng.choice(spots)
        return data[:i] + bytes([self.rng.choice(table[data[i]])]) + data[i + 1 :]


# ====================================================================== one input


class InputSource:
    """Raw inputs for the harness: ``kind`` is 'grammar', 'mutation' or 'garbage'."""

    def __init__(self, seed: int, profile: TargetProfile, seed_payloads: Sequence[bytes],
                 max_packet: int = 0x20000) -> None:
        self.rng = random.Random(seed)
        self.grammar = PacketGrammar(self.rng, profile)
        self.framer = Framer(self.rng, max_packet)
        self.mutator = Mutator(self.rng, seed_payloads, self.grammar)

    def next(self, engine: str = "mixed") -> bytes:
        rng = self.rng
        if engine == "mixed":
            engine = rng.choices(("grammar", "mutation", "garbage"), weights=(45, 50, 5))[0]
        if engine == "garbage":
            return rng.randbytes(rng.randrange(1, 256))
        count = rng.choice((1, 1, 1, 1, 2, 3))
        wire = b""
        for _ in range(count):
            payload = self.grammar.payload() if engine == "grammar" else self.mutator.mutate(self.mutator.seed())
            wire += self.framer.mangle(self.framer.frame(payload))
        return wire


# ====================================================================== hypothesis


def hypothesis_inputs(profile: TargetProfile):
    """A Hypothesis strategy of raw wire inputs built from the same vocabulary."""
    from hypothesis import strategies as st

    numbers = st.one_of(st.sampled_from(INTERESTING_NUMBERS), st.integers(0, 2**64 - 1),
                        st.integers(0, 2**80))
    hexnum = numbers.map(lambda n: b"%x" % n)
    tids = st.one_of(st.sampled_from([b"%x" % t for t in profile.tids] + [b"-1", b"0"]), hexnum)
    addrs = st.one_of(st.sampled_from(profile.addresses or (0,)), numbers).map(lambda n: b"%x" % n)
    lengths = st.one_of(st.sampled_from((0, 1, 8, 0x1000, 0xFFFE)), st.integers(0, 0x2000)).map(
        lambda n: b"%x" % n)
    data = st.binary(max_size=64)
    payloads = st.one_of(
        st.tuples(addrs, lengths).map(lambda t: b"m" + t[0] + b"," + t[1]),
        st.tuples(addrs, data).map(lambda t: b"M" + t[0] + b",%x:" % len(t[1]) + t[1].hex().encode()),
        st.tuples(addrs, lengths, data).map(lambda t: b"X" + t[0] + b"," + t[1] + b":" + t[2]),
        st.just(b"g"),
        st.binary(max_size=400).map(lambda b: b"G" + b.hex().encode()),
        hexnum.map(lambda n: b"p" + n),
        st.tuples(hexnum, st.binary(max_size=17)).map(lambda t: b"P" + t[0] + b"=" + t[1].hex().encode()),
        st.tuples(st.sampled_from(b"Zz"), st.integers(0, 6), addrs, lengths).map(
            lambda t: bytes([t[0]]) + b"%x," % t[1] + t[2] + b"," + t[3]),
        st.tuples(st.sampled_from((b"c", b"s", b"t", b"C05", b"S0b", b"x")), tids).map(
            lambda t: b"vCont;" + t[0] + b":" + t[1]),
        st.sampled_from((b"vCont?", b"vCont;c", b"vCont;s", b"c", b"s", b"?", b"qC", b"qfThreadInfo",
                         b"qsThreadInfo", b"qAttached", b"qOffsets", b"qqemu.sstepbits",
                         b"Qqemu.PhyMemMode:1", b"Qqemu.PhyMemMode:0", b"QStartNoAckMode",
                         b"vMustReplyEmpty", b"qSupported:swbreak+;hwbreak+")),
        st.tuples(st.sampled_from((b"g", b"c")), tids).map(lambda t: b"H" + t[0] + t[1]),
        tids.map(lambda t: b"T" + t),
        tids.map(lambda t: b"qThreadExtraInfo," + t),
        st.tuples(st.sampled_from((b"features", b"threads")), st.sampled_from((b"target.xml", b"", b"x")),
                  hexnum, lengths).map(lambda t: b"qXfer:" + t[0] + b":read:" + t[1] + b":" + t[2] + b"," + t[3]),
        st.sampled_from(MONITOR_WORDS).map(lambda w: b"qRcmd," + w.encode().hex().encode()),
        st.binary(max_size=40),
    )

    def framed(payload: bytes, how: int, cut: int, ctrl_c: bool) -> bytes:
        body = escape(payload)
        wire = b"$" + body + b"#%02x" % checksum(body)
        if how == 1:
            wire = b"$" + body + b"#%02x" % ((checksum(body) + 1) & 0xFF)
        elif how == 2:
            wire = wire[: cut % (len(wire) + 1)]
        elif how == 3:
            wire = b"$" + rle_encode(payload) + b"#%02x" % checksum(rle_encode(payload))
        if ctrl_c:
            pos = cut % (len(wire) + 1)
            wire = wire[:pos] + b"\x03" + wire[pos:]
        return wire

    one = st.builds(framed, payloads, st.sampled_from((0, 0, 0, 1, 2, 3)), st.integers(0, 1000), st.booleans())
    return st.one_of(st.lists(one, min_size=1, max_size=3).map(b"".join), st.binary(max_size=128))
