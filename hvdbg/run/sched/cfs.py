"""``cfs``: the Completely Fair Scheduler's sched class, in guest instructions.

Per-pCPU run queues ordered by vruntime (virtual run time: instructions run, scaled by
``NICE_0_WEIGHT / weight``); the pCPU runs the queued vCPU with the smallest vruntime.
Follows Linux ``kernel/sched/fair.c`` (before EEVDF):

- slice ("sched_slice"): ``period * weight / rq_weight`` with ``period = sched_latency``,
  stretched to ``nr * min_granularity`` when too many vCPUs share the queue, and never
  below ``min_granularity``;
- "check_preempt_tick": after a slice chunk the current vCPU keeps the pCPU while it has
  slice left, unless the leftmost vCPU leads it by more than the wake-up granularity;
- "place_entity": a waking vCPU gets ``vruntime = max(own, min_vruntime - latency/2)``
  (sleeper credit, GENTLE_FAIR_SLEEPERS), so sleepers neither starve nor hog;
- "check_preempt_wakeup": ``should_preempt`` when the leftmost leads the current vCPU by
  more than ``wakeup_granularity`` (scaled by the leftmost's weight);
- "select_task_rq": wake on the previous pCPU if idle, else on an idle allowed pCPU,
  else on the least loaded allowed pCPU;
- load balancing: a newly idle pCPU pulls a waiting vCPU from the busiest queue
  ("idle_balance"), and every ``balance_interval`` a pCPU pulls vCPUs from the busiest
  queue while that reduces the weight imbalance ("load_balance"); vruntime is
  renormalised on every move (``v - src.min_vruntime + dst.min_vruntime``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hvdbg.run.sched.core import NICE_0_WEIGHT, PcpuSched, PolicyBase, VcpuSched


@dataclass(frozen=True)
class CfsParams:
    """Tunables in guest instructions (Linux 6 ms / 0.75 ms / 1 ms, scaled to hvdbg's
    default 20 000-instruction slice)."""

    latency: int = 40_000
    min_granularity: int = 5_000
    wakeup_granularity: int = 5_000
    balance_interval: int = 20_000

    def __post_init__(self) -> None:
        for name in ("latency", "min_granularity", "wakeup_granularity", "balance_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"cfs: {name} must be positive")


@dataclass(eq=False)
class RunQueue:
    """One pCPU's CFS queue (the running vCPU is not in ``queued``)."""

    index: int
    queued: list[VcpuSched] = field(default_factory=list)
    min_vruntime: int = 0
    next_balance: int = 0


def order_key(v: VcpuSched) -> tuple[int, int]:
    """Run-queue order: smallest vruntime, then earliest enqueue (unique)."""
    return (v.vruntime, v.seq)


