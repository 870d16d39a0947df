"""The RTC's periodic interrupt (MC146818A data sheet; hvdbg.platform.devices.legacy.Cmos):
the rate register A selects, PF and IRQF in register C (cleared by reading it), ISA IRQ 8
held up until then, all on the VM clock. In the guest, the smp kernel's ``rtc_ticks=20``
takes it through I/O APIC pin 8 and, with ``rtc_via=pic``, through the slave 8259A's IR0
and the master's IR2 to LINT0 in ExtINT mode (the cascade path)."""

from __future__ import annotations

import re

import pytest

from helpers import boot
from hvdbg.platform.devices.legacy import NS_PER_S, RTC_BASE_HZ, Cmos, rtc_period_ticks

RTC_LINE = re.compile(r"rtc: (\d+) periodic interrupts through (.+?), (\d+) without PF; (\d+) TSC cycles "
                      r"from the first to the last = (\d+) periods of 976562 ns")


def rtc_at(t: list[int]) -> tuple[Cmos, list]:
    c = Cmos(clock=lambda: t[0])
    irqs: list = []
    c.on_irq = lambda level, at: irqs.append((level, at))
    return c, irqs


def write(c: Cmos, reg: int, value: int) -> None:
    c.io_write(0x70, 1, reg)
    c.io_write(0x71, 1, value)


def read(c: Cmos, reg: int) -> int:
    c.io_write(0x70, 1, reg)
    return c.io_read(0x71, 1)


def test_rate_select_follows_the_data_sheet():
    hz = {rs: RTC_BASE_HZ / rtc_period_ticks(0x20 | rs) for rs in range(1, 16)}
    assert hz[1] == 256 and hz[2] == 128 and hz[3] == 8192 and hz[6] == 1024 and hz[15] == 2
    assert rtc_period_ticks(0x20) is None            # RS = 0: no periodic interrupt
    assert rtc_period_ticks(0x06) is None            # the divider held in reset (DV = 000)


def test_periodic_flag_irq_and_register_c():
    t = [0]
    c, irqs = rtc_at(t)
    write(c, 0x0A, 0x26)                              # 1024 Hz
    assert c.next_irq() is None                       # PIE clear: no interrupt
    write(c, 0x0B, 0x42)
    period = NS_PER_S / 1024
    assert c.next_irq() == round(period + 0.5)        # the first edge, rounded up to a ns
    t[0] = 3 * NS_PER_S // 1024 + 10                  # three periods later
    c.poll()
    assert irqs == [(True, 976563)] and c.next_irq() is None   # IRQ 8 held up until C is read
    assert read(c, 0x0C) == 0xC0 and irqs[-1] == (False, None)  # IRQF | PF, and IRQ 8 drops
    assert read(c, 0x0C) == 0x00                      # read-clear
    assert c.next_irq() == -(-4 * NS_PER_S // 1024)   # the next edge after the read
    write(c, 0x0B, 0x02)                              # PIE off: PF still counts, no IRQ
    t[0] += NS_PER_S // 100
    c.poll()
    assert irqs[-1] == (False, None) and read(c, 0x0C) == 0x40


CASES = [("ioapic", {"deterministic": True}), ("pic", {"deterministic": True}),
         ("ioapic", {"deterministic": False}), ("pic", {"deterministic": False, "pcpus": 2, "sched": "cfs"})]


@pytest.mark.parametrize("route,setup", CASES, ids=[f"{r}-{'det' if s['deterministic'] else 'threads'}"
                                                     for r, s in CASES])
def test_the_guest_takes_rtc_interrupts_on_time(guest_kernels, route, setup):
    extra = " rtc_via=pic" if route == "pic" else ""
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"),
                    cmdline=f"rtc_ticks=20{extra}", **setup)
    serial = res["serial"]
    m = RTC_LINE.search(serial)
    assert m, (res["outcome"], res["diagnosis"], serial[-600:])
    ticks, path, without_pf, span, periods = m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), int(m.group(5))
    assert ticks == "20" and path == ("the 8259A (IRQ 8)" if route == "pic" else "I/O APIC pin 8")
    assert without_pf <= 1 and periods == 19
    assert abs(span - 19 * NS_PER_S / 1024) <= 2, span      # 19 periods of 976562.5 ns, to the ns
    assert "rtc ok" in serial and res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
