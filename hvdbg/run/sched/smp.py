"""``smp``: CFS made aware of what SMP guests do to each other.

Three problems appear as soon as an SMP guest's vCPUs outnumber the pCPUs
(docs/scheduling.md, "The smp policy"):

- *lock-holder preemption*: the host preempts a vCPU inside a guest spinlock; every
  other vCPU that wants the lock then burns its slice spinning on PAUSE;
- *IPI-target latency*: a vCPU sends an IPI (TLB shootdown, smp_call_function) and
  spins until the targets answer, while the targets wait in a run queue;
- *uneven progress*: per-pCPU CFS queues split 3 vCPUs on 2 pCPUs 1/2, 1/2, 1 for
  ever, and a guest that synchronises goes at the pace of its slowest vCPU.

The policy is CFS plus, per run queue, a *next* and a *skip* buddy (Linux's names), in
the spirit of KVM's ``kvm_vcpu_on_spin`` / ``yield_to`` on top of Linux CFS:

1. directed yield on a PAUSE-loop exit (SDM 25.1.3, ``paused_spinning``): the spinner
   becomes the skip buddy (it runs again only if nothing else can) and a likely lock
   holder the next buddy: the executor's ``lock_holder`` hint if given; for a vCPU
   waiting for answers to its IPIs, a target that has not run since the IPI (if every
   target has run, the answers are on their way: it keeps spinning); otherwise, round
   robin from the last vCPU boosted, one preempted while runnable and not spinning,
   then one preempted while spinning (with ticket locks, the next owner).  A candidate
   waiting behind a busy pCPU is pulled to the spinner's pCPU if its affinity allows
   (the spinner donates its pCPU), else its own pCPU is asked to reschedule;
2. IPI boost: the target of an IPI that is runnable (reported in ``ipis_sent``, or a
   ``wake`` with an IPI reason) becomes the next buddy of its queue, and its pCPU
   reschedules;
3. lag swaps: at each periodic balance, a waiting vCPU of a busier queue that lags
   (weighted run) the most advanced waiting vCPU of a lighter queue by more than
   ``lag_limit`` trades places with it, so every vCPU takes its turn on light queues.

A boosted vCPU runs a short slice (``boost_slice``) and then the queue is back in
vruntime order.  Fairness stays bounded: buddies only change the *order*, boosted
vCPUs are charged like any other, and a next buddy is honoured only while it leads the
leftmost vCPU by less than ``boost_limit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.run.sched.cfs import CfsParams, CfsPolicy, RunQueue, order_key
from hvdbg.run.sched.core import PcpuSched, RunFeedback, VcpuSched, VState

IPI_REASONS = ("ipi", "init", "sipi", "nmi")
"""``wake`` reasons that mean "another vCPU is waiting for this one"."""


@dataclass(frozen=True)
class SmpParams(CfsParams):
    directed_yield: bool = True
    ipi_boost: bool = True
    lag_balance: bool = True
    boost_limit: int = 0          # 0: one CFS latency
    boost_slice: int = 0          # 0: min_granularity
    lag_limit: int = 0            # 0: one CFS latency

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("boost_limit", "boost_slice", "lag_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"smp: {name} must not be negative")


class SmpAwarePolicy(CfsPolicy):
    """CFS + directed yield on PAUSE-loop spinning + IPI-target boost + lag swaps."""

    name = "smp"

    def __init__(self, params: SmpParams | None = None) -> None:
        super().__init__(params or SmpParams())
        self.params: SmpParams
        self.next_buddy: dict[int, VcpuSched] = {}
        self.skip_buddy: dict[int, VcpuSched] = {}
        self.spinning: dict[int, bool] = {}
        self.ipi_targets: dict[int, tuple[int, ...]] = {}
        self.last_boosted = -1
        self.short: dict[int, bool] = {}    # vCPU runs a boosted (short) slice now
        self.unhandled: dict[int, bool] = {}   # sent an IPI, not dispatched since

    @property
    def boost_limit(self) -> int:
        return self.params.boost_limit or self.params.latency

    @property
    def boost_slice(self) -> int:
        return self.params.boost_slice or self.params.min_granularity

    @property
    def lag_limit(self) -> int:
        return self.params.lag_limit or self.params.latency

    # -- balancing -----------------------------------------------------------------------
    def _periodic_balance(self, rq: RunQueue, now: int) -> None:
        due = now >= rq.next_balance
        super()._periodic_balance(rq, now)
        if due and self.params.lag_balance:
            self._lag_balance(rq)

    def _lag_balance(self, rq: RunQueue) -> None:
        """Swap a waiting vCPU of this queue with a lagging one of a busier queue.

        Per-queue fairness alone gives 3 vCPUs on 2 pCPUs shares of 1/2, 1/2 and 1 for
        ever, and an SMP guest goes at the pace of its slowest vCPU.  Every vCPU
        should take its turn on the lighter queues: when a waiting vCPU of a busier
        queue is behind the most advanced waiting vCPU here by more than ``lag_limit``
        of weighted run, the two trade places (loads do not get more unequal)."""
        mine = self.load(rq)
        here = [v for v in rq.queued]
        best: tuple[int, int, int] | None = None
        pair: tuple[VcpuSched, VcpuSched] | None = None
        for src in self.rqs:
            theirs = self.load(src)
            if src is rq or theirs <= mine:
                continue
            for c in src.queued:
                if not c.allows(rq.index):
                    continue
                for lead in here:
                    if not lead.allows(src.index):
                        continue
                    gap = lead.weighted - c.weighted
                    after = abs((theirs - c.weight + lead.weight) - (mine - lead.weight + c.weight))
                    if gap > self.lag_limit and after <= theirs - mine:
                        rank = (gap, -c.index, -lead.index)
                        if best is None or rank > best:
                            best, pair = rank, (c, lead)
        if pair is not None:
            laggard, lead = pair
            src = self.rqs[laggard.pcpu]
            self._migrate(laggard, rq)
            self._migrate(lead, src)
            laggard.count("lag_swaps")
            lead.count("lag_swaps")

    # -- picking -------------------------------------------------------------------------
    def _select(self, p: PcpuSched, now: int) -> VcpuSched | None:
        v = super()._select(p, now)
        if v is not None:
            self.unhandled.pop(v.index, None)
        return v

    def _choose(self, rq: RunQueue, p: PcpuSched) -> VcpuSched:
        buddy = self.next_buddy.pop(rq.index, None)
        skip = self.skip_buddy.pop(rq.index, None)
        leftmost = min(rq.queued, key=order_key)
        if buddy is not None and buddy in rq.queued and buddy.vruntime - leftmost.vruntime < self.boost_limit:
            buddy.count("boosted_runs")
            buddy.fresh = True
            self.short[buddy.index] = True
            return buddy
        choice = super()._choose(rq, p)
        if choice is skip:
            others = [v for v in rq.queued if v is not skip]
            if others:
                return min(others, key=order_key)
        return choice

    def _slice(self, v: VcpuSched, p: PcpuSched) -> int:
        normal = super()._slice(v, p)
        if self.short.get(v.index):
            return min(normal, self.boost_slice - v.slice_ran)
        return normal

    # -- feedback ------------------------------------------------------------------------
    def _after_account(self, v: VcpuSched, p: PcpuSched, ran: int, now: int,
                       feedback: RunFeedback, blocked: bool) -> None:
        super()._after_account(v, p, ran, now, feedback, blocked)
        if self.short.pop(v.index, False) and v.slice_ran >= self.boost_slice:
            v.fresh = True       # the boost is over: back to vruntime order
        if feedback.ipis_sent:
            self.ipi_targets[v.index] = tuple(dict.fromkeys(feedback.ipis_sent))
        elif not feedback.paused_spinning:
            self.ipi_targets.pop(v.index, None)
        self.spinning[v.index] = feedback.paused_spinning and not blocked
        for t in dict.fromkeys(feedback.ipis_sent):
            target = self.vcpus.get(t)
            if target is None or target is v or target.state == VState.RUNNING:
                continue                       # a running target takes it right away
            self.unhandled[t] = True
            if self.params.ipi_boost and target.state == VState.QUEUED:
                self._boost(target, here=None)
                target.count("ipi_boosts")
        if self.spinning[v.index] and self.params.directed_yield:
            target = self._yield_target(v, feedback)
            if target is None and v.index in self.ipi_targets:
                v.count("ack_waits")           # its IPIs are being handled: keep spinning
                return
            v.count("spin_yields")
            self.skip_buddy[p.index] = v       # requeued on p (its last pCPU) right after
            if target is not None:
                v.count("directed_yields")
                self._boost(target, here=p)

    def _after_wake(self, v: VcpuSched, now: int, reason: str) -> None:
        if reason in IPI_REASONS and v.state != VState.RUNNING:
            self.unhandled[v.index] = True
        if self.params.ipi_boost and reason in IPI_REASONS and v.state == VState.QUEUED:
            self._boost(v, here=None)
            v.count("ipi_boosts")

    # -- boosting ------------------------------------------------------------------------
    def _yield_target(self, spinner: VcpuSched, feedback: RunFeedback) -> VcpuSched | None:
        """The vCPU the spinner most likely waits for (kvm_vcpu_on_spin's candidate)."""
        def eligible(c: VcpuSched) -> bool:
            return c is not spinner and c.state == VState.QUEUED and not self.spinning.get(c.index, False)

        def waiter(c: VcpuSched) -> bool:
            # preempted while spinning: with ticket locks it may be next in line
            return c is not spinner and c.state == VState.QUEUED

        hint = self.vcpus.get(feedback.lock_holder) if feedback.lock_holder is not None else None
        if hint is not None and hint is not spinner and hint.state == VState.QUEUED:
            return hint
        if spinner.index in self.ipi_targets:
            # waiting for IPI answers: only a target that has not run since helps
            for t in self.ipi_targets[spinner.index]:
                c = self.vcpus[t]
                if self.unhandled.get(t) and c.state == VState.QUEUED:
                    return c
            return None
        order = sorted(self.vcpus)
        start = next((k for k, i in enumerate(order) if i > self.last_boosted), 0)
        ring = [self.vcpus[i] for i in order[start:] + order[:start]]
        for tier in (eligible, waiter):
            for c in ring:
                if c.preempted and tier(c):
                    self.last_boosted = c.index
                    return c
        return None

    def _boost(self, target: VcpuSched, here: PcpuSched | None) -> None:
        """Make ``target`` the next vCPU of a queue: ``here``'s (pulled there if it waits
        behind a busy pCPU and may run here) or its own, whose pCPU then reschedules."""
        rq = self.rqs[target.pcpu]
        if here is not None and rq.index != here.index and target.allows(here.index) \
                and self.pcpus[rq.index].running is not None:
            self._migrate(target, self.rqs[here.index])
            target.count("yield_pulls")
            rq = self.rqs[here.index]
        self.next_buddy[rq.index] = target
        target.count("boosts")
        owner = self.pcpus[rq.index]
        if (here is None or owner is not here) and owner.running is not None:
            owner.need_resched = True
