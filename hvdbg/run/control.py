"""Pause / resume / single-step requests from a debugger or the shell, served by the
executor threads at instruction boundaries."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from hvdbg.hv.vcpu import Vcpu


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
            v.request_park()

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
                    for v in owned:
                        if self.is_paused(v):
                            self.parked.add(v.index)
                            v.parked()          # the stop has taken effect: steps run
                    self._cond.notify_all()
                    self._cond.wait(0.05)
                    continue
            for v, count in todo:
                v.parked()              # a step of a held vCPU runs, whatever stop came before
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
