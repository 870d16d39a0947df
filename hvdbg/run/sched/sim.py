"""A simulated SMP guest on M simulated pCPUs: the deterministic executor loop with
scripted vCPUs instead of Unicorn engines, to test and benchmark policies.

A vCPU runs a script of operations (:class:`Compute`, :class:`Acquire` / :class:`Release`
of a spinlock, :class:`SendIpi`, :class:`Halt` until an IPI, :class:`Sleep` on a timer).
Each pCPU has its own virtual clock (guest instructions); the loop always advances the
pCPU with the smallest clock by one step of at most ``chunk`` instructions, so every
lock, IPI and wake-up happens in time order across pCPUs.  Spinning costs instructions
like real PAUSE loops and ends a slice with a PAUSE-loop exit after ``ple_window``
instructions (SDM 25.1.3), reported to the policy as ``paused_spinning``.

The loop is the reference for an executor's deterministic mode: pick_next on an idle
pCPU, run up to ``min(slice_for, cap)``, account, and after every wake / account ask
``should_preempt`` for each busy pCPU and kick it when told to.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

from hvdbg.errors import HvdbgError
from hvdbg.run.sched.core import NICE_0_WEIGHT, RunFeedback, SchedPolicy, SliceEnd


# -- the script language --------------------------------------------------------------------
@dataclass(frozen=True)
class Compute:
    """Run ``n`` instructions of useful work."""
    n: int


@dataclass(frozen=True)
class Acquire:
    """Take spinlock ``lock``, spinning on PAUSE while someone else holds it."""
    lock: str


@dataclass(frozen=True)
class Release:
    lock: str


@dataclass(frozen=True)
class SendIpi:
    """Send a fixed IPI to ``targets``; with ``wait``, spin until every target has run
    its handler (``smp_call_function(..., wait=1)``, a TLB shootdown)."""
    targets: tuple[int, ...]
    wait: bool = False


@dataclass(frozen=True)
class Halt:
    """HLT with interrupts on: block until an IPI arrives (its handler then runs)."""


@dataclass(frozen=True)
class Sleep:
    """HLT until a timer fires ``n`` instructions of virtual time later."""
    n: int


Op = Compute | Acquire | Release | SendIpi | Halt | Sleep


class SimError(HvdbgError):
    """The simulation cannot continue (deadlock, time limit, policy misbehaviour)."""


@dataclass(frozen=True)
class SimConfig:
    pcpus: int
    chunk: int = 500            # longest step: bounds the latency of an IPI or a kick
    cap: int = 20_000           # executor's own longest run per dispatch (hvdbg's "slice")
    spin_cost: int = 10         # instructions of one spin iteration (PAUSE; load; cmp; jne)
    ple_window: int = 1_000     # spinning that causes a PAUSE-loop exit; 0 = never
    handler_cost: int = 300     # IPI handler
    lock_cost: int = 20         # uncontended acquire / release
    ipi_cost: int = 50          # ICR write
    horizon: int | None = None  # stop at this virtual time (for CPU-bound scripts)
    stop_when_done: tuple[int, ...] | None = None  # stop when these vCPUs finished
    max_time: int = 500_000_000


@dataclass(eq=False)
class _Lock:
    ticket: bool
    holder: int | None = None
    next_ticket: int = 0
    serving: int = 0


@dataclass(eq=False)
class _Vcpu:
    index: int
    script: list
    pc: int = 0
    left: int | None = None          # of the current Compute
    sent: bool = False               # SendIpi(wait) already sent, now waiting
    acks: int = 0
    ticket: int | None = None
    pending_ipis: deque = field(default_factory=deque)   # senders to ack (None: no ack)
    handler_left: int = 0
    handler_for: int | None = None
    halted: bool = False
    sleeping: bool = False
    done: bool = False
    finished_at: int | None = None
    ready_at: int = 0                # virtual time it last stopped running or was woken
    run: int = 0
    spin: int = 0
    dispatches: int = 0


@dataclass(eq=False)
class _Pcpu:
    index: int
    clock: int = 0
    vcpu: int | None = None
    limit: int = 0
    ran: int = 0
    spin_run: int = 0
    spinning: bool = False
    exits: int = 0
    ipis: list[int] = field(default_factory=list)
    kick: bool = False
    parked: bool = False             # idle, and nothing happened since its last pick


@dataclass
class SimResult:
    completion: int | None           # virtual time the last vCPU finished (None: stopped early)
    end_time: int
    finished_at: dict[int, int | None]
    run: dict[int, int]              # instructions each vCPU ran (spinning included)
    spin: dict[int, int]             # of which spinning
    kicks: int
    stats: dict                      # the policy's stats()
    decisions: list[tuple[int, int, int | None]]   # every pick_next: (pcpu, now, vcpu)


class Simulator:
    """Drive one policy with scripted vCPUs (see the module docstring)."""

    def __init__(self, policy: SchedPolicy, scripts: list[list[Op]], config: SimConfig, *,
                 weights: dict[int, int] | None = None,
                 affinity: dict[int, frozenset[int]] | None = None,
                 ticket_locks: bool = False) -> None:
        self.policy = policy
        self.cfg = config
        self.vcpus = [_Vcpu(i, list(s)) for i, s in enumerate(scripts)]
        self.pcpus = [_Pcpu(i) for i in range(config.pcpus)]
        self.weights = weights or {}
        self.affinity = affinity or {}
        self.ticket_locks = ticket_locks
        self.locks: dict[str, _Lock] = {}
        self.timers: list[tuple[int, int, int]] = []
        self._timer_seq = 0
        self.kicks = 0
        self.decisions: list[tuple[int, int, int | None]] = []

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> SimResult:
        pol, cfg = self.policy, self.cfg
        pol.set_pcpus(cfg.pcpus)
        for v in self.vcpus:
            pol.add_vcpu(v.index, weight=self.weights.get(v.index, NICE_0_WEIGHT),
                         affinity=self.affinity.get(v.index))
        for v in self.vcpus:
            if not v.script:
                v.done, v.finished_at = True, 0
            elif isinstance(v.script[0], Halt):
                v.halted = True          # an AP waiting for its INIT/SIPI
            else:
                pol.wake(v.index, 0, "start")
        end_time = 0
        while not self._finished():
            p = min(self.pcpus, key=lambda q: (q.clock, q.parked, q.index))
            end_time = p.clock
            if cfg.horizon is not None and p.clock >= cfg.horizon:
                break
            if p.clock > cfg.max_time:
                raise SimError(f"{pol.name}: not finished after {cfg.max_time} instructions")
            self._fire_timers(p.clock)
            if p.vcpu is None:
                self._dispatch(p)
            else:
                self._step(p)
        done = all(v.done for v in self.vcpus)
        return SimResult(
            completion=max(v.finished_at for v in self.vcpus) if done else None,
            end_time=max([end_time] + [v.finished_at or 0 for v in self.vcpus]),
            finished_at={v.index: v.finished_at for v in self.vcpus},
            run={v.index: v.run for v in self.vcpus},
            spin={v.index: v.spin for v in self.vcpus},
            kicks=self.kicks, stats=pol.stats(), decisions=self.decisions)

    def _finished(self) -> bool:
        watched = self.cfg.stop_when_done
        if watched is not None:
            return all(self.vcpus[i].done for i in watched)
        return all(v.done for v in self.vcpus)

    # -- dispatch and idle ------------------------------------------------------------------
    def _dispatch(self, p: _Pcpu) -> None:
        index = self.policy.pick_next(p.index, p.clock)
        self.decisions.append((p.index, p.clock, index))
        if index is None:
            self._idle(p)
            return
        v = self.vcpus[index]
        if v.done or v.halted or v.sleeping:
            raise SimError(f"{self.policy.name}: dispatched vCPU {index} that is not runnable")
        v.dispatches += 1
        # Causality: a step's effects appear at its end, so a pCPU whose clock lags may
        # pick a vCPU that became runnable "later"; it cannot start it before then.
        p.clock = max(p.clock, v.ready_at)
        p.vcpu = index
        p.limit = min(self.policy.slice_for(index, p.index), self.cfg.cap)
        p.ran = p.spin_run = p.exits = 0
        p.spinning = p.kick = False
        p.ipis = []

    def _idle(self, p: _Pcpu) -> None:
        p.parked = True
        later = [q.clock for q in self.pcpus if q.vcpu is not None] + [t for t, _, _ in self.timers]
        if later:
            p.clock = max(p.clock, min(later))
            return
        unparked = [q.clock for q in self.pcpus if q.vcpu is None and not q.parked]
        if unparked:
            p.clock = max(p.clock, min(unparked))
            return
        stuck = [v.index for v in self.vcpus if not v.done]
        raise SimError(f"{self.policy.name}: deadlock, every pCPU idle while vCPUs {stuck} are not done")

    def _changed(self, now: int) -> None:
        """Something happened: idle pCPUs look again, busy ones may have to be kicked."""
        for q in self.pcpus:
            if q.vcpu is None:
                q.parked = False
            elif not q.kick and self.policy.should_preempt(q.index, q.vcpu, now):
                q.kick = True
                self.kicks += 1

    def _fire_timers(self, now: int) -> None:
        while self.timers and self.timers[0][0] <= now:
            when, _, index = heapq.heappop(self.timers)
            self.vcpus[index].sleeping = False
            self.vcpus[index].ready_at = when
            self.policy.wake(index, when, "timer")
            self._changed(when)

    # -- one step of the running vCPU --------------------------------------------------------
    def _step(self, p: _Pcpu) -> None:
        v = self.vcpus[p.vcpu]
        if p.kick:
            self._end(p, SliceEnd.KICKED)
            return
        limit = min(p.limit - p.ran, self.cfg.chunk)
        if self.cfg.horizon is not None:
            limit = min(limit, self.cfg.horizon - p.clock)
        n, outcome = self._execute(v, p, max(1, limit))
        p.clock += n
        p.ran += n
        v.run += n
        if outcome in ("blocked", "done"):
            if outcome == "done":
                v.done, v.finished_at = True, p.clock
            self._end(p, SliceEnd.BLOCKED)
        elif outcome == "ple":
            p.exits += 1
            self._end(p, SliceEnd.EXIT)
        elif p.ran >= p.limit:
            self._end(p, SliceEnd.SLICE)

    def _end(self, p: _Pcpu, end: SliceEnd) -> None:
        feedback = RunFeedback(end=end, exits=p.exits, paused_spinning=p.spinning,
                               ipis_sent=tuple(p.ipis))
        index, p.vcpu = p.vcpu, None
        self.vcpus[index].ready_at = p.clock
        self.policy.account(index, p.index, p.ran, p.clock, feedback)
        self._changed(p.clock)

    def _execute(self, v: _Vcpu, p: _Pcpu, limit: int) -> tuple[int, str | None]:
        """Run v for at most ``limit`` instructions: (instructions, outcome)."""
        cfg = self.cfg
        if v.handler_left == 0 and v.pending_ipis:
            v.handler_for = v.pending_ipis.popleft()
            v.handler_left = cfg.handler_cost
        if v.handler_left:
            return self._work(p, self._handler(v, limit))
        if v.pc >= len(v.script):
            return 0, "done"
        op = v.script[v.pc]
        if isinstance(op, Compute):
            if v.left is None:
                v.left = op.n
            n = min(limit, v.left)
            v.left -= n
            if v.left == 0:
                v.left = None
                v.pc += 1
            return self._work(p, n)
        if isinstance(op, Acquire):
            if self._try_lock(v, op.lock):
                v.pc += 1
                return self._work(p, min(limit, cfg.lock_cost))
            return self._spin(v, p, limit)
        if isinstance(op, Release):
            self._unlock(v, op.lock)
            v.pc += 1
            return self._work(p, min(limit, cfg.lock_cost))
        if isinstance(op, SendIpi):
            return self._send_ipi(v, p, op, limit)
        if isinstance(op, Halt):
            v.halted = True
            return 0, "blocked"
        if isinstance(op, Sleep):
            v.sleeping = True
            v.pc += 1
            self._timer_seq += 1
            heapq.heappush(self.timers, (p.clock + op.n, self._timer_seq, v.index))
            return 0, "blocked"
        raise SimError(f"unknown operation {op!r}")

    def _work(self, p: _Pcpu, n: int) -> tuple[int, None]:
        p.spin_run = 0
        p.spinning = False
        return n, None

    def _handler(self, v: _Vcpu, limit: int) -> int:
        n = min(limit, v.handler_left)
        v.handler_left -= n
        if v.handler_left == 0:
            if v.handler_for is not None:
                self.vcpus[v.handler_for].acks -= 1
            v.handler_for = None
            if v.pc < len(v.script) and isinstance(v.script[v.pc], Halt):
                v.pc += 1                # the interrupt ended the HLT
        return n

    def _spin(self, v: _Vcpu, p: _Pcpu, limit: int) -> tuple[int, str | None]:
        """Spin until the next moment another pCPU or a timer can change anything."""
        cfg = self.cfg
        later = [self._quiet_until(q) for q in self.pcpus if q is not p and q.vcpu is not None]
        later += [t for t, _, _ in self.timers]
        gap = min(later) - p.clock if later else limit
        n = max(cfg.spin_cost, -(-gap // cfg.spin_cost) * cfg.spin_cost)
        if cfg.ple_window:
            n = min(n, max(cfg.spin_cost, cfg.ple_window - p.spin_run))
        n = min(n, limit)
        v.spin += n
        p.spin_run += n
        p.spinning = True
        if cfg.ple_window and p.spin_run >= cfg.ple_window:
            return n, "ple"
        return n, None

    def _quiet_until(self, q: _Pcpu) -> int:
        """Until when ``q`` surely changes nothing: a pCPU that is spinning only acts again
        when its spin is cut short (PAUSE-loop exit, end of slice) or someone else acts."""
        if not q.spinning or q.kick:
            return q.clock
        left = q.limit - q.ran
        if self.cfg.ple_window:
            left = min(left, self.cfg.ple_window - q.spin_run)
        return q.clock + max(0, left)

    def _try_lock(self, v: _Vcpu, name: str) -> bool:
        lock = self.locks.setdefault(name, _Lock(ticket=self.ticket_locks))
        if lock.ticket:
            if v.ticket is None:
                v.ticket = lock.next_ticket
                lock.next_ticket += 1
            if lock.serving != v.ticket:
                return False
            v.ticket = None
        elif lock.holder is not None:
            return False
        lock.holder = v.index
        return True

    def _unlock(self, v: _Vcpu, name: str) -> None:
        lock = self.locks.get(name)
        if lock is None or lock.holder != v.index:
            raise SimError(f"vCPU {v.index} releases lock {name!r} it does not hold")
        lock.holder = None
        lock.serving += 1

    def _send_ipi(self, v: _Vcpu, p: _Pcpu, op: SendIpi, limit: int) -> tuple[int, str | None]:
        if not v.sent:
            for t in op.targets:
                target = self.vcpus[t]
                target.pending_ipis.append(v.index if op.wait else None)
                if op.wait:
                    v.acks += 1
                if target.halted:
                    target.halted = False
                    target.ready_at = p.clock
                    self.policy.wake(t, p.clock, "ipi")
                    self._changed(p.clock)
            p.ipis.extend(op.targets)
            p.exits += 1
            v.sent = True
            if not op.wait:
                v.sent = False
                v.pc += 1
            return self._work(p, min(limit, self.cfg.ipi_cost))
        if v.acks == 0:
            v.sent = False
            v.pc += 1
            return self._work(p, 1)
        return self._spin(v, p, limit)


# -- workloads ------------------------------------------------------------------------------
def cpu_bound(n_vcpus: int, amount: int = 10**12) -> list[list[Op]]:
    """vCPUs that only compute (run them with a horizon)."""
    return [[Compute(amount)] for _ in range(n_vcpus)]


def lock_heavy(n_vcpus: int, iterations: int, outside: int, inside: int, *, lock: str = "L",
               jitter: float = 0.0, seed: int = 0) -> list[list[Op]]:
    """Every vCPU loops: compute ``outside``, take the lock, compute ``inside``, release.
    ``jitter`` varies each length by up to that fraction (seeded: same seed, same scripts)."""
    rng = random.Random(seed)

    def vary(n: int) -> int:
        return max(1, round(n * (1 + rng.uniform(-jitter, jitter)))) if jitter else n

    return [[op for _ in range(iterations)
             for op in (Compute(vary(outside)), Acquire(lock), Compute(vary(inside)), Release(lock))]
            for _ in range(n_vcpus)]


def shootdowns(n_vcpus: int, rounds: int, work: int, background: int = 10**12) -> list[list[Op]]:
    """vCPU 0 computes ``work`` then shoots down the others' TLBs (IPI + wait), ``rounds``
    times; the other vCPUs compute in the background (run with ``stop_when_done=(0,)``)."""
    others = tuple(range(1, n_vcpus))
    initiator = [Compute(work), SendIpi(others, wait=True)] * rounds
    return [initiator] + [[Compute(background)] for _ in others]


def sleepy(n_hogs: int, rounds: int, work: int, sleep: int, hog: int = 10**12) -> list[list[Op]]:
    """vCPU 0 computes ``work`` then sleeps ``sleep`` on a timer, ``rounds`` times (an
    I/O-bound vCPU); the others are CPU hogs (run with ``stop_when_done=(0,)``)."""
    return [[Compute(work), Sleep(sleep)] * rounds] + [[Compute(hog)] for _ in range(n_hogs)]


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one value takes everything."""
    total = sum(values)
    squares = sum(x * x for x in values)
    return total * total / (len(values) * squares) if squares else 1.0
