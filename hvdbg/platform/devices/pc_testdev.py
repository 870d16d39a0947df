"""The test device kvm-unit-tests expects next to QEMU's ``-device pc-testdev``: a write of
a level to port 0x2000 + n drives input pin n of the I/O APIC (QEMU hw/misc/pc-testdev.c
"pc-testdev-irq"), so a test can raise and lower an interrupt line; port 0xE0 is a 32-bit
scratch register ("pc-testdev-ioport"); the 64 KiB at 0xFF000000 are MMIO that reads back
what was written ("pc-testdev-iomem": kvm-unit-tests runs instructions on device memory
there).  The flush-page port (0xE4) is not modelled."""

from __future__ import annotations

from typing import Callable

IRQ_LINE_PORT = 0x2000
IRQ_LINES = 24
SCRATCH_PORT = 0xE0
IOMEM_BASE = 0xFF000000
IOMEM_SIZE = 0x10000


class IrqLinePorts:
    """Ports 0x2000-0x2017: the byte written is the new level of line ``port - 0x2000``."""

    name = "pc-testdev-irq"

    def __init__(self, set_irq: Callable[[int, bool], None]) -> None:
        self._set_irq = set_irq

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self._set_irq(port - IRQ_LINE_PORT, bool(value & 0xFF))


class ScratchPort:
    """Port 0xE0: reads back what was last written."""

    name = "pc-testdev-ioport"

    def __init__(self) -> None:
        self.value = 0

    def io_read(self, port: int, size: int) -> int:
        return self.value >> (8 * (port - SCRATCH_PORT))

    def io_write(self, port: int, size: int, value: int) -> None:
        shift = 8 * (port - SCRATCH_PORT)
        mask = ((1 << (8 * size)) - 1) << shift
        self.value = (self.value & ~mask) | (value << shift & mask)


class TestMemory:
    """0xFF000000-0xFF00FFFF: device memory that reads back what was written, each access
    an MMIO exit the VMM completes (so an instruction's memory operand there goes through
    the same path as a real device's)."""

    name = "pc-testdev-iomem"

    def __init__(self) -> None:
        self.data = bytearray(IOMEM_SIZE)

    def mmio_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        end = min(offset + size, IOMEM_SIZE)
        self.data[offset:end] = value.to_bytes(size, "little")[:end - offset]
