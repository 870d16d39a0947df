"""The coreboot tables ("LBIO") of the platform firmware.

coreboot hands its payloads a table of records instead of BIOS services; a payload such as
GRUB's ``i386-coreboot`` build (whose kernel also carries a multiboot 1 header) looks for
the ``LBIO`` header in 0x500-0x1000 and 0xF0000-0x100000 and takes its memory map from the
LB_TAG_MEMORY record (``grub_fatal("Could not find coreboot table")`` otherwise).  hvdbg
writes one next to its ACPI tables, so such payloads boot exactly like on a coreboot board.

Layout after coreboot's ``commonlib/coreboot_tables.h``: a 24-byte ``lb_header`` (signature,
header_bytes, header_checksum, table_bytes, table_checksum, table_entries), then records
that each start with ``{u32 tag; u32 size}``; both checksums are the 16-bit IP checksum
(RFC 1071) of the bytes they cover.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hvdbg.arch.physmem import PhysicalMemory

CBTABLE_BASE = 0xF0000     # the payloads scan 0xF0000.. in steps of the 24-byte header
SIGNATURE = b"LBIO"
HEADER_SIZE = 24

LB_TAG_MEMORY = 0x0001
LB_TAG_MAINBOARD = 0x0003
LB_TAG_VERSION = 0x0004
LB_TAG_SERIAL = 0x000F

LB_SERIAL_TYPE_IO_MAPPED = 1
UART_INPUT_HZ = 1843200     # the 16550's crystal: divisor 1 = 115200 baud

# multiboot memory-map types -> coreboot LB_MEM_* (both number RAM 1, reserved 2, ACPI 3, NVS 4)
_LB_MEM_TYPES = {1: 1, 2: 2, 3: 3, 4: 4}
LB_MEM_RESERVED = 2


@dataclass(frozen=True)
class Range:
    base: int
    length: int
    type: int


def ip_checksum(data: bytes) -> int:
    """The 16-bit one's-complement checksum coreboot uses (``compute_ip_checksum``)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"<{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _record(tag: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)                       # records are 4-byte aligned
    return struct.pack("<II", tag, 8 + len(body)) + body


def memory_record(ranges: Sequence[Range]) -> bytes:
    """LB_TAG_MEMORY: ``lb_memory_range {lb_uint64 start; lb_uint64 size; u32 type}``."""
    body = b"".join(struct.pack("<QQI", r.base, r.length, _LB_MEM_TYPES.get(r.type, LB_MEM_RESERVED))
                    for r in ranges)
    return _record(LB_TAG_MEMORY, body)


def serial_record(port: int, baud: int = 115200) -> bytes:
    """LB_TAG_SERIAL: an I/O-mapped 16550 (type, baseaddr, baud, regwidth, input_hertz)."""
    return _record(LB_TAG_SERIAL, struct.pack("<IIIII", LB_SERIAL_TYPE_IO_MAPPED, port, baud, 1,
                                              UART_INPUT_HZ))


def mainboard_record(vendor: str, part: str) -> bytes:
    """LB_TAG_MAINBOARD: two string indexes into the NUL-separated strings that follow."""
    strings = vendor.encode() + b"\0" + part.encode() + b"\0"
    return _record(LB_TAG_MAINBOARD, struct.pack("<BB", 0, len(vendor) + 1) + strings)


def string_record(tag: int, text: str) -> bytes:
    return _record(tag, text.encode() + b"\0")


def build_table(ranges: Sequence[Range], serial_port: int | None = 0x3F8,
                version: str = "hvdbg") -> bytes:
    """The whole table: header + records, both checksums filled in."""
    records = [memory_record(ranges), mainboard_record("hvdbg", "emulated VMX VM"),
               string_record(LB_TAG_VERSION, version)]
    if serial_port is not None:
        records.append(serial_record(serial_port))
    body = b"".join(records)
    header = struct.pack("<4sIIIII", SIGNATURE, HEADER_SIZE, 0, len(body), ip_checksum(body), len(records))
    header = header[:8] + struct.pack("<I", ip_checksum(header)) + header[12:]
    return header + body


def install_coreboot_table(mem: PhysicalMemory, ranges: Sequence[Range], base: int = CBTABLE_BASE,
                           serial_port: int | None = 0x3F8) -> tuple[int, int]:
    """Write the table at ``base``; returns its [start, end) range."""
    table = build_table(ranges, serial_port)
    mem.write(base, table)
    return base, base + len(table)


def parse_table(data: bytes) -> dict[int, list[bytes]]:
    """Records of a table (tag -> bodies), checking signature and checksums; for tests and
    the shell."""
    sig, hbytes, hsum, tbytes, tsum, entries = struct.unpack_from("<4sIIIII", data)
    if sig != SIGNATURE:
        raise ValueError("no LBIO signature")
    header = data[:8] + b"\0\0\0\0" + data[12:hbytes]
    if ip_checksum(header) != hsum:
        raise ValueError("header checksum mismatch")
    body = data[hbytes:hbytes + tbytes]
    if ip_checksum(body) != tsum:
        raise ValueError("table checksum mismatch")
    out: dict[int, list[bytes]] = {}
    pos = 0
    for _ in range(entries):
        tag, size = struct.unpack_from("<II", body, pos)
        out.setdefault(tag, []).append(body[pos + 8:pos + size])
        pos += size
    return out
