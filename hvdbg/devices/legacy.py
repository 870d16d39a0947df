"""The legacy PC devices a simple kernel pokes at boot: 8259 PIC, 8254 PIT, CMOS/RTC,
port 0x61, POST port 0x80, and an empty PCI configuration space.

They hold state so that read-back works; they raise no interrupts (hvdbg guests take
their timer from the local APIC)."""

from __future__ import annotations


class Pic8259:
    """A master/slave 8259A pair at 0x20/0x21 and 0xA0/0xA1: ICW1-4, OCW1 (mask), OCW2/3."""

    name = "pic8259"

    def __init__(self) -> None:
        self.imr = [0xFF, 0xFF]
        self.icw_step = [0, 0]
        self.vector_base = [0x08, 0x70]
        self.read_isr = [False, False]

    def _chip(self, port: int) -> int:
        return 0 if port < 0xA0 else 1

    def io_read(self, port: int, size: int) -> int:
        chip = self._chip(port)
        if port & 1:
            return self.imr[chip]
        return 0  # IRR/ISR: nothing pending

    def io_write(self, port: int, size: int, value: int) -> None:
        chip = self._chip(port)
        value &= 0xFF
        if not port & 1:
            if value & 0x10:  # ICW1
                self.icw_step[chip] = 2
            elif value & 0x08:  # OCW3
                self.read_isr[chip] = (value & 3) == 3
            return  # OCW2 (EOI): nothing in service
        step = self.icw_step[chip]
        if step == 2:
            self.vector_base[chip] = value & 0xF8
            self.icw_step[chip] = 3
        elif step == 3:
            self.icw_step[chip] = 4
        elif step == 4:
            self.icw_step[chip] = 0
        else:
            self.imr[chip] = value


class Pit8254:
    """8254 PIT at 0x40-0x43: mode/reload registers with lo/hi byte access; counters read
    back their reload value (time does not advance: hvdbg time is guest instructions)."""

    name = "pit8254"

    def __init__(self) -> None:
        self.reload = [0x10000, 0x10000, 0x10000]
        self.mode = [0, 0, 0]
        self.access = [3, 3, 3]
        self.flip = [False, False, False]
        self.latched: list[int | None] = [None, None, None]

    def io_read(self, port: int, size: int) -> int:
        ch = port - 0x40
        if ch == 3:
            return 0xFF
        value = self.latched[ch] if self.latched[ch] is not None else self.reload[ch] & 0xFFFF
        if self.access[ch] == 1:
            return value & 0xFF
        if self.access[ch] == 2:
            return value >> 8 & 0xFF
        self.flip[ch] = not self.flip[ch]
        if not self.flip[ch]:
            self.latched[ch] = None
            return value >> 8 & 0xFF
        return value & 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        ch = port - 0x40
        value &= 0xFF
        if ch == 3:
            sel = value >> 6
            if sel == 3:
                return  # read-back command: ignored
            access = (value >> 4) & 3
            if access == 0:
                self.latched[sel] = self.reload[sel] & 0xFFFF
                return
            self.access[sel] = access
            self.mode[sel] = (value >> 1) & 7
            self.flip[sel] = False
            return
        if self.access[ch] == 1:
            self.reload[ch] = (self.reload[ch] & 0xFF00) | value
        elif self.access[ch] == 2:
            self.reload[ch] = (self.reload[ch] & 0xFF) | value << 8
        else:
            if not self.flip[ch]:
                self.reload[ch] = (self.reload[ch] & 0xFF00) | value
            else:
                self.reload[ch] = (self.reload[ch] & 0xFF) | value << 8
            self.flip[ch] = not self.flip[ch]


class SystemControlPortB:
    """Port 0x61: PIT channel 2 gate/speaker; bit 5 (OUT2) toggles on every read so that
    delay loops polling it terminate."""

    name = "port61"

    def __init__(self) -> None:
        self.value = 0
        self._toggle = False

    def io_read(self, port: int, size: int) -> int:
        self._toggle = not self._toggle
        return (self.value & 0x0F) | (0x20 if self._toggle else 0) | 0x10

    def io_write(self, port: int, size: int, value: int) -> None:
        self.value = value & 0x0F


class Cmos:
    """CMOS RAM and RTC at 0x70/0x71 with a fixed, deterministic date (BCD, 24 h)."""

    name = "cmos"
    FIXED_TIME = {0x00: 0x00, 0x02: 0x00, 0x04: 0x12, 0x06: 0x04, 0x07: 0x01, 0x08: 0x01, 0x09: 0x26,
                  0x0A: 0x26, 0x0B: 0x02, 0x0C: 0x00, 0x0D: 0x80, 0x32: 0x20}

    def __init__(self, ram_size: int = 0) -> None:
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

    def io_read(self, port: int, size: int) -> int:
        if port == 0x70:
            return self.index
        return self.ram[self.index & 0x7F]

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0x70:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
        elif self.index not in (0x0C, 0x0D):
            self.ram[self.index & 0x7F] = value & 0xFF


class PciConfigAbsent:
    """PCI configuration mechanism #1 (0xCF8-0xCFF) with no device behind it."""

    name = "pci-config"

    def __init__(self) -> None:
        self.address = 0

    def io_read(self, port: int, size: int) -> int:
        if port == 0xCF8:
            return self.address
        return 0xFFFFFFFF

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0xCF8:
            self.address = value


class PostPort:
    """Port 0x80 (POST codes / I/O delay): remembers the last code written."""

    name = "post"

    def __init__(self) -> None:
        self.last = 0

    def io_read(self, port: int, size: int) -> int:
        return self.last

    def io_write(self, port: int, size: int, value: int) -> None:
        self.last = value
