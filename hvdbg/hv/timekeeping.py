"""Time as the guest sees it in VMX non-root operation.

One clock serves every timer the guest can read: the vCPU's virtual time (guest
instructions at 1 ns each, plus :data:`PORT_ACCESS_NS` per I/O instruction, plus
:data:`VM_EXIT_NS` per other VM exit, plus the time it slept halted).  The time-stamp counter (SDM Vol. 3B 18.17) counts it at 1 GHz; the local
APIC timer, the PIT, the RTC and the ACPI PM timer count it too, so a kernel calibrating one
against another measures what the other really does.  RDTSC exiting is never set
(SDM 25.3), so RDTSC/RDTSCP are performed here, not exits: Unicorn's own RDTSC would
return the host's TSC, which runs on another clock altogether.
"""

from __future__ import annotations

from hvdbg.arch.regs import IA32_TSC_AUX
from hvdbg.hv import nested_guest
from hvdbg.hv.exit import ExitInfo
from hvdbg.vmx.controls import PIN_BASED
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.vmcs import Vmcs

#: Virtual time one IN or OUT takes (ns of the VM clock).  On hardware a port access to the
#: chipset (PM timer, PIT, UART) costs about 1 us, and a VM exit for it about as much again:
#: a guest polling a timer port must see time pass per read, not one instruction's worth.
PORT_ACCESS_NS = 1000

#: Virtual time a VM exit and the VM entry back take (ns), for exits other than I/O ones
#: (their time is in PORT_ACCESS_NS).  A round trip costs ~1000 cycles on current hardware;
#: a guest that measures an exit with RDTSC (kvm-unit-tests vmexit.flat loops until 2^27
#: cycles) must see it take time, or it loops for hours of wall time.
VM_EXIT_NS = 1000


def exit_time(reason: int) -> int:
    """The virtual time (ns) a VM exit for ``reason`` adds to the vCPU's clock."""
    return PORT_ACCESS_NS if reason == ExitReason.IO_INSTRUCTION else VM_EXIT_NS

_U64 = (1 << 64) - 1


_RDTSC_OUT, _RDTSCP_OUT = ("rax", "rdx"), ("rax", "rdx", "rcx")


def rdtsc(vcpu, rdtscp: bool) -> None:
    """Perform RDTSC (EDX:EAX = TSC) or RDTSCP (and ECX = IA32_TSC_AUX[31:0]) for ``vcpu``
    (a hvdbg.hv.vcpu.Vcpu inside its engine callback; Unicorn has already checked CR4.TSD)."""
    if vcpu.vmx is not None and vcpu.vmx.non_root:   # a guest hypervisor's guest (hvdbg.hv.nested_guest)
        if nested_guest.rdtsc_exits(vcpu, rdtscp):
            return
        value = (tsc(vcpu) + nested_guest.tsc_offset(vcpu)) & _U64
    else:
        value = tsc(vcpu)
    e = vcpu.engine
    if rdtscp:
        e.batch_of(_RDTSCP_OUT).write((value & 0xFFFFFFFF, value >> 32, e.msr_read(IA32_TSC_AUX) & 0xFFFFFFFF))
    else:
        e.batch_of(_RDTSC_OUT).write((value & 0xFFFFFFFF, value >> 32))   # one C call (RDTSC is hot)


def tsc(vcpu) -> int:
    """``vcpu``'s time-stamp counter: its clock at 1 GHz plus ``vcpu.tsc_adjust``."""
    return (vcpu.clock() + vcpu.tsc_adjust) & _U64


def set_tsc(vcpu, value: int) -> None:
    """WRMSR to IA32_TSC: ``vcpu``'s counter goes on from ``value``."""
    vcpu.tsc_adjust = (value & _U64) - vcpu.clock()


def tsc_at(vcpu, clock: int) -> int:
    """The value ``vcpu``'s TSC has at VM-clock time ``clock`` (ns): IA32_TSC_DEADLINE reads."""
    return (clock + vcpu.tsc() - vcpu.clock()) & _U64


def clock_at(vcpu, tsc_value: int) -> int:
    """The VM-clock time (ns) at which ``vcpu``'s TSC reads ``tsc_value``: where a
    TSC-deadline timer armed with it fires (SDM 11.5.4.1)."""
    return tsc_value - vcpu.tsc() + vcpu.clock()


# -- timed events ----------------------------------------------------------------------------
def next_event(vcpu) -> int | None:
    """``vcpu``'s next timed event (ns of the VM clock): its local APIC timer, or a board
    timer interrupt (the PIT's IRQ 0 through the I/O APIC), whichever comes first.  A run
    ends there, and a halted vCPU's clock jumps there."""
    own = vcpu.apic.next_event()
    board = vcpu.board.timer_deadline() if vcpu.board is not None else None
    if board is None:
        return own
    return board if own is None else min(own, board)


def poll_board(vcpu) -> None:
    """Raise the board's timer interrupts that are due by now (the PIT counts on the VM
    clock, the latest clock of any vCPU).  Called between runs; the interrupt is raised
    holding the machine's execution turn, as every device access is, so that no engine
    runs while device and APIC state change (and none is stopped from another thread)."""
    board = vcpu.board
    if board is not None and board.timer_due():
        with vcpu.turns:
            board.poll_timers()


# -- the VMX-preemption timer (SDM 26.5.1, 27.5.1) -----------------------------------------
_PREEMPTION_TIMER = PIN_BASED.mask("PREEMPTION_TIMER")


def preemption_timer_value(vmcs: Vmcs) -> int | None:
    """The VMX-preemption timer value if the pin-based control is set (SDM 26.5.1); it
    counts down once every 2^5 guest instructions (TSC ticks), as IA32_VMX_MISC[4:0] = 5 says."""
    if not vmcs.read("PIN_BASED_VM_EXEC_CONTROL") & _PREEMPTION_TIMER:
        return None
    return vmcs.read("VMX_PREEMPTION_TIMER_VALUE")


def tick_preemption_timer(vcpu, vmcs: Vmcs, value: int, executed: int) -> None:
    """After a run of ``executed`` instructions: count the timer in ``vcpu``'s ``vmcs`` down,
    and take the VMX-preemption timer exit (reason 52) when it reaches zero."""
    left = value - (executed >> 5)
    vmcs.write("VMX_PREEMPTION_TIMER_VALUE", max(left, 0))
    if left <= 0:
        vcpu.vm_exit(ExitInfo(ExitReason.PREEMPTION_TIMER, rip=vcpu.engine.rip()))
