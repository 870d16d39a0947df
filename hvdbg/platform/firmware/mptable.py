"""The Intel MultiProcessor Specification tables (MP spec 1.4, chapter 4), for kernels that
find their processors without ACPI (Linux and Xen with ``acpi=off``, xv6, older
hobby kernels).

- The MP floating pointer structure (4.1): ``_MP_``, 16 bytes, 16-byte aligned in the BIOS
  ROM area 0xF0000-0xFFFFF, pointing at the configuration table; feature byte 1 = 0 (a
  configuration table is present), IMCRP clear (virtual-wire mode, no IMCR).
- The MP configuration table (4.2): the ``PCMP`` header, then one processor entry per vCPU
  (4.3.1, the boot processor flagged), one ISA bus (4.3.2), the I/O APIC (4.3.3), an I/O
  interrupt assignment per ISA IRQ (4.3.4: IRQ 0 on pin 2, as the MADT's override says;
  the 8259's ExtINT on pin 0) and the local interrupt assignments (4.3.5: ExtINT on LINT0,
  NMI on LINT1 of every local APIC).

The processor entries and the I/O APIC match the MADT (hvdbg.platform.firmware.acpi).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hvdbg.arch.physmem import PhysicalMemory

MP_BASE = 0xF8000                # in the BIOS ROM area the spec's search covers
SPEC_REV = 4                     # MP spec 1.4
LAPIC_VERSION = 0x14             # hvdbg.platform.apic.LocalApic.VERSION
IOAPIC_VERSION = 0x20
OEM_ID, PRODUCT_ID = b"HVDBG   ", b"HVDBG PC    "

# entry types (Table 4-3) and interrupt types (Table 4-10)
PROCESSOR, BUS, IOAPIC, IO_INTERRUPT, LOCAL_INTERRUPT = 0, 1, 2, 3, 4
INT, NMI, SMI, EXTINT = 0, 1, 2, 3
CPU_ENABLED, CPU_BOOTSTRAP = 1, 2
ALL_LOCAL_APICS = 0xFF
ISA_BUS = 0


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


@dataclass(frozen=True)
class MpLayout:
    """Where the tables are (guest-physical)."""

    floating: int
    config: int
    end: int


def isa_irq_pins(pit_pin: int = 2) -> list[tuple[int, int]]:
    """(ISA IRQ, I/O APIC pin) of every ISA interrupt: IRQ 0 on ``pit_pin``, the others on
    the pin of their number; IRQ 2 (the 8259 cascade) has none."""
    return [(0, pit_pin)] + [(irq, irq) for irq in range(1, 16) if irq != 2]


def build_config_table(apic_ids: list[int], *, cpu_signature: int, cpu_features: int,
                       ioapic_id: int = 0, ioapic_address: int = 0xFEC00000,
                       lapic_address: int = 0xFEE00000) -> bytes:
    """The MP configuration table (header and base entries) of a PC with these processors."""
    entries = []
    for i, apic_id in enumerate(apic_ids):
        flags = CPU_ENABLED | (CPU_BOOTSTRAP if i == 0 else 0)
        entries.append(struct.pack("<BBBBII8x", PROCESSOR, apic_id & 0xFF, LAPIC_VERSION, flags,
                                   cpu_signature, cpu_features))
    entries.append(struct.pack("<BB6s", BUS, ISA_BUS, b"ISA   "))
    entries.append(struct.pack("<BBBBI", IOAPIC, ioapic_id, IOAPIC_VERSION, 1, ioapic_address))
    entries.append(struct.pack("<BBHBBBB", IO_INTERRUPT, EXTINT, 0, ISA_BUS, 0, ioapic_id, 0))
    for irq, pin in isa_irq_pins():
        entries.append(struct.pack("<BBHBBBB", IO_INTERRUPT, INT, 0, ISA_BUS, irq, ioapic_id, pin))
    entries.append(struct.pack("<BBHBBBB", LOCAL_INTERRUPT, EXTINT, 0, ISA_BUS, 0, ALL_LOCAL_APICS, 0))
    entries.append(struct.pack("<BBHBBBB", LOCAL_INTERRUPT, NMI, 0, ISA_BUS, 0, ALL_LOCAL_APICS, 1))
    body = b"".join(entries)
    length = 44 + len(body)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", length, SPEC_REV, 0, OEM_ID, PRODUCT_ID,
                                   0, 0, len(entries), lapic_address, 0, 0, 0))
    table = header + body
    table[7] = _checksum(bytes(table))
    return bytes(table)


def build_floating_pointer(config_address: int) -> bytes:
    """The 16-byte MP floating pointer structure pointing at ``config_address``."""
    fp = bytearray(struct.pack("<4sIBBBB4x", b"_MP_", config_address, 1, SPEC_REV, 0, 0))
    fp[10] = _checksum(bytes(fp))
    return bytes(fp)


def install_mptable(mem: PhysicalMemory, apic_ids: list[int], *, cpu_signature: int, cpu_features: int,
                    base: int = MP_BASE, ioapic_id: int = 0) -> MpLayout:
    """Write the floating pointer at ``base`` and the configuration table after it."""
    config = base + 16
    table = build_config_table(apic_ids, cpu_signature=cpu_signature, cpu_features=cpu_features,
                               ioapic_id=ioapic_id)
    mem.write(base, build_floating_pointer(config))
    mem.write(config, table)
    return MpLayout(base, config, config + len(table))
