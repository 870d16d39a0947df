"""Event delivery through a guest IDT in real, protected and IA-32e mode (SDM 6.12, 6.14,
20.1.4), with #DF escalation and shutdown (Table 6-5)."""

from __future__ import annotations

import struct

import pytest

from hvdbg.arch.events import (Event, EventType, Shutdown, combine, deliver, hardware_exception)
from hvdbg.arch.physmem import RegionMemory
from hvdbg.arch.segments import Segment


class FakeCpu:
    """An EventCpu with paging off: linear = physical."""

    def __init__(self, mode: str) -> None:
        self.mem = RegionMemory()
        self.mem.add_region(0, bytearray(0x100000))
        self.regs = {"rip": 0x1234, "rsp": 0x9000, "rflags": 0x202, "cr2": 0,
                     "cr0": {"real": 0x10, "protected": 0x11, "long": 0x80000011}[mode], "cr4": 0,
                     "efer": 0x500 if mode == "long" else 0}
        code = {"real": Segment(0x0800, 0x8000, 0xFFFF, 0x9B),
                "protected": Segment(0x08, 0, 0xFFFFFFFF, 0xC09B),
                "long": Segment(0x08, 0, 0xFFFFFFFF, 0xA09B)}[mode]
        data = Segment(0x10, 0, 0xFFFFFFFF, 0xC093) if mode != "real" else Segment(0, 0, 0xFFFF, 0x93)
        self.segs = {"cs": code, "ss": data, "tr": Segment(0x18, 0x7000, 0x67, 0x8B)}
        self.tables = {"gdtr": (0x6000, 0x1F), "idtr": (0x5000, 0xFFF if mode != "real" else 0x3FF)}
        if mode == "real":
            self.tables["idtr"] = (0, 0x3FF)
        # GDT: null, 0x08 code (64-bit or 32-bit), 0x10 data
        code_desc = 0x00AF9B000000FFFF if mode == "long" else 0x00CF9B000000FFFF
        self.mem.write(0x6000, struct.pack("<QQQ", 0, code_desc, 0x00CF93000000FFFF))

    def get_reg(self, n): return self.regs[n]
    def set_reg(self, n, v): self.regs[n] = v
    def get_segment(self, n): return self.segs[n]
    def set_segments(self, segs): self.segs.update(segs)
    def get_table(self, n): return self.tables[n]
    def cpl(self): return 0
    def read_linear(self, a, n): return self.mem.read(a, n)
    def write_linear(self, a, d): self.mem.write(a, d)


def gate64(offset, selector=0x08, gtype=0xE, ist=0, present=True):
    lo = (offset & 0xFFFF) | selector << 16
    hi = (ist & 7) | gtype << 8 | (0x8000 if present else 0) | (offset & 0xFFFF0000)
    return struct.pack("<IIII", lo, hi, offset >> 32, 0)


def gate32(offset, selector=0x08, gtype=0xE):
    return struct.pack("<II", (offset & 0xFFFF) | selector << 16, gtype << 8 | 0x8000 | (offset & 0xFFFF0000))


def test_real_mode_ivt_delivery():
    cpu = FakeCpu("real")
    cpu.mem.write(0x21 * 4, struct.pack("<HH", 0x0100, 0x0F00))  # INT 21h -> 0F00:0100
    d = deliver(cpu, Event(0x21, EventType.SOFTWARE_INTERRUPT), return_rip=0x1236)
    assert d.handler == 0xF100
    assert cpu.segs["cs"].selector == 0x0F00 and cpu.segs["cs"].base == 0xF000
    assert cpu.regs["rip"] == 0x100 and cpu.regs["rsp"] == 0x9000 - 6
    ip, cs, flags = struct.unpack("<HHH", cpu.mem.read(0x9000 - 6, 6))
    assert (ip, cs, flags) == (0x1236, 0x0800, 0x202)
    assert not cpu.regs["rflags"] & (1 << 9)  # IF cleared


def test_protected_mode_interrupt_gate_with_error_code():
    cpu = FakeCpu("protected")
    cpu.mem.write(0x5000 + 13 * 8, gate32(0x00102030))
    d = deliver(cpu, hardware_exception(13, 0x18))
    assert d.handler == 0x00102030 and cpu.regs["rip"] == 0x00102030
    err, eip, cs, eflags = struct.unpack("<IIII", cpu.mem.read(cpu.regs["rsp"], 16))
    assert (err, eip, cs, eflags) == (0x18, 0x1234, 0x08, 0x10202)   # a fault saves RF = 1
    assert cpu.regs["rsp"] == 0x9000 - 16


