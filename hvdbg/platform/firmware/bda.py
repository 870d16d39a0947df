"""What a PC BIOS leaves in low memory: the BIOS Data Area at 0x400, the EBDA's size word,
and (hvdbg having no BIOS) an interrupt vector table whose every entry answers "not
supported".

hvdbg runs no BIOS, but kernels that a BIOS loader normally starts read a few words of it
before they trust anything else: Xen's multiboot entry (``head.S``) sizes its trampoline
from the EBDA segment at 0x40E and the base-memory size at 0x413 (both 0 without a BIOS,
which puts its stack at 4 GiB - 4 KiB and ends in an EPT violation), GRUB's i386-pc serial
driver and Linux read the COM port addresses at 0x400.

Xen's real-mode trampoline also calls the BIOS (INT 15h e820, INT 10h video, INT 13h EDD)
unless told ``no-real-mode``; with an all-zero IVT those calls jump to 0000:0000 and run
zeros.  :func:`install_ivt` points all 256 vectors at a stub at F000:FF53 (where PC BIOSes
keep their dummy IRET) that sets CF in the caller's FLAGS and returns: the BIOS convention
for "function not supported", which such callers handle.

Offsets after the IBM PC/AT Technical Reference BIOS data area listing (and Ralf Brown's
"MEMORY.LST", 40:00..40:13; "INTERRUPT.LST" for the CF convention).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hvdbg.arch.physmem import PhysicalMemory

BDA_BASE = 0x400
COM_PORTS = 0x400          # 4 words: I/O base of COM1..COM4, 0 = absent
LPT_PORTS = 0x408          # 3 words: LPT1..LPT3 (the 4th word is the EBDA segment)
EBDA_SEGMENT = 0x40E
EQUIPMENT = 0x410          # equipment list word
BASE_MEMORY_KIB = 0x413    # conventional memory in KiB (below the EBDA)
VIDEO_MODE = 0x449
VIDEO_COLUMNS = 0x44A
CRTC_PORT = 0x463
VGA_WINDOW = 0xA0000       # where conventional memory (and so the EBDA) ends
IVT_BASE = 0
IVT_VECTORS = 256
STUB_SEGMENT, STUB_OFFSET = 0xF000, 0xFF53
# push bp; mov bp, sp; or byte [bp+6], 1 (CF in the FLAGS image); pop bp; iret
UNSUPPORTED_STUB = bytes((0x55, 0x89, 0xE5, 0x80, 0x4E, 0x06, 0x01, 0x5D, 0xCF))

EQUIP_VIDEO_80X25_COLOR = 0b10 << 4
EQUIP_SERIAL_SHIFT = 9


@dataclass(frozen=True)
class BdaLayout:
    ebda: int                  # physical address of the EBDA
    base_memory_kib: int
    com_ports: tuple[int, ...]


def build_bda(ebda: int, com_ports: Sequence[int] = (0x3F8,)) -> bytes:
    """The first 0x70 bytes of the BIOS data area (0x400-0x46F)."""
    if ebda % 1024:
        raise ValueError("the EBDA starts on a KiB boundary (its segment is 0x40E's value)")
    ports = list(com_ports)[:4] + [0] * (4 - min(4, len(com_ports)))
    bda = bytearray(0x70)
    struct.pack_into("<4H", bda, COM_PORTS - BDA_BASE, *ports)
    struct.pack_into("<H", bda, EBDA_SEGMENT - BDA_BASE, ebda >> 4)
    equipment = EQUIP_VIDEO_80X25_COLOR | (min(4, len(com_ports)) << EQUIP_SERIAL_SHIFT)
    struct.pack_into("<H", bda, EQUIPMENT - BDA_BASE, equipment)
    struct.pack_into("<H", bda, BASE_MEMORY_KIB - BDA_BASE, ebda >> 10)
    bda[VIDEO_MODE - BDA_BASE] = 3                   # 80x25 colour text
    struct.pack_into("<H", bda, VIDEO_COLUMNS - BDA_BASE, 80)
    struct.pack_into("<H", bda, CRTC_PORT - BDA_BASE, 0x3D4)
    return bytes(bda)


def install_bda(mem: PhysicalMemory, ebda: int, ebda_end: int,
                com_ports: Sequence[int] = (0x3F8,)) -> BdaLayout:
    """Write the BDA and the EBDA's first word (its size in KiB)."""
    mem.write(BDA_BASE, build_bda(ebda, com_ports))
    mem.write(ebda, struct.pack("<H", (ebda_end - ebda) >> 10))
    return BdaLayout(ebda, ebda >> 10, tuple(com_ports))


def install_ivt(mem: PhysicalMemory) -> int:
    """Point every real-mode interrupt vector at the "not supported" stub; returns the
    stub's physical address."""
    stub = (STUB_SEGMENT << 4) + STUB_OFFSET
    mem.write(stub, UNSUPPORTED_STUB)
    mem.write(IVT_BASE, struct.pack("<HH", STUB_OFFSET, STUB_SEGMENT) * IVT_VECTORS)
    return stub
