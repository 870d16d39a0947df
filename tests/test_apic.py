"""Local APIC: ICR decoding against SDM 11.6.1, registers, priorities, timer."""

from __future__ import annotations

from hvdbg.arch.apic import DeliveryMode, Reg, Shorthand, X2APIC_MSR_BASE, decode_icr, encode_icr
from hvdbg.platform.apic import LocalApic


def make_apic(apic_id=1, clock=None, sent=None):
    t = {"now": 0}
    return LocalApic(apic_id, bsp=False, x2apic_supported=True,
                     send_ipi=lambda src, cmd: sent.append(cmd) if sent is not None else None,
                     clock=clock or (lambda: t["now"])), t


def test_decode_init_and_sipi_as_linux_and_arceos_send_them():
    # INIT, level assert, all excluding self: ICR low 0x000C4500 (SDM 11.6.1 / Linux)
    init = decode_icr(0x000C4500)
    assert init.delivery_mode == DeliveryMode.INIT
    assert init.shorthand == Shorthand.ALL_EXCLUDING_SELF
    assert init.level_assert and not init.trigger_level
    # STARTUP vector 0x08 to APIC id 3 (physical): high 0x03000000, low 0x00004608
    sipi = decode_icr(0x03000000 << 32 | 0x00004608)
    assert sipi.delivery_mode == DeliveryMode.STARTUP
    assert sipi.vector == 0x08 and sipi.destination == 3 and not sipi.logical
    assert sipi.shorthand == Shorthand.NONE
    assert "start at 0x8000" in sipi.describe()


def test_decode_fixed_logical_and_x2apic_destination():
    cmd = decode_icr(0x0F000000 << 32 | 0x00000841)  # fixed, vector 0x41, logical dest 0x0f
    assert cmd.delivery_mode == DeliveryMode.FIXED and cmd.vector == 0x41 and cmd.logical
    assert cmd.destination == 0x0F
    x2 = decode_icr(0x00000105 << 32 | 0x00004608, x2apic=True)  # x2APIC: 32-bit destination
    assert x2.destination == 0x105
    # level-triggered INIT de-assert
    deassert = decode_icr(0x00008500)
    assert deassert.trigger_level and not deassert.level_assert
    assert "de-assert" in deassert.describe()


def test_encode_decode_round_trip():
    for mode in (DeliveryMode.FIXED, DeliveryMode.NMI, DeliveryMode.INIT, DeliveryMode.STARTUP):
        for sh in Shorthand:
            v = encode_icr(0x42, mode, 7, shorthand=sh)
            cmd = decode_icr(v)
            assert (cmd.vector, cmd.delivery_mode, cmd.destination, cmd.shorthand) == (0x42, mode, 7, sh)


def test_icr_write_sends_ipi_xapic_and_x2apic():
    sent = []
    apic, _ = make_apic(sent=sent)
    apic.write(Reg.ICR_HIGH, 2 << 24)
    apic.write(Reg.ICR_LOW, 0x4608)
    assert sent[-1].delivery_mode == DeliveryMode.STARTUP and sent[-1].destination == 2
    apic.base_msr |= 1 << 10  # x2APIC mode
    apic.write_msr(0x830, (5 << 32) | 0x4500)
    assert sent[-1].delivery_mode == DeliveryMode.INIT and sent[-1].destination == 5
    assert apic.read_msr(X2APIC_MSR_BASE + 2) == 1  # x2APIC ID register = full id


def test_id_register_and_priority():
    apic, _ = make_apic(apic_id=3)
    assert apic.read(Reg.ID) == 3 << 24
    apic.write(Reg.SVR, 0x1FF)
    apic.accept(0x41)
    apic.accept(0x31)
    assert apic.pending_vector() == 0x41
    apic.ack(0x41)
    assert apic.read(Reg.ISR0 + 0x20) & (1 << 1)  # ISR bit 0x41 = word 2 bit 1
    assert apic.pending_vector() is None  # 0x31 has lower priority class than in-service 0x41
    apic.eoi()
    assert apic.pending_vector() == 0x31
    apic.write(Reg.TPR, 0x40)
    assert apic.pending_vector() is None  # class 3 <= TPR class 4


def test_timer_periodic_and_one_shot_in_virtual_time():
    apic, t = make_apic()
    apic.write(Reg.SVR, 0x1FF)
    apic.write(Reg.TIMER_DIVIDE, 0b1011)  # divide by 1
    apic.write(Reg.LVT_TIMER, 0x40 | 1 << 17)  # periodic, vector 0x40
    apic.write(Reg.TIMER_INITIAL, 1000)
    assert apic.read(Reg.TIMER_CURRENT) == 1000
    t["now"] = 400
    assert apic.read(Reg.TIMER_CURRENT) == 600
    assert apic.pending_vector() is None
    t["now"] = 1000
    assert apic.pending_vector() == 0x40
    assert apic.next_event() == 2000  # re-armed
    apic.ack(0x40)
    apic.eoi()
    apic.write(Reg.LVT_TIMER, 0x40)  # one-shot
    apic.write(Reg.TIMER_INITIAL, 10)
    t["now"] = 1010
    assert apic.pending_vector() == 0x40
    assert apic.next_event() is None


def test_an_expired_timer_is_taken_even_when_nobody_asks_for_interrupts():
    """With IF=0 the vCPU never asks for a pending vector; the slice sizing still must see
    the next expiry, not the passed one (it cut every slice to one instruction)."""
    apic, t = make_apic()
    apic.write(Reg.SVR, 0x1FF)
    apic.write(Reg.TIMER_DIVIDE, 0b1011)              # divide by 1
    apic.write(Reg.LVT_TIMER, 0x40 | 1 << 17)         # periodic, vector 0x40
    apic.write(Reg.TIMER_INITIAL, 1000)
    t["now"] = 1500                                   # expired while the guest ran with IF=0
    assert apic.next_event() == 2000                  # the next expiry, in the future
    assert apic.irr >> 0x40 & 1                       # and the expiry that passed is pending
    apic.write(Reg.LVT_TIMER, 0x41)                   # one-shot
    apic.write(Reg.TIMER_INITIAL, 10)
    t["now"] = 1600
    assert apic.next_event() is None and apic.irr >> 0x41 & 1


def test_a_timer_armed_during_a_run_tells_the_vcpu_its_deadline():
    """Arming the timer (initial count, TSC deadline) reports the deadline so that the run
    in progress ends there, not at the end of its slice (the interrupt would be late)."""
    t = {"now": 100}
    armed: list[int] = []
    apic = LocalApic(1, bsp=False, x2apic_supported=True, send_ipi=lambda src, cmd: None,
                     clock=lambda: t["now"], on_timer_armed=armed.append)
    apic.write(Reg.TIMER_DIVIDE, 0b1011)             # divide by 1
    apic.write(Reg.LVT_TIMER, 0x40)                  # one-shot
    apic.write(Reg.TIMER_INITIAL, 500)
    apic.write(Reg.LVT_TIMER, 0x40 | 2 << 17)        # TSC-deadline mode: disarms
    assert apic.next_event() is None
    apic.arm_tsc_deadline(7000)
    assert armed == [600, 7000] and apic.tsc_deadline() == 7000
