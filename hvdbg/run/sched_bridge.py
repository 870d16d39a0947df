"""The bridge between a scheduling policy (:mod:`hvdbg.run.sched`) and the vCPUs of a
machine (:class:`SchedCore`), and why a vCPU is (not) running (:data:`WAITING_REASONS`)."""

from __future__ import annotations

import threading

from hvdbg.hv.machine import Machine
from hvdbg.hv import activity
from hvdbg.hv.vcpu import RunEnd, Vcpu
from hvdbg.run.control import RunControl
from hvdbg.run.loop import VcpuLoop
from hvdbg.run.sched import RunFeedback, SliceEnd, make_policy

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


class SchedCore:
    """The bridge between a scheduling policy (hvdbg.run.sched) and the vCPUs: runnability,
    wake-ups from IPIs/signals (through ``Vcpu.on_kick``), slice feedback and statistics.
    Every policy call goes through here, under one lock."""

    def __init__(self, vm: Machine, loop: VcpuLoop, pcpus: int, policy_name: str,
                 control: RunControl | None = None) -> None:
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
        for v in self.vm.vcpus:
            v.enable_pause_exiting(self.PLE_WINDOW)

    def runnable(self, v: Vcpu) -> bool:
        """Can this vCPU use a pCPU now (or make progress when picked)?"""
        return activity.blocked_reason(v) is None

    def blocked_reason(self, v: Vcpu) -> str:
        """The waiting reason of a vCPU that leaves its pCPU blocked; one runnable again at
        once (woken while it ran) counts as "halted" until its wake-up."""
        return activity.blocked_reason(v) or "halted"

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

    def finish(self, v: Vcpu, p: int, end: RunEnd, ran: int, exits: int, ipis: tuple[int, ...],
               woke: bool = False) -> None:
        with self.lock:
            self.clock[p] += ran
            if woke:
                self.clock[p] = max(self.clock[p], v.clock())
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
        before_i = v.instructions + v.idle_ticks - v.woken_ticks
        before_w = v.woken_ticks
        before_exits = v.exit_count
        before_ipis = len(v.ipi_log)
        end = self.loop.run_slice(v, self.budget(v, p))
        # a vCPU woken from HLT slept until the sender's time: that time passed for its pCPU
        # too (an idle pCPU's clock follows the others'), so it counts once, as an absolute time
        ran = (v.instructions + v.idle_ticks - v.woken_ticks) - before_i
        ipis = tuple(t for _cmd, targets in v.ipi_log[before_ipis:] for t in targets)
        self.finish(v, p, end, ran, v.exit_count - before_exits, ipis, woke=v.woken_ticks != before_w)

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
