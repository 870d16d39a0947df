"""The vCPU activity state machine (SDM 25.4.2 "Guest Non-Register State", 26.6 / 27.3.4
activity state at VM entry, 9.1 / 11.6.1 INIT and SIPI, 6.15 shutdown).

This module is the only writer of a vCPU's ``activity``, ``pending_init`` and
``pending_sipi`` (tests/test_layers.py checks it) and the only home of the question
"can this vCPU run, and if not, why": the executors, the scheduler bridge, the hang
detector and the diagnosis all ask here.

Transitions::

    ACTIVE --HLT exit--> HLT --interrupt it can take / NMI--> ACTIVE
    any --INIT--> WAIT_FOR_SIPI --SIPI--> ACTIVE
    any --triple fault / emulation failure--> SHUTDOWN
"""

from __future__ import annotations

from typing import Protocol

from hvdbg.platform.apic import LocalApic
from hvdbg.vmx.controls import ActivityState


class ActivityPort(Protocol):
    """What the state machine needs of a vCPU."""

    activity: ActivityState
    pending_init: bool
    pending_sipi: int | None
    idle_ticks: int
    woken_ticks: int
    apic: LocalApic

    def interrupts_enabled(self) -> bool: ...

    def clock(self) -> int: ...

    def transition_due(self) -> bool:
        """A guest hypervisor's VM exit or entry waits for the vCPU's next run (hvdbg.hv.nested_guest)."""

    def next_event(self) -> int | None: ...

    def poll_board(self) -> None: ...

    def kick(self) -> None: ...


# -- transitions ----------------------------------------------------------------------------
def halt(v: ActivityPort) -> None:
    """HLT: the processor waits for an interrupt, NMI, INIT or SIPI (SDM 25.4.2 state 1)."""
    v.activity = ActivityState.HLT


def shutdown(v: ActivityPort) -> None:
    """Triple fault (SDM 6.15) or an engine failure: nothing but INIT leaves this state."""
    v.activity = ActivityState.SHUTDOWN


def restore(v: ActivityPort, state: int) -> None:
    """VM entry loads the activity-state field of the VMCS (SDM 27.3.4)."""
    v.activity = ActivityState(state)


def post_init(v: ActivityPort) -> None:
    """An INIT IPI reached this vCPU; it becomes its INIT-signal exit on its own thread."""
    v.pending_init = True
    v.kick()


def post_sipi(v: ActivityPort, vector: int) -> None:
    """A start-up IPI reached this vCPU (taken only in wait-for-SIPI, SDM 26.2)."""
    v.pending_sipi = vector
    v.kick()


def take_init(v: ActivityPort) -> bool:
    """Consume a pending INIT; True if there was one."""
    if not v.pending_init:
        return False
    v.pending_init = False
    return True


def take_sipi(v: ActivityPort) -> int | None:
    """Consume a pending SIPI: its vector if the vCPU is in wait-for-SIPI (otherwise the
    SIPI is dropped, as on hardware), else None."""
    vector, v.pending_sipi = v.pending_sipi, None
    if vector is None or v.activity != ActivityState.WAIT_FOR_SIPI:
        return None
    return vector


def enter_wait_for_sipi(v: ActivityPort) -> None:
    """After INIT (SDM 9.1.1): wait-for-SIPI."""
    v.activity = ActivityState.WAIT_FOR_SIPI


def start(v: ActivityPort) -> None:
    """After SIPI (SDM 9.1.1, 11.4.4): the vCPU runs its start-up code."""
    v.activity = ActivityState.ACTIVE


def wake_if_possible(v: ActivityPort) -> bool:
    """Leave HLT on an interrupt the vCPU can take or an NMI (SDM 26.6.2).  With only its
    own APIC timer or a board timer armed, its idle clock jumps to the deadline (nothing
    else happens to it in between).  Returns True if the vCPU is active."""
    if v.transition_due():
        return True     # the run performs it first: e.g. a SIPI exit of an L2 in wait-for-SIPI
    if v.activity != ActivityState.HLT:
        return v.activity == ActivityState.ACTIVE
    if v.apic.nmi_pending:
        _sleep_until_sent(v)
        v.activity = ActivityState.ACTIVE
        return True
    if v.interrupts_enabled():
        if v.apic.pending_vector() is None:
            deadline = v.next_event()
            if deadline is not None and deadline > v.clock():
                v.idle_ticks += deadline - v.clock()
            v.poll_board()
        if v.apic.pending_vector() is not None:
            _sleep_until_sent(v)
            v.activity = ActivityState.ACTIVE
            return True
    return False


def _sleep_until_sent(v: ActivityPort) -> None:
    """A halted vCPU woken by an interrupt slept until it was sent: its clock (and TSC)
    moves on to the sender's time, as a real CPU's does while it waits in HLT."""
    at = v.apic.take_arrival()
    if at is not None and at > v.clock():
        v.woken_ticks += at - v.clock()
        v.idle_ticks += at - v.clock()


# -- queries ----------------------------------------------------------------------------------
def blocked_reason(v: ActivityPort) -> str | None:
    """None if the vCPU can use a pCPU now (or make progress when picked); otherwise why
    not, as a waiting reason: "wait-for-SIPI", "halted" (an interrupt source could still
    wake it) or "finished" (nothing can: shutdown, or HLT with IF=0 and no NMI/INIT)."""
    if v.pending_init or v.pending_sipi is not None or v.transition_due():
        return None
    state = v.activity
    if state == ActivityState.ACTIVE:
        return None
    if state == ActivityState.WAIT_FOR_SIPI:
        return "wait-for-SIPI"
    if state == ActivityState.SHUTDOWN:
        return "finished"
    if v.apic.nmi_pending:
        return None
    if not v.interrupts_enabled():
        return "finished"
    if v.apic.pending_vector() is not None or v.next_event() is not None:
        return None
    return "halted"


def stuck_reason(v: ActivityPort) -> str | None:
    """Why this vCPU can never make progress on its own (the hang detector's view of the
    activity state), or None.  Spinning without progress is the run loop's to judge."""
    state = v.activity
    if state == ActivityState.SHUTDOWN:
        return "shutdown"
    if state == ActivityState.WAIT_FOR_SIPI and v.pending_sipi is None and not v.pending_init:
        return "wait-for-SIPI"
    if state == ActivityState.HLT and not v.apic.nmi_pending and not v.pending_init:
        if not v.interrupts_enabled():
            return "halted with IF=0"
        if v.apic.pending_vector() is None and v.next_event() is None:
            return "halted with IF=1 but no interrupt source armed"
    return None
