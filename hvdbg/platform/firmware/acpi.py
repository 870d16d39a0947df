"""ACPI tables that describe the machine to the guest (ACPI 6.x, 5.2.5 RSDP, 5.2.7 RSDT,
5.2.8 XSDT, 5.2.9 FADT, 5.2.10 FACS, 5.2.11.1 DSDT, 5.2.12 MADT): the processors, the PM1
blocks and PM timer of hvdbg.platform.devices.acpi_pm, and a DSDT that only names \\_S5."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hvdbg.arch.physmem import PhysicalMemory
from hvdbg.platform.devices import acpi_pm

ACPI_BASE = 0xE0000
ACPI_END = 0x100000
OEM_ID = b"HVDBG "
OEM_TABLE_ID = b"HVDBGVM "


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _sdt(signature: bytes, body: bytes, revision: int = 1) -> bytes:
    """A system description table: 36-byte header (ACPI 5.2.6) + body, checksummed."""
    length = 36 + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID,
                         1, b"HVDB", 1)
    table = bytearray(header + body)
    table[9] = _checksum(bytes(table))
    return bytes(table)


#: MADT interrupt source overrides (ACPI 5.2.12.5): (ISA IRQ, GSI, MPS INTI flags).  The PIT's
#: IRQ 0 is I/O APIC pin 2; the SCI (IRQ 9) is level-triggered, active high (flags 0b1101).
ISA_OVERRIDES = ((0, 2, 0x0000), (9, 9, 0x000D))


def build_madt(apic_ids: list[int], lapic_address: int = 0xFEE00000, pcat_compat: bool = True,
               ioapic: tuple[int, int] | None = None) -> bytes:
    """MADT with one Processor Local APIC structure (type 0) per vCPU, all enabled; with
    ``ioapic`` = (I/O APIC ID, address) an I/O APIC structure (type 1, GSI base 0) and the
    interrupt source overrides (type 2) of :data:`ISA_OVERRIDES`."""
    body = struct.pack("<II", lapic_address, 1 if pcat_compat else 0)
    for uid, apic_id in enumerate(apic_ids):
        body += struct.pack("<BBBBI", 0, 8, uid & 0xFF, apic_id & 0xFF, 1)
    if ioapic is not None:
        body += struct.pack("<BBBBII", 1, 12, ioapic[0], 0, ioapic[1], 0)
        for irq, gsi, flags in ISA_OVERRIDES:
            body += struct.pack("<BBBBIH", 2, 10, 0, irq, gsi, flags)
    return _sdt(b"APIC", body, revision=3)


#: DSDT body: Name (\\_S5, Package (4) { 5, 5, 0, 0 }), the SLP_TYP of soft off (ACPI 7.4.2).
S5_AML = bytes([0x08, 0x5C]) + b"_S5_" + bytes([0x12, 0x08, 0x04, 0x0A, acpi_pm.SLP_TYP_S5,
                                                 0x0A, acpi_pm.SLP_TYP_S5, 0x00, 0x00])
SCI_IRQ = 9                       # QEMU's PIIX4 SCI
FADT_REVISION = 3                 # the ACPI 2.0 layout
FADT_FLAGS = (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5)   # WBINVD, PROC_C1, PWR_BUTTON, SLP_BUTTON
IAPC_LEGACY_DEVICES = 1 << 0      # ISA devices (PIC, PIT, RTC, UART) are there
FACS_LENGTH = 64


def build_dsdt() -> bytes:
    return _sdt(b"DSDT", S5_AML, revision=2)


def build_facs() -> bytes:
    """FACS (no checksum): signature, length, hardware signature 0, no waking vector, version 2."""
    return struct.pack("<4sIIIIIQB31s", b"FACS", FACS_LENGTH, 0, 0, 0, 0, 0, 2, bytes(31))


def _gas(port: int, length: int) -> bytes:
    """Generic Address Structure (ACPI 5.2.3.2) of an I/O port block."""
    return struct.pack("<BBBBQ", 1, 8 * length, 0, 0, port) if port else bytes(12)


def build_fadt(facs: int, dsdt: int) -> bytes:
    """FADT (revision 3): the PM1a event/control blocks and the 24-bit PM timer, SCI on IRQ 9,
    no SMI command port (the machine is always in ACPI mode), RTC century at CMOS 0x32."""
    pm = acpi_pm
    body = struct.pack("<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
                       facs, dsdt, 0, 0, SCI_IRQ, 0, 0, 0, 0, 0,
                       pm.PM1A_EVT_BLK, 0, pm.PM1A_CNT_BLK, 0, 0, pm.PM_TMR_BLK, 0, 0,
                       pm.PM1_EVT_LEN, pm.PM1_CNT_LEN, 0, pm.PM_TMR_LEN, 0, 0, 0, 0,
                       101, 1001, 0, 0, 0, 0, 0, 0, 0x32, IAPC_LEGACY_DEVICES, 0, FADT_FLAGS)
    body += bytes(12) + struct.pack("<B3s", 0, bytes(3))            # RESET_REG, RESET_VALUE
    body += struct.pack("<QQ", facs, dsdt)
    body += (_gas(pm.PM1A_EVT_BLK, pm.PM1_EVT_LEN) + _gas(0, 0) + _gas(pm.PM1A_CNT_BLK, pm.PM1_CNT_LEN)
             + _gas(0, 0) + _gas(0, 0) + _gas(pm.PM_TMR_BLK, pm.PM_TMR_LEN) + _gas(0, 0) + _gas(0, 0))
    return _sdt(b"FACP", body, revision=FADT_REVISION)


@dataclass(frozen=True)
class AcpiLayout:
    rsdp: int
    rsdt: int
    xsdt: int
    madt: int
    end: int
    fadt: int = 0
    facs: int = 0
    dsdt: int = 0


def install_acpi(mem: PhysicalMemory, apic_ids: list[int], base: int = ACPI_BASE, *,
                 fadt: bool = True, ioapic: tuple[int, int] | None = None) -> AcpiLayout:
    """Write RSDP (revision 2), RSDT, XSDT and MADT at ``base`` (16-byte aligned), and with
    ``fadt`` the FACS (64-byte aligned), FADT and DSDT after them (each after the one
    before, so a MADT of many processors overlaps nothing)."""
    madt = build_madt(apic_ids, ioapic=ioapic)
    rsdp_at = base
    rsdt_at = base + 0x40
    madt_at = base + 0x100
    facs_at = (madt_at + len(madt) + 63) & ~63
    fadt_at = facs_at + FACS_LENGTH
    dsdt_at = (fadt_at + len(build_fadt(0, 0)) + 15) & ~15
    tables = [madt_at] + ([fadt_at] if fadt else [])
    rsdt = _sdt(b"RSDT", struct.pack(f"<{len(tables)}I", *tables))
    xsdt_at = rsdt_at + ((len(rsdt) + 15) & ~15)
    xsdt = _sdt(b"XSDT", struct.pack(f"<{len(tables)}Q", *tables))
    first = struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 2, rsdt_at)
    first = first[:8] + bytes((_checksum(first),)) + first[9:]
    ext = struct.pack("<IQB3s", 36, xsdt_at, 0, b"\0\0\0")
    rsdp = bytearray(first + ext)
    rsdp[32] = _checksum(bytes(rsdp))
    mem.write(rsdp_at, bytes(rsdp))
    mem.write(rsdt_at, rsdt)
    mem.write(xsdt_at, xsdt)
    mem.write(madt_at, madt)
    if not fadt:
        return AcpiLayout(rsdp_at, rsdt_at, xsdt_at, madt_at, madt_at + len(madt))
    dsdt = build_dsdt()
    mem.write(facs_at, build_facs())
    mem.write(fadt_at, build_fadt(facs_at, dsdt_at))
    mem.write(dsdt_at, dsdt)
    return AcpiLayout(rsdp_at, rsdt_at, xsdt_at, madt_at, dsdt_at + len(dsdt), fadt_at, facs_at, dsdt_at)
