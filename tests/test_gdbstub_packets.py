"""gdbstub protocol layer: framing, escapes, RLE, checksums, malformed input, packets.

Server-level tests talk to a real GdbServer over TCP with a minimal raw RSP client.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdbstub import GdbServer, ThreadSubsetTarget
from gdbstub.arch.x86_64 import X86_64
from gdbstub.packet import (
    Ack,
    BadChecksum,
    Interrupt,
    Malformed,
    Nak,
    Packet,
    PacketDecoder,
    checksum,
    decode_payload,
    escape,
    frame,
    rle_encode,
)
from gdbstub.protocol import (
    ALL_THREADS,
    ProtocolError,
    assign_vcont,
    parse_vcont,
    stop_reply,
)
from gdbstub.target import ResumeAction, ResumeKind, StopEvent, WatchKind
from gdbstub_fake_target import (
    MEMORY_SIZE,
    VIRT_BASE,
    FakeMachine,
    code_base,
    data_address,
)

PACKET_SIZE = 0x1000


# ===================================================================== pure framing


def test_checksum_is_sum_mod_256():
    assert checksum(b"") == 0
    assert checksum(b"OK") == (ord("O") + ord("K")) % 256 == 0x9A
    assert frame(b"OK") == b"$OK#9a"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_checksum_of_long_payloads_is_still_the_byte_sum(data):
    """Long payloads are summed by Adler-32 pieces (gdbstub.packet.checksum): the same
    modulo-256 sum at every length, piece boundary and byte value."""
    assert checksum(data) == sum(data) % 256
    assert checksum(b"\xff" * len(data)) == 255 * len(data) % 256


def test_escape_covers_framing_characters():
    assert escape(b"a$b#c}d*e") == b"a}\x04b}\x03c}\x5dd}\x0ae"
    assert decode_payload(escape(b"a$b#c}d*e")) == b"a$b#c}d*e"


def test_rle_decoding_of_manual_example():
    # GDB manual: "0* " means the same as "0000" (' ' = 32 = 3 repeats + 29).
    assert decode_payload(b"0* ") == b"0000"
    assert decode_payload(b"x*!y") == b"xxxxxy"


def test_rle_encoding_avoids_hash_and_dollar_counts():
    for run in range(1, 200):
        encoded = rle_encode(b"a" * run)
        assert b"#" not in encoded and b"$" not in encoded
        assert decode_payload(encoded) == b"a" * run


@pytest.mark.parametrize("raw", [b"abc}", b"*a", b"a*", b"a*\x10"])
def test_undecodable_payloads_are_reported(raw):
    decoder = PacketDecoder(64)
    events = list(decoder.feed(b"$" + raw + b"#%02x" % checksum(raw)))
    assert len(events) == 1 and isinstance(events[0], Malformed) and events[0].complete


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_rle_and_escape_round_trip(data):
    assert decode_payload(escape(data)) == data
    assert decode_payload(rle_encode(data)) == data


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=80), max_size=5), st.integers(1, 7))
def test_decoder_is_independent_of_chunking(payloads, chunk):
    stream = b"garbage" + b"".join(frame(p, rle=True) + b"+" for p in payloads)
    decoder = PacketDecoder(1024)
    events = []
    for i in range(0, len(stream), chunk):
        events += decoder.feed(stream[i : i + chunk])
    packets = [e.data for e in events if isinstance(e, Packet)]
    assert packets == payloads
    assert sum(isinstance(e, Ack) for e in events) == len(payloads)


_WIRE = st.lists(st.one_of(st.sampled_from([b"$", b"#", b"}", b"*", b"+", b"-", b"\x03", b"00", b"9a", b"OK"]),
                           st.binary(max_size=12),
                           st.binary(max_size=40).map(lambda p: frame(p, rle=True))), max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(_WIRE, st.integers(8, 64))
def test_whole_chunks_decode_as_byte_by_byte(stream, limit):
    """A packet that arrives whole in one chunk takes the decoder's shortcut; any stream,
    good or broken, gives exactly the events of the same bytes fed one at a time."""
    whole = list(PacketDecoder(limit).feed(stream))
    single = PacketDecoder(limit)
    one_by_one = [e for i in range(len(stream)) for e in single.feed(stream[i:i + 1])]
    assert whole == one_by_one


def test_decoder_events_for_malformed_input():
    decoder = PacketDecoder(16)
    events = list(decoder.feed(
        b"noise\x03+-"          # garbage ignored, interrupt, ack, nak
        b"$g#00"                # bad checksum
        b"$g#zz"                # non-hex checksum
        b"$abc$OK#9a"           # truncated packet, then a good one
        b"$" + b"A" * 40 + b"#00"  # oversized
        b"$X1,1:\x03#%02x" % checksum(b"X1,1:\x03")  # 0x03 inside a packet is data
    ))
    kinds = [type(e) for e in events]
    assert kinds == [Interrupt, Ack, Nak, BadChecksum, BadChecksum, Malformed, Packet,
                     Malformed, Packet]
    assert events[5].complete is False
    assert events[6] == Packet(b"OK")
    assert events[7].complete is True
    assert events[8] == Packet(b"X1,1:\x03")


# ===================================================================== register layout


def test_x86_64_layout_is_full_64_bit_qemu_set():
    names = [r.name for r in X86_64.registers]
    assert names[:18] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"]
    for name in ("cs", "gs", "fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4",
                 "cr8", "efer", "st0", "st7", "fctrl", "fop", "xmm0", "xmm15", "mxcsr"):
        assert name in names
    # 16 GPRs + rip (8 each), eflags + 6 selectors (4), 8 x87 (10), 8 x87 ctl (4),
    # 16 xmm (16), mxcsr (4), fs/gs/k_gs base + 6 control regs (8).
    assert X86_64.g_packet_size == 17 * 8 + 7 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 9 * 8


def test_register_encoding_round_trip_and_unavailable():
    values = {"rax": 0x1122334455667788, "eflags": 0x202, "st0": bytes(range(10)),
              "xmm1": bytes(range(16)), "cr3": 0xDEAD000}
    encoded = X86_64.encode_registers(values)
    assert len(encoded) == 2 * X86_64.g_packet_size
    assert encoded.startswith(b"8877665544332211")
    assert encoded[16:32] == b"xx" * 8  # rbx missing -> unavailable
    decoded = X86_64.decode_registers(encoded)
    assert decoded == values


def test_target_xml_includes_every_feature():
    files = X86_64.xml_files()
    target = files["target.xml"]
    assert "<architecture>i386:x86-64</architecture>" in target
    for name in ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments"):
        assert any(f'feature name="{name}"' in text for text in files.values())
    for filename in files:
        if filename != "target.xml":
            assert f'href="{filename}"' in target


# ===================================================================== protocol helpers


def test_vcont_leftmost_action_wins_and_t_stays_stopped():
    actions = assign_vcont(parse_vcont(b";s:2;t:7;c"), [1, 2, 7])
    assert actions == {2: ResumeAction(ResumeKind.STEP), 1: ResumeAction(ResumeKind.CONTINUE)}
    assert assign_vcont(parse_vcont(b";C0b:1"), [1, 2]) == {1: ResumeAction(ResumeKind.CONTINUE, 11)}
    assert parse_vcont(b";c")[0].tid == ALL_THREADS
    with pytest.raises(ProtocolError):
        parse_vcont(b";q")
    with pytest.raises(ProtocolError):
        assign_vcont(parse_vcont(b";c:9"), [1, 2])


def test_stop_replies():
    features = frozenset({"swbreak", "hwbreak"})
    assert stop_reply(StopEvent.sw_breakpoint(3), features) == b"T05thread:3;swbreak:;"
    assert stop_reply(StopEvent.sw_breakpoint(3), frozenset()) == b"T05thread:3;"
    assert stop_reply(StopEvent.hw_breakpoint(0x1a), features) == b"T05thread:1a;hwbreak:;"
    assert stop_reply(StopEvent.watchpoint(2, WatchKind.READ, 0x1000), features) == \
        b"T05thread:2;rwatch:1000;"
    assert stop_reply(StopEvent.watchpoint(2, WatchKind.ACCESS, 0x8), features) == \
        b"T05thread:2;awatch:8;"
    assert stop_reply(StopEvent.interrupted(1), features) == b"T02thread:1;"
    assert stop_reply(StopEvent.exited(3), features) == b"W03"
    assert stop_reply(StopEvent.terminated(9), features) == b"X09"


# ===================================================================== raw RSP client


class RawClient:
    """Just enough RSP to poke the server: acks, packets, raw bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as GDB does
        self.buf = bytearray()
        self.ack_mode = True
        self.acks: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> None:
        self.send_raw(frame(payload))

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def recv(self) -> bytes:
        """Next packet payload (acks before it are recorded in ``acks``)."""
        while True:
            while self.buf[:1] in (b"+", b"-"):
                self.acks.append(bytes(self.buf[:1]))
                del self.buf[:1]
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                raw = bytes(self.buf[start + 1 : end])
                assert int(self.buf[end + 1 : end + 3], 16) == checksum(raw)
                del self.buf[: end + 3]
                if self.ack_mode:
                    self.send_raw(b"+")
                return decode_payload(raw)
            self._fill()

    def request(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def start_session(self) -> None:
        self.request(b"qSupported:swbreak+;hwbreak+")
        assert self.request(b"?").startswith(b"T")


@pytest.fixture
def machine():
    fake = FakeMachine((1, 2, 7))
    yield fake
    fake.shutdown()


@pytest.fixture
def server(machine):
    with GdbServer(machine, packet_size=PACKET_SIZE) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = RawClient(server.port)
    c.start_session()
    yield c
    c.close()


# ===================================================================== malformed input on the wire


def test_bad_checksum_gets_nak_then_valid_packet_answered(client):
    client.acks.clear()
    client.send_raw(b"$qC#00")
    assert client.request(b"qC") == b"QC1"
    assert client.acks[0] == b"-"


def test_truncated_packet_is_dropped(client):
    client.send_raw(b"$m40100")
    assert client.request(b"qC") == b"QC1"


def test_oversized_packet_answered_with_error(client):
    client.send_raw(frame(b"M400000,900:" + b"00" * 0x900))
    assert client.recv().startswith(b"E")
    assert client.request(b"qC") == b"QC1"


@pytest.mark.parametrize("bad", [
    b"mZZ,4", b"m401000,zz", b"m401000", b"M401000,2:0g00", b"M401000,4:00",
    b"p999", b"Pzz=00", b"P0=00", b"Hgzz", b"Z0,zz,1", b"vCont;q", b"G00",
    b"qRcmd,6", b"Qqemu.PhyMemMode:7", b"qXfer:features:read:target.xml:zz",
])
def test_malformed_arguments_get_error_and_session_continues(client, bad):
    assert client.request(bad).startswith(b"E")
    assert client.request(b"qC") == b"QC1"


def test_garbage_between_packets_is_ignored(client):
    client.send_raw(b"hello\r\n\x7f\xff")
    assert client.request(b"qC") == b"QC1"


def test_ctrl_c_while_stopped_is_ignored(client):
    client.send_raw(b"\x03")
    assert client.request(b"qC") == b"QC1"
    client.send_raw(b"\x03\x03" + frame(b"qAttached"))
    assert client.recv() == b"1"


def test_unknown_packets_get_empty_reply(client):
    for unknown in (b"vMustReplyEmpty", b"qFooBar", b"QNonStop:1", b"!", b"bc", b"jfoo"):
        assert client.request(unknown) == b""


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=64).map(lambda g: g.replace(b"#", b"")))
def test_any_garbage_then_valid_packet_is_answered(client, garbage):
    # Without '#', garbage cannot form a complete packet that could run a command.
    client.send_raw(garbage)
    client.send(b"qC")
    # Replies to accidental packets inside the garbage (E.., '') may come first.
    for _ in range(20):
        if client.recv() == b"QC1":
            return
    pytest.fail("no reply to qC")


