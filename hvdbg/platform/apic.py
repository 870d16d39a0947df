"""Local APIC model, one per vCPU (Intel SDM Vol. 3, chapter 11 "Advanced Programmable
Interrupt Controller (APIC)").

Registers are kept by their xAPIC MMIO offset (SDM Table 11-1); the x2APIC MSR view
(SDM 11.12.1.2, MSR 0x800 + offset/16, ICR as one 64-bit MSR 0x830) maps onto the same
storage.  Interrupt commands are decoded by :func:`decode_icr` and handed to a bus
callback: the APIC never touches another vCPU itself.

Time is virtual: the timer counts in "ticks" supplied by a clock callable (hvdbg drives
it from the vCPU's guest-instruction count), so timer interrupts are deterministic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Protocol

from hvdbg.arch.apic import (APIC_BASE_BSP, APIC_BASE_EN, APIC_BASE_EXTD, IA32_APIC_BASE_MSR, LVT_MASKED,
                              SHORTHAND_TEXT, TIMER_MODES, X2APIC_MSR_BASE, X2APIC_MSR_END, XAPIC_BASE,
                              XAPIC_SIZE, DeliveryMode, IcrCommand, Reg, Shorthand, decode_icr)

# Divide configuration register (SDM Figure 11-10): bits 3,1,0 -> divisor
_DIVIDE = {0b000: 2, 0b001: 4, 0b010: 8, 0b011: 16, 0b100: 32, 0b101: 64, 0b110: 128, 0b111: 1}


class ExtIntSource(Protocol):
    """What LINT0 is wired to on a PC: the master 8259A (hvdbg.platform.devices.pic8259)."""

    def output(self) -> bool: ...

    def peek_vector(self) -> int: ...

    def acknowledge(self) -> int: ...


class LocalApic:
    """One vCPU's local APIC.

    ``send_ipi(source_apic, command)`` is called for every ICR write that sends an IPI;
    ``clock()`` returns the current virtual time in ticks; ``on_pending()`` is called
    (from any thread) when an interrupt becomes pending so the owner can kick its vCPU.
    """

    VERSION = 0x00050014  # version 0x14, max LVT entry 5

    def __init__(self, apic_id: int, *, bsp: bool, x2apic_supported: bool,
                 send_ipi: Callable[["LocalApic", IcrCommand], None],
                 clock: Callable[[], int],
                 on_pending: Callable[[], None] = lambda: None,
                 on_timer_armed: Callable[[int], None] = lambda deadline: None) -> None:
        self.apic_id = apic_id
        self.x2apic_supported = x2apic_supported
        self._send_ipi = send_ipi
        self._clock = clock
        self._on_pending = on_pending
        self._on_timer_armed = on_timer_armed   # the vCPU's run then ends by the deadline
        self._lock = threading.RLock()
        self.base_msr = XAPIC_BASE | APIC_BASE_EN | (APIC_BASE_BSP if bsp else 0)
        self.regs: dict[int, int] = {}
        self.irr = 0          # 256-bit bitmaps
        self.isr = 0
        self.tmr = 0
        self.nmi_pending = False
        self.timer_deadline: int | None = None
        self.timer_period = 0
        self.timer_fired = 0
        self.ipis_sent = 0
        self.ipis_received = 0
        self.on_level_eoi: Callable[[int], None] = lambda vector: None   # set by the machine (I/O APIC)
        self.pic: ExtIntSource | None = None    # the 8259A pair on LINT0, set by the machine
        self.arrival: int | None = None    # virtual time of the latest interrupt sent here
        self.reset()

    # -- state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-up / INIT state (SDM 11.4.7.1)."""
        with self._lock:
            self.regs = {int(r): 0 for r in Reg}
            for lvt in (Reg.LVT_TIMER, Reg.LVT_THERMAL, Reg.LVT_PERF, Reg.LVT_LINT0,
                        Reg.LVT_LINT1, Reg.LVT_ERROR, Reg.LVT_CMCI):
                self.regs[lvt] = LVT_MASKED
            self.regs[Reg.SVR] = 0xFF
            self.regs[Reg.DFR] = 0xFFFFFFFF
            self.irr = self.isr = self.tmr = 0
            self.timer_deadline = None

    def now(self) -> int:
        """This APIC's virtual time (its vCPU's clock)."""
        return self._clock()

    @property
    def x2apic_mode(self) -> bool:
        return bool(self.base_msr & APIC_BASE_EXTD)

    @property
    def enabled(self) -> bool:
        return bool(self.base_msr & APIC_BASE_EN) and bool(self.regs[Reg.SVR] & 0x100)

    @property
    def id_register(self) -> int:
        """Value of the ID register as the guest reads it."""
        return self.apic_id if self.x2apic_mode else (self.apic_id & 0xFF) << 24

    # -- register access -----------------------------------------------------------------
    def read(self, offset: int) -> int:
        """32-bit read of the register at an xAPIC offset."""
        offset &= 0xFF0
        with self._lock:
            if offset == Reg.ID:
                return self.id_register
            if offset == Reg.VERSION:
                return self.VERSION
            if offset == Reg.PPR:
                return self._ppr()
            if offset == Reg.LDR and self.x2apic_mode:
                return self.logical_id
            if Reg.ISR0 <= offset < Reg.ISR0 + 0x80:
                return (self.isr >> ((offset - Reg.ISR0) // 0x10 * 32)) & 0xFFFFFFFF
            if Reg.TMR0 <= offset < Reg.TMR0 + 0x80:
                return (self.tmr >> ((offset - Reg.TMR0) // 0x10 * 32)) & 0xFFFFFFFF
            if Reg.IRR0 <= offset < Reg.IRR0 + 0x80:
                return (self.irr >> ((offset - Reg.IRR0) // 0x10 * 32)) & 0xFFFFFFFF
            if offset == Reg.TIMER_CURRENT:
                return self._timer_current()
            return self.regs.get(offset, 0)

    def write(self, offset: int, value: int) -> None:
        """32-bit write of the register at an xAPIC offset."""
        offset &= 0xFF0
        value &= 0xFFFFFFFF
        if offset == Reg.EOI:
            self.eoi()    # outside the lock: its EOI message may reach other APICs
            return
        with self._lock:
            if offset == Reg.ICR_LOW:
                self.regs[Reg.ICR_LOW] = value & ~(1 << 12)  # delivery status: idle
                self._issue(self.regs[Reg.ICR_HIGH] << 32 | value)
            elif offset == Reg.TIMER_INITIAL:
                self.regs[offset] = value
                if not self._tsc_deadline_mode():   # ignored in TSC-deadline mode (SDM 11.5.4.1)
                    self._arm_timer()
            elif offset == Reg.LVT_TIMER:
                if self._tsc_deadline_mode() != (value >> 17 & 3 == 2):
                    self.timer_deadline = None      # entering or leaving TSC-deadline mode disarms
                self.regs[offset] = value
            elif offset == Reg.TIMER_DIVIDE:
                self.regs[offset] = value & 0xB
            elif offset == Reg.ID and not self.x2apic_mode:
                self.apic_id = value >> 24  # xAPIC ID is writable (SDM 11.4.6)
            elif offset in (Reg.VERSION, Reg.PPR, Reg.TIMER_CURRENT) or Reg.ISR0 <= offset < 0x280:
                pass  # read-only
            elif offset == Reg.SELF_IPI:
                self.accept(value & 0xFF)
            else:
                self.regs[offset] = value
        if offset == Reg.TPR and self.pending_vector() is not None:
            self._on_pending()   # a lower task priority lets a held-back request through

    def read_msr(self, msr: int) -> int:
        """x2APIC MSR read (SDM 11.12.1.2)."""
        if msr == 0x830:
            return self.regs[Reg.ICR_HIGH] << 32 | self.regs[Reg.ICR_LOW]
        if msr == 0x802:
            return self.apic_id
        return self.read((msr - X2APIC_MSR_BASE) << 4)

    def write_msr(self, msr: int, value: int) -> None:
        """x2APIC MSR write; ICR is one 64-bit write that sends the IPI."""
        if msr == 0x830:
            with self._lock:
                self.regs[Reg.ICR_HIGH] = value >> 32
                self.regs[Reg.ICR_LOW] = value & 0xFFFFFFFF
                self._issue(value)
            return
        self.write((msr - X2APIC_MSR_BASE) << 4, value)

    def _issue(self, icr: int) -> None:
        cmd = decode_icr(icr, self.x2apic_mode)
        self.ipis_sent += 1
        self._send_ipi(self, cmd)

    # -- interrupt acceptance (SDM 11.8) -------------------------------------------------
    def accept(self, vector: int, level: bool = False, at: int | None = None) -> None:
        """Set IRR for a fixed interrupt arriving at this APIC; TMR records its trigger
        mode (SDM 11.8.4: set for level-triggered, cleared for edge-triggered).  ``at`` is
        the virtual time it was sent (:meth:`take_arrival`)."""
        if vector < 16:
            self.regs[Reg.ESR] |= 1 << 6  # receive illegal vector
            return
        with self._lock:
            self._arrived(at)
            self.irr |= 1 << vector
            if level:
                self.tmr |= 1 << vector
            else:
                self.tmr &= ~(1 << vector)
            self.ipis_received += 1
        self._on_pending()

    def accept_nmi(self, at: int | None = None) -> None:
        with self._lock:
            self._arrived(at)
        self.nmi_pending = True
        self._on_pending()

    def _arrived(self, at: int | None) -> None:
        if at is not None and (self.arrival is None or at > self.arrival):
            self.arrival = at

    def take_arrival(self) -> int | None:
        """The latest virtual time at which an interrupt or NMI was sent here since the
        last call: a halted vCPU it wakes has slept until then (its clock moves on)."""
        with self._lock:
            at, self.arrival = self.arrival, None
            return at

    def _ppr(self) -> int:
        tpr = self.regs[Reg.TPR] & 0xFF
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        return tpr if (tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    def _requested(self) -> int | None:
        """Highest IRR vector whose priority class beats PPR, or None."""
        if not self.irr or not (self.regs[Reg.SVR] & 0x100):
            return None
        vec = self.irr.bit_length() - 1
        if (vec >> 4) <= (self._ppr() >> 4):
            return None
        return vec

    def accepts_extint(self) -> bool:
        """Does the 8259A's INT output reach this processor through LINT0: LVT LINT0
        unmasked with delivery mode ExtINT (SDM 11.5.1), or the APIC globally disabled
        (IA32_APIC_BASE.EN = 0), when LINT0 is the processor's INTR pin (SDM 11.4.3)?
        A software-disabled APIC masks every LVT entry."""
        if not self.base_msr & APIC_BASE_EN:
            return True
        lint0 = self.regs[Reg.LVT_LINT0]
        return bool(self.regs[Reg.SVR] & 0x100) and not lint0 & LVT_MASKED \
            and (lint0 >> 8) & 7 == DeliveryMode.EXTINT

    def _extint(self) -> bool:
        return self.pic is not None and self.accepts_extint() and self.pic.output()

    def pending_vector(self) -> int | None:
        """The vector the processor would take next: the highest IRR vector whose
        priority class beats PPR, else the 8259A's through an ExtINT LINT0 (which TPR
        does not hold back), or None."""
        with self._lock:
            self._check_timer()
            vec = self._requested()
            if vec is None and self._extint():
                return self.pic.peek_vector()
            return vec

    def ack(self, vector: int) -> int:
        """The vCPU takes the interrupt :meth:`pending_vector` named: IRR -> ISR
        (interrupt acknowledge), or for the 8259A's the INTA cycle, which sets nothing in
        this APIC (no EOI to it either). Returns the vector taken."""
        with self._lock:
            if self._requested() != vector and self._extint():
                return self.pic.acknowledge()
            self.irr &= ~(1 << vector)
            self.isr |= 1 << vector
            return vector

    def extint_raised(self, at: int | None) -> None:
        """The 8259A's INT output rose (``at``: when, in virtual time): a processor that
        takes it is woken (the ``on_pending`` callback)."""
        if self.accepts_extint():
            with self._lock:
                self._arrived(at)
            self._on_pending()

    def eoi(self) -> None:
        """EOI (SDM 11.8.5): the highest in-service vector ends; if it was level-triggered
        (its TMR bit), the EOI message goes to the I/O APIC (``on_level_eoi(vector)``)."""
        with self._lock:
            if not self.isr:
                return
            vec = self.isr.bit_length() - 1
            self.isr &= ~(1 << vec)
            level = bool(self.tmr >> vec & 1)
        if level:
            self.on_level_eoi(vec)
        if self.pending_vector() is not None:
            self._on_pending()   # a request the in-service one held back can now be taken

    @property
    def logical_id(self) -> int:
        """The logical APIC ID a logical destination is matched against: LDR[31:24] in
        xAPIC mode; in x2APIC mode derived from the x2APIC ID (SDM 11.12.10.2)."""
        if self.x2apic_mode:
            return (self.apic_id >> 4) << 16 | 1 << (self.apic_id & 0xF)
        return self.regs[Reg.LDR] >> 24

    def matches_logical(self, destination: int) -> bool:
        """Does a logical ``destination`` select this APIC (SDM 11.6.2.2: the flat model
        ANDs the 8-bit masks; the cluster model, and x2APIC, match the cluster and AND the
        member bits)."""
        if self.x2apic_mode:
            ldr = self.logical_id
            return destination >> 16 == ldr >> 16 and bool(destination & ldr & 0xFFFF)
        ldr = self.logical_id
        destination &= 0xFF
        if self.regs[Reg.DFR] >> 28 == 0xF:      # flat model
            return bool(ldr & destination)
        return destination >> 4 == ldr >> 4 and bool(destination & ldr & 0xF)

    # -- timer (SDM 11.5.4) --------------------------------------------------------------
    def _divisor(self) -> int:
        d = self.regs[Reg.TIMER_DIVIDE]
        return _DIVIDE[((d >> 1) & 0b100) | (d & 0b11)]

    def _arm_timer(self) -> None:
        initial = self.regs[Reg.TIMER_INITIAL]
        if initial == 0:
            self.timer_deadline = None
            return
        self.timer_period = initial * self._divisor()
        self.timer_deadline = self._clock() + self.timer_period
        self._on_timer_armed(self.timer_deadline)

    def _tsc_deadline_mode(self) -> bool:
        return self.regs[Reg.LVT_TIMER] >> 17 & 3 == 2

    def arm_tsc_deadline(self, deadline: int | None) -> None:
        """WRMSR IA32_TSC_DEADLINE, the deadline given as virtual time (SDM 11.5.4.1): in
        TSC-deadline mode the timer fires once the clock reaches it (one in the past fires
        at once; None, for 0, disarms); in the other modes the write is ignored."""
        with self._lock:
            if not self._tsc_deadline_mode():
                return
            self.timer_deadline = deadline
            if deadline is not None:
                self._on_timer_armed(deadline)

    def tsc_deadline(self) -> int | None:
        """The armed TSC deadline as virtual time; None when RDMSR IA32_TSC_DEADLINE reads
        0 (disarmed, fired, or another timer mode)."""
        with self._lock:
            self._check_timer()
            return self.timer_deadline if self._tsc_deadline_mode() else None

    def _timer_current(self) -> int:
        if self.timer_deadline is None or self._tsc_deadline_mode():
            return 0
        left = self.timer_deadline - self._clock()
        return max(0, left // self._divisor())

    def _check_timer(self) -> None:
        if self.timer_deadline is None or self._clock() < self.timer_deadline:
            return
        lvt = self.regs[Reg.LVT_TIMER]
        mode = (lvt >> 17) & 3
        self.timer_fired += 1
        if mode == 1 and self.timer_period:
            now = self._clock()
            while self.timer_deadline <= now:
                self.timer_deadline += self.timer_period
        else:
            self.timer_deadline = None
        if not (lvt & LVT_MASKED):
            self.irr |= 1 << (lvt & 0xFF)

    def next_event(self) -> int | None:
        """Virtual time of the next timer expiry, for slice sizing.  An expiry that has
        passed is taken first (IRR set, a periodic timer re-armed, a one-shot one
        disarmed), so the answer is never in the past: the timer keeps time while the
        vCPU runs with IF=0, as on hardware (SDM 11.5.4)."""
        with self._lock:
            self._check_timer()
            return self.timer_deadline

    def has_pending(self) -> bool:
        return self.nmi_pending or self.pending_vector() is not None

    def timer_mode(self) -> str:
        return TIMER_MODES.get((self.regs[Reg.LVT_TIMER] >> 17) & 3, "reserved")


class ApicBusTarget(Protocol):
    """A processor on the APIC bus: its local APIC, and how INIT and start-up IPIs reach
    the processor itself (they are not interrupts: SDM 11.6.1, 9.4)."""

    index: int
    apic: LocalApic
    ipi_log: list

    def on_init_ipi(self) -> None: ...

    def on_startup_ipi(self, vector: int) -> None: ...


class ApicBus:
    """The bus between the local APICs of one machine (QEMU's apic_deliver /
    apic_bus_deliver role): decodes an ICR command's destination (SDM 11.6.2: shorthand,
    physical APIC ID or broadcast, logical flat model) and delivers it by delivery mode.
    Fixed and lowest-priority interrupts and NMIs go to the target's APIC; INIT and
    SIPI to the processor.  Each sent command is logged at its source with its targets."""

    def __init__(self) -> None:
        self.targets: list[ApicBusTarget] = []

    def attach(self, target: ApicBusTarget) -> None:
        self.targets.append(target)

    def destinations(self, source: LocalApic | None, cmd: IcrCommand) -> list[ApicBusTarget]:
        out = []
        for t in self.targets:
            if cmd.shorthand == Shorthand.SELF:
                ok = t.apic is source
            elif cmd.shorthand == Shorthand.ALL_INCLUDING_SELF:
                ok = True
            elif cmd.shorthand == Shorthand.ALL_EXCLUDING_SELF:
                ok = t.apic is not source
            elif cmd.logical:
                ok = t.apic.matches_logical(cmd.destination)
            else:
                ok = t.apic.apic_id == cmd.destination or (cmd.destination == (0xFFFFFFFF if cmd.x2apic else 0xFF))
            if ok:
                out.append(t)
        return out

    def send(self, source: LocalApic, cmd: IcrCommand) -> None:
        """Deliver an ICR command (the ``send_ipi`` callback of every LocalApic), sent at
        the source's virtual time."""
        targets = self.destinations(source, cmd)
        sender = next((t for t in self.targets if t.apic is source), None)
        if sender is not None:
            sender.ipi_log.append((cmd, [t.index for t in targets]))
        self._deliver(targets, cmd, level=False, at=source.now())

    def extint(self, at: int | None = None) -> None:
        """The 8259A's INT output rose: it is wired to LINT0 of every processor (each
        APIC decides whether it takes it, :meth:`LocalApic.accepts_extint`)."""
        for t in self.targets:
            t.apic.extint_raised(at)

    def deliver(self, cmd: IcrCommand, level: bool, at: int | None = None) -> None:
        """Deliver an interrupt message from the I/O APIC (82093AA 3.2.4: its redirection
        entry's vector, delivery mode, destination mode and destination); ``level`` marks
        a level-triggered interrupt, whose EOI goes back to the I/O APIC; ``at`` is when
        its input changed (virtual time), if known."""
        self._deliver(self.destinations(None, cmd), cmd, level, at)

    @staticmethod
    def _deliver(targets: list[ApicBusTarget], cmd: IcrCommand, level: bool, at: int | None) -> None:
        mode = cmd.delivery_mode
        if mode == DeliveryMode.LOWEST_PRIORITY and targets:
            # one processor: the lowest task priority, then the lowest APIC ID (SDM 11.6.2.4
            # leaves the choice among equals to the chipset; this one is deterministic)
            targets = [min(targets, key=lambda t: (t.apic.regs[Reg.TPR] & 0xF0, t.apic.apic_id))]
        for t in targets:
            if mode == DeliveryMode.INIT:
                if cmd.trigger_level and not cmd.level_assert:
                    continue  # INIT level de-assert: no effect on modern processors
                t.on_init_ipi()
            elif mode == DeliveryMode.STARTUP:
                t.on_startup_ipi(cmd.vector)
            elif mode == DeliveryMode.NMI:
                t.apic.accept_nmi(at)
            elif mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY):
                t.apic.accept(cmd.vector, level, at)
