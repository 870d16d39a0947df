"""I/O APIC (82093AA): registers, edge/level semantics with Remote IRR and EOI, the APIC
bus routing of its messages (physical, logical flat/x2APIC cluster, lowest priority), the
local APIC's TMR and EOI message, pc-testdev IRQ lines, and the MMIO bus.  Synthetic
inputs here; the kvm-unit-tests ``ioapic`` case boots the real thing
(tests/test_kvm_unit_tests.py, and below under every executor)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hvdbg.arch.apic import APIC_BASE_EXTD, DeliveryMode, Reg
from hvdbg.platform.apic import ApicBus, LocalApic
from hvdbg.platform.devices.bus import MmioBus
from hvdbg.platform.devices.pc_testdev import IrqLinePorts, ScratchPort
from hvdbg.platform.ioapic import IOAPIC_BASE, IOAPIC_SIZE, IOREGSEL, IOWIN, IoApic

EDGE, LEVEL, MASK = 0, 1 << 15, 1 << 16


@dataclass
class Cpu:
    """An APIC bus target without a vCPU."""

    index: int
    apic: LocalApic
    ipi_log: list = field(default_factory=list)

    def on_init_ipi(self) -> None: ...

    def on_startup_ipi(self, vector: int) -> None: ...


def machine(n=4, x2apic=False):
    bus = ApicBus()
    cpus = []
    for i in range(n):
        apic = LocalApic(i, bsp=i == 0, x2apic_supported=True, send_ipi=bus.send, clock=lambda: 0)
        apic.write(Reg.SVR, 0x1FF)
        if x2apic:
            apic.base_msr |= APIC_BASE_EXTD
        cpus.append(Cpu(i, apic))
        bus.attach(cpus[-1])
    io = IoApic(bus.deliver)
    for c in cpus:
        c.apic.on_level_eoi = io.eoi
    return io, cpus


def redir(io, pin, vector, flags=0, dest=0):
    io.write_register(0x10 + 2 * pin + 1, dest << 24)
    io.write_register(0x10 + 2 * pin, vector | flags)


def take(apic):
    """The CPU takes its highest pending interrupt (IRR -> ISR); returns the vector."""
    vec = apic.pending_vector()
    if vec is not None:
        apic.ack(vec)
    return vec


def test_registers_through_ioregsel_and_iowin():
    io, _ = machine(1)
    io.mmio_write(IOREGSEL, 4, 0x01)
    assert io.mmio_read(IOWIN, 4) == 0x00170020          # 24 entries, version 0x20
    io.mmio_write(IOWIN, 4, 0xFFFFFFFF)
    assert io.read_register(0x01) == 0x00170020          # read-only
    io.write_register(0x00, 0xFFFFFFFF)
    assert io.read_register(0x00) == 0x0F000000          # only ID bits 27:24
    assert io.read_register(0x02) == 0x0F000000          # arbitration follows the ID
    io.write_register(0x02, 0)
    assert io.read_register(0x02) == 0x0F000000
    assert io.read_register(0x10) == MASK and io.read_register(0x11) == 0   # masked at reset


def test_edge_pin_sends_on_a_rising_edge_only():
    io, cpus = machine(1)
    redir(io, 14, 0x76)
    io.set_irq(14, True)
    io.set_irq(14, True)          # no new edge
    assert take(cpus[0].apic) == 0x76 and cpus[0].apic.pending_vector() is None
    assert not cpus[0].apic.tmr >> 0x76 & 1             # edge: TMR clear (SDM 11.8.4)
    cpus[0].apic.write(Reg.EOI, 0)
    io.set_irq(14, False)
    io.set_irq(14, True)
    assert take(cpus[0].apic) == 0x76


def test_level_pin_remote_irr_eoi_and_resend_while_asserted():
    io, cpus = machine(1)
    apic = cpus[0].apic
    redir(io, 14, 0x77, LEVEL)
    io.set_irq(14, True)
    assert io.read_register(0x10 + 28) & (1 << 14)       # Remote IRR set
    assert take(apic) == 0x77 and apic.tmr >> 0x77 & 1
    io.set_irq(14, True)                                  # Remote IRR holds it back
    assert apic.pending_vector() is None
    apic.write(Reg.EOI, 0)                                # EOI message: line still high -> again
    assert take(apic) == 0x77
    io.set_irq(14, False)
    apic.write(Reg.EOI, 0)
    assert not io.read_register(0x10 + 28) & (1 << 14) and apic.pending_vector() is None
    assert apic.tmr >> 0x77 & 1                           # TMR stays until the next acceptance


def test_masked_level_pin_sends_when_unmasked():
    io, cpus = machine(1)
    redir(io, 14, 0x82, LEVEL | MASK)
    io.set_irq(14, True)
    assert cpus[0].apic.pending_vector() is None
    redir(io, 14, 0x82, LEVEL)
    assert take(cpus[0].apic) == 0x82


def test_masked_edge_is_lost_and_polarity_inverts():
    io, cpus = machine(1)
    redir(io, 3, 0x81, EDGE | MASK)
    io.set_irq(3, True)
    redir(io, 3, 0x81, EDGE)
    assert cpus[0].apic.pending_vector() is None
    redir(io, 4, 0x90, EDGE | 1 << 13)                    # active low
    io.set_irq(4, True)
    io.set_irq(4, False)                                  # low = asserted: the edge
    assert take(cpus[0].apic) == 0x90


def test_eoi_register_clears_remote_irr_by_vector():
    io, cpus = machine(1)
    redir(io, 5, 0x55, LEVEL)
    io.set_irq(5, True)
    io.set_irq(5, False)
    io.mmio_write(0x40, 4, 0x55)
    assert not io.read_register(0x10 + 10) & (1 << 14)


def test_physical_destination_and_broadcast():
    io, cpus = machine(4)
    redir(io, 1, 0x41, dest=2)
    io.set_irq(1, True)
    assert [take(c.apic) for c in cpus] == [None, None, 0x41, None]
    cpus[2].apic.write(Reg.EOI, 0)
    redir(io, 2, 0x42, dest=0xFF)
    io.set_irq(2, True)
    assert [take(c.apic) for c in cpus] == [0x42] * 4


def test_logical_destination_xapic_flat_and_x2apic_cluster():
    io, cpus = machine(4)
    for c in cpus:
        c.apic.write(Reg.LDR, (1 << c.index) << 24)
    redir(io, 1, 0x86, 1 << 11, dest=0x0D)
    io.set_irq(1, True)
    assert [take(c.apic) for c in cpus] == [0x86, None, 0x86, 0x86]
    io, cpus = machine(4, x2apic=True)                    # LDR derived: cluster 0, bit = ID
    assert cpus[3].apic.read(Reg.LDR) == 1 << 3
    redir(io, 1, 0x86, 1 << 11, dest=0x0D)
    io.set_irq(1, True)
    assert [take(c.apic) for c in cpus] == [0x86, None, 0x86, 0x86]


def test_lowest_priority_goes_to_one_processor():
    io, cpus = machine(4)
    for c in cpus:
        c.apic.write(Reg.LDR, (1 << c.index) << 24)
    cpus[0].apic.write(Reg.TPR, 0x20)
    redir(io, 1, 0x61, DeliveryMode.LOWEST_PRIORITY << 8 | 1 << 11, dest=0x0F)
    io.set_irq(1, True)
    assert [take(c.apic) for c in cpus] == [None, 0x61, None, None]


def test_eoi_of_an_edge_vector_sends_no_eoi_message():
    io, cpus = machine(1)
    redir(io, 6, 0x66, LEVEL)
    io.set_irq(6, True)
    take(cpus[0].apic)
    cpus[0].apic.accept(0x70)                              # an edge IPI on top
    take(cpus[0].apic)
    cpus[0].apic.write(Reg.EOI, 0)                         # ends 0x70: no EOI message
    assert io.read_register(0x10 + 12) & (1 << 14)
    io.set_irq(6, False)
    cpus[0].apic.write(Reg.EOI, 0)                         # ends 0x66: Remote IRR clears
    assert not io.read_register(0x10 + 12) & (1 << 14)


def test_eoi_that_uncovers_a_pending_request_tells_the_vcpu():
    kicks = []
    bus = ApicBus()
    apic = LocalApic(0, bsp=True, x2apic_supported=False, send_ipi=bus.send, clock=lambda: 0,
                     on_pending=lambda: kicks.append(1))
    apic.write(Reg.SVR, 0x1FF)
    apic.accept(0x78)
    apic.accept(0x66)
    take(apic)
    assert apic.pending_vector() is None                  # 0x66 below the in-service 0x78
    kicks.clear()
    apic.write(Reg.EOI, 0)
    assert kicks and apic.pending_vector() == 0x66


def test_pc_testdev_lines_and_scratch():
    io, cpus = machine(1)
    lines = IrqLinePorts(io.set_irq)
    redir(io, 14, 0x76)
    lines.io_write(0x200E, 1, 1)
    lines.io_write(0x200E, 1, 0)
    assert take(cpus[0].apic) == 0x76
    s = ScratchPort()
    s.io_write(0xE0, 4, 0x12345678)
    s.io_write(0xE1, 1, 0xAB)
    assert s.io_read(0xE0, 4) == 0x1234AB78 and s.io_read(0xE2, 2) == 0x1234


def test_mmio_bus_claims_ranges_and_refuses_overlaps():
    io, _ = machine(1)
    bus = MmioBus()
    bus.register(IOAPIC_BASE, IOAPIC_SIZE, io)
    assert bus.write(IOAPIC_BASE, 4, 0x01) and bus.read(IOAPIC_BASE + 0x10, 4) == 0x00170020
    assert bus.read(IOAPIC_BASE + IOAPIC_SIZE, 4) is None and not bus.write(0x1000, 4, 0)
    assert bus.ranges() == [(IOAPIC_BASE, IOAPIC_SIZE)]
    with pytest.raises(ValueError, match="overlap ioapic"):
        bus.register(IOAPIC_BASE + 0x800, 0x1000, io)


def test_describe_lists_the_programmed_pins():
    io, _ = machine(1)
    redir(io, 14, 0x79, LEVEL, dest=1)
    io.set_irq(14, True)
    (line,) = io.describe()
    assert line.startswith("pin 14: vector 0x79 FIXED physical dest 0x1 level") and "remote-IRR" in line