# ===================================================================== packets against the fake target


def test_ack_and_no_ack_mode(client):
    client.acks.clear()
    assert client.request(b"QStartNoAckMode") == b"OK"
    assert client.acks == [b"+"]
    client.ack_mode = False
    client.acks.clear()
    assert client.request(b"qC") == b"QC1"
    assert client.request(b"qAttached") == b"1"
    assert client.acks == []


def test_qsupported_advertises_capabilities(server):
    c = RawClient(server.port)
    reply = c.request(b"qSupported:multiprocess+;swbreak+;hwbreak+").split(b";")
    assert b"PacketSize=%x" % PACKET_SIZE in reply
    for feature in (b"qXfer:features:read+", b"vContSupported+", b"QStartNoAckMode+",
                    b"swbreak+", b"hwbreak+"):
        assert feature in reply
    c.close()


def test_qxfer_features_in_chunks_reassembles_target_xml(client):
    files = X86_64.xml_files()
    for annex, text in files.items():
        data, offset = b"", 0
        while True:
            reply = client.request(b"qXfer:features:read:%s:%x,%x" % (annex.encode(), offset, 0x100))
            data += reply[1:]
            offset += 0x100
            if reply[:1] == b"l":
                break
            assert reply[:1] == b"m"
        assert data.decode() == text
    assert client.request(b"qXfer:features:read:nope.xml:0,100") == b"E00"


