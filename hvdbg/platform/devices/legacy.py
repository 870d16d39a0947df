"""The legacy PC devices a simple kernel pokes at boot: 8254 PIT, CMOS/RTC, port 0x61
and the POST port 0x80 (the 8259A PICs are hvdbg.platform.devices.pic8259).

The PIT's channel 0 raises ISA IRQ 0 (the board wires it to the PICs and to I/O APIC pin
2), the RTC's periodic interrupt ISA IRQ 8.  The PIT and the RTC's update flag follow a clock: the
board gives them the VM's virtual time, the TSC's time base (host time when built
without one)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


PIT_HZ = 1_193_182               # the 8254's input clock (14.31818 MHz / 12)
NS_PER_S = 1_000_000_000
REFRESH_NS = 15_085              # port 0x61 bit 4 toggles every 15.085 us (DRAM refresh)


@dataclass
class _PitChannel:
    """One 8254 counter (Intel 8254 data sheet: modes 0-5, counter latch, r/w modes)."""

    reload: int = 0x10000        # count register (0 means 65536)
    mode: int = 0
    access: int = 3              # 1 = LSB only, 2 = MSB only, 3 = LSB then MSB
    write_msb: bool = False      # next write of an LSB/MSB pair is the MSB
    read_msb: bool = False
    latched: int | None = None   # counter-latch command output, held until read
    status: int | None = None    # read-back status, held until read
    gate: bool = True
    loaded: bool = False         # a count was written since the last control word
    start_ns: int = 0            # when counting started from ``reload``
    frozen: int | None = None    # count held while the gate is low

    def ticks(self, now_ns: int) -> int:
        return (now_ns - self.start_ns) * PIT_HZ // NS_PER_S

    def count(self, now_ns: int) -> int:
        """The counting element: modes 0/1/4/5 count down through 0 and wrap (mode 0 keeps
        decrementing after terminal count); modes 2/3 reload at the end of each period."""
        if self.frozen is not None:
            return self.frozen
        if not self.loaded:
            return self.reload & 0xFFFF
        t = self.ticks(now_ns)
        if self.mode in (2, 3):
            step = 2 if self.mode == 3 else 1
            return (self.reload - (t * step) % self.reload) & 0xFFFF
        return (self.reload - t) & 0xFFFF

    def out(self, now_ns: int) -> bool:
        """The OUT pin: mode 0 goes high at terminal count; mode 2 is low for one clock per
        period; mode 3 is high for the first half of each period."""
        if not self.loaded:
            return self.mode != 0
        if self.frozen is not None and self.mode == 0:
            return False
        t = self.ticks(now_ns)
        if self.mode == 2:
            return t % self.reload != self.reload - 1
        if self.mode == 3:
            return t % self.reload < (self.reload + 1) // 2
        return t >= self.reload


class Pit8254:
    """8254 PIT at 0x40-0x43, counting at 1.193182 MHz on ``clock`` (nanoseconds).

    The machine gives it the VM's virtual time, the time base of the guest's TSC, APIC
    timer and ACPI PM timer, so a kernel that calibrates its TSC or local-APIC timer
    against the PIT (Xen, GRUB, Linux) gets consistent numbers, and a deterministic run
    reads the same counts every time (the host's monotonic clock is only the default for
    a PIT on its own).  Channel 2's gate is
    port 0x61 bit 0 (:class:`SystemControlPortB`).

    Channel 0's OUT is IRQ 0: each rising edge (every period in modes 2 and 3, once at
    terminal count in mode 0) calls ``on_irq0`` when :meth:`poll` finds its time has come;
    :meth:`next_irq` says when that is, so the run loop can end a slice there.  Edges that
    passed between two polls are one edge, as an interrupt line that nobody sampled."""

    name = "pit8254"

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self.channels = [_PitChannel() for _ in range(3)]
        self.channels[2].gate = False
        self.on_irq0: Callable[[int], None] | None = None   # called with the edge's time
        self.irq0_edges = 0          # edges raised so far
        self._irq0_period = 0        # periods of channel 0 whose edge was raised

    # -- IRQ 0 ------------------------------------------------------------------------
    def _irq0_due(self, k: int) -> int:
        """When the ``k``-th rising edge of channel 0's OUT (k >= 1) happens (ns)."""
        ch = self.channels[0]
        ticks = k * ch.reload + (1 if ch.mode == 4 else 0)
        return ch.start_ns + -(-ticks * NS_PER_S // PIT_HZ)

    def next_irq(self) -> int | None:
        """The time (ns of ``clock``) of channel 0's next rising edge, or None."""
        ch = self.channels[0]
        if self.on_irq0 is None or not ch.loaded or ch.frozen is not None or ch.mode in (1, 5):
            return None
        if ch.mode in (0, 4) and self._irq0_period:
            return None                  # one-shot modes: one edge per count written
        return self._irq0_due(self._irq0_period + 1)

    def poll(self) -> None:
        """Raise IRQ 0 if channel 0's next edge is due."""
        due = self.next_irq()
        if due is None:
            return
        now = self.clock()
        if now < due:
            return
        ch = self.channels[0]
        if ch.mode in (2, 3):
            self._irq0_period = max(self._irq0_period + 1, ch.ticks(now) // ch.reload)
        else:
            self._irq0_period = 1
        self.irq0_edges += 1
        self.on_irq0(due)

    @property
    def reload(self) -> list[int]:
        return [ch.reload for ch in self.channels]

    def io_read(self, port: int, size: int) -> int:
        index = port - 0x40
        if index == 3:
            return 0xFF
        ch = self.channels[index]
        if ch.status is not None:
            value, ch.status = ch.status, None
            return value
        value = ch.latched if ch.latched is not None else ch.count(self.clock())
        if ch.access == 1:
            ch.latched = None
            return value & 0xFF
        if ch.access == 2:
            ch.latched = None
            return value >> 8 & 0xFF
        ch.read_msb = not ch.read_msb
        if ch.read_msb:
            return value & 0xFF
        ch.latched = None
        return value >> 8 & 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        index = port - 0x40
        value &= 0xFF
        now = self.clock()
        if index == 3:
            self._control(value, now)
            return
        ch = self.channels[index]
        if ch.access == 1:
            ch.reload = (ch.reload & 0xFF00) | value
        elif ch.access == 2:
            ch.reload = (ch.reload & 0xFF) | value << 8
        elif not ch.write_msb:
            ch.reload = (ch.reload & 0xFF00) | value
            ch.write_msb = True
            return                       # counting starts once the MSB is written
        else:
            ch.reload = (ch.reload & 0xFF) | value << 8
            ch.write_msb = False
        ch.reload = ch.reload & 0xFFFF or 0x10000
        ch.loaded = True
        ch.start_ns = now
        if index == 0:
            self._irq0_period = 0
        ch.frozen = None if ch.gate else ch.reload & 0xFFFF

    def _control(self, value: int, now: int) -> None:
        sel = value >> 6
        if sel == 3:                     # read-back: bit 5 = 0 latch counts, bit 4 = 0 latch status
            for i in range(3):
                if value & (2 << i):
                    ch = self.channels[i]
                    if not value & 0x20 and ch.latched is None:
                        ch.latched = ch.count(now)
                    if not value & 0x10 and ch.status is None:
                        ch.status = (ch.out(now) << 7) | (ch.access << 4) | (ch.mode << 1)
            return
        ch = self.channels[sel]
        access = (value >> 4) & 3
        if access == 0:                  # counter latch command
            if ch.latched is None:
                ch.latched = ch.count(now)
            return
        ch.access = access
        ch.mode = (value >> 1) & 7
        if ch.mode > 5:
            ch.mode -= 4                 # 6 and 7 are aliases of 2 and 3
        ch.write_msb = ch.read_msb = False
        ch.latched = None
        ch.loaded = False

    def set_gate(self, index: int, high: bool) -> None:
        """GATE input: low stops counting; a rising edge restarts modes 1/2/3/5 and resumes
        mode 0 where it stopped."""
        ch = self.channels[index]
        if high == ch.gate:
            return
        now = self.clock()
        if not high:
            ch.frozen = ch.count(now)
        else:
            held = ch.frozen if ch.frozen is not None else ch.reload & 0xFFFF
            ch.frozen = None
            if ch.loaded:
                elapsed = (ch.reload - (held or 0x10000)) if ch.mode in (0, 4) else 0
                ch.start_ns = now - elapsed * NS_PER_S // PIT_HZ
        ch.gate = high

    def out(self, index: int) -> bool:
        return self.channels[index].out(self.clock())


class SystemControlPortB:
    """Port 0x61: bit 0 = PIT channel 2 gate, bit 1 = speaker data (both writable); bit 4 =
    refresh toggle (every 15 us), bit 5 = PIT channel 2 OUT.  Kernels time delays with it:
    gate channel 2, load a count, poll bit 5 (Xen's and GRUB's TSC calibration)."""

    name = "port61"

    def __init__(self, pit: Pit8254 | None = None) -> None:
        self.pit = pit or Pit8254()
        self.value = 0

    def io_read(self, port: int, size: int) -> int:
        now = self.pit.clock()
        refresh = 0x10 if (now // REFRESH_NS) & 1 else 0
        out2 = 0x20 if self.pit.out(2) else 0
        return (self.value & 0x0F) | refresh | out2

    def io_write(self, port: int, size: int, value: int) -> None:
        self.value = value & 0x0F
        self.pit.set_gate(2, bool(value & 1))


RTC_REG_A, RTC_REG_B, RTC_REG_C, RTC_REG_D = 0x0A, 0x0B, 0x0C, 0x0D
RTC_UIP = 0x80
RTC_UPDATE_NS = 244_000          # UIP is set 244 us before each once-a-second update
RTC_IRQ = 8                      # ISA IRQ 8 (the slave PIC's IR0, I/O APIC pin 8)
RTC_PIE = 0x40                   # register B: periodic interrupt enable
RTC_IRQF, RTC_PF = 0x80, 0x40    # register C: interrupt request flag, periodic flag
RTC_DIVIDER_ON = 0x20            # register A DV2-0 = 010: the 32.768 kHz time base runs
RTC_BASE_HZ = 32768


def rtc_period_ticks(reg_a: int) -> int | None:
    """The periodic interrupt's period in 32.768 kHz cycles for register A's RS3-RS0
    (MC146818A data sheet, Table 3: 0 = none, 1 and 2 = 256 and 128 Hz, 3-15 = 8192 Hz
    down to 2 Hz), or None when the divider does not run at 32.768 kHz (DV != 010)."""
    rate = reg_a & 0x0F
    if rate == 0 or reg_a & 0x70 != RTC_DIVIDER_ON:
        return None
    return 1 << (rate + 6 if rate <= 2 else rate - 1)


class Cmos:
    """CMOS RAM and RTC at 0x70/0x71 with a fixed, deterministic date (BCD, 24 h).

    Register A's update-in-progress flag rises for the last 244 us of every second of
    ``clock`` (MC146818A data sheet), so a kernel that reads the RTC "on the falling edge of
    UIP" (Xen's get_cmos_time) sees one instead of polling for a second.

    The periodic interrupt: PF in register C is set at every period of the rate register A
    selects, counted on ``clock`` from time 0 (deterministic); with PIE in register B it
    sets IRQF and raises IRQ 8 (``on_irq(level, at)``), which stays up until the guest
    reads register C (that clears the flags). The update-ended and alarm interrupts are
    not modelled (the date does not advance)."""

    name = "cmos"
    FIXED_TIME = {0x00: 0x00, 0x02: 0x00, 0x04: 0x12, 0x06: 0x04, 0x07: 0x01, 0x08: 0x01, 0x09: 0x26,
                  0x0A: 0x26, 0x0B: 0x02, 0x0C: 0x00, 0x0D: 0x80, 0x32: 0x20}

    def __init__(self, ram_size: int = 0, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self.index = 0
        self.nmi_disabled = False
        self.ram = bytearray(128)
        for reg, val in self.FIXED_TIME.items():
            self.ram[reg] = val
        ext = max(0, min(ram_size - (1 << 20), 63 << 20)) >> 10  # KiB above 1 MiB, capped
        self.ram[0x17] = self.ram[0x30] = ext & 0xFF
        self.ram[0x18] = self.ram[0x31] = ext >> 8 & 0xFF
        above16 = max(0, ram_size - (16 << 20)) >> 16
        self.ram[0x34] = above16 & 0xFF
        self.ram[0x35] = above16 >> 8 & 0xFF
        self.on_irq: Callable[[bool, int | None], None] = lambda level, at: None
        self._flags_since = 0    # register C's flags cover periodic edges after this time
        self.periodic_irqs = 0

    # -- the periodic interrupt ----------------------------------------------------------
    def _edge_after(self, t: int) -> int | None:
        """The first periodic edge strictly after ``t`` (ns), or None."""
        period = rtc_period_ticks(self.ram[RTC_REG_A])
        if period is None:
            return None
        n = t * RTC_BASE_HZ // (period * NS_PER_S) + 1
        return -(-n * period * NS_PER_S // RTC_BASE_HZ)

    def _periodic_flag(self) -> bool:
        """Has a periodic edge come since register C was last read?"""
        edge = self._edge_after(self._flags_since)
        return edge is not None and edge <= self.clock()

    def next_irq(self) -> int | None:
        """When IRQ 8 next rises (ns of ``clock``): the next periodic edge with PIE set,
        unless the request of an earlier one still waits for its register C read."""
        if not self.ram[RTC_REG_B] & RTC_PIE or self.ram[RTC_REG_C] & RTC_IRQF:
            return None
        return self._edge_after(self._flags_since)

    def poll(self) -> None:
        """Raise IRQ 8 if its time has come."""
        due = self.next_irq()
        if due is not None and due <= self.clock():
            self.ram[RTC_REG_C] |= RTC_IRQF | RTC_PF
            self.periodic_irqs += 1
            self.on_irq(True, due)

    # -- ports ---------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == 0x70:
            return self.index
        if self.index == RTC_REG_A:
            updating = self.clock() % NS_PER_S >= NS_PER_S - RTC_UPDATE_NS
            return (self.ram[RTC_REG_A] & ~RTC_UIP) | (RTC_UIP if updating else 0)
        if self.index == RTC_REG_C:
            return self._read_flags()
        return self.ram[self.index & 0x7F]

    def _read_flags(self) -> int:
        """Register C: the flags, cleared by the read (and IRQ 8 with them)."""
        self.poll()
        flags = self.ram[RTC_REG_C] | (RTC_PF if self._periodic_flag() else 0)
        self.ram[RTC_REG_C] = 0
        self._flags_since = self.clock()
        if flags & RTC_IRQF:
            self.on_irq(False, None)
        return flags

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0x70:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
        elif self.index not in (RTC_REG_C, RTC_REG_D):
            self.ram[self.index & 0x7F] = value & 0xFF


class PostPort:
    """Port 0x80 (POST codes / I/O delay): remembers the last code written."""

    name = "post"

    def __init__(self) -> None:
        self.last = 0

    def io_read(self, port: int, size: int) -> int:
        return self.last

    def io_write(self, port: int, size: int, value: int) -> None:
        self.last = value
