"""The PC board: which device answers at which I/O port (the role of QEMU's hw/i386/pc.c
``pc_basic_device_init``), so that the machine only composes a board, memory and vCPUs.

Port map (docs/platform.md): 0x20/0xA0 8259 PICs (0x4D0-0x4D1 their ELCR), 0x40-0x43 8254 PIT, 0x61 port B,
0x70-0x71 CMOS/RTC, 0x80 POST, 0xF4 debug exit, 0x3D4 VGA CRTC, 0x3F8 COM1,
0x510-0x511 QEMU fw_cfg, 0x600-0x60B ACPI PM1a and PM timer, 0xCF8-0xCFF PCI configuration
mechanism #1, 0xE0 and 0x2000-0x2017 pc-testdev.  MMIO: the I/O APIC at 0xFEC00000 (the
local APIC at 0xFEE00000 is the vCPU's APIC-access page, not a board device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hvdbg.platform.apic import ApicBus
from hvdbg.platform.devices import (Cmos, DebugExit, IoBus, Pic8259, Pit8254, PostPort,
                                    SystemControlPortB)
from hvdbg.platform.devices.bus import MmioBus
from hvdbg.platform.devices.ata import ATA_IRQ, ATA_PRIMARY, ATA_PRIMARY_CONTROL, AtaDisk, DiskImage
from hvdbg.platform.devices.pci import CONFIG_ADDRESS, PciConfigSpace
from hvdbg.platform.devices.legacy import RTC_IRQ
from hvdbg.platform.devices.pic8259 import CASCADE_LINE, ELCR_PORT
from hvdbg.platform.devices.pc_testdev import (IOMEM_BASE, IOMEM_SIZE, IRQ_LINE_PORT, IRQ_LINES, SCRATCH_PORT,
                                              IrqLinePorts, ScratchPort, TestMemory)
from hvdbg.platform.devices.acpi_pm import PM_BASE, PM_LENGTH, AcpiPm
from hvdbg.platform.devices.debug_exit import DEBUG_EXIT_PORT
from hvdbg.platform.devices.fw_cfg import SELECTOR_PORT, FwCfg, e820_table
from hvdbg.platform.devices.uart import COM1, COM1_IRQ, Uart16550
from hvdbg.platform.devices.vga import CRTC_INDEX, VgaCrtc
from hvdbg.platform.ioapic import IOAPIC_BASE, IOAPIC_SIZE, IoApic


#: ISA IRQ 0 (the PIT) reaches I/O APIC pin 2, as on PC chipsets and QEMU's ``pc``: the
#: MADT says so with an interrupt source override (ACPI 5.2.12.5).
PIT_IOAPIC_PIN = 2


@dataclass
class PcBoard:
    """The legacy devices of one VM, registered on its I/O bus."""

    bus: IoBus
    uart: Uart16550
    debug_exit: DebugExit
    pic: Pic8259
    pit: Pit8254
    cmos: Cmos
    vga: VgaCrtc
    mmio: MmioBus
    ioapic: IoApic
    fw_cfg: FwCfg | None = None
    acpi_pm: AcpiPm | None = None
    ata: AtaDisk | None = None
    #: does some processor take the PIC's interrupts (a LINT0 in ExtINT mode)? Set by the machine
    extint_taken: Callable[[], bool] = lambda: False

    @staticmethod
    def _ioapic_pin(irq: int) -> int:
        """The I/O APIC pin ISA ``irq`` is wired to (IRQ 0: pin 2, the MADT's override)."""
        return PIT_IOAPIC_PIN if irq == 0 else irq

    def _deliverable(self, irq: int) -> bool:
        """Can ISA ``irq`` reach a processor: its I/O APIC pin unmasked, or its PIC input
        (and, for the slave's, the cascade) unmasked with a LINT0 that takes ExtINT?"""
        if not self.ioapic.entries[self._ioapic_pin(irq)].masked:
            return True
        master, slave = self.pic.chips
        if irq >= 8:
            masked = bool(slave.imr >> (irq - 8) & 1 or master.imr >> CASCADE_LINE & 1)
        else:
            masked = bool(master.imr >> irq & 1)
        return not masked and self.extint_taken()

    def timer_deadline(self) -> int | None:
        """When the next board interrupt is due (ns of the VM clock): the PIT's next IRQ 0
        edge or the RTC's next periodic IRQ 8, of those that can reach a processor (a
        masked tick changes nothing)."""
        deadlines = [t for t, irq in ((self.pit.next_irq(), 0), (self.cmos.next_irq(), RTC_IRQ))
                     if t is not None and self._deliverable(irq)]
        return min(deadlines) if deadlines else None

    def timer_due(self) -> bool:
        """Is a board interrupt due by now (a read-only test: no state changes)?"""
        deadline = self.timer_deadline()
        return deadline is not None and self.pit.clock() >= deadline

    def poll_timers(self) -> None:
        """Raise the board interrupts whose time has come."""
        self.pit.poll()
        self.cmos.poll()

    def add_ata(self, image: DiskImage) -> AtaDisk:
        """The ATA disk on the primary channel (0x1F0-0x1F7, 0x3F6), INTRQ on ISA IRQ 14."""
        disk = AtaDisk(image)
        disk.on_irq = lambda level: self.isa_irq(ATA_IRQ, level)
        self.bus.register(ATA_PRIMARY, 8, disk)
        self.bus.register(ATA_PRIMARY_CONTROL, 1, disk)
        self.ata = disk
        return disk

    def isa_irq(self, irq: int, level: bool, at: int | None = None) -> None:
        """ISA line ``irq`` goes to ``level``: it is wired to the 8259A input of the same
        number and to the I/O APIC pin of the same number (IRQ 0: pin 2)."""
        self.pic.set_irq(irq, level, at)
        self.ioapic.set_irq(self._ioapic_pin(irq), level, at)

    def isa_pulse(self, irq: int, at: int | None = None) -> None:
        """An edge on ISA line ``irq`` (the PIT's OUT0)."""
        self.pic.pulse(irq, at)
        self.ioapic.pulse(self._ioapic_pin(irq), at)

    def add_acpi_pm(self, clock: Callable[[], int], on_soft_off: Callable[[], None]) -> AcpiPm:
        """The ACPI PM1a blocks and PM timer the FADT points at, timed by ``clock``
        (the VM's virtual time in guest instructions)."""
        self.acpi_pm = AcpiPm(clock, on_soft_off)
        self.bus.register(PM_BASE, PM_LENGTH, self.acpi_pm)
        return self.acpi_pm

    def add_fw_cfg(self, *, ram_size: int, nb_cpus: int,
                   e820: list[tuple[int, int, int]]) -> FwCfg:
        """QEMU's fw_cfg with the CPU count, the RAM size and ``etc/e820`` (base, length,
        type) as the guest's memory map lists them."""
        self.fw_cfg = FwCfg(ram_size=ram_size, nb_cpus=nb_cpus, files={"etc/e820": e820_table(e820)})
        self.bus.register(SELECTOR_PORT, 2, self.fw_cfg)
        return self.fw_cfg


def build_pc_board(bus: IoBus, *, ram_size: int, uart: Uart16550, apic_bus: ApicBus,
                   on_debug_exit: Callable[[int], None], clock: Callable[[], int]) -> PcBoard:
    """Register the PC's legacy devices on ``bus`` and its MMIO devices on a new MMIO bus;
    the PIT and the RTC's update flag count on ``clock`` (the VM's virtual time in
    nanoseconds, the TSC's time base); the I/O APIC sends on ``apic_bus``."""
    debug_exit = DebugExit(on_debug_exit)
    ioapic = IoApic(apic_bus.deliver)
    mmio = MmioBus()
    mmio.register(IOAPIC_BASE, IOAPIC_SIZE, ioapic)
    mmio.register(IOMEM_BASE, IOMEM_SIZE, TestMemory())
    bus.register(IRQ_LINE_PORT, IRQ_LINES, IrqLinePorts(ioapic.set_irq))
    bus.register(SCRATCH_PORT, 4, ScratchPort())
    pic, pit, cmos, vga = Pic8259(), Pit8254(clock), Cmos(ram_size, clock), VgaCrtc()
    bus.register(COM1, 8, uart)
    bus.register(DEBUG_EXIT_PORT, 4, debug_exit)
    bus.register(0x20, 2, pic)
    bus.register(0xA0, 2, pic)
    bus.register(ELCR_PORT, 2, pic)
    bus.register(0x40, 4, pit)
    bus.register(0x61, 1, SystemControlPortB(pit))
    bus.register(0x70, 2, cmos)
    bus.register(0x80, 1, PostPort())
    bus.register(CONFIG_ADDRESS, 8, PciConfigSpace())     # 0xCF8-0xCFF
    bus.register(CRTC_INDEX, 2, vga)
    board = PcBoard(bus, uart, debug_exit, pic, pit, cmos, vga, mmio, ioapic)
    pit.on_irq0 = lambda at: board.isa_pulse(0, at)
    uart.on_irq = lambda level: board.isa_irq(COM1_IRQ, level)     # ISA IRQ 4
    cmos.on_irq = lambda level, at: board.isa_irq(RTC_IRQ, level, at)   # ISA IRQ 8
    pic.on_output = apic_bus.extint                                # the PIC's INT: every LINT0
    return board