def test_threads_queries(client, machine):
    assert client.request(b"qfThreadInfo") == b"m1,2,7"
    assert client.request(b"qsThreadInfo") == b"l"
    assert client.request(b"T7") == b"OK"
    assert client.request(b"T5").startswith(b"E")
    assert client.request(b"Hg7") == b"OK"
    assert client.request(b"qC") == b"QC7"
    assert bytes.fromhex(client.request(b"qThreadExtraInfo,7").decode()) == b"vCPU 2"
    xml = client.request(b"qXfer:threads:read::0,1000")
    assert xml.startswith(b"l") and b'<thread id="7" name="CPU#2">vCPU 2</thread>' in xml


def test_registers_g_p_G_P(client, machine):
    assert client.request(b"Hg2") == b"OK"
    regs = X86_64.decode_registers(client.request(b"g"))
    assert regs["rip"] == code_base(1) and regs["rax"] == 0x2000
    assert regs["xmm0"] == bytes(range(16, 32))
    rip_num = X86_64.regnum("rip")
    assert client.request(b"p%x" % rip_num) == (code_base(1)).to_bytes(8, "little").hex().encode()
    assert client.request(b"P%x=%s" % (rip_num, (0x402030).to_bytes(8, "little").hex().encode())) == b"OK"
    assert machine.cpu(2).regs["rip"] == 0x402030
    regs["rbx"] = 0xABCDEF
    assert client.request(b"G" + X86_64.encode_registers(regs)) == b"OK"
    assert machine.cpu(2).regs["rbx"] == 0xABCDEF
    assert machine.cpu(1).regs["rbx"] == data_address(0)  # other thread untouched


