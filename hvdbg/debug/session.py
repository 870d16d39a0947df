"""Debugger services on a running VM: all-stop / per-vCPU stop, single step, breakpoints,
watchpoints and break-on-VM-exit, shared by the GDB stubs and the shell.

A :class:`DebugSession` owns the executor thread of a :class:`~hvdbg.hv.machine.Machine`.
Breakpoints are Unicorn code hooks at the guest-linear address (so they work before
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

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn import x86_const as X

from hvdbg.run.executors import RunControl, make_executor
from hvdbg.hv.vcpu import Vcpu
from hvdbg.hv.machine import Machine


#: One past the last linear address (64-bit).
ADDRESS_SPACE_END = 1 << 64
#: Longest range one watchpoint may cover. x86 debug registers watch 1, 2, 4 or 8 bytes
#: (SDM Vol. 3B 18.2.4); GDB asks a remote stub for a whole expression (an array, a
#: structure), so a generous bound: 64 KiB is 17 hooks per vCPU at most.
MAX_WATCH_LENGTH = 0x10000


def _flush_translations(uc, address: int, end: int | None = None) -> None:
    """Drop Unicorn's translated blocks holding ``address`` (up to ``end``, exclusive), so
    that a code hook added or removed there, or new code bytes, take effect (hooks are
    looked up when a block is translated).

    ``ctl_remove_cache`` takes an exclusive end, which cannot name the last byte of the
    64-bit space: a range reaching it flushes the whole translation cache instead.
    """
    end = address + 1 if end is None else end
    if end < ADDRESS_SPACE_END:
        uc.ctl_remove_cache(address, end)
    else:
        uc.ctl_flush_tb()


class StopKind(enum.Enum):
    BREAKPOINT = "breakpoint"
    WATCHPOINT = "watchpoint"
    STEP = "step"
    INTERRUPT = "interrupt"
    EXIT_BREAK = "vm-exit"
    ENDED = "ended"


@dataclass(frozen=True)
class Stop:
    """One stop: which vCPU (index), why, and details (address, watch kind, exit)."""

    kind: StopKind
    vcpu: int | None = None
    address: int | None = None
    watch: str | None = None      # "write" / "read" / "access"
    detail: str = ""


@dataclass
class _Breakpoint:
    address: int
    vcpus: frozenset[int]
    hooks: dict[int, int] = field(default_factory=dict)  # vcpu index -> hook handle


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
        self.exit_break_reasons: set[int] = set()
        vm.vmm.on_exit_breakpoint = self._exit_break
        if start_paused:
            self.control.pause(None, vm.vcpus)

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
        self.control.resume()
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

    def stop(self, scope: frozenset[int] | None = None, timeout: float = 10.0) -> bool:
        """Stop the vCPUs of ``scope`` (all if None) and wait until they are parked."""
        vcpus = self.vcpus_of(scope)
        if scope is None:
            self.control.pause(None, self.vm.vcpus)
        else:
            self.control.pause(vcpus)
        self.start()
        return self.control.wait_parked({v.index for v in vcpus}, timeout, self.executor.stop_event) \
            or self.vm.ended

    def resume(self, scope: frozenset[int] | None = None) -> None:
        """Let the vCPUs of ``scope`` run (a breakpoint at the current RIP is stepped over)."""
        for v in self.vcpus_of(scope):
            rip = v.uc.reg_read(X.UC_X86_REG_RIP)
            if any(rip == bp.address and v.index in bp.vcpus for bp in self.breakpoints.values()):
                self._skip_once[v.index] = rip
        if scope is None:
            self.control.resume()
        else:
            self.control.resume(self.vcpus_of(scope))
            self.control.release_hold()  # a --gdb-wait hold ends with the first continue
        self.start()

    def step(self, vcpu: Vcpu, count: int = 1) -> None:
        """Single-step a parked vCPU; a Stop(STEP) is published when done."""
        self._skip_once[vcpu.index] = vcpu.uc.reg_read(X.UC_X86_REG_RIP)
        self.start()
        self.control.request_step(vcpu, count)

    def _step_done(self, v: Vcpu) -> None:
        self._skip_once.pop(v.index, None)
        self._publish(Stop(StopKind.STEP, v.index, v.uc.reg_read(X.UC_X86_REG_RIP)))

    def _halt_scope(self, v: Vcpu, scope: frozenset[int]) -> None:
        """All-stop within a scope, from a hook running on ``v``'s thread."""
        v.uc.emu_stop()
        v._leave = True
        if len(scope) >= len(self.vm.vcpus):
            self.control.pause(None, [x for x in self.vm.vcpus if x is not v])
        else:
            self.control.pause(self.vcpus_of(scope))

    def flush_code(self, ranges: list[tuple[int, int]], scope: frozenset[int] | None = None) -> None:
        """Drop translated code of the ``[begin, end)`` ranges (after a debugger wrote code
        bytes) from every engine that is not running: the vCPUs of ``scope`` (stopped by
        the caller) and the other vCPUs the run control has parked. A running engine is
        never touched from another thread; it keeps its translation of the old bytes until
        Unicorn evicts it."""
        control = self.control
        with control._cond:  # a parked vCPU cannot leave RunControl.serve meanwhile
            for v in self.vm.vcpus:
                if scope is None or v.index in scope or v.index in control.parked:
                    for begin, end in ranges:
                        _flush_translations(v.uc, begin, end)

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
                    bp.hooks[v.index] = v.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, bp, address, address)
                    _flush_translations(v.uc, address)
            except BaseException:
                self._delete_hooks(bp)  # nothing half-installed and unrecorded stays behind
                raise
            self.breakpoints[key] = bp

    def _delete_hooks(self, bp: _Breakpoint) -> None:
        for index, handle in bp.hooks.items():
            uc = self.vm.vcpus[index].uc
            uc.hook_del(handle)
            _flush_translations(uc, bp.address)

    def remove_breakpoint(self, address: int, scope: frozenset[int] | None = None) -> bool:
        scope = frozenset(v.index for v in self.vcpus_of(scope))
        with self._lock:
            bp = self.breakpoints.pop((address, scope), None)
            if bp is None:
                return False
            self._delete_hooks(bp)
            return True

    def _on_breakpoint(self, uc, address: int, size: int, bp: _Breakpoint) -> None:
        v = next(x for x in self.vm.vcpus if x.uc is uc)
        if self._skip_once.get(v.index) == address:
            del self._skip_once[v.index]
            return
        self._halt_scope(v, bp.vcpus)
        self.control.pause([v])
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
        types = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
                 "access": UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ}[kind]
        with self._lock:
            # only the engines of the scope: accesses by other vCPUs are not reported
            # (_on_watch), and their engines may be running (a per-vCPU stub)
            for v in self.vcpus_of(scope):
                wp.hooks[v.index] = [v.uc.hook_add(types, self._on_watch, wp, lo, hi) for lo, hi in wp.ranges]
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
                        for h in handles:
                            self.vm.vcpus[index].uc.hook_del(h)
                    self.watchpoints.remove(wp)
                    return True
        return False

    def _on_watch(self, uc, access: int, address: int, size: int, value: int, wp: _Watchpoint) -> None:
        v = next(x for x in self.vm.vcpus if x.uc is uc)
        if v.index not in wp.vcpus:
            return
        gva = wp.gva
        for lo, hi in wp.ranges:
            if lo <= address <= hi:
                break
            gva += hi - lo + 1
        self._halt_scope(v, wp.vcpus)
        self.control.pause([v])
        self._publish(Stop(StopKind.WATCHPOINT, v.index, wp.gva, wp.kind,
                           detail=f"{'write' if access == 17 else 'read'} of {size} bytes at GPA {address:#x}"))

    # -- break on VM exit ------------------------------------------------------------------
    def set_exit_breakpoints(self, reasons: set[int]) -> None:
        self.exit_break_reasons = set(reasons)
        self.vm.vmm.exit_breakpoints = set(reasons)

    def _exit_break(self, v: Vcpu, exit) -> None:
        self._halt_scope(v, frozenset(x.index for x in self.vm.vcpus))
        self.control.pause([v])
        self._publish(Stop(StopKind.EXIT_BREAK, v.index, exit.rip, detail=exit.reason.name))

    def interrupted(self, vcpu: Vcpu | None) -> None:
        self._publish(Stop(StopKind.INTERRUPT, vcpu.index if vcpu else None))
