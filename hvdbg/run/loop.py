"""One scheduling step of a vCPU (:class:`VcpuLoop`): take INIT/SIPI and exit
breakpoints, wake from HLT, run a slice, and notice loops without progress (spin skip
and the hang detector's ``stuck``)."""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.hv.machine import Machine
from hvdbg.hv import activity
from hvdbg.hv.vcpu import RunEnd, Vcpu
from hvdbg.vmx.controls import ActivityState

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

    def run_slice(self, v: Vcpu, budget: int | None = None) -> RunEnd:
        """Run ``v`` for up to ``budget`` guest instructions (default: the slice length)."""
        if self.vm.vmm.take_signals(v):
            return RunEnd.EXIT  # an exit breakpoint: park before running
        if not activity.wake_if_possible(v):
            return RunEnd.NOT_RUNNABLE
        left = self.vm.config["budget.instructions"] - self.vm.total_instructions()
        if left <= 0:
            return RunEnd.NOT_RUNNABLE  # the watchdog ends the VM (it checks for a hang first)
        # the host threads of the threaded executors see the budget here, not only at the
        # watchdog's next check: a guest faster than that check stops at its budget too
        budget = min(budget or self.slice_len, left)
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
            deadline = v.next_event()   # its own timer and the board's still fire on time
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
        """Why this vCPU can never make progress on its own, or None: its activity state
        (:func:`hvdbg.hv.activity.stuck_reason`), or a loop without progress."""
        reason = activity.stuck_reason(v)
        if reason is None and v.activity == ActivityState.ACTIVE \
                and self.progress[v.index].spin_slices >= self.vm.config["budget.idle_slices"]:
            return "spinning without VM exits in a loop that makes no progress"
        return reason