def test_memory_m_M_X_and_errors(client, machine):
    assert client.request(b"m%x,4" % code_base(0)) == b"90909090"
    assert client.request(b"M%x,3:010203" % data_address(0)) == b"OK"
    assert machine.memory[data_address(0) - VIRT_BASE :][:3] == b"\x01\x02\x03"
    tricky = b"\x03#$}*\x00\xff"
    assert client.request(b"X%x,0:" % data_address(1)) == b"OK"  # GDB's X probe
    assert client.request(b"X%x,%x:" % (data_address(1), len(tricky)) + tricky) == b"OK"
    assert client.request(b"m%x,%x" % (data_address(1), len(tricky))) == tricky.hex().encode()
    assert client.request(b"m10,4") == b"E0e"  # unmapped: EFAULT
    assert client.request(b"M10,1:00") == b"E0e"


def test_large_and_partial_memory_reads(client, machine):
    reply = client.request(b"m%x,%x" % (VIRT_BASE, 0x7F0))
    assert bytes.fromhex(reply.decode()) == bytes(machine.memory[:0x7F0])
    # Crossing the end of memory returns the readable prefix.
    end = VIRT_BASE + MEMORY_SIZE
    reply = client.request(b"m%x,%x" % (end - 0x10, 0x7F0))
    assert bytes.fromhex(reply.decode()) == bytes(machine.memory[-0x10:])


_EXPEDITED = re.compile(rb"([0-9a-f]{2}):([0-9a-f]+);")


def expedited(reply: bytes) -> dict[int, bytes]:
    """The registers a ``T`` stop reply carries before its other pairs, by number."""
    assert reply[:1] == b"T"
    out, pos = {}, 3
    while (m := _EXPEDITED.match(reply, pos)) is not None:
        out[int(m[1], 16)] = m[2]
        pos = m.end()
    return out


def without_expedited(reply: bytes) -> bytes:
    """A ``T`` stop reply without its expedited registers (the tests of the rest)."""
    if reply[:1] != b"T":
        return reply
    pos = 3
    while (m := _EXPEDITED.match(reply, pos)) is not None:
        pos = m.end()
    return reply[:3] + reply[pos:]


