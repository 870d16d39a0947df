"""The contract between an executor and a vCPU scheduling policy, and the bookkeeping
every policy shares (the state machine of a vCPU, statistics).

A policy is a pure object, like a Linux *sched class*: it never runs code, never
sleeps, never reads a clock.  The executor tells it what happened (``wake``,
``block``, ``account``) and asks it what to do (``pick_next``, ``slice_for``,
``should_preempt``).  Time ``now`` is *virtual*: guest instructions on the clock of
the calling pCPU (see docs/scheduling.md, "Time").  Given the same sequence of calls,
a policy makes the same decisions: no wall clock, no randomness, no iteration over
sets (affinities are only tested for membership).

Life of a vCPU (SDM 25.4.2 activity states map onto BLOCKED/runnable)::

    add_vcpu -> BLOCKED --wake--> QUEUED --pick_next--> RUNNING --account--> QUEUED
                   ^                 |                     |        (still runnable)
                   +------block------+                     +--account(blocked)--> BLOCKED

``block`` and ``wake`` on a RUNNING vCPU are remembered and applied by ``account``
(the last one wins): a wake-up that races with the HLT ending the slice is never lost.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from hvdbg.errors import HvdbgError

NICE_0_WEIGHT = 1024
"""Weight of a default vCPU (Linux ``NICE_0_LOAD``); vruntime advances 1:1 at this weight."""

UNLIMITED = 1 << 62
"""``slice_for`` result of run-to-block policies: the executor caps it with its own chunk."""


class SchedError(HvdbgError):
    """The executor broke the call protocol (e.g. ``account`` for a vCPU that is not running)."""


class SliceEnd(enum.Enum):
    """Why a slice ended (the executor's ``RunEnd`` mapped onto scheduling terms)."""

    SLICE = "slice"        # the instructions granted (or the executor's own cap) were used up
    EXIT = "exit"          # a VM exit left the engine; the vCPU is still runnable
    BLOCKED = "blocked"    # HLT, wait-for-SIPI, shutdown, paused: not runnable any more
    KICKED = "kicked"      # the executor stopped it (should_preempt said so, or a debugger)


@dataclass(frozen=True)
class RunFeedback:
    """What the executor observed during one slice.

    ``paused_spinning``: the vCPU ended the slice in a PAUSE loop (a PAUSE-loop exit,
    SDM 25.1.3 "PAUSE-loop exiting", or any spin detector of the executor).
    ``lock_holder``: the vCPU believed to hold the lock it spins on, when the executor
    knows (symbols, paravirt hint); policies treat it as a hint only.
    ``ipis_sent``: destination vCPUs of the IPIs it sent (INIT, SIPI, fixed, NMI).
    """

    end: SliceEnd
    exits: int = 0
    paused_spinning: bool = False
    ipis_sent: tuple[int, ...] = ()
    lock_holder: int | None = None


@runtime_checkable
class SchedPolicy(Protocol):
    """What an executor calls.  Not thread-safe: a threaded executor serialises calls
    with one lock (the "run-queue lock"); every call is O(vCPUs) and tiny next to a slice."""

    name: str

    def add_vcpu(self, vcpu: int, *, weight: int = NICE_0_WEIGHT,
                 affinity: frozenset[int] | None = None) -> None: ...
    def set_pcpus(self, n: int) -> None: ...
    def wake(self, vcpu: int, now: int, reason: str) -> None: ...
    def block(self, vcpu: int, now: int, reason: str) -> None: ...
    def pick_next(self, pcpu: int, now: int) -> int | None: ...
    def slice_for(self, vcpu: int, pcpu: int) -> int: ...
    def account(self, vcpu: int, pcpu: int, ran: int, now: int, feedback: RunFeedback) -> None: ...
    def should_preempt(self, pcpu: int, running: int, now: int) -> bool: ...
    def stats(self) -> dict: ...


class VState(enum.Enum):
    BLOCKED = "blocked"
    QUEUED = "queued"
    RUNNING = "running"


@dataclass(eq=False)
class VcpuSched:
    """Scheduling state of one vCPU (owned by the policy)."""

    index: int
    weight: int
    affinity: frozenset[int] | None
    state: VState = VState.BLOCKED
    pcpu: int | None = None            # run queue it sits on, or pCPU it runs on
    last_pcpu: int | None = None       # where it last ran
    pending: str | None = None         # "block" / "wake" seen while RUNNING
    seq: int = 0                       # enqueue order, breaks every tie
    enqueued_at: int = 0
    fresh: bool = True                 # next dispatch starts a new slice
    slice_ran: int = 0                 # instructions run in the current slice
    preempted: bool = False            # switched away from while runnable, not run since
    vruntime: int = 0                  # policy ordering key (CFS); weighted run otherwise
    weighted: int = 0                  # sum of ran * NICE_0_WEIGHT / weight
    _frac: int = 0                     # remainder of that division, kept exact
    # statistics
    run: int = 0
    slices: int = 0
    dispatches: int = 0
    migrations: int = 0
    wait: int = 0
    wakeups: int = 0
    blocks: int = 0
    preemptions: int = 0
    exits: int = 0
    spin_slices: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def allows(self, pcpu: int) -> bool:
        return self.affinity is None or pcpu in self.affinity

    def vruntime_at(self, ran: int) -> int:
        """vruntime after ``ran`` more instructions (estimate for a running vCPU)."""
        return self.vruntime + (ran * NICE_0_WEIGHT + self._frac) // self.weight

    def count(self, what: str, n: int = 1) -> None:
        self.extra[what] = self.extra.get(what, 0) + n


@dataclass(eq=False)
class PcpuSched:
    """Scheduling state of one pCPU."""

    index: int
    running: int | None = None
    last_vcpu: int | None = None
    idle_since: int | None = None
    busy: int = 0
    idle: int = 0
    picks: int = 0
    idle_picks: int = 0
    switches: int = 0
    need_resched: bool = False
    dispatched_at: int = 0             # `now` of the pick_next that started the running vCPU


def weighted_delta(v: VcpuSched, ran: int) -> int:
    """``ran * NICE_0_WEIGHT / weight`` with the remainder carried (exact over time)."""
    q, v._frac = divmod(ran * NICE_0_WEIGHT + v._frac, v.weight)
    return q


class PolicyBase:
    """State machine, protocol checks and statistics shared by every policy.

    Subclasses implement the five hooks: ``_enqueue`` (put a runnable vCPU on a queue),
    ``_dequeue`` (take a queued vCPU off), ``_select`` (choose and dequeue the next vCPU
    for a pCPU), ``_slice`` and optionally ``_preempt``, ``_after_account``, ``_after_wake``.
    """

    name = "base"

    def __init__(self) -> None:
        self.vcpus: dict[int, VcpuSched] = {}
        self.pcpus: list[PcpuSched] = []
        self._seq = 0

    # -- configuration -----------------------------------------------------------------
    def add_vcpu(self, vcpu: int, *, weight: int = NICE_0_WEIGHT,
                 affinity: frozenset[int] | None = None) -> None:
        """Register a vCPU; it starts BLOCKED (call ``wake`` for the ones that may run)."""
        if vcpu in self.vcpus:
            raise SchedError(f"vCPU {vcpu} added twice")
        if weight <= 0:
            raise SchedError(f"vCPU {vcpu}: weight must be positive (got {weight})")
        if affinity is not None:
            affinity = frozenset(affinity)
            if not affinity:
                raise SchedError(f"vCPU {vcpu}: empty affinity")
        self.vcpus[vcpu] = VcpuSched(vcpu, weight, affinity)
        if self.pcpus:
            self._check_affinity(self.vcpus[vcpu])

    def set_pcpus(self, n: int) -> None:
        """Number of pCPUs (0 .. n-1).  Only while no vCPU is running."""
        if n <= 0:
            raise SchedError(f"need at least one pCPU (got {n})")
        if any(v.state == VState.RUNNING for v in self.vcpus.values()):
            raise SchedError("set_pcpus while vCPUs are running")
        queued = [v for v in self._ordered() if v.state == VState.QUEUED]
        for v in queued:
            self._dequeue(v)
            v.state = VState.BLOCKED
        self.pcpus = [PcpuSched(i) for i in range(n)]
        self._reset_queues(n)
        for v in self._ordered():
            self._check_affinity(v)
            if v.last_pcpu is not None and v.last_pcpu >= n:
                v.last_pcpu = None
        for v in queued:
            self._make_queued(v, v.enqueued_at, wakeup=False)

    def _check_affinity(self, v: VcpuSched) -> None:
        if v.affinity is not None and not any(p < len(self.pcpus) for p in v.affinity):
            raise SchedError(f"vCPU {v.index}: affinity {sorted(v.affinity)} names no pCPU of 0..{len(self.pcpus) - 1}")

    # -- events ------------------------------------------------------------------------
    def wake(self, vcpu: int, now: int, reason: str) -> None:
        """The vCPU became runnable (IPI, timer, SIPI, unpaused)."""
        v = self._vcpu(vcpu)
        if v.state == VState.RUNNING:
            v.pending = "wake"
        elif v.state == VState.BLOCKED:
            self._need_pcpus()
            v.wakeups += 1
            v.fresh = True
            self._make_queued(v, now, wakeup=True, reason=reason)
        self._after_wake(v, now, reason)

    def block(self, vcpu: int, now: int, reason: str) -> None:
        """The vCPU stopped being runnable (HLT, wait-for-SIPI, paused)."""
        v = self._vcpu(vcpu)
        if v.state == VState.RUNNING:
            v.pending = "block"
        elif v.state == VState.QUEUED:
            self._dequeue(v)
            v.state = VState.BLOCKED
            v.pcpu = None
            v.blocks += 1

    def pick_next(self, pcpu: int, now: int) -> int | None:
        """Dispatch: the vCPU ``pcpu`` runs next (it becomes RUNNING), or None (idle)."""
        p = self._pcpu(pcpu)
        if p.running is not None:
            raise SchedError(f"pick_next on pCPU {pcpu} while vCPU {p.running} runs there")
        p.picks += 1
        if p.idle_since is not None:
            p.idle += max(0, now - p.idle_since)
            p.idle_since = None
        v = self._select(p, now)
        p.need_resched = False
        if v is None:
            p.idle_picks += 1
            p.idle_since = now
            return None
        if v.state != VState.QUEUED or not v.allows(pcpu):
            raise AssertionError(f"{self.name}: selected vCPU {v.index} in state {v.state} for pCPU {pcpu}")
        if p.last_vcpu is not None and p.last_vcpu != v.index:
            last = self.vcpus[p.last_vcpu]
            if last.state == VState.QUEUED and not last.preempted:
                last.preempted = True      # switched away from while still runnable
                last.preemptions += 1
        continuing = not v.fresh and p.last_vcpu == v.index and v.last_pcpu == pcpu
        if not continuing:
            v.slice_ran = 0
            v.dispatches += 1
            if p.last_vcpu != v.index:
                p.switches += 1
            if v.last_pcpu is not None and v.last_pcpu != pcpu:
                v.migrations += 1
        v.fresh = False
        v.preempted = False
        v.wait += max(0, now - v.enqueued_at)
        v.state = VState.RUNNING
        v.pcpu = pcpu
        v.pending = None
        p.running = v.index
        p.dispatched_at = now
        return v.index

    def slice_for(self, vcpu: int, pcpu: int) -> int:
        """Instructions the vCPU may run now (>= 1)."""
        v = self._running_on(vcpu, pcpu)
        return max(1, self._slice(v, self.pcpus[pcpu]))

    def account(self, vcpu: int, pcpu: int, ran: int, now: int, feedback: RunFeedback) -> None:
        """The slice ended after ``ran`` instructions; requeue or block the vCPU."""
        v = self._running_on(vcpu, pcpu)
        if ran < 0:
            raise SchedError(f"vCPU {vcpu}: negative run length {ran}")
        p = self.pcpus[pcpu]
        delta = weighted_delta(v, ran)
        v.weighted += delta
        v.vruntime += delta
        v.run += ran
        v.slices += 1
        v.slice_ran += ran
        v.exits += feedback.exits
        v.spin_slices += feedback.paused_spinning
        p.busy += ran
        p.running = None
        p.last_vcpu = vcpu
        v.last_pcpu = pcpu
        if v.pending == "block":
            blocked = True
        elif v.pending == "wake":
            blocked = False
        else:
            blocked = feedback.end == SliceEnd.BLOCKED
        v.pending = None
        self._after_account(v, p, ran, now, feedback, blocked)
        if blocked:
            v.state = VState.BLOCKED
            v.pcpu = None
            v.blocks += 1
        else:
            self._requeue(v, p, now, feedback)

    def should_preempt(self, pcpu: int, running: int, now: int) -> bool:
        """Should the executor kick ``running`` off ``pcpu`` now (its slice then ends KICKED)?"""
        v = self._running_on(running, pcpu)
        p = self.pcpus[pcpu]
        return p.need_resched or self._preempt(p, v, now)

    # -- statistics ----------------------------------------------------------------------
    def stats(self) -> dict:
        """Per vCPU and per pCPU counters (instructions and virtual time), JSON-friendly."""
        vcpus = {}
        for v in self._ordered():
            row = {"run": v.run, "slices": v.slices, "dispatches": v.dispatches,
                   "migrations": v.migrations, "wait": v.wait, "wakeups": v.wakeups,
                   "blocks": v.blocks, "preemptions": v.preemptions, "exits": v.exits,
                   "spin_slices": v.spin_slices, "vruntime": v.vruntime,
                   "weighted_run": v.weighted, "weight": v.weight, "state": v.state.value,
                   "last_pcpu": v.last_pcpu}
            row.update(sorted(v.extra.items()))
            vcpus[v.index] = row
        pcpus = {p.index: {"busy": p.busy, "idle": p.idle, "picks": p.picks, "idle_picks": p.idle_picks,
                           "switches": p.switches} for p in self.pcpus}
        return {"policy": self.name, "vcpus": vcpus, "pcpus": pcpus}

    # -- helpers for subclasses ---------------------------------------------------------
    def _ordered(self) -> list[VcpuSched]:
        return [self.vcpus[i] for i in sorted(self.vcpus)]

    def _allowed(self, v: VcpuSched) -> list[int]:
        return [p.index for p in self.pcpus if v.allows(p.index)]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _make_queued(self, v: VcpuSched, now: int, *, wakeup: bool, reason: str = "") -> None:
        v.state = VState.QUEUED
        v.enqueued_at = now
        v.seq = self._next_seq()
        self._enqueue(v, now, wakeup=wakeup, reason=reason)

    def _requeue(self, v: VcpuSched, p: PcpuSched, now: int, feedback: RunFeedback) -> None:
        """A vCPU that ran on ``p`` and is still runnable goes back on a queue."""
        self._make_queued(v, now, wakeup=False)

    def _vcpu(self, vcpu: int) -> VcpuSched:
        try:
            return self.vcpus[vcpu]
        except KeyError:
            raise SchedError(f"unknown vCPU {vcpu}") from None

    def _pcpu(self, pcpu: int) -> PcpuSched:
        self._need_pcpus()
        if not 0 <= pcpu < len(self.pcpus):
            raise SchedError(f"unknown pCPU {pcpu} (have {len(self.pcpus)})")
        return self.pcpus[pcpu]

    def _need_pcpus(self) -> None:
        if not self.pcpus:
            raise SchedError("set_pcpus must be called first")

    def _running_on(self, vcpu: int, pcpu: int) -> VcpuSched:
        v = self._vcpu(vcpu)
        if v.state != VState.RUNNING or v.pcpu != pcpu:
            raise SchedError(f"vCPU {vcpu} is not running on pCPU {pcpu} (state {v.state.value}, pCPU {v.pcpu})")
        return v

    # -- hooks ----------------------------------------------------------------------------
    def _reset_queues(self, n: int) -> None:
        raise NotImplementedError

    def _enqueue(self, v: VcpuSched, now: int, *, wakeup: bool, reason: str) -> None:
        raise NotImplementedError

    def _dequeue(self, v: VcpuSched) -> None:
        raise NotImplementedError

    def _select(self, p: PcpuSched, now: int) -> VcpuSched | None:
        raise NotImplementedError

    def _slice(self, v: VcpuSched, p: PcpuSched) -> int:
        raise NotImplementedError

    def _preempt(self, p: PcpuSched, v: VcpuSched, now: int) -> bool:
        return False

    def _after_account(self, v: VcpuSched, p: PcpuSched, ran: int, now: int,
                       feedback: RunFeedback, blocked: bool) -> None:
        pass

    def _after_wake(self, v: VcpuSched, now: int, reason: str) -> None:
        pass
