"""Executors: how vCPUs get physical CPUs.

- :class:`PinnedExecutor`: one host thread per vCPU (1 vCPU per pCPU).  Fast, not
  deterministic (the host schedules the threads).
- :class:`DeterministicExecutor`: every vCPU on the calling thread, round robin in
  slices counted in guest instructions; the same config gives the same exit trace.

Both share :class:`VcpuLoop` (signals, halt wake-up, hang bookkeeping) and the
:class:`Watchdog` (budget, hang detection), and both honour pause/step requests
from a debugger through :class:`RunControl`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from hvdbg.hv.vcpu import Activity, RunEnd, Vcpu
from hvdbg.hv.machine import Machine

SPIN_HISTORY = 4
# spin_skip: the length of a probe run of a vCPU caught spinning; 840 = lcm(1..8), so a
# poll loop of up to 8 instructions ends every probe at the same place in the loop
SPIN_PROBE = 840
# spin_skip in the pinned executor: how long a spinning vCPU's thread leaves its host core
SPIN_YIELD_SECONDS = 0.0005

WAITING_REASONS: dict[str, str] = {
    "running": "on a pCPU now",
    "queued": "runnable, waiting in a run queue (woken, preempted, or its slice ended)",
    "pause-yield": "runnable, gave its pCPU away after a PAUSE-loop exit (SDM 25.1.3; smp: directed yield)",
    "halted": "HLT, waiting for an interrupt (SDM 25.4.2 activity state 1)",
    "wait-for-SIPI": "never started or INIT received: waits for a start-up IPI (SDM 25.4.2 state 3)",
    "debugger": "held by the debugger (pause or breakpoint stop)",
    "finished": "HLT with IF=0 and no NMI/INIT pending, shutdown, or the VM has ended",
}
"""Why a vCPU is (not) running: the ``waiting`` column of the scheduler statistics.
Time per reason (``waited``) is virtual time in guest instructions (the latest pCPU clock),
which stands still while the debugger holds the VM, so ``debugger`` has no time."""


@dataclass
class VcpuProgress:
    """Per-vCPU bookkeeping for the hang detector."""

    spin_slices: int = 0
    last_states: tuple = ()
    last_exit_count: int = 0


class RunControl:
    """Pause / resume / single-step of the whole VM or of single vCPUs, from any thread
    (debugger, shell).  Executor threads call :meth:`serve` for a paused vCPU they own:
    it blocks until the vCPU is resumed and runs the step requests addressed to it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.paused_vm = False
        self.paused: set[int] = set()
        self.parked: set[int] = set()
        self._steps: dict[int, int] = {}
        self.on_step_done: Callable[[Vcpu], None] | None = None

    def pause(self, vcpus: list[Vcpu] | None = None, all_vcpus: list[Vcpu] | None = None) -> None:
        """Stop the given vCPUs (or the whole VM) at their next instruction boundary."""
        with self._cond:
            if vcpus is None:
                self.paused_vm = True
                targets = all_vcpus or []
            else:
                self.paused.update(v.index for v in vcpus)
                targets = vcpus
        for v in targets:
            v.kick()

    def resume(self, vcpus: list[Vcpu] | None = None) -> None:
        with self._cond:
            if vcpus is None:
                self.paused_vm = False
                self.paused.clear()
            else:
                self.paused.difference_update(v.index for v in vcpus)
            self._cond.notify_all()

    def release_hold(self) -> None:
        """End a whole-VM pause without touching per-vCPU pauses."""
        with self._cond:
            self.paused_vm = False
            self._cond.notify_all()

    def request_step(self, v: Vcpu, count: int = 1) -> None:
        """Run ``count`` instructions on a paused vCPU, then park it again."""
        with self._cond:
            self._steps[v.index] = count
            self.parked.discard(v.index)
            self._cond.notify_all()

    def is_paused(self, v: Vcpu) -> bool:
        return self.paused_vm or v.index in self.paused

    def any_paused(self) -> bool:
        return self.paused_vm or bool(self.paused)

    def serve(self, owned: list[Vcpu], stop: threading.Event, run_step: Callable[[Vcpu, int], None]) -> None:
        """Block while every vCPU of ``owned`` that is paused stays paused; run step requests."""
        while not stop.is_set():
            with self._cond:
                todo = [(v, self._steps.pop(v.index)) for v in owned if v.index in self._steps]
                if not todo:
                    if not any(self.is_paused(v) for v in owned):
                        for v in owned:
                            self.parked.discard(v.index)
                        return
                    self.parked.update(v.index for v in owned if self.is_paused(v))
                    self._cond.notify_all()
                    self._cond.wait(0.05)
                    continue
            for v, count in todo:
                run_step(v, count)
                if self.on_step_done is not None:
                    self.on_step_done(v)
            with self._cond:
                self.parked.update(v.index for v, _ in todo)
                self._cond.notify_all()

    def wait_parked(self, indices: set[int], timeout: float = 5.0, stop: threading.Event | None = None) -> bool:
        """Wait until the given vCPUs sit in :meth:`serve` (or the executor stopped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not indices <= self.parked:
                if stop is not None and stop.is_set():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


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

    def step(self, v: Vcpu, budget: int | None = None) -> RunEnd:
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


class Watchdog:
    """Budget and hang checks shared by the executors."""

    def __init__(self, vm: Machine, loop: VcpuLoop) -> None:
        self.vm = vm
        self.loop = loop
        self.last = time.monotonic()
        self.running_seconds = 0.0

    def check(self) -> None:
        """Called while the VM runs (not while a debugger holds it paused)."""
        vm = self.vm
        now = time.monotonic()
        self.running_seconds += min(now - self.last, 0.25)
        self.last = now
        if vm.ended:
            return
        reasons = [self.loop.stuck(v) for v in vm.vcpus]
        if all(reasons):
            # a hang says more than "budget": check it first (the vCPU threads may have used
            # the whole budget between two checks)
            vm.end("hang", detail="; ".join(f"vCPU {v.index}: {r}" for v, r in zip(vm.vcpus, reasons)))
            return
        if vm.total_instructions() >= vm.config["budget.instructions"]:
            vm.end("budget", detail=f"instruction budget of {vm.config['budget.instructions']} used up")
            return
        if self.running_seconds >= vm.config["budget.seconds"]:
            vm.end("budget", detail=f"time budget of {vm.config['budget.seconds']} s used up")
            return


class ExecutorBase:
    """What every executor has: the VM, its run control, the vCPU loop, the watchdog."""

    def __init__(self, vm: Machine, control: RunControl | None = None) -> None:
        self.vm = vm
        self.control = control or RunControl()
        self.loop = VcpuLoop(vm, vm.config["slice"])
        self.watchdog = Watchdog(vm, self.loop)
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []

    def _supervise(self, threads: list[threading.Thread]) -> None:
        """Start host threads, check budgets and hangs until the VM ends, join them."""
        vm = self.vm
        for t in threads:
            t.start()
        while not vm.ended and not self.stop_event.is_set():
            vm.ended_event.wait(0.02)
            if not self.control.any_paused():
                self.watchdog.check()
        self.stop_event.set()
        self.control.wake()
        for t in threads:
            t.join(timeout=10)
        if self.errors:
            raise self.errors[0]

    def run(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict | None:
        """The scheduler statistics, or None when there is no scheduler (pinned)."""
        return None


class PinnedExecutor(ExecutorBase):
    """One host thread per vCPU (pCPU i runs vCPU i).

    With ``spin_skip`` a vCPU caught in a loop without progress also gives its host
    core away for :data:`SPIN_YIELD_SECONDS` (or until something is sent to it) after
    each probe, like a PAUSE-loop exit handler yielding: with more vCPU threads than
    host cores the threads that do the work get the cores."""

    def __init__(self, vm: Machine, control: RunControl | None = None) -> None:
        super().__init__(vm, control)
        self.loop.spin_skip = vm.config["spin_skip"]

    def _thread(self, v: Vcpu) -> None:
        vm = self.vm
        try:
            while not vm.ended and not self.stop_event.is_set():
                if self.control.is_paused(v):
                    self.control.serve([v], self.stop_event, lambda vc, n: self.loop.step(vc, n))
                    continue
                skipped = v.spin_skipped
                end = self.loop.step(v)
                if end == RunEnd.NOT_RUNNABLE:
                    v.wait_for_kick(0.005)
                elif v.spin_skipped != skipped:
                    v.wait_for_kick(SPIN_YIELD_SECONDS)
        except BaseException as e:  # reported by run(); never lost silently
            self.errors.append(e)
            vm.end("fatal", detail=f"vCPU {v.index} thread crashed: {type(e).__name__}: {e}")

    def run(self) -> None:
        for v in self.vm.vcpus:
            v.pcpu = v.index
        self._supervise([threading.Thread(target=self._thread, args=(v,), name=f"vcpu{v.index}", daemon=True)
                         for v in self.vm.vcpus])


class SchedCore:
    """The bridge between a scheduling policy (hvdbg.run.sched) and the vCPUs: runnability,
    wake-ups from IPIs/signals (through ``Vcpu.on_kick``), slice feedback and statistics.
    Every policy call goes through here, under one lock."""

    def __init__(self, vm: Machine, loop: VcpuLoop, pcpus: int, policy_name: str,
                 control: RunControl | None = None) -> None:
        from hvdbg.run.sched import make_policy

        self.vm = vm
        self.loop = loop
        self.pcpus = pcpus
        self.control = control
        self.policy = make_policy(policy_name)
        self.policy.set_pcpus(pcpus)
        self.lock = threading.RLock()
        self.running: dict[int, int] = {}          # pCPU -> vCPU index
        self.blocked: set[int] = set()
        self.switches = {v.index: 0 for v in vm.vcpus}
        self.last_on: dict[int, int | None] = {p: None for p in range(pcpus)}
        self.clock = [0] * pcpus
        self.changed = threading.Condition(self.lock)
        self.reason: dict[int, str] = {}                  # vCPU -> key of WAITING_REASONS
        self.reason_since: dict[int, int] = {}            # virtual time it entered it
        self.waited = {v.index: dict.fromkeys(WAITING_REASONS, 0) for v in vm.vcpus}
        affinity = vm.config["affinity"]
        weights = vm.config["weights"]
        for v in vm.vcpus:
            allowed = affinity.get(v.index)
            self.policy.add_vcpu(v.index, weight=weights.get(v.index, 1024),
                                 affinity=frozenset(p for p in allowed if p < pcpus) if allowed else None)
            self.blocked.add(v.index)
            self._set_reason(v.index, self.blocked_reason(v), 0)
            v.on_kick = self._on_kick
        if pcpus < len(vm.vcpus) and policy_name in self.PLE_POLICIES:
            self._enable_pause_loop_exiting()
        with self.lock:
            for v in vm.vcpus:
                if self.runnable(v):
                    self._wake(v, "start")

    PLE_WINDOW = 64
    # policies that act on spinning: run-to-block ones must yield a spinning vCPU or the
    # lock holder never runs; "smp" does directed yields.  rr/cfs preempt by time anyway,
    # and the PAUSE hooks cost a Python call per PAUSE.
    PLE_POLICIES = ("pinned", "fifo", "smp")

    def _enable_pause_loop_exiting(self) -> None:
        """Overcommitted pCPUs: spinning vCPUs must give way (like KVM's PLE)."""
        from hvdbg.platform.codescan import PAUSE, find_sites

        deltas = [d for _lo, _hi, d in self.vm.symbols._phys_deltas]
        sites = find_sites(self.vm.memory, self.vm.boot.segments, deltas, [PAUSE])
        for v in self.vm.vcpus:
            v.enable_pause_exiting(sites, self.PLE_WINDOW)

    def runnable(self, v: Vcpu) -> bool:
        """Can this vCPU use a pCPU now (or make progress when picked)?"""
        if v.pending_init or v.pending_sipi is not None:
            return True
        if v.activity == Activity.ACTIVE:
            return True
        if v.activity == Activity.HLT:
            if v.apic.nmi_pending:
                return True
            if v.interrupts_enabled() and (v.apic.pending_vector() is not None or v.apic.next_event() is not None):
                return True
        return False

    def blocked_reason(self, v: Vcpu) -> str:
        """The waiting reason of a vCPU that is not runnable (from its activity state)."""
        if v.activity == Activity.WAIT_FOR_SIPI:
            return "wait-for-SIPI"
        if v.activity == Activity.SHUTDOWN:
            return "finished"
        if v.activity == Activity.HLT and not v.interrupts_enabled() \
                and not v.apic.nmi_pending and not v.pending_init:
            return "finished"
        return "halted"

    def _set_reason(self, index: int, reason: str, now: int) -> None:
        """Close the current waiting period of vCPU ``index`` and open one for ``reason``
        at ``now``, on the clock the policy is told (the pCPU's own clock for a pick or a
        slice end, the latest clock for a wake-up), so that queued time matches the
        policy's ``wait``."""
        old = self.reason.get(index)
        if old is not None:
            self.waited[index][old] += max(0, now - self.reason_since[index])
        self.reason[index] = reason
        self.reason_since[index] = now

    def waiting(self, index: int) -> str:
        """Why vCPU ``index`` is (not) running now: a key of :data:`WAITING_REASONS`."""
        with self.lock:
            if self.control is not None and self.control.is_paused(self.vm.vcpus[index]):
                return "debugger"
            reason = self.reason.get(index, "queued")
            if self.vm.ended and reason in ("running", "queued", "pause-yield"):
                return "finished"
            return reason

    def _on_kick(self, v: Vcpu) -> None:
        with self.lock:
            if v.index in self.blocked and v.index not in self.running.values() and self.runnable(v):
                reason = "sipi" if v.pending_sipi is not None else "init" if v.pending_init else "ipi"
                self._wake(v, reason)

    def _wake(self, v: Vcpu, reason: str) -> None:
        self.blocked.discard(v.index)
        now = max(self.clock)
        self._set_reason(v.index, "queued", now)
        self.policy.wake(v.index, now, reason)
        self._after_event(now)
        self.changed.notify_all()

    def _after_event(self, now: int) -> None:
        for p, vi in list(self.running.items()):
            if self.policy.should_preempt(p, vi, now):
                self.vm.vcpus[vi].kick()

    def pick(self, p: int) -> Vcpu | None:
        with self.lock:
            vi = self.policy.pick_next(p, self.clock[p])
            if vi is None:
                return None
            self.running[p] = vi
            self._set_reason(vi, "running", self.clock[p])
            if self.last_on[p] != vi:
                self.switches[vi] += 1
                self.last_on[p] = vi
            v = self.vm.vcpus[vi]
            v.pcpu = p
            return v

    def budget(self, v: Vcpu, p: int) -> int:
        with self.lock:
            return max(1, min(self.policy.slice_for(v.index, p), self.loop.slice_len))

    def finish(self, v: Vcpu, p: int, end: RunEnd, ran: int, exits: int, ipis: tuple[int, ...]) -> None:
        from hvdbg.run.sched import RunFeedback, SliceEnd

        with self.lock:
            self.clock[p] += ran
            self.running.pop(p, None)
            still = self.runnable(v)
            if end == RunEnd.NOT_RUNNABLE or not still:
                kind = SliceEnd.BLOCKED
                self.blocked.add(v.index)
            elif end == RunEnd.EXIT:
                kind = SliceEnd.EXIT
            elif end == RunEnd.KICKED:
                kind = SliceEnd.KICKED
            else:
                kind = SliceEnd.SLICE
            spinning = v.spin_exit or self.loop.progress[v.index].spin_slices > 0
            if kind == SliceEnd.BLOCKED:
                self._set_reason(v.index, self.blocked_reason(v), self.clock[p])
            else:
                self._set_reason(v.index, "pause-yield" if v.spin_exit else "queued", self.clock[p])
            self.policy.account(v.index, p, ran, self.clock[p],
                                RunFeedback(kind, exits=exits, paused_spinning=spinning, ipis_sent=ipis))
            if kind == SliceEnd.BLOCKED and still:
                # woken while it ran (an IPI raced with its HLT): runnable again
                self._wake(v, "ipi")
            self._after_event(self.clock[p])
            self.changed.notify_all()

    def run_one(self, v: Vcpu, p: int) -> None:
        """Run one slice of ``v`` on pCPU ``p`` (caller does not hold the lock)."""
        before_i = v.instructions + v.idle_ticks
        before_exits = v.exit_count
        before_ipis = len(v.ipi_log)
        end = self.loop.step(v, self.budget(v, p))
        ran = (v.instructions + v.idle_ticks) - before_i
        ipis = tuple(t for _cmd, targets in v.ipi_log[before_ipis:] for t in targets)
        self.finish(v, p, end, ran, v.exit_count - before_exits, ipis)

    def stats(self) -> dict:
        """The policy's statistics, plus per vCPU ``waiting`` (reason now, see
        :data:`WAITING_REASONS`) and ``waited_<reason>`` (virtual time spent so far in
        each reason other than running), and ``switches``."""
        with self.lock:
            st = self.policy.stats()
            now = max(self.clock)
            for index, row in st["vcpus"].items():
                row["waiting"] = self.waiting(index)
                waited = dict(self.waited[index])
                waited[self.reason[index]] += max(0, now - self.reason_since[index])
                row.update((f"waited_{r}", t) for r, t in waited.items() if r not in ("running", "debugger"))
        st["switches"] = dict(self.switches)
        return st


class DeterministicExecutor(ExecutorBase):
    """Every vCPU on one host thread, M virtual pCPUs, slices counted in guest
    instructions, decisions by the policy: the same config gives the same exit trace.

    The pCPU with the smallest clock runs next (a discrete-event simulation of M CPUs),
    so the interleaving depends only on guest instruction counts."""

    def __init__(self, vm: Machine, control: RunControl | None = None) -> None:
        super().__init__(vm, control)
        self.pcpus = vm.config["pcpus"] or len(vm.vcpus)
        self.sched = SchedCore(vm, self.loop, self.pcpus, vm.config["sched"], self.control)
        self.loop.spin_skip = vm.config["spin_skip"]

    def run(self) -> None:
        vm = self.vm
        sched = self.sched
        idle: set[int] = set()
        while not vm.ended and not self.stop_event.is_set():
            if self.control.any_paused():
                self.control.serve(vm.vcpus, self.stop_event, self._single_step)
                continue
            busy = [p for p in range(self.pcpus) if p not in idle]
            if not busy:
                idle.clear()
                self.watchdog.check()
                if all(self.loop.stuck(v) for v in vm.vcpus):
                    continue  # the watchdog ends the VM
                busy = list(range(self.pcpus))
            p = min(busy, key=lambda q: (sched.clock[q], q))
            v = sched.pick(p)
            if v is None:
                idle.add(p)
                others = [sched.clock[q] for q in range(self.pcpus) if q != p and q not in idle]
                if others:
                    sched.clock[p] = max(sched.clock[p], min(others))
                continue
            idle.clear()
            sched.run_one(v, p)
            self.watchdog.check()

    def _single_step(self, v: Vcpu, count: int) -> None:
        self.loop.step(v, count)

    def stats(self) -> dict:
        return self.sched.stats()


class ThreadedSchedExecutor(ExecutorBase):
    """M host threads (pCPUs) sharing N vCPUs under a policy.  Not deterministic."""

    def __init__(self, vm: Machine, control: RunControl | None = None) -> None:
        super().__init__(vm, control)
        self.pcpus = vm.config["pcpus"] or len(vm.vcpus)
        self.sched = SchedCore(vm, self.loop, self.pcpus, vm.config["sched"], self.control)
        self.busy = [0.0] * self.pcpus

    def _pcpu(self, p: int) -> None:
        vm = self.vm
        sched = self.sched
        try:
            while not vm.ended and not self.stop_event.is_set():
                if self.control.any_paused():
                    if p == 0:
                        self.control.serve(vm.vcpus, self.stop_event, lambda v, n: self.loop.step(v, n))
                    else:
                        time.sleep(0.01)
                    continue
                v = sched.pick(p)
                if v is None:
                    with sched.lock:
                        sched.changed.wait(0.01)
                        sched.clock[p] = max(sched.clock[p], max(sched.clock))
                    continue
                t0 = time.perf_counter()
                sched.run_one(v, p)
                self.busy[p] += time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - reported as the VM's ending
            self.errors.append(e)
            vm.end("internal_error", detail=f"pCPU {p} thread crashed: {type(e).__name__}: {e}")

    def run(self) -> None:
        self.started = time.perf_counter()
        try:
            self._supervise([threading.Thread(target=self._pcpu, args=(p,), name=f"pcpu{p}", daemon=True)
                             for p in range(self.pcpus)])
        finally:
            self.wall = time.perf_counter() - self.started

    def stats(self) -> dict:
        st = self.sched.stats()
        wall = getattr(self, "wall", 0.0) or 1e-9
        st["pcpu_utilisation"] = {p: round(self.busy[p] / wall, 3) for p in range(self.pcpus)}
        return st


def make_executor(vm: Machine, control: RunControl | None = None) -> ExecutorBase:
    """Deterministic: one thread, M virtual pCPUs.  Otherwise one thread per vCPU when
    every vCPU has its own pCPU and the policy is 'pinned', else M pCPU threads."""
    cfg = vm.config
    if cfg["deterministic"]:
        return DeterministicExecutor(vm, control)
    pcpus = cfg["pcpus"] or len(vm.vcpus)
    if cfg["sched"] == "pinned" and pcpus >= len(vm.vcpus):
        return PinnedExecutor(vm, control)
    return ThreadedSchedExecutor(vm, control)
