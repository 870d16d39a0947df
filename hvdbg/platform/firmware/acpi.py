"""ACPI tables that describe the vCPUs to the guest (ACPI 6.x, 5.2.5 RSDP, 5.2.7 RSDT,
5.2.8 XSDT, 5.2.12 MADT).  Only what an SMP kernel needs to find its processors."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hvdbg.arch.physmem import PhysicalMemory

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


def build_madt(apic_ids: list[int], lapic_address: int = 0xFEE00000, pcat_compat: bool = True) -> bytes:
    """MADT with one Processor Local APIC structure (type 0) per vCPU, all enabled."""
    body = struct.pack("<II", lapic_address, 1 if pcat_compat else 0)
    for uid, apic_id in enumerate(apic_ids):
        body += struct.pack("<BBBBI", 0, 8, uid & 0xFF, apic_id & 0xFF, 1)
    return _sdt(b"APIC", body, revision=3)


@dataclass(frozen=True)
class AcpiLayout:
    rsdp: int
    rsdt: int
    xsdt: int
    madt: int
    end: int


def install_acpi(mem: PhysicalMemory, apic_ids: list[int], base: int = ACPI_BASE) -> AcpiLayout:
    """Write RSDP (revision 2), RSDT, XSDT and MADT at ``base`` (16-byte aligned)."""
    madt = build_madt(apic_ids)
    rsdp_at = base
    rsdt_at = base + 0x40
    madt_at = base + 0x100
    rsdt = _sdt(b"RSDT", struct.pack("<I", madt_at))
    xsdt_at = rsdt_at + ((len(rsdt) + 15) & ~15)
    xsdt = _sdt(b"XSDT", struct.pack("<Q", madt_at))
    first = struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 2, rsdt_at)
    first = first[:8] + bytes((_checksum(first),)) + first[9:]
    ext = struct.pack("<IQB3s", 36, xsdt_at, 0, b"\0\0\0")
    rsdp = bytearray(first + ext)
    rsdp[32] = _checksum(bytes(rsdp))
    mem.write(rsdp_at, bytes(rsdp))
    mem.write(rsdt_at, rsdt)
    mem.write(xsdt_at, xsdt)
    mem.write(madt_at, madt)
    return AcpiLayout(rsdp_at, rsdt_at, xsdt_at, madt_at, madt_at + len(madt))
