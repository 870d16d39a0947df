"""The 8259A pair (hvdbg.platform.devices.pic8259) on synthetic inputs, and how a local
APIC's LINT0 takes its interrupts (SDM Vol. 3A 11.5.1 ExtINT, 11.4.3 a globally disabled
APIC): the data sheet's initialization, priorities, EOIs, cascade, AEOI, poll, ELCR level
triggering and spurious IR7. The guest-level test is test_platform_pit_ioapic.py's
``pit_via=pic``."""

from __future__ import annotations

from hvdbg.arch.apic import APIC_BASE_EN, LVT_MASKED, Reg
from hvdbg.platform.apic import LocalApic
from hvdbg.platform.devices.pic8259 import ELCR_PORT, Pic8259


def pc_pic(master_mask: int = 0x00, slave_mask: int = 0x00, icw4: int = 0x01) -> Pic8259:
    """Initialized as Linux does: master at 0x30, slave at 0x38, cascade on IR2."""
    p = Pic8259()
    for port, value in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, icw4),
                        (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, icw4),
                        (0x21, master_mask), (0xA1, slave_mask)):
        p.io_write(port, 1, value)
    return p


def test_a_masked_pic_requests_nothing_and_icw1_clears_the_mask():
    p = Pic8259()
    p.pulse(0)
    assert not p.output()                 # masked until programmed (as firmware leaves it)
    p = pc_pic()
    assert p.io_read(0x21, 1) == 0 and p.io_read(0xA1, 1) == 0
    p.pulse(1)
    assert p.output() and p.peek_vector() == 0x31 and p.acknowledge() == 0x31


def test_fully_nested_priority_and_non_specific_eoi():
    p = pc_pic()
    p.pulse(3)
    p.pulse(1)
    assert p.acknowledge() == 0x31        # IR1 beats IR3
    assert not p.output()                 # IR3 waits: IR1 in service
    p.pulse(0)
    assert p.output() and p.acknowledge() == 0x30   # IR0 beats the one in service
    p.io_write(0x20, 1, 0x20)             # EOI: the highest in service (IR0) ends
    assert not p.output()
    p.io_write(0x20, 1, 0x20)             # IR1 ends
    assert p.acknowledge() == 0x33
    p.io_write(0x20, 1, 0x0B)             # OCW3: read ISR
    assert p.io_read(0x20, 1) == 1 << 3
    p.io_write(0x20, 1, 0x63)             # specific EOI for IR3
    assert p.io_read(0x20, 1) == 0


def test_the_slave_cascades_through_ir2_and_needs_both_eois():
    p = pc_pic()
    p.pulse(12)
    assert p.output() and p.acknowledge() == 0x38 + 4
    p.io_write(0x20, 1, 0x0B)
    p.io_write(0xA0, 1, 0x0B)
    assert p.io_read(0x20, 1) == 1 << 2 and p.io_read(0xA0, 1) == 1 << 4
    p.pulse(9)
    assert not p.output()                 # the master's IR2 is still in service
    p.io_write(0xA0, 1, 0x20)
    p.io_write(0x20, 1, 0x20)
    assert p.acknowledge() == 0x38 + 1


def test_spurious_ir7_when_the_request_went_away():
    p = pc_pic()
    p.io_write(ELCR_PORT, 1, 1 << 5)      # IR5 level-triggered
    p.set_irq(5, True)
    assert p.output()
    p.set_irq(5, False)                   # the device dropped its line before INTA
    assert not p.output() and p.acknowledge() == 0x37
    p.io_write(0x20, 1, 0x0B)
    assert p.io_read(0x20, 1) == 0        # a spurious IR7 sets no in-service bit


def test_level_inputs_request_again_after_eoi_while_high():
    p = pc_pic()
    p.io_write(ELCR_PORT + 1, 1, 1 << 3)  # IRQ 11 level-triggered
    assert p.io_read(ELCR_PORT + 1, 1) == 1 << 3
    p.set_irq(11, True)
    assert p.acknowledge() == 0x38 + 3
    p.io_write(0xA0, 1, 0x20)
    p.io_write(0x20, 1, 0x20)
    assert p.output()                     # still high: requested again
    p.set_irq(11, False)
    assert not p.output()


def test_auto_eoi_poll_and_rotation():
    p = pc_pic(icw4=0x03)                 # AEOI
    p.pulse(4)
    assert p.acknowledge() == 0x34
    p.io_write(0x20, 1, 0x0B)
    assert p.io_read(0x20, 1) == 0        # nothing left in service
    p = pc_pic()
    p.pulse(6)
    p.io_write(0x20, 1, 0x0C)             # OCW3 poll
    assert p.io_read(0x20, 1) == 0x80 | 6 and not p.output()
    p.io_write(0x20, 1, 0xC5)             # set priority: IR5 lowest, IR6 highest
    p.io_write(0x20, 1, 0x20)
    p.pulse(0)
    p.pulse(7)
    assert p.acknowledge() == 0x37        # IR7 now beats IR0


def apic(bsp: bool = True) -> LocalApic:
    a = LocalApic(0, bsp=bsp, x2apic_supported=True, send_ipi=lambda *_: None, clock=lambda: 0)
    a.write(Reg.SVR, 0x1FF)
    return a


def test_lint0_takes_the_pic_only_in_extint_mode_or_with_the_apic_disabled():
    p = pc_pic()
    a = apic()
    a.pic = p
    woken = []
    a._on_pending = lambda: woken.append(True)
    p.pulse(0)
    assert a.pending_vector() is None                     # LINT0 masked (reset value)
    a.write(Reg.LVT_LINT0, 0x700)                         # ExtINT
    assert a.pending_vector() == 0x30
    a.write(Reg.TPR, 0xF0)
    assert a.pending_vector() == 0x30                     # TPR does not hold ExtINT back
    assert a.ack(0x30) == 0x30 and a.isr == 0             # the INTA: nothing in service here
    a.write(Reg.LVT_LINT0, 0x700 | LVT_MASKED)
    p.io_write(0x20, 1, 0x20)
    p.pulse(1)
    woken.clear()
    a.extint_raised(5)
    assert a.pending_vector() is None and not woken
    a.base_msr &= ~APIC_BASE_EN                           # globally disabled: LINT0 is INTR
    a.extint_raised(5)
    assert a.pending_vector() == 0x31 and woken


def test_the_apic_s_own_interrupts_come_before_the_pic_s():
    p = pc_pic()
    a = apic()
    a.pic = p
    a.write(Reg.LVT_LINT0, 0x700)
    p.pulse(0)
    a.irr |= 1 << 0x50
    assert a.pending_vector() == 0x50 and a.ack(0x50) == 0x50 and a.isr == 1 << 0x50
    assert a.pending_vector() == 0x30 and a.ack(0x30) == 0x30    # then the PIC's (no PPR)
