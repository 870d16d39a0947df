"""VM-entry event injection (SDM 27.6) as hvdbg's VMM does it for its vCPUs: a pending
exception first, then an NMI unless NMIs are blocked (until the IRET of the last one,
SDM 6.7.1), then the highest pending APIC interrupt if the guest is interruptible
(RFLAGS.IF = 1 and no STI / MOV SS shadow).  An event that has to wait sets interrupt- or
NMI-window exiting (SDM 25.2), as KVM's enable_irq_window / enable_nmi_window do: the
engine stops at the first instruction boundary where it can be taken (hvdbg.engine.
intercepts), the VMM clears the control, and the next entry injects it.
"""

from __future__ import annotations

from hvdbg.arch.events import Event, EventType, Shutdown
from hvdbg.arch.events import deliver as deliver_through_idt
from hvdbg.hv import activity as act
from hvdbg.hv import nested_guest
from hvdbg.hv.exit import ExitInfo, TripleFault
from hvdbg.vmx.controls import PRIMARY_PROCESSOR_BASED
from hvdbg.vmx.exits import ExitReason

_INTERRUPT_WINDOW = PRIMARY_PROCESSOR_BASED.mask("INTERRUPT_WINDOW_EXITING")
_NMI_WINDOW = PRIMARY_PROCESSOR_BASED.mask("NMI_WINDOW_EXITING")


def inject_pending(vcpu) -> bool:
    """Inject what ``vcpu`` (a hvdbg.hv.vcpu.Vcpu at VM entry) has pending, or ask for
    the window in which it can be injected; True if the entry must run one instruction
    only (an NMI waits for the end of an interrupt shadow)."""
    if vcpu.pending_event is not None:
        ev, rip = vcpu.pending_event, vcpu.pending_event_rip
        vcpu.pending_event = None
        vcpu.deliver(ev, rip, vcpu.pending_event_length)
        return False
    intercepts = vcpu.engine.intercepts
    if vcpu.apic.nmi_pending:
        if nested_guest.in_l2(vcpu) and nested_guest.nmi_exits(vcpu):
            return False     # the guest hypervisor takes it (NMI exiting)
        if intercepts.interrupt_shadow() and not intercepts.nmi_blocked():
            # blocking by MOV SS holds an NMI for one instruction (SDM Vol. 3A 6.8.3), and so
            # may blocking by STI (Vol. 2B STI), as KVM holds it; QEMU keeps one flag for
            # both: run that one instruction, inject at the next entry
            return True
        if not intercepts.nmi_blocked():
            vcpu.apic.nmi_pending = False
            vcpu.deliver(Event(2, EventType.NMI), vcpu.engine.rip())
            intercepts.set_nmi_blocked(True)
            return False
        vcpu.request_window(_NMI_WINDOW)   # after the IRET of the NMI being handled
    vec = vcpu.apic.pending_vector()
    if vec is None:
        return False
    if nested_guest.in_l2(vcpu) and nested_guest.external_interrupt_exits(vcpu, vec):
        return False     # the guest hypervisor takes it (external-interrupt exiting)
    if vcpu.interrupts_enabled() and not intercepts.interrupt_shadow():
        vec = vcpu.apic.ack(vec)     # (an ExtINT: the 8259A names the vector at INTA)
        vcpu.deliver(Event(vec, EventType.EXTERNAL), vcpu.engine.rip())
    else:   # the VMM asks for an interrupt-window exit (KVM's enable_irq_window)
        vcpu.blocked_injections += 1
        vcpu.request_window(_INTERRUPT_WINDOW)
    return False


def deliver(vcpu, ev: Event, rip: int, length: int = 0) -> None:
    """Deliver ``ev`` through the guest IDT now, with the vCPU's exception statistics; a
    delivery that cannot complete (SDM 6.15 double fault, then shutdown) is a triple-fault
    exit and the vCPU shuts down."""
    try:
        vcpu.last_delivery = deliver_through_idt(vcpu, ev, rip, length)
        if ev.type != EventType.EXTERNAL:
            if len(vcpu.delivered) < 64:
                vcpu.delivered.append((vcpu.last_delivery.event, rip))
            vcpu.exception_counts[ev.vector] = vcpu.exception_counts.get(ev.vector, 0) + 1
            same = (ev.vector, rip) == (vcpu.last_exception_vector, vcpu.last_exception_rip)
            vcpu.exception_streak = vcpu.exception_streak + 1 if same else 1
            vcpu.longest_exception_streak = max(vcpu.longest_exception_streak, vcpu.exception_streak)
            vcpu.last_exception_vector, vcpu.last_exception_rip = ev.vector, rip
        else:
            vcpu.interrupt_counts[ev.vector] = vcpu.interrupt_counts.get(ev.vector, 0) + 1
    except Shutdown as sd:
        chain = "; ".join(f"{e.describe()}: {why}" for e, why in sd.chain)
        info = ExitInfo(ExitReason.TRIPLE_FAULT, rip=rip, detail=chain, payload=TripleFault(sd.chain, ev))
        if not nested_guest.in_l2(vcpu):     # a guest hypervisor's guest: its VM exit instead (SDM 26.2)
            act.shutdown(vcpu)
        vcpu.vm_exit(info)
