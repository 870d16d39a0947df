"""A target wrapper that shows a debugger only some threads of another target.

Thread ids are kept as they are in the inner target, so capabilities (monitor,
extra info, breakpoints) can be forwarded unchanged. Resume requests for hidden
threads cannot arrive (GDB does not know them), so hidden threads are left
exactly as the inner target keeps them. A stop caused by a hidden thread is
reported on the first visible thread, because GDB cannot select a thread it was
never told about.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Iterable, Mapping, Sequence

from .arch.base import Arch, RegisterValue
from .target import (
    DetachOps,
    HwBreakpointOps,
    KillOps,
    MonitorOps,
    PhysicalMemoryOps,
    ResumeAction,
    SingleStepFlagsOps,
    StopEvent,
    SwBreakpointOps,
    Target,
    TargetError,
    ThreadExtraInfoOps,
    ThreadInfo,
    WatchpointOps,
)


class ThreadSubsetTarget(Target):
    """Expose only the threads in ``tids`` of ``inner``; everything else is forwarded."""

    def __init__(self, inner: Target, tids: Iterable[int]) -> None:
        self.inner = inner
        self.visible = frozenset(tids)
        if not self.visible:
            raise ValueError("a thread subset needs at least one thread")

    @property
    def arch(self) -> Arch:
        return self.inner.arch

    def threads(self) -> Sequence[ThreadInfo]:
        return [t for t in self.inner.threads() if t.tid in self.visible]

    def _check(self, tid: int) -> int:
        if tid not in self.visible:
            raise TargetError(f"thread {tid} is not part of this view", errno.ESRCH)
        return tid

    def _visible_event(self, event: StopEvent | None) -> StopEvent | None:
        if event is None or event.tid is None or event.tid in self.visible:
            return event
        threads = self.threads()
        fallback = threads[0].tid if threads else min(self.visible)
        return dataclasses.replace(event, tid=fallback)

    def read_registers(self, tid: int) -> Mapping[str, RegisterValue]:
        return self.inner.read_registers(self._check(tid))

    def write_registers(self, tid: int, values: Mapping[str, RegisterValue]) -> None:
        self.inner.write_registers(self._check(tid), values)

    def read_memory(self, tid: int, address: int, length: int) -> bytes:
        return self.inner.read_memory(self._check(tid), address, length)

    def write_memory(self, tid: int, address: int, data: bytes) -> None:
        self.inner.write_memory(self._check(tid), address, data)

    def resume(self, actions: Mapping[int, ResumeAction]) -> None:
        self.inner.resume({self._check(tid): a for tid, a in actions.items()})

    def wait_for_stop(self, timeout: float | None) -> StopEvent | None:
        return self._visible_event(self.inner.wait_for_stop(timeout))

    def interrupt(self) -> None:
        self.inner.interrupt()

    def attach(self) -> StopEvent:
        event = self._visible_event(self.inner.attach())
        assert event is not None
        return event

    # ---- capabilities are the inner target's

    def support_sw_breakpoints(self) -> SwBreakpointOps | None:
        return self.inner.support_sw_breakpoints()

    def support_hw_breakpoints(self) -> HwBreakpointOps | None:
        return self.inner.support_hw_breakpoints()

    def support_watchpoints(self) -> WatchpointOps | None:
        return self.inner.support_watchpoints()

    def support_monitor(self) -> MonitorOps | None:
        return self.inner.support_monitor()

    def support_thread_extra_info(self) -> ThreadExtraInfoOps | None:
        return self.inner.support_thread_extra_info()

    def support_single_step_flags(self) -> SingleStepFlagsOps | None:
        return self.inner.support_single_step_flags()

    def support_physical_memory(self) -> PhysicalMemoryOps | None:
        return self.inner.support_physical_memory()

    def support_detach(self) -> DetachOps | None:
        return self.inner.support_detach()

    def support_kill(self) -> KillOps | None:
        return self.inner.support_kill()
