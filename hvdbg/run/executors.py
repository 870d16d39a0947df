"""Executors: how vCPUs get physical CPUs.

- :class:`PinnedExecutor`: one host thread per vCPU (1 vCPU per pCPU).  Fast, not
  deterministic (the host schedules the threads).
- :class:`DeterministicExecutor`: every vCPU on the calling thread, round robin in
  slices counted in guest instructions; the same config gives the same exit trace.
- :class:`ThreadedSchedExecutor`: M host threads (pCPUs) sharing N vCPUs under a policy.

All share :class:`~hvdbg.run.loop.VcpuLoop` (signals, halt wake-up, spin tracking) and
the :class:`~hvdbg.run.watchdog.Watchdog` (budget, hang detection), and all honour
pause/step requests from a debugger through :class:`~hvdbg.run.control.RunControl`.
"""

from __future__ import annotations

import threading
import time

from hvdbg.errors import Outcome
from hvdbg.hv.machine import Machine
from hvdbg.hv.vcpu import RunEnd, Vcpu
from hvdbg.run.control import RunControl
from hvdbg.run.loop import SPIN_YIELD_SECONDS, VcpuLoop
from hvdbg.run.sched_bridge import SchedCore
from hvdbg.run.watchdog import Watchdog


class Executor:
    """What every executor has: the VM, its run control, the vCPU loop, the watchdog;
    :meth:`run` runs the VM to its end, :meth:`stats` tells how it was scheduled."""

    #: A held vCPU stops every vCPU (the pCPUs are shared: the scheduler cannot run the
    #: others around it), as opposed to only itself (one host thread per vCPU).
    holds_all = False

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
        """Run the VM until it ends (or :attr:`stop_event` is set)."""
        raise NotImplementedError

    def stats(self) -> dict | None:
        """The scheduler statistics, or None when there is no scheduler (pinned)."""
        return None


class PinnedExecutor(Executor):
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
                    self.control.serve([v], self.stop_event, self.loop.run_slice)
                    continue
                skipped = v.spin_skipped
                end = self.loop.run_slice(v)
                if end == RunEnd.NOT_RUNNABLE:
                    v.wait_for_kick(0.005)
                elif v.spin_skipped != skipped:
                    v.wait_for_kick(SPIN_YIELD_SECONDS)
        except BaseException as e:  # reported by run(); never lost silently
            self.errors.append(e)
            vm.end(Outcome.FATAL, detail=f"vCPU {v.index} thread crashed: {type(e).__name__}: {e}")

    def run(self) -> None:
        for v in self.vm.vcpus:
            v.pcpu = v.index
        self._supervise([threading.Thread(target=self._thread, args=(v,), name=f"vcpu{v.index}", daemon=True)
                         for v in self.vm.vcpus])


class ScheduledExecutor(Executor):
    """An executor whose pCPUs (``pcpus``, default one per vCPU) are shared under the
    policy ``sched`` through a :class:`~hvdbg.run.sched_bridge.SchedCore`."""

    holds_all = True

    def __init__(self, vm: Machine, control: RunControl | None = None) -> None:
        super().__init__(vm, control)
        self.pcpus = vm.config["pcpus"] or len(vm.vcpus)
        self.sched = SchedCore(vm, self.loop, self.pcpus, vm.config["sched"], self.control)

    def stats(self) -> dict:
        return self.sched.stats()


class DeterministicExecutor(ScheduledExecutor):
    """Every vCPU on one host thread, M virtual pCPUs, slices counted in guest
    instructions, decisions by the policy: the same config gives the same exit trace.

    The pCPU with the smallest clock runs next (a discrete-event simulation of M CPUs),
    so the interleaving depends only on guest instruction counts."""

    def __init__(self, vm: Machine, control: RunControl | None = None) -> None:
        super().__init__(vm, control)
        self.loop.spin_skip = vm.config["spin_skip"]

    def run(self) -> None:
        vm = self.vm
        sched = self.sched
        idle: set[int] = set()
        while not vm.ended and not self.stop_event.is_set():
            if self.control.any_paused():
                self.control.serve(vm.vcpus, self.stop_event, self.loop.run_slice)
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


class ThreadedSchedExecutor(ScheduledExecutor):
    """M host threads (pCPUs) sharing N vCPUs under a policy.  Not deterministic."""

    def __init__(self, vm: Machine, control: RunControl | None = None) -> None:
        super().__init__(vm, control)
        self.busy = [0.0] * self.pcpus

    def _pcpu(self, p: int) -> None:
        vm = self.vm
        sched = self.sched
        try:
            while not vm.ended and not self.stop_event.is_set():
                if self.control.any_paused():
                    if p == 0:
                        self.control.serve(vm.vcpus, self.stop_event, self.loop.run_slice)
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
            vm.end(Outcome.INTERNAL_ERROR, detail=f"pCPU {p} thread crashed: {type(e).__name__}: {e}")

    def run(self) -> None:
        self.started = time.perf_counter()
        try:
            self._supervise([threading.Thread(target=self._pcpu, args=(p,), name=f"pcpu{p}", daemon=True)
                             for p in range(self.pcpus)])
        finally:
            self.wall = time.perf_counter() - self.started

    def stats(self) -> dict:
        st = super().stats()
        wall = getattr(self, "wall", 0.0) or 1e-9
        st["pcpu_utilisation"] = {p: round(self.busy[p] / wall, 3) for p in range(self.pcpus)}
        return st


def make_executor(vm: Machine, control: RunControl | None = None) -> Executor:
    """Deterministic: one thread, M virtual pCPUs.  Otherwise one thread per vCPU when
    every vCPU has its own pCPU and the policy is 'pinned', else M pCPU threads."""
    cfg = vm.config
    if cfg["deterministic"]:
        return DeterministicExecutor(vm, control)
    pcpus = cfg["pcpus"] or len(vm.vcpus)
    if cfg["sched"] == "pinned" and pcpus >= len(vm.vcpus):
        return PinnedExecutor(vm, control)
    return ThreadedSchedExecutor(vm, control)


__all__ = ["DeterministicExecutor", "Executor", "PinnedExecutor", "RunControl", "ScheduledExecutor",
           "ThreadedSchedExecutor", "make_executor"]