def test_stop_replies_carry_the_frame_registers_as_g_shows_them(client, machine):
    """As gdbserver does, a stop reply expedites rbp, rsp and rip (gdb then needs no
    ``g`` to show where a stepi stopped): the values are the ``g`` reply's bytes."""
    reply = client.request(b"vCont;s:2")
    regs = expedited(reply)
    assert sorted(regs) == [X86_64.regnum(n) for n in ("rbp", "rsp", "rip")]
    g = client.request(b"g")
    for name in ("rbp", "rsp", "rip"):
        start, end = X86_64.hex_spans[name]
        assert regs[X86_64.regnum(name)] == g[start:end]
    assert int.from_bytes(bytes.fromhex(regs[X86_64.regnum("rip")].decode()), "little") \
        == machine.cpu(2).regs["rip"]
    assert without_expedited(client.request(b"?")) == b"T05thread:2;"
    assert expedited(client.request(b"?")) == regs


def test_breakpoint_continue_reports_thread_and_swbreak(client, machine):
    assert client.request(b"Z0,%x,1" % (code_base(2) + 4)) == b"OK"
    assert without_expedited(client.request(b"vCont;c")) == b"T05thread:7;swbreak:;"
    assert machine.cpu(7).regs["rip"] == code_base(2) + 4
    assert client.request(b"qC") == b"QC7"  # the stopped thread becomes current
    assert client.request(b"z0,%x,1" % (code_base(2) + 4)) == b"OK"
    assert machine.sw_breakpoints == set()


def test_step_and_legacy_packets(client, machine):
    assert without_expedited(client.request(b"vCont;s:2")) == b"T05thread:2;"
    assert machine.cpu(2).regs["rip"] == code_base(1) + 1
    assert machine.cpu(1).regs["rip"] == code_base(0)  # not resumed
    assert client.request(b"Hc1") == b"OK"
    assert without_expedited(client.request(b"s%x" % (code_base(0) + 8))) == b"T05thread:1;"
    assert machine.cpu(1).regs["rip"] == code_base(0) + 9
    assert machine.resumes[-1] == {1: ResumeAction(ResumeKind.STEP)}


def test_watchpoints_and_hw_slot_exhaustion(client, machine):
    addr = data_address(1)
    assert client.request(b"Z2,%x,8" % addr) == b"OK"
    assert without_expedited(client.request(b"vCont;c")) == b"T05thread:2;watch:%x;" % addr
    assert client.request(b"z2,%x,8" % addr) == b"OK"
    assert client.request(b"Z3,%x,8" % addr) == b"OK"
    assert without_expedited(client.request(b"c")) == b"T05thread:2;rwatch:%x;" % addr
    for i in range(3):
        assert client.request(b"Z1,%x,1" % (code_base(0) + i)) == b"OK"
    assert client.request(b"Z4,%x,8" % data_address(0)).startswith(b"E")  # 4 slots used


def test_ctrl_c_while_running_interrupts_the_target(client, machine):
    client.send(b"vCont;c")
    time.sleep(0.2)
    assert machine.running
    client.send_raw(b"\x03")
    assert without_expedited(client.recv()) == b"T02thread:1;"
    assert not machine.running
    assert client.request(b"qC") == b"QC1"


def test_monitor_output_as_O_packets_then_OK(client):
    client.send(b"qRcmd," + b"cpus".hex().encode())
    lines = []
    while (reply := client.recv()) != b"OK":
        assert reply.startswith(b"O")
        lines.append(bytes.fromhex(reply[1:].decode()).decode())
    text = "".join(lines)
    assert "CPU#0 tid=1 rip=0x401000" in text and "CPU#2 tid=7" in text
    assert client.request(b"qRcmd," + b"bogus".hex().encode()).startswith(b"E")


def test_qemu_probes_and_physical_memory_mode(client, machine):
    assert client.request(b"Qqemu.sstepbits") == b"ENABLE=1,NOIRQ=2,NOTIMER=4"
    assert client.request(b"qqemu.sstepbits") == b"ENABLE=1,NOIRQ=2,NOTIMER=4"
    assert client.request(b"qqemu.sstep") == b"0x7"
    assert client.request(b"Qqemu.sstep=0x1") == b"OK"
    assert int(machine.sstep_flags) == 1
    assert client.request(b"qOffsets") == b""  # no "Text=": QEMU system mode
    assert client.request(b"qSymbol::") == b"OK"
    assert client.request(b"qqemu.PhyMemMode") == b"0"
    assert client.request(b"m1000,4") == b"E0e"  # virtual 0x1000 is unmapped
    assert client.request(b"Qqemu.PhyMemMode:1") == b"OK"
    assert client.request(b"qqemu.PhyMemMode") == b"1"
    assert client.request(b"m%x,4" % (code_base(0) - VIRT_BASE)) == b"90909090"