class CfsPolicy(PolicyBase):
    """Weighted fair sharing with per-pCPU queues and load balancing."""

    name = "cfs"

    def __init__(self, params: CfsParams | None = None) -> None:
        super().__init__()
        self.params = params or CfsParams()
        self.rqs: list[RunQueue] = []
        self.home: dict[int, int] = {}     # vCPU -> run queue whose vruntime frame it uses

    # -- queue helpers -----------------------------------------------------------------
    def _reset_queues(self, n: int) -> None:
        self.rqs = [RunQueue(i) for i in range(n)]
        self.home = {}

    def _members(self, rq: RunQueue) -> list[VcpuSched]:
        running = self.pcpus[rq.index].running
        return rq.queued + ([self.vcpus[running]] if running is not None else [])

    def load(self, rq: RunQueue) -> int:
        return sum(v.weight for v in self._members(rq))

    def _is_idle(self, rq: RunQueue) -> bool:
        return not rq.queued and self.pcpus[rq.index].running is None

    def _update_min_vruntime(self, rq: RunQueue, curr: VcpuSched | None = None) -> None:
        members = self._members(rq) + ([curr] if curr is not None else [])
        if members:
            rq.min_vruntime = max(rq.min_vruntime, min(v.vruntime for v in members))

    def _move_frame(self, v: VcpuSched, rq: RunQueue) -> None:
        """Re-express v's vruntime relative to ``rq`` (migration)."""
        old = self.home.get(v.index)
        if old is not None and old != rq.index:
            v.vruntime += rq.min_vruntime - self.rqs[old].min_vruntime
        self.home[v.index] = rq.index

    def _put(self, v: VcpuSched, rq: RunQueue) -> None:
        v.pcpu = rq.index
        rq.queued.append(v)
        self._update_min_vruntime(rq)

    def sched_slice(self, v: VcpuSched, rq: RunQueue) -> int:
        members = self._members(rq)
        if v not in members:
            members = members + [v]
        p = self.params
        nr = len(members)
        period = p.latency if nr * p.min_granularity <= p.latency else nr * p.min_granularity
        share = period * v.weight // sum(m.weight for m in members)
        return max(share, p.min_granularity)

    def wakeup_gran(self, v: VcpuSched) -> int:
        return self.params.wakeup_granularity * NICE_0_WEIGHT // v.weight

    # -- placement -----------------------------------------------------------------------
    def select_rq(self, v: VcpuSched) -> RunQueue:
        allowed = self._allowed(v)
        prev = self.home.get(v.index)
        idle = [i for i in allowed if self._is_idle(self.rqs[i])]
        if idle:
            return self.rqs[prev if prev in idle else idle[0]]
        loads = {i: self.load(self.rqs[i]) for i in allowed}
        least = min(loads.values())
        best = [i for i in allowed if loads[i] == least]
        return self.rqs[prev if prev in best else best[0]]

    def _enqueue(self, v: VcpuSched, now: int, *, wakeup: bool, reason: str) -> None:
        if not wakeup and v.last_pcpu is not None and v.allows(v.last_pcpu):
            rq = self.rqs[v.last_pcpu]
            self._move_frame(v, rq)
        else:
            rq = self.select_rq(v)
            first = v.index not in self.home
            self._move_frame(v, rq)
            if first:
                v.vruntime = rq.min_vruntime
            elif wakeup:
                v.vruntime = max(v.vruntime, rq.min_vruntime - self.params.latency // 2)
        self._put(v, rq)

    def _dequeue(self, v: VcpuSched) -> None:
        rq = self.rqs[v.pcpu]
        rq.queued.remove(v)

    def _migrate(self, v: VcpuSched, dst: RunQueue) -> None:
        self.rqs[v.pcpu].queued.remove(v)
        self._move_frame(v, dst)
        self._put(v, dst)
        v.count("balance_moves")

    # -- load balancing ------------------------------------------------------------------
    def _waiting(self, rq: RunQueue) -> bool:
        """Does this queue hold a vCPU that is really waiting for its pCPU?"""
        return bool(rq.queued) and (self.pcpus[rq.index].running is not None or len(rq.queued) >= 2)

    def _idle_pull(self, rq: RunQueue) -> None:
        """A newly idle pCPU takes the most deserving waiting vCPU of the busiest queue."""
        best: list[VcpuSched] = []
        best_rank = (0, 0)
        for src in self.rqs:
            if src is rq or not self._waiting(src):
                continue
            ready = sorted((v for v in src.queued if v.allows(rq.index)), key=order_key)
            if self.pcpus[src.index].running is None:
                # its own pCPU is about to run its leftmost: leave that one
                leftmost = min(src.queued, key=order_key)
                ready = [v for v in ready if v is not leftmost]
            rank = (len(self._members(src)), -src.index)
            if ready and (not best or rank > best_rank):
                best, best_rank = ready, rank
        if best:
            self._migrate(best[0], rq)

    def _periodic_balance(self, rq: RunQueue, now: int) -> None:
        if now < rq.next_balance:
            return
        rq.next_balance = now + self.params.balance_interval
        for _ in range(len(self.vcpus)):
            mine = self.load(rq)
            others = [(self.load(src), -src.index) for src in self.rqs if src is not rq]
            if not others:
                return
            load, neg = max(others)
            src = self.rqs[-neg]
            imbalance = load - mine
            movable = [v for v in src.queued if v.allows(rq.index) and 0 < v.weight < imbalance]
            if not movable:
                return
            self._migrate(max(movable, key=order_key), rq)

    # -- dispatch ------------------------------------------------------------------------
    def _select(self, p: PcpuSched, now: int) -> VcpuSched | None:
        rq = self.rqs[p.index]
        self._periodic_balance(rq, now)
        if not rq.queued:
            self._idle_pull(rq)
        if not rq.queued:
            return None
        v = self._choose(rq, p)
        if v.slice_ran >= self.sched_slice(v, rq):
            v.fresh = True                 # picked again after a full slice: a new one
        rq.queued.remove(v)
        return v

    def _choose(self, rq: RunQueue, p: PcpuSched) -> VcpuSched:
        """check_preempt_tick + pick_next_entity: the vCPU that just ran keeps the pCPU
        while it has slice left and the leftmost does not lead it by more than the
        wake-up granularity; otherwise the leftmost runs."""
        leftmost = min(rq.queued, key=order_key)
        prev = self._continuing(rq, p)
        if prev is not None and prev is not leftmost and prev.slice_ran < self.sched_slice(prev, rq) \
                and prev.vruntime - leftmost.vruntime <= self.wakeup_gran(leftmost):
            return prev
        return leftmost

    def _continuing(self, rq: RunQueue, p: PcpuSched) -> VcpuSched | None:
        """The vCPU that just ran on ``p`` if it is back on this queue mid-slice."""
        if p.last_vcpu is None:
            return None
        v = self.vcpus[p.last_vcpu]
        if v.fresh or v.pcpu != rq.index or v not in rq.queued:
            return None
        return v

    def _slice(self, v: VcpuSched, p: PcpuSched) -> int:
        return self.sched_slice(v, self.rqs[p.index]) - v.slice_ran

    def _preempt(self, p: PcpuSched, v: VcpuSched, now: int) -> bool:
        rq = self.rqs[p.index]
        if not rq.queued:
            return False
        leftmost = min(rq.queued, key=order_key)
        current = v.vruntime_at(max(0, now - p.dispatched_at))   # update_curr, estimated
        return current - leftmost.vruntime > self.wakeup_gran(leftmost)

    def _after_account(self, v, p, ran, now, feedback, blocked) -> None:
        self._update_min_vruntime(self.rqs[p.index], curr=v)

    def stats(self) -> dict:
        out = super().stats()
        for rq in self.rqs:
            out["pcpus"][rq.index]["min_vruntime"] = rq.min_vruntime
            out["pcpus"][rq.index]["queued"] = len(rq.queued)
        return out
