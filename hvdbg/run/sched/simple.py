"""The simple policies: ``pinned`` (today's one-thread-per-vCPU behaviour), ``fifo``
(run to block or exit) and ``rr`` (round robin with a fixed quantum).

All keep their queues as plain lists (FIFO order is the data), so decisions depend
only on the order of calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.run.sched.core import UNLIMITED, PcpuSched, PolicyBase, RunFeedback, SliceEnd, VcpuSched


class GlobalQueuePolicy(PolicyBase):
    """One FIFO queue for the whole machine; a pCPU takes the first vCPU its affinity
    allows.  A vCPU that keeps its pCPU goes back to the head, one that gives it up to
    the tail (subclasses say which by :meth:`_keeps_pcpu`).  A vCPU at the head that
    keeps its pCPU is reserved for that pCPU: another pCPU taking it would start a new
    slice (a migration resets ``slice_ran``), so with an executor cap below the quantum
    it would never use its quantum up and the vCPUs behind it would starve."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[VcpuSched] = []

    def _reset_queues(self, n: int) -> None:
        self.queue = []

    def _enqueue(self, v: VcpuSched, now: int, *, wakeup: bool, reason: str) -> None:
        self.queue.append(v)

    def _dequeue(self, v: VcpuSched) -> None:
        self.queue.remove(v)

    def _requeue(self, v: VcpuSched, p: PcpuSched, now: int, feedback: RunFeedback) -> None:
        keep = self._keeps_pcpu(v, feedback)
        self._make_queued(v, now, wakeup=False)
        if keep:
            self.queue.remove(v)
            self.queue.insert(0, v)
        else:
            v.fresh = True

    def _select(self, p: PcpuSched, now: int) -> VcpuSched | None:
        last = self.vcpus.get(p.last_vcpu) if p.last_vcpu is not None else None
        if last is not None and last in self.queue and not last.fresh and last.last_pcpu == p.index:
            self.queue.remove(last)        # it keeps the pCPU it had
            return last
        for v in self.queue:
            if v.allows(p.index) and (v.fresh or v.last_pcpu == p.index):
                self.queue.remove(v)
                return v
        return None

    def _keeps_pcpu(self, v: VcpuSched, feedback: RunFeedback) -> bool:
        raise NotImplementedError


class FifoPolicy(GlobalQueuePolicy):
    """Run to block or VM exit, no preemption (``SCHED_FIFO`` with every exit a yield
    point).  A PAUSE-loop exit also yields."""

    name = "fifo"

    def _slice(self, v: VcpuSched, p: PcpuSched) -> int:
        return UNLIMITED

    def _keeps_pcpu(self, v: VcpuSched, feedback: RunFeedback) -> bool:
        return feedback.end != SliceEnd.EXIT and not feedback.paused_spinning


@dataclass(frozen=True)
class RrParams:
    quantum: int = 20_000      # guest instructions (hvdbg's default slice)


class RoundRobinPolicy(GlobalQueuePolicy):
    """Fixed quantum, global FIFO queue honouring affinity (``SCHED_RR``).  Exits and
    wake-ups do not reorder: a vCPU keeps its pCPU until its quantum is used up."""

    name = "rr"

    def __init__(self, params: RrParams | None = None) -> None:
        super().__init__()
        self.params = params or RrParams()
        if self.params.quantum <= 0:
            raise ValueError("rr: quantum must be positive")

    def _slice(self, v: VcpuSched, p: PcpuSched) -> int:
        return self.params.quantum - v.slice_ran

    def _keeps_pcpu(self, v: VcpuSched, feedback: RunFeedback) -> bool:
        return v.slice_ran < self.params.quantum


class PinnedPolicy(PolicyBase):
    """vCPU i lives on pCPU i % M (or on its affinity's pCPU of that rank) and runs
    there until it blocks; the others on that pCPU wait their turn in FIFO order.
    With as many pCPUs as vCPUs this is exactly one host thread per vCPU."""

    name = "pinned"

    def __init__(self) -> None:
        super().__init__()
        self.queues: list[list[VcpuSched]] = []

    def home(self, v: VcpuSched) -> int:
        allowed = self._allowed(v)
        if v.affinity is None:
            return v.index % len(self.pcpus)
        return allowed[v.index % len(allowed)]

    def _reset_queues(self, n: int) -> None:
        self.queues = [[] for _ in range(n)]

    def _enqueue(self, v: VcpuSched, now: int, *, wakeup: bool, reason: str) -> None:
        v.pcpu = self.home(v)
        self.queues[v.pcpu].append(v)

    def _dequeue(self, v: VcpuSched) -> None:
        self.queues[v.pcpu].remove(v)

    def _requeue(self, v: VcpuSched, p: PcpuSched, now: int, feedback: RunFeedback) -> None:
        self._make_queued(v, now, wakeup=False)
        if feedback.paused_spinning:
            return  # a PAUSE-loop exit yields: it waits behind the others of its pCPU
        queue = self.queues[v.pcpu]
        queue.remove(v)
        queue.insert(0, v)

    def _select(self, p: PcpuSched, now: int) -> VcpuSched | None:
        queue = self.queues[p.index]
        return queue.pop(0) if queue else None

    def _slice(self, v: VcpuSched, p: PcpuSched) -> int:
        return UNLIMITED
