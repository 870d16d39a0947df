"""The test device kvm-unit-tests expects next to QEMU's ``-device pc-testdev``: a write of
a level to port 0x2000 + n drives input pin n of the I/O APIC (QEMU hw/misc/pc-testdev.c
"pc-testdev-irq"), so a test can raise and lower an interrupt line; port 0xE0 is a 32-bit
scratch register ("pc-testdev-ioport").  The flush-page port (0xE4) and the test MMIO
window at 0xFF000000 are not modelled."""

from __future__ import annotations

from typing import Callable

IRQ_LINE_PORT = 0x2000
IRQ_LINES = 24
SCRATCH_PORT = 0xE0


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
