"""Debugger services on a running VM: all-stop / per-vCPU stop, single step, breakpoints,
watchpoints and break-on-VM-exit, shared by the GDB stubs and the shell.

A :class:`DebugSession` owns the executor thread of a :class:`~hvdbg.hv.machine.Machine`.
The session owns every breakpoint, watchpoint and break-on-exit, and the numbers the
shell shows for them (:meth:`DebugSession.numbered`); gdb's breakpoints are unnumbered.
Breakpoints are engine code hooks at the guest-linear address (so they work before
paging is enabled and never modify guest memory); watchpoints are memory hooks on the
guest-physical range behind the watched linear range (so a write through any alias, by
any vCPU of the watchpoint's scope, is caught and reported on the vCPU that did it).

Hooks are added and removed, and translated code is flushed, only while the vCPUs they
touch are parked: Unicorn engines are not thread-safe, and with a per-vCPU stub the
other vCPUs keep running.
"""

from __future__ import annotations

import enum
import queue
import threading
from dataclasses import dataclass, field
from typing import Hashable

from hvdbg.engine import debug_hooks
from hvdbg.engine.debug_hooks import ADDRESS_SPACE_END
from hvdbg.hv.machine import Machine
from hvdbg.hv.vcpu import Vcpu
from hvdbg.run.control import SHELL, START_HOLD, STOP_EVENT
from hvdbg.run.executors import RunControl, make_executor

#: Longest range one watchpoint may cover. x86 debug registers watch 1, 2, 4 or 8 bytes
#: (SDM Vol. 3B 18.2.4); GDB asks a remote stub for a whole expression (an array, a
#: structure), so a generous bound: 64 KiB is 17 hooks per vCPU at most.
MAX_WATCH_LENGTH = 0x10000


class StopKind(enum.Enum):
    BREAKPOINT = "breakpoint"
    WATCHPOINT = "watchpoint"
    STEP = "step"
    INTERRUPT = "interrupt"
    EXIT_BREAK = "vm-exit"
    ENDED = "ended"


@dataclass(frozen=True)
class Stop:
    """One stop: which vCPU (index), why, and details: the address (of the breakpoint,
    the watched range, the exiting instruction), the watchpoint's kind and the access that
    hit it (``access`` "write"/"read", ``size`` bytes at guest-physical ``gpa``), the exit
    reason name (EXIT_BREAK) or the VM's outcome (ENDED) in ``detail``."""

    kind: StopKind
    vcpu: int | None = None
    address: int | None = None
    watch: str | None = None      # "write" / "read" / "access"
    detail: str = ""
    access: str | None = None
    size: int = 0
    gpa: int | None = None


@dataclass
class _Breakpoint:
    address: int
    vcpus: frozenset[int]
    hooks: dict[int, int] = field(default_factory=dict)  # vcpu index -> hook handle


@dataclass(frozen=True)
class NumberedBreak:
    """A breakpoint the shell numbered: on an address (``vcpus`` None: every vCPU) or,
    with ``reason`` set, on a VM exit of that basic reason."""

    number: int
    address: int | None = None
    vcpus: frozenset[int] | None = None
    reason: int | None = None


@dataclass
class _Watchpoint:
    gva: int
    length: int
    kind: str
    vcpus: frozenset[int]
    ranges: list[tuple[int, int]]   # GPA ranges
    hooks: dict[int, list[int]] = field(default_factory=dict)


