"""Pause / resume / single-step requests from debuggers and the shell, served by the
executor threads at instruction boundaries.

Every pause is a *hold* by an owner: a debugger session (each gdb stub's target), the
shell and ``monitor`` (:data:`SHELL`), a stop event of a breakpoint, watchpoint or exit
break (:data:`STOP_EVENT`), or the start of a ``--gdb-wait`` run or of the shell
(:data:`START_HOLD`).  A vCPU runs only while nobody holds it, so a vCPU one debugger
stopped stays stopped when another debugger continues or detaches (docs/gdb.md,
"Several stubs")."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Hashable, Iterable, Iterator

from hvdbg.hv.vcpu import Vcpu

#: The shell and gdb ``monitor`` commands (one owner: they act as the same console).
SHELL = "shell"
#: The stop of a breakpoint, watchpoint or exit break: released by any continue of a
#: debugger whose scope has the vCPU (every such debugger was told of the stop).
STOP_EVENT = "stop event"
#: The VM held at its start (``--gdb-wait`` like QEMU's -S, and ``hvdbg shell``) until
#: the first continue of any debugger or of the shell.
START_HOLD = "the start hold"


class RunControl:
    """Pause / resume / single-step of vCPUs, from any thread (debugger, shell).
    Executor threads call :meth:`serve` for a paused vCPU they own: it blocks until
    the vCPU is resumed and runs the step requests addressed to it."""

    def __init__(self) -> None:
        lock = threading.Lock()
        #: executor threads in :meth:`serve` wait on this: holds or step requests changed
        self._cond = threading.Condition(lock)
        #: :meth:`wait_parked` waits on this (the same lock): a vCPU was parked
        self._parked_changed = threading.Condition(lock)
        self._holds: dict[Hashable, set[int]] = {}
        self.paused: set[int] = set()       # held by someone (the union of the holds)
        self.parked: set[int] = set()
        self._steps: dict[int, int] = {}
        self._stepping: set[int] = set()    # stepped right now by a debugger's own thread
        self.on_step_done: Callable[[Vcpu], None] | None = None

    def _update(self) -> None:
        """Recompute :attr:`paused`; wake the executor threads only if it changed (a
        debugger stops its vCPUs again after every step: that must not cost a thread
        switch)."""
        self._holds = {owner: held for owner, held in self._holds.items() if held}
        paused = set().union(*self._holds.values())
        if paused != self.paused:
            self.paused = paused
            self._cond.notify_all()

    def pause(self, vcpus: Iterable[Vcpu], owner: Hashable = STOP_EVENT) -> None:
        """``owner`` holds ``vcpus``: they stop at their next instruction boundary."""
        targets = list(vcpus)
        with self._cond:
            self._holds.setdefault(owner, set()).update(v.index for v in targets)
            self._update()
            # a parked vCPU stays parked while it is held: no kick (nor its thread switch)
            running = [v for v in targets if v.index not in self.parked]
        for v in running:
            v.request_park()

    def release(self, vcpus: Iterable[Vcpu], owners: Iterable[Hashable]) -> None:
        """End the holds of ``owners`` on ``vcpus`` (a vCPU others hold stays stopped)."""
        indices = {v.index for v in vcpus}
        with self._cond:
            for owner in owners:
                self._holds.get(owner, set()).difference_update(indices)
            self._update()

    def release_hold(self) -> None:
        """End the start hold (the first continue)."""
        with self._cond:
            self._holds.pop(START_HOLD, None)
            self._update()

    def release_all(self) -> None:
        """End every hold (the session is shutting down)."""
        with self._cond:
            self._holds.clear()
            self._update()

    def holders(self, v: Vcpu) -> list[Hashable]:
        """Who holds ``v`` stopped (empty while it may run)."""
        with self._cond:
            return [owner for owner, held in self._holds.items() if v.index in held]

    def held_by(self, owner: Hashable) -> frozenset[int]:
        with self._cond:
            return frozenset(self._holds.get(owner, ()))

    def request_step(self, v: Vcpu, count: int = 1) -> None:
        """Run ``count`` instructions on a paused vCPU, then park it again."""
        with self._cond:
            self._steps[v.index] = count
            self.parked.discard(v.index)
            self._cond.notify_all()

    def is_paused(self, v: Vcpu) -> bool:
        return v.index in self.paused

    def any_paused(self) -> bool:
        return bool(self.paused)

    def serve(self, owned: list[Vcpu], stop: threading.Event, run_step: Callable[[Vcpu, int], object]) -> None:
        """Block while every vCPU of ``owned`` that is paused stays paused; run step requests."""
        while not stop.is_set():
            with self._cond:
                todo = [(v, self._steps.pop(v.index)) for v in owned if v.index in self._steps]
                if not todo:
                    if not any(self.is_paused(v) for v in owned):
                        for v in owned:
                            self.parked.discard(v.index)
                        return
                    newly = [v for v in owned if self.is_paused(v) and v.index not in self._stepping
                             and v.index not in self.parked]
                    for v in newly:
                        self.parked.add(v.index)
                        v.parked()          # the stop has taken effect: steps run
                    if newly:
                        self._parked_changed.notify_all()
                    self._cond.wait(0.05)
                    continue
            for v, count in todo:
                self._step(v, count, run_step)

    def step_here(self, v: Vcpu, count: int, run_step: Callable[[Vcpu, int], object]) -> bool:
        """Run ``count`` instructions of a parked ``v`` on the calling thread (a debugger's),
        without the two thread hand-offs of :meth:`request_step`; False (nothing done) if
        ``v`` is not parked or a step is already queued for it. While it steps it is not
        parked (no one else touches its engine) and :meth:`serve` leaves it alone; the
        engine takes its execution turn as on the executor's thread."""
        with self._cond:
            if v.index not in self.parked or v.index in self._steps or not self.is_paused(v):
                return False
            self.parked.discard(v.index)
            self._stepping.add(v.index)
        self._step(v, count, run_step)
        return True

    def _step(self, v: Vcpu, count: int, run_step: Callable[[Vcpu, int], object]) -> None:
        """Run a step of an unparked held ``v``, park it again, then report the step."""
        try:
            v.parked()              # a step of a held vCPU runs, whatever stop came before
            run_step(v, count)
        finally:
            with self._cond:        # parked again before the debugger hears of the stop:
                self._stepping.discard(v.index)   # its stop() then finds it parked
                self.parked.add(v.index)
                self._parked_changed.notify_all()
        if self.on_step_done is not None:
            self.on_step_done(v)

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
                self._parked_changed.wait(min(left, 0.05))
        return True

    @contextmanager
    def holding_parked(self) -> Iterator[frozenset[int]]:
        """Hold the parked vCPUs where they are: while the ``with`` block runs, no vCPU
        leaves :meth:`serve` (nor does a step request run), so the block may touch the
        engines of the yielded vCPU indexes from another thread."""
        with self._cond:
            yield frozenset(self.parked)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
            self._parked_changed.notify_all()
