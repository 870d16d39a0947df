"""One scheduling step of a vCPU (:class:`VcpuLoop`): take INIT/SIPI and exit
breakpoints, wake from HLT, run a slice, and notice loops without progress (spin skip
and the hang detector's ``stuck``)."""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.hv.machine import Machine
from hvdbg.hv.vcpu import Activity, RunEnd, Vcpu

@dataclass
class VcpuProgress:
    """Per-vCPU bookkeeping for the hang detector."""

    spin_slices: int = 0
    last_states: tuple = ()
    last_exit_count: int = 0


SPIN_HISTORY = 4
# spin_skip: the length of a probe run of a vCPU caught spinning; 840 = lcm(1..8), so a
# poll loop of up to 8 instructions ends every probe at the same place in the loop
SPIN_PROBE = 840
# spin_skip in the pinned executor: how long a spinning vCPU's thread leaves its host core
SPIN_YIELD_SECONDS = 0.0005

class VcpuLoop:
    """One scheduling step of a vCPU: take INIT/SIPI, wake from HLT, run a slice."""

    def __init__(self, vm: Machine, slice_len: int) -> None:
        self.vm = vm
        self.slice_len = slice_len
        self.progress = {v.index: VcpuProgress() for v in vm.vcpus}
        self.spin_skip = False     # config spin_skip: set by the deterministic and pinned executors

    def wake_if_possible(self, v: Vcpu) -> bool:
        """A halted vCPU resumes on an interrupt it can take (SDM 26.6.2 / HLT);
        with only its own timer pending, its idle clock jumps to the deadline."""
        if v.activity != Activity.HLT:
            return v.activity == Activity.ACTIVE
        if v.apic.nmi_pending:
            v.activity = Activity.ACTIVE
            return True
        if v.interrupts_enabled():
            if v.apic.pending_vector() is None:
                deadline = v.apic.next_event()
                if deadline is not None and deadline > v.clock():
                    v.idle_ticks += deadline - v.clock()
            if v.apic.pending_vector() is not None:
                v.activity = Activity.ACTIVE
                return True
        return False

    def run_slice(self, v: Vcpu, budget: int | None = None) -> RunEnd:
        """Run ``v`` for up to ``budget`` guest instructions (default: the slice length)."""
        if self.vm.vmm.take_signals(v):
            return RunEnd.EXIT  # an exit breakpoint: park before running
        if not self.wake_if_possible(v):
            return RunEnd.NOT_RUNNABLE
        budget = budget or self.slice_len
        if self.spin_skip and self.progress[v.index].spin_slices and budget > SPIN_PROBE:
            return self._probe_spin(v, budget)
        end = v.run(budget)
        self._track_spin(v, end)
        return end

    def _probe_spin(self, v: Vcpu, budget: int) -> RunEnd:
        """``spin_skip``: a vCPU whose last slice ended in a state it had been in before
        (a loop without progress, as the hang detector sees it) runs a short probe; if
        that ends in a known state too, the rest of its slice passes as idle virtual
        time, as if its loop had run more slowly.  In the deterministic executor nobody
        else writes memory during one slice, so the skipped instructions would only have
        repeated the loop (the exit trace stays the same); in the pinned executor the
        thread then yields its host core.  Otherwise the vCPU runs on."""
        start = v.instructions
        end = v.run(SPIN_PROBE)
        self._track_spin(v, end)
        if end != RunEnd.SLICE:
            return end
        left = budget - (v.instructions - start)
        if self.progress[v.index].spin_slices and v.preemption_timer_value() is None:
            rest = max(0, left)
            deadline = v.apic.next_event()   # its own timer still fires on time
            if deadline is not None:
                rest = min(rest, max(0, deadline - v.clock()))
            v.idle_ticks += rest
            v.spin_skipped += rest
            return end
        end = v.run(left)
        self._track_spin(v, end)
        return end

    def _track_spin(self, v: Vcpu, end: RunEnd) -> None:
        p = self.progress[v.index]
        if end != RunEnd.SLICE or v.exit_count != p.last_exit_count:
            p.spin_slices = 0
            p.last_states = ()
            p.last_exit_count = v.exit_count
            return
        state = v.progress_state()
        if state in p.last_states:
            p.spin_slices += 1
        else:
            p.spin_slices = 0
        p.last_states = (p.last_states + (state,))[-SPIN_HISTORY:]

    def stuck(self, v: Vcpu) -> str | None:
        """Why this vCPU can never make progress on its own, or None."""
        if v.activity == Activity.SHUTDOWN:
            return "shutdown"
        if v.activity == Activity.WAIT_FOR_SIPI and not v.pending_sipi and not v.pending_init:
            return "wait-for-SIPI"
        if v.activity == Activity.HLT and not v.apic.nmi_pending and not v.pending_init:
            if not v.interrupts_enabled():
                return "halted with IF=0"
            if v.apic.pending_vector() is None and v.apic.next_event() is None:
                return "halted with IF=1 but no interrupt source armed"
        if v.activity == Activity.ACTIVE and self.progress[v.index].spin_slices >= self.vm.config["budget.idle_slices"]:
            return "spinning without VM exits in a loop that makes no progress"
        return None