def test_target_exception_becomes_error_reply(client, machine, monkeypatch):
    def broken(tid):
        raise RuntimeError("simulated target bug")

    monkeypatch.setattr(machine, "read_registers", broken)
    assert client.request(b"g") == b"E01"
    monkeypatch.undo()
    assert len(client.request(b"g")) == 2 * X86_64.g_packet_size


# ===================================================================== sessions


def test_second_client_is_refused_while_one_is_attached(server, client):
    other = RawClient(server.port)
    reply = other.request(b"qSupported")
    assert reply.startswith(b"E.") and b"already connected" in reply
    with pytest.raises((ConnectionError, OSError)):
        other.recv()
    other.close()
    assert client.request(b"qC") == b"QC1"  # the first one is unaffected


def test_detach_removes_breakpoints_resumes_and_allows_reconnect(server, client, machine):
    assert client.request(b"Z0,%x,1" % code_base(0)) == b"OK"
    assert client.request(b"D") == b"OK"
    assert server.wait_for_session_end(1, 5)
    assert machine.sw_breakpoints == set()
    assert machine.running  # resumed, as QEMU does
    again = RawClient(server.port)
    again.request(b"qSupported")
    assert without_expedited(again.request(b"?")) == b"T02thread:1;"  # attach stopped it
    assert not machine.running
    again.close()


def test_disconnect_while_running_stops_cleans_up_and_resumes(server, client, machine):
    assert client.request(b"Z2,%x,8" % data_address(2)) == b"OK"
    client.send(b"vCont;s:1")
    client.recv()
    client.send(b"vCont;c:1")
    client.close()
    assert server.wait_for_session_end(1, 5)
    assert machine.watches == set()


def test_kill_calls_kill_hook_and_ends_session(server, client, machine):
    client.send(b"k")
    assert server.wait_for_session_end(1, 5)
    assert machine.kills == 1
    assert not machine.running


def test_exit_is_reported_with_W_and_target_is_not_resumed(server, client, machine):
    machine.memory[code_base(0) - VIRT_BASE] = 0xF4  # halt -> exit(rax & 0xff)
    machine.cpu(1).regs["rax"] = 0x12A
    assert client.request(b"vCont;s:1") == b"W2a"
    client.close()
    assert server.wait_for_session_end(1, 5)
    assert not machine.running


def test_packets_flooded_while_running_are_bounded(client, machine):
    client.send(b"vCont;c")
    client.send_raw(frame(b"qC") * 500)
    time.sleep(0.3)
    client.send_raw(b"\x03")
    assert without_expedited(client.recv()) == b"T02thread:1;"
    replies = [client.recv() for _ in range(64)]  # the deferred ones are answered
    assert set(replies) == {b"QC1"}
    assert client.request(b"qAttached") == b"1"


def test_thread_subset_view(machine):
    view = ThreadSubsetTarget(machine, [7])
    with GdbServer(view, packet_size=PACKET_SIZE) as srv:
        c = RawClient(srv.port)
        c.start_session()
        assert c.request(b"qfThreadInfo") == b"m7"
        assert c.request(b"qC") == b"QC7"
        assert c.request(b"Hg1").startswith(b"E")
        assert c.request(b"Z0,%x,1" % (code_base(2) + 2)) == b"OK"
        assert without_expedited(c.request(b"vCont;c")) == b"T05thread:7;swbreak:;"
        assert set(machine.resumes[-1]) == {7}
        c.close()


_HEX_RUNS = st.lists(st.tuples(st.sampled_from(b"0123456789abcdef"), st.integers(1, 300)), max_size=40).map(
    lambda runs: b"".join(bytes((c,)) * n for c, n in runs))


@settings(max_examples=300)
@given(_HEX_RUNS)
def test_rle_fast_path_for_hex_payloads_matches_the_regex_path(data):
    """Hex replies (nothing to escape) take the C-search encoder; it must produce what
    the general regex encoder produces, and decode back to the payload."""
    from gdbstub.packet import _RUN_OR_SPECIAL, _escaped_or_run, _rle_plain

    encoded = rle_encode(data)
    assert encoded == _rle_plain(data) == _RUN_OR_SPECIAL.sub(_escaped_or_run, data)
    assert decode_payload(encoded) == data
    assert b"#" not in encoded and b"$" not in encoded
