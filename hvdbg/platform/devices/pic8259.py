"""The PC's two cascaded 8259A programmable interrupt controllers (Intel 8259A data
sheet; master at 0x20/0x21 with the slave on its IR2, slave at 0xA0/0xA1) and the
edge/level control registers at 0x4D0/0x4D1 (ELCR, as PIIX chipsets and QEMU's i8259 have).

ISA interrupt lines come in through :meth:`Pic8259.set_irq` / :meth:`Pic8259.pulse`.  The
master's INT output goes to every local APIC's LINT0 (hvdbg.platform.apic): an APIC whose
LINT0 is programmed for ExtINT, or that is globally disabled, takes the interrupt and asks
for its vector with :meth:`Pic8259.acknowledge`, the INTA cycle (SDM Vol. 3A 11.5.1).

Modelled: ICW1-ICW4 (vector base, cascade, AEOI), OCW1 (IMR), OCW2 (non-specific and
specific EOI, rotation on EOI), OCW3 (read IRR/ISR, poll), fully nested priority with
rotation, the slave's cascade, spurious IRQ 7/15 on an INTA with nothing requested, and
edge (latched) or level (ELCR) triggering.  Not modelled: special mask mode, special
fully nested mode and buffered mode (no PC kernel relies on them)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

MASTER, SLAVE = 0, 1
CASCADE_LINE = 2          # the slave's INT is the master's IR2
ELCR_PORT = 0x4D0         # 0x4D0 (master), 0x4D1 (slave)
#: ELCR bits that can be set (IRQ 0, 1, 2, 8 and 13 are always edge-triggered on PIIX)
ELCR_MASKS = (0xF8, 0xDE)

# ICW1 / OCW2 / OCW3 bits
_ICW1 = 0x10
_ICW1_IC4 = 0x01
_ICW1_SNGL = 0x02
_OCW3 = 0x08
_OCW3_POLL = 0x04
_OCW3_READ = 0x02          # with bit 0: 1 = ISR, 0 = IRR
_ICW4_AEOI = 0x02


@dataclass
class _Chip:
    """One 8259A."""

    imr: int = 0xFF           # masked until the guest programs it (as firmware leaves it)
    irr: int = 0
    isr: int = 0
    lines: int = 0            # the level of each IR input
    elcr: int = 0             # level-triggered inputs
    vector_base: int = 0x08
    lowest: int = 7           # the lowest-priority IR (rotation moves it)
    init_step: int = 0        # 0: operational; 2..4: the next ICW expected
    needs_icw4: bool = False
    single: bool = False
    auto_eoi: bool = False
    rotate_on_aeoi: bool = False
    read_isr: bool = False
    poll: bool = False

    def priority_order(self) -> list[int]:
        """IR numbers from the highest priority to the lowest."""
        return [(self.lowest + 1 + i) & 7 for i in range(8)]

    def highest(self, bits: int) -> int | None:
        for line in self.priority_order():
            if bits >> line & 1:
                return line
        return None

    def requested(self) -> int | None:
        """The IR that would interrupt now: the highest-priority unmasked request above
        every in-service one (fully nested mode)."""
        pending = self.irr & ~self.imr
        line = self.highest(pending)
        if line is None:
            return None
        serving = self.highest(self.isr)
        if serving is not None and self.priority_order().index(serving) <= self.priority_order().index(line):
            return None
        return line


class Pic8259:
    """The master/slave pair; ``on_output(at)`` is called (outside the lock) whenever the
    master's INT output may have become asserted, ``at`` the virtual time of the request."""

    name = "pic8259"

    def __init__(self) -> None:
        self.chips = (_Chip(vector_base=0x08), _Chip(vector_base=0x70))
        self._lock = threading.RLock()
        self.on_output: Callable[[int | None], None] = lambda at: None
        self.acknowledged = 0      # INTA cycles (diagnostics)

    # -- interrupt lines ----------------------------------------------------------------
    def set_irq(self, irq: int, level: bool, at: int | None = None) -> None:
        """ISA line ``irq`` (0-15) goes to ``level``: a rising edge latches a request, a
        level-triggered (ELCR) input requests while it is high."""
        with self._lock:
            asserted = self._set(irq, level)
        if asserted:
            self.on_output(at)

    def pulse(self, irq: int, at: int | None = None) -> None:
        """An edge on ``irq`` (the PIT's OUT0 on IRQ 0)."""
        with self._lock:
            self._set(irq, True)
            asserted = self._set(irq, False)
        if asserted:
            self.on_output(at)

    def _set(self, irq: int, level: bool) -> bool:
        if 0 <= irq < 16 and irq != CASCADE_LINE:
            chip = self.chips[irq >> 3]
            bit = 1 << (irq & 7)
            rising = level and not chip.lines & bit
            chip.lines = chip.lines | bit if level else chip.lines & ~bit
            if rising or (level and chip.elcr & bit):
                chip.irr |= bit
            elif not level and chip.elcr & bit:
                chip.irr &= ~bit
            self._cascade()
        return self._output()

    def _cascade(self) -> None:
        """The slave's INT drives the master's IR2 (a level)."""
        master, slave = self.chips
        if slave.requested() is not None:
            master.irr |= 1 << CASCADE_LINE
        else:
            master.irr &= ~(1 << CASCADE_LINE)

    def _output(self) -> bool:
        return self.chips[MASTER].requested() is not None

    # -- the CPU side (LINT0 in ExtINT mode) -------------------------------------------
    def output(self) -> bool:
        """Is the master's INT output asserted (an interrupt requested of the CPU)?"""
        with self._lock:
            return self._output()

    def _inta(self) -> tuple[int, list[tuple[_Chip, int]]]:
        """What an INTA cycle would do now: its vector, and the (chip, IR) requests it takes
        (the master's, then through the cascade the slave's); none for a spurious IR7/IR15."""
        master, slave = self.chips
        line = master.requested()
        if line is None:
            return master.vector_base | 7, []
        if line != CASCADE_LINE:
            return master.vector_base | line, [(master, line)]
        sline = slave.requested()
        if sline is None:
            return slave.vector_base | 7, [(master, line)]
        return slave.vector_base | sline, [(master, line), (slave, sline)]

    def peek_vector(self) -> int:
        """The vector :meth:`acknowledge` would return now, with nothing changed."""
        with self._lock:
            return self._inta()[0]

    def acknowledge(self) -> int:
        """The INTA cycle: the vector of the highest-priority request, which goes in
        service (unless AEOI); with nothing requested any more, the spurious IRQ 7 (or
        IRQ 15 through the cascade), which sets no in-service bit on its own chip."""
        with self._lock:
            self.acknowledged += 1
            vector, taken = self._inta()
            for chip, line in taken:
                self._take(chip, line)
            self._cascade()
            return vector

    @staticmethod
    def _take(chip: _Chip, line: int) -> None:
        bit = 1 << line
        if not chip.elcr & bit:
            chip.irr &= ~bit              # an edge request is consumed by its INTA
        if chip.auto_eoi:
            if chip.rotate_on_aeoi:
                chip.lowest = line
        else:
            chip.isr |= bit

    # -- I/O ports -------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            if port in (ELCR_PORT, ELCR_PORT + 1):
                return self.chips[port - ELCR_PORT].elcr
            chip = self.chips[MASTER if port < 0xA0 else SLAVE]
            if port & 1:
                return chip.imr
            if chip.poll:
                return self._poll(chip)
            return chip.isr if chip.read_isr else chip.irr

    def _poll(self, chip: _Chip) -> int:
        """OCW3 poll: the next read answers the highest request (bit 7 set) as if it had
        been acknowledged (8259A data sheet, "The Poll Command")."""
        chip.poll = False
        line = chip.requested()
        if line is None:
            return 0
        self._take(chip, line)
        self._cascade()
        return 0x80 | line

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if port in (ELCR_PORT, ELCR_PORT + 1):
                index = port - ELCR_PORT
                self.chips[index].elcr = value & ELCR_MASKS[index]
            else:
                chip = self.chips[MASTER if port < 0xA0 else SLAVE]
                if port & 1:
                    self._write_data(chip, value)
                elif value & _ICW1:
                    self._icw1(chip, value)
                elif value & _OCW3:
                    self._ocw3(chip, value)
                else:
                    self._ocw2(chip, value)
            self._cascade()
            asserted = self._output()
        if asserted:
            self.on_output(None)

    @staticmethod
    def _icw1(chip: _Chip, value: int) -> None:
        """ICW1 starts initialization: IMR and ISR clear, IR7 lowest, IRR read selected
        (8259A data sheet, "Initialization Command Words"); edge requests are cleared."""
        chip.imr = chip.isr = 0
        chip.irr &= chip.elcr & chip.lines
        chip.lowest = 7
        chip.read_isr = chip.poll = False
        chip.auto_eoi = chip.rotate_on_aeoi = False
        chip.needs_icw4 = bool(value & _ICW1_IC4)
        chip.single = bool(value & _ICW1_SNGL)
        chip.init_step = 2

    def _write_data(self, chip: _Chip, value: int) -> None:
        step = chip.init_step
        if step == 2:                     # ICW2: the vector base (T7-T3)
            chip.vector_base = value & 0xF8
            chip.init_step = 3 if not chip.single else (4 if chip.needs_icw4 else 0)
        elif step == 3:                   # ICW3: cascade wiring (fixed on a PC)
            chip.init_step = 4 if chip.needs_icw4 else 0
        elif step == 4:                   # ICW4
            chip.auto_eoi = bool(value & _ICW4_AEOI)
            chip.init_step = 0
        else:                             # OCW1: the interrupt mask
            chip.imr = value

    @staticmethod
    def _ocw2(chip: _Chip, value: int) -> None:
        """OCW2's R, SL and EOI bits (8259A data sheet, Figure 8): EOIs, rotation, and
        setting the lowest priority."""
        command, level = value >> 5, value & 7
        if command in (0b001, 0b101, 0b011, 0b111):          # (rotate on) non-specific / specific EOI
            line = level if command & 0b010 else chip.highest(chip.isr)
            if line is not None:
                chip.isr &= ~(1 << line)
                if command & 0b100:
                    chip.lowest = line
        elif command == 0b110:                               # set priority
            chip.lowest = level
        elif command in (0b100, 0b000):                      # rotate in AEOI mode: set / clear
            chip.rotate_on_aeoi = command == 0b100

    @staticmethod
    def _ocw3(chip: _Chip, value: int) -> None:
        if value & _OCW3_POLL:
            chip.poll = True
        if value & _OCW3_READ:
            chip.read_isr = bool(value & 1)
