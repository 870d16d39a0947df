"""ACPI fixed hardware: the PM1a event and control blocks and the power-management timer
(ACPI 6.x, 4.8.3.1 "PM1 Event Grouping", 4.8.3.2 "PM1 Control Grouping", 4.8.3.3
"Power Management Timer"), at the ports QEMU's PIIX4 PM uses (0x600, 0x604, 0x608).

The PM timer is a 24-bit counter at 3.579545 MHz (TMR_VAL_EXT clear, as in QEMU).  It runs
on the VM's clock, guest instructions at :data:`VIRTUAL_HZ`, so deterministic runs read the
same values.  Writing SLP_EN with the S5 sleep type powers the machine off; other sleep
states are not modelled.  No SCI is raised.
"""

from __future__ import annotations

from typing import Callable

PM_BASE = 0x600
PM1A_EVT_BLK = PM_BASE            # PM1_STS (2 bytes), PM1_EN (2 bytes)
PM1A_CNT_BLK = PM_BASE + 4        # PM1_CNT (2 bytes)
PM_TMR_BLK = PM_BASE + 8          # PM_TMR (4 bytes)
PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN = 4, 2, 4
PM_LENGTH = 12

PM_TIMER_HZ = 3_579_545           # ACPI 4.8.3.3
VIRTUAL_HZ = 1_000_000_000        # the VM's clock: one guest instruction per nanosecond
TMR_MASK = (1 << 24) - 1

# PM1 status / enable (ACPI Table 4.16 / 4.17) and control (Table 4.18) bits.
TMR_STS = 1 << 0
PWRBTN_STS = 1 << 8
WAK_STS = 1 << 15
SCI_EN = 1 << 0
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 7 << SLP_TYP_SHIFT
SLP_EN = 1 << 13
#: SLP_TYP value of S5 (soft off) in the DSDT's \_S5 package (hvdbg.platform.firmware.acpi).
SLP_TYP_S5 = 5


class AcpiPm:
    """PM1a_EVT, PM1a_CNT and PM_TMR at ``PM_BASE``."""

    name = "acpi-pm"

    def __init__(self, clock: Callable[[], int], on_soft_off: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.on_soft_off = on_soft_off
        self.status = 0
        self.enable = 0
        self.control = SCI_EN          # ACPI mode from the start: the FADT has no SMI_CMD

    def timer(self) -> int:
        """PM_TMR: 3.579545 MHz ticks of the VM's clock, 24 bits."""
        return self.clock() * PM_TIMER_HZ // VIRTUAL_HZ & TMR_MASK

    def _registers(self) -> bytes:
        return (self.status.to_bytes(2, "little") + self.enable.to_bytes(2, "little")
                + self.control.to_bytes(2, "little") + bytes(2) + self.timer().to_bytes(4, "little"))

    def io_read(self, port: int, size: int) -> int:
        off = port - PM_BASE
        return int.from_bytes(self._registers()[off:off + size].ljust(size, b"\xff"), "little")

    def io_write(self, port: int, size: int, value: int) -> None:
        off = port - PM_BASE
        data = value.to_bytes(size, "little")
        for i, byte in enumerate(data):
            self._write_byte(off + i, byte)

    def _write_byte(self, off: int, byte: int) -> None:
        if off in (0, 1):              # PM1_STS: write 1 to clear
            self.status &= ~(byte << (8 * off))
        elif off in (2, 3):
            shift = 8 * (off - 2)
            self.enable = (self.enable & ~(0xFF << shift)) | byte << shift
        elif off in (4, 5):
            shift = 8 * (off - 4)
            value = (self.control & ~(0xFF << shift)) | byte << shift
            self.control = value & ~SLP_EN      # SLP_EN is write-only, reads as 0
            if value & SLP_EN and (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == SLP_TYP_S5 and self.on_soft_off:
                self.on_soft_off()
