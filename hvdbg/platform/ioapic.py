"""The I/O APIC (Intel 82093AA I/O Advanced Programmable Interrupt Controller data sheet,
section 3 "Register Description"), at the PC's default address 0xFEC00000.

The guest selects a register by writing its index to IOREGSEL (offset 0x00) and reads or
writes it through IOWIN (offset 0x10).  Registers: IOAPICID (0x00, bits 27:24 writable),
IOAPICVER (0x01, read-only: version 0x20 as QEMU's, 24 redirection entries),
IOAPICARB (0x02, read-only, follows the ID), and the 24 64-bit redirection entries
(0x10 + 2n low dword, 0x11 + 2n high dword).  Version 0x20 adds the EOI register at
offset 0x40 (a directed EOI by vector).

An input pin changes level through :meth:`IoApic.set_irq`.  An edge-triggered pin sends
its interrupt message on a rising edge; a level-triggered pin sends it while the line is
asserted and Remote IRR is clear, and sets Remote IRR; the local APIC's EOI of a
level-triggered vector (:meth:`IoApic.eoi`, the EOI message of SDM 11.8.5) clears it and
resends if the line is still asserted.  Masked pins send nothing; unmasking a
level-triggered pin whose line is asserted sends.  Messages go to the APIC bus
(:class:`hvdbg.platform.apic.ApicBus`), which owns routing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from hvdbg.arch.apic import IcrCommand, Shorthand

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40
PINS = 24
VERSION = 0x20

REG_ID, REG_VERSION, REG_ARBITRATION, REG_REDIRECTION = 0x00, 0x01, 0x02, 0x10

# redirection entry bits (82093AA 3.2.4)
_VECTOR = 0xFF
_DELIVERY_STATUS = 1 << 12
_POLARITY = 1 << 13
_REMOTE_IRR = 1 << 14
_TRIGGER_LEVEL = 1 << 15
_MASK = 1 << 16
_WRITABLE_LOW = 0xFFFF_FFFF & ~(_DELIVERY_STATUS | _REMOTE_IRR)


@dataclass
class Redirection:
    """One redirection-table entry (82093AA 3.2.4) and its input line."""

    value: int = _MASK          # masked after reset
    line: bool = False          # the input pin's level (after polarity)

    @property
    def masked(self) -> bool:
        return bool(self.value & _MASK)

    @property
    def level_triggered(self) -> bool:
        return bool(self.value & _TRIGGER_LEVEL)

    @property
    def vector(self) -> int:
        return self.value & _VECTOR

    def message(self) -> IcrCommand:
        """The interrupt message this entry sends: destination bits 63:56 (an APIC ID in
        physical mode, a logical destination in logical mode, bit 11)."""
        v = self.value
        return IcrCommand(vector=v & _VECTOR, delivery_mode=(v >> 8) & 7,
                          logical=bool(v & (1 << 11)), level_assert=True,
                          trigger_level=bool(v & _TRIGGER_LEVEL), shorthand=Shorthand.NONE,
                          destination=v >> 56, x2apic=False)


class IoApic:
    """The I/O APIC: registers, 24 input pins, and the messages they send to ``send``
    (``send(command, level_triggered, at)``; :meth:`hvdbg.platform.apic.ApicBus.deliver`)."""

    name = "ioapic"

    def __init__(self, send: Callable[[IcrCommand, bool, int | None], None], apic_id: int = 0) -> None:
        self._send = send
        self._lock = threading.RLock()
        self.id = apic_id & 0xF
        self.select = 0
        self.entries = [Redirection() for _ in range(PINS)]
        self.messages_sent = 0

    # -- registers ----------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        with self._lock:
            if index == REG_ID:
                return self.id << 24
            if index == REG_VERSION:
                return (PINS - 1) << 16 | VERSION
            if index == REG_ARBITRATION:
                return self.id << 24
            pin, high = divmod(index - REG_REDIRECTION, 2)
            if 0 <= pin < PINS:
                value = self.entries[pin].value
                return value >> 32 if high else value & 0xFFFFFFFF
            return 0

    def write_register(self, index: int, value: int) -> None:
        value &= 0xFFFFFFFF
        with self._lock:
            if index == REG_ID:
                self.id = (value >> 24) & 0xF
                return
            pin, high = divmod(index - REG_REDIRECTION, 2)
            if not 0 <= pin < PINS or index < REG_REDIRECTION:
                return   # version and arbitration are read-only
            e = self.entries[pin]
            if high:
                e.value = (e.value & 0xFFFFFFFF) | value << 32
                return
            e.value = (e.value & ~_WRITABLE_LOW) | (value & _WRITABLE_LOW)
            if not e.level_triggered:
                e.value &= ~_REMOTE_IRR
            self._service(pin)

    # -- MMIO (hvdbg.platform.devices.bus.MmioBus) ------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL:
            return self.select
        if offset == IOWIN:
            return self.read_register(self.select)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.select = value & 0xFF
        elif offset == IOWIN:
            self.write_register(self.select, value)
        elif offset == IOEOI:
            self.eoi(value & 0xFF)

    # -- input pins and EOI ---------------------------------------------------------------
    def set_irq(self, pin: int, level: bool, at: int | None = None) -> None:
        """The input ``pin`` goes to ``level`` (active high; the polarity bit inverts) at
        virtual time ``at`` (if known: a vCPU it wakes from HLT slept until then)."""
        if not 0 <= pin < PINS:
            return
        with self._lock:
            e = self.entries[pin]
            asserted = bool(level) != bool(e.value & _POLARITY)
            rising = asserted and not e.line
            e.line = asserted
            if e.level_triggered or rising:
                self._service(pin, edge=rising, at=at)

    def pulse(self, pin: int, at: int | None = None) -> None:
        """An edge on ``pin`` at virtual time ``at``: the line goes high and low again (an
        ISA interrupt)."""
        with self._lock:
            self.set_irq(pin, True, at)
            self.set_irq(pin, False, at)

    def eoi(self, vector: int) -> None:
        """An EOI for ``vector`` (a local APIC's EOI of a level-triggered interrupt, or a
        write to the EOI register): Remote IRR clears on every level-triggered pin with that
        vector, which sends again if its line is still asserted."""
        with self._lock:
            for pin, e in enumerate(self.entries):
                if e.vector == vector and e.level_triggered and e.value & _REMOTE_IRR:
                    e.value &= ~_REMOTE_IRR
                    self._service(pin)

    def _service(self, pin: int, edge: bool = False, at: int | None = None) -> None:
        e = self.entries[pin]
        if e.masked:
            return
        if e.level_triggered:
            if not e.line or e.value & _REMOTE_IRR:
                return
            e.value |= _REMOTE_IRR
        elif not edge:
            return
        self.messages_sent += 1
        self._send(e.message(), e.level_triggered, at)

    def describe(self) -> list[str]:
        """The unmasked or asserted pins, one line each (for ``info ioapic``)."""
        out = []
        for pin, e in enumerate(self.entries):
            if e.masked and not e.line:
                continue
            m = e.message()
            out.append(f"pin {pin:2}: vector {m.vector:#04x} {m.mode_name} "
                       f"{'logical' if m.logical else 'physical'} dest {m.destination:#x} "
                       f"{'level' if e.level_triggered else 'edge'}"
                       f"{' masked' if e.masked else ''}{' remote-IRR' if e.value & _REMOTE_IRR else ''}"
                       f" line {'high' if e.line else 'low'}")
        return out