def test_long_mode_frame_alignment_and_ist():
    cpu = FakeCpu("long")
    cpu.regs["rsp"] = 0x9008  # misaligned: the frame is pushed at a 16-byte boundary
    cpu.mem.write(0x5000 + 14 * 16, gate64(0xFFFFFFFF80001000 & 0xFFFFFFFFFFFFFFFF))
    d = deliver(cpu, hardware_exception(14, 0x2, cr2=0xDEAD000))
    assert cpu.regs["rip"] == 0xFFFFFFFF80001000
    assert cpu.regs["cr2"] == 0xDEAD000
    frame = struct.unpack("<6Q", cpu.mem.read(cpu.regs["rsp"], 48))
    assert frame == (0x2, 0x1234, 0x08, 0x10202, 0x9008, 0x10)      # a fault saves RF = 1
    assert cpu.regs["rsp"] == 0x9000 - 48
    # IST 1 from the TSS at 0x7000 + 0x24
    cpu2 = FakeCpu("long")
    cpu2.mem.write(0x7000 + 0x24, struct.pack("<Q", 0x20000))
    cpu2.mem.write(0x5000 + 2 * 16, gate64(0x3000, ist=1))
    deliver(cpu2, Event(2, EventType.NMI))
    assert cpu2.regs["rsp"] == 0x20000 - 40
    assert d.event.vector == 14


def test_not_present_gate_escalates_to_double_fault():
    cpu = FakeCpu("long")
    cpu.mem.write(0x5000 + 13 * 16, gate64(0x4000, present=False))
    cpu.mem.write(0x5000 + 11 * 16, gate64(0x4000, present=False))
    cpu.mem.write(0x5000 + 8 * 16, gate64(0x8888))
    d = deliver(cpu, hardware_exception(13, 0))
    assert d.event.vector == 8 and cpu.regs["rip"] == 0x8888
    assert [e.vector for e, _ in d.chain] == [13]


def test_no_idt_triple_faults():
    cpu = FakeCpu("long")
    cpu.tables["idtr"] = (0, 0)
    with pytest.raises(Shutdown) as exc:
        deliver(cpu, hardware_exception(14, 0, cr2=0x1000))
    chain = [e.vector for e, _ in exc.value.chain]
    assert chain[0] == 14 and 8 in chain


def test_double_fault_table():
    pf, gp, de, ud, df = (hardware_exception(v) for v in (14, 13, 0, 6, 8))
    assert combine(gp, de).vector == 8      # contributory + contributory
    assert combine(pf, gp).vector == 8      # page fault + contributory
    assert combine(pf, pf).vector == 8      # page fault + page fault
    assert combine(gp, pf).vector == 14     # contributory + page fault: handle the #PF
    assert combine(ud, gp).vector == 13     # benign first: serial
    assert combine(df, gp) is None          # #DF + contributory: shutdown


def test_faults_save_rf_traps_and_interrupts_do_not():
    """SDM 18.3.1.1: the RFLAGS image of a fault-class exception has RF set (kvm-unit-tests
    idt_test checks it for #GP and #UD); #BP, INT n and external interrupts save RFLAGS as it is."""
    for event, rf in ((hardware_exception(6), True), (hardware_exception(13, 0), True),
                      (Event(3, EventType.SOFTWARE_EXCEPTION), False),
                      (Event(0x40, EventType.SOFTWARE_INTERRUPT), False), (Event(0x40, EventType.EXTERNAL), False)):
        cpu = FakeCpu("long")
        cpu.mem.write(0x5000 + event.vector * 16, gate64(0x1000))
        deliver(cpu, event)
        pushed = struct.unpack("<6Q" if event.error_code is not None else "<5Q",
                               cpu.mem.read(cpu.regs["rsp"], 48 if event.error_code is not None else 40))
        eflags = pushed[3] if event.error_code is not None else pushed[2]
        assert bool(eflags & (1 << 16)) == rf, event
        assert not cpu.regs["rflags"] & (1 << 16)             # the handler runs with RF = 0