class DebugSession:
    """Run control for debuggers over one VM.

    ``scope`` (a set of vCPU indexes) is what a stop stops: every vCPU for the
    all-vCPU GDB stub and the shell, one vCPU for a per-vCPU stub.  Several scopes can
    share one session through :meth:`view`.
    """

    def __init__(self, vm: Machine, *, start_paused: bool = False) -> None:
        self.vm = vm
        self.control = RunControl()
        self.control.on_step_done = self._step_done
        self.executor = make_executor(vm, self.control)
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self.breakpoints: dict[tuple[int, frozenset[int]], _Breakpoint] = {}
        self.watchpoints: list[_Watchpoint] = []
        self._listeners: list[queue.Queue[Stop]] = []
        self._skip_once: dict[int, int] = {}
        self.last_stop: Stop | None = None
        self._numbered: dict[int, NumberedBreak] = {}
        self._next_number = 1
        vm.vmm.on_exit_breakpoint = self._exit_break
        if start_paused:
            self.control.pause(vm.vcpus, START_HOLD)

    # -- executor thread -------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hvdbg-executor", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self.executor.run()
        except Exception as e:  # noqa: BLE001 - reported as the VM's ending, never lost
            self.vm.end("internal_error", detail=f"executor crashed: {type(e).__name__}: {e}")
        self._publish(Stop(StopKind.ENDED, detail=self.vm.ending.outcome if self.vm.ending else ""))

    def executor_thread_id(self) -> int | None:
        """The host thread id of the executor thread (QEMU's ``info cpus`` thread_id)."""
        return self._thread.native_id if self._thread is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def shutdown(self) -> None:
        if not self.vm.ended:
            self.vm.end("stopped", detail="debug session closed")
        self.executor.stop_event.set()
        self.control.release_all()
        self.join(10)

    # -- stop events -------------------------------------------------------------------
    def subscribe(self) -> "queue.Queue[Stop]":
        q: queue.Queue[Stop] = queue.Queue()
        with self._lock:
            self._listeners.append(q)
        return q

    def unsubscribe(self, q: "queue.Queue[Stop]") -> None:
        with self._lock:
            if q in self._listeners:
                self._listeners.remove(q)

    def _publish(self, stop: Stop) -> None:
        self.last_stop = stop
        with self._lock:
            listeners = list(self._listeners)
        for q in listeners:
            q.put(stop)

    # -- run control ---------------------------------------------------------------------
    def vcpus_of(self, scope: frozenset[int] | None) -> list[Vcpu]:
        return [v for v in self.vm.vcpus if scope is None or v.index in scope]

    def stop(self, scope: frozenset[int] | None = None, timeout: float = 10.0,
             owner: Hashable = SHELL) -> bool:
        """``owner`` holds the vCPUs of ``scope`` (all if None); wait until they are parked."""
        vcpus = self.vcpus_of(scope)
        if self.vm.ended and not self.running:
            return True     # nothing runs any more: nobody to wait for
        self.control.pause(vcpus, owner)
        self.start()
        return self.control.wait_parked({v.index for v in vcpus}, timeout, self.executor.stop_event) \
            or self.vm.ended

    def resume(self, scope: frozenset[int] | None = None, owner: Hashable = SHELL) -> None:
        """``owner`` continues the vCPUs of ``scope``: its holds, the stop-event holds on
        them and the start hold (``--gdb-wait``) end; a vCPU another owner holds stays stopped.
        A breakpoint at a resumed vCPU's RIP is stepped over."""
        self.release(scope, owner)
        self.control.release_hold()  # the start hold ends with the first continue

    def release(self, scope: frozenset[int] | None = None, owner: Hashable = SHELL) -> None:
        """``owner`` lets go of the vCPUs of ``scope`` (a detach): as :meth:`resume`, but
        the start hold stays (QEMU -S stays paused when gdb leaves)."""
        vcpus = self.vcpus_of(scope)
        for v in vcpus:
            rip = v.engine.rip()
            if any(rip == bp.address and v.index in bp.vcpus for bp in self.breakpoints.values()):
                self._skip_once[v.index] = rip
        self.control.release(vcpus, (owner, STOP_EVENT))
        self.start()

    def holders(self, v: Vcpu) -> list[str]:
        """Who holds ``v`` stopped, by name (``vcpus`` shows it)."""
        return [str(owner) for owner in self.control.holders(v)]

    def step(self, vcpu: Vcpu, count: int = 1) -> None:
        """Single-step a parked vCPU; a Stop(STEP) is published when done (on this
        thread if the vCPU is parked already, else by its executor thread)."""
        self._skip_once[vcpu.index] = vcpu.engine.rip()
        self.start()
        if not self.control.step_here(vcpu, count, self.executor.loop.run_slice):
            self.control.request_step(vcpu, count)

    def _step_done(self, v: Vcpu) -> None:
        self._skip_once.pop(v.index, None)
        self._publish(Stop(StopKind.STEP, v.index, v.engine.rip()))

    def _halt_scope(self, v: Vcpu, scope: frozenset[int]) -> None:
        """All-stop within a scope, from a hook running on ``v``'s thread."""
        v.request_leave()
        self.control.pause(self.vcpus_of(scope | {v.index}), STOP_EVENT)

    def flush_code(self, ranges: list[tuple[int, int]], scope: frozenset[int] | None = None) -> None:
        """Drop translated code of the ``[begin, end)`` ranges (after a debugger wrote code
        bytes) from every engine that is not running: the vCPUs of ``scope`` (stopped by
        the caller) and the other vCPUs the run control has parked. A running engine is
        never touched from another thread; it keeps its translation of the old bytes until
        Unicorn evicts it."""
        with self.control.holding_parked() as parked:  # a parked vCPU cannot leave meanwhile
            for v in self.vm.vcpus:
                if scope is None or v.index in scope or v.index in parked:
                    for begin, end in ranges:
                        debug_hooks.flush_code(v.engine, begin, end)

    # -- breakpoints ---------------------------------------------------------------------
    def add_breakpoint(self, address: int, scope: frozenset[int] | None = None) -> None:
        if not 0 <= address < ADDRESS_SPACE_END:
            raise ValueError(f"breakpoint address {address:#x} is not a 64-bit linear address")
        scope = frozenset(v.index for v in self.vcpus_of(scope))
        key = (address, scope)
        with self._lock:
            if key in self.breakpoints:
                return
            bp = _Breakpoint(address, scope)
            try:
                for v in self.vcpus_of(scope):
                    bp.hooks[v.index] = debug_hooks.add_code_hook(
                        v.engine, address, lambda at, v=v: self._on_breakpoint(v, at, bp))
            except BaseException:
                self._delete_hooks(bp)  # nothing half-installed and unrecorded stays behind
                raise
            self.breakpoints[key] = bp

    def _delete_hooks(self, bp: _Breakpoint) -> None:
        for index, handle in bp.hooks.items():
            debug_hooks.remove_code_hook(self.vm.vcpus[index].engine, handle, bp.address)

    def remove_breakpoint(self, address: int, scope: frozenset[int] | None = None) -> bool:
        scope = frozenset(v.index for v in self.vcpus_of(scope))
        with self._lock:
            bp = self.breakpoints.pop((address, scope), None)
            if bp is None:
                return False
            self._delete_hooks(bp)
            for n, nb in list(self._numbered.items()):
                if nb.address == address and self._scope(nb.vcpus) == scope:
                    del self._numbered[n]
            return True

    def _on_breakpoint(self, v: Vcpu, address: int, bp: _Breakpoint) -> None:
        if self._skip_once.get(v.index) == address:
            del self._skip_once[v.index]
            return
        self._halt_scope(v, bp.vcpus)
        self._publish(Stop(StopKind.BREAKPOINT, v.index, address))

    # -- watchpoints ---------------------------------------------------------------------
    def add_watchpoint(self, gva: int, length: int, kind: str, scope: frozenset[int] | None = None,
                       translate_with: Vcpu | None = None) -> None:
        """Watch a linear range (translated now with ``translate_with``'s page tables).

        Raises ValueError for an empty range, one longer than :data:`MAX_WATCH_LENGTH` or
        one that runs past the end of the 64-bit space; GuestFault if a page is unmapped.
        """
        if not 1 <= length <= MAX_WATCH_LENGTH:
            raise ValueError(f"watchpoint length {length:#x} is not between 1 and {MAX_WATCH_LENGTH:#x}")
        if not 0 <= gva <= ADDRESS_SPACE_END - length:
            raise ValueError(f"watched range {gva:#x}+{length:#x} is not inside the 64-bit space")
        scope = frozenset(v.index for v in self.vcpus_of(scope))
        cpu = translate_with or self.vcpus_of(scope)[0]
        wp = _Watchpoint(gva, length, kind, scope, self._physical_ranges(cpu, gva, length))
        with self._lock:
            # only the engines of the scope: accesses by other vCPUs are not reported
            # (_on_watch), and their engines may be running (a per-vCPU stub)
            for v in self.vcpus_of(scope):
                wp.hooks[v.index] = debug_hooks.add_watch_hooks(
                    v.engine, kind, wp.ranges,
                    lambda is_write, gpa, size, v=v, wp=wp: self._on_watch(v, is_write, gpa, size, wp))
            self.watchpoints.append(wp)

    @staticmethod
    def _physical_ranges(cpu: Vcpu, gva: int, length: int) -> list[tuple[int, int]]:
        """The inclusive GPA ranges behind a linear range, page by page, with pages that
        are contiguous in guest-physical memory merged into one range (one hook each)."""
        ranges: list[tuple[int, int]] = []
        addr, left = gva, length
        while left > 0:
            n = min(left, 0x1000 - (addr & 0xFFF))
            gpa = cpu.linear_to_physical(addr, "read")
            if ranges and ranges[-1][1] + 1 == gpa:
                ranges[-1] = (ranges[-1][0], gpa + n - 1)
            else:
                ranges.append((gpa, gpa + n - 1))
            addr += n
            left -= n
        return ranges

    def remove_watchpoint(self, gva: int, length: int, kind: str, scope: frozenset[int] | None = None) -> bool:
        scope = frozenset(v.index for v in self.vcpus_of(scope))
        with self._lock:
            for wp in self.watchpoints:
                if (wp.gva, wp.length, wp.kind, wp.vcpus) == (gva, length, kind, scope):
                    for index, handles in wp.hooks.items():
                        debug_hooks.remove_hooks(self.vm.vcpus[index].engine, handles)
                    self.watchpoints.remove(wp)
                    return True
        return False

    def _on_watch(self, v: Vcpu, is_write: bool, gpa: int, size: int, wp: _Watchpoint) -> None:
        if v.index not in wp.vcpus:
            return
        v.leave_after_instruction()   # the stop comes after the access (a trap, like DRn)
        self._halt_scope(v, wp.vcpus)
        self._publish(Stop(StopKind.WATCHPOINT, v.index, wp.gva, wp.kind,
                           access="write" if is_write else "read", size=size, gpa=gpa))

    # -- numbered breakpoints (the shell's) -------------------------------------------------
    def _scope(self, vcpus: frozenset[int] | None) -> frozenset[int]:
        return frozenset(v.index for v in self.vcpus_of(vcpus))

    def _number(self, entry: NumberedBreak) -> NumberedBreak:
        entry = NumberedBreak(self._next_number, entry.address, entry.vcpus, entry.reason)
        self._next_number += 1
        self._numbered[entry.number] = entry
        return entry

    def add_numbered_breakpoint(self, address: int, vcpus: frozenset[int] | None = None) -> NumberedBreak:
        """A breakpoint on a linear address that gets the next number (``vcpus`` None:
        every vCPU); the caller has the vCPUs parked."""
        self.add_breakpoint(address, vcpus)
        with self._lock:
            return self._number(NumberedBreak(0, address=address, vcpus=vcpus))

    def add_exit_break(self, reason: int) -> NumberedBreak | None:
        """Stop the VM on VM exits of a basic reason; None if it already does."""
        with self._lock:
            if reason in self.exit_break_reasons:
                return None
            entry = self._number(NumberedBreak(0, reason=reason))
        self.set_exit_breakpoints(self.exit_break_reasons)
        return entry

    def numbered(self) -> list[NumberedBreak]:
        with self._lock:
            return list(self._numbered.values())

    def unnumbered_breakpoints(self) -> list[tuple[int, frozenset[int]]]:
        """(address, vCPUs) of the breakpoints nobody numbered (gdb's)."""
        with self._lock:
            ours = {(nb.address, self._scope(nb.vcpus)) for nb in self._numbered.values() if nb.reason is None}
            return [key for key in self.breakpoints if key not in ours]

    def delete_numbered(self, numbers: list[int]) -> None:
        """Delete numbered breakpoints (KeyError for an unknown number, nothing deleted);
        the caller has the vCPUs parked."""
        with self._lock:
            entries = [self._numbered[n] for n in numbers]
            for entry in entries:
                self._numbered.pop(entry.number, None)
                if entry.reason is None:
                    self.remove_breakpoint(entry.address, entry.vcpus)
        self.set_exit_breakpoints(self.exit_break_reasons)

    def numbered_at(self, vcpu: int | None, address: int | None) -> NumberedBreak | None:
        """The numbered address breakpoint a stop of ``vcpu`` at ``address`` hit."""
        with self._lock:
            for nb in self._numbered.values():
                if nb.reason is None and nb.address == address and (nb.vcpus is None or vcpu in nb.vcpus):
                    return nb
        return None

    # -- break on VM exit ------------------------------------------------------------------
    @property
    def exit_break_reasons(self) -> set[int]:
        return {nb.reason for nb in self.numbered() if nb.reason is not None}

    def set_exit_breakpoints(self, reasons: set[int]) -> None:
        """Tell the VMM which basic exit reasons stop the VM (the numbered exit breaks)."""
        self.vm.vmm.exit_breakpoints = set(reasons)

    def _exit_break(self, v: Vcpu, exit) -> None:
        self._halt_scope(v, frozenset(x.index for x in self.vm.vcpus))
        self._publish(Stop(StopKind.EXIT_BREAK, v.index, exit.rip, detail=exit.reason.name))

    def interrupted(self, vcpu: Vcpu | None) -> None:
        self._publish(Stop(StopKind.INTERRUPT, vcpu.index if vcpu else None))
