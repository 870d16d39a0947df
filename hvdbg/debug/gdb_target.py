"""hvdbg's implementation of the :mod:`gdbstub` target interface.

One :class:`VmTarget` serves a *scope* of vCPUs over one :class:`~hvdbg.debug.session.DebugSession`:
every vCPU (GDB threads 1..N, all-stop) or a single vCPU (a per-vCPU stub that stops and
steps only its vCPU while the others keep running).  GDB thread id = vCPU index + 1.

Registers are always exchanged in the 64-bit layout (16/32-bit state zero-extended), so
one GDB session survives the guest's real -> protected -> long mode switches.
"""

from __future__ import annotations

import errno
import queue
import threading
from dataclasses import replace
from typing import Mapping, Sequence

from gdbstub import (ConsoleOutput, DetachOps, HwBreakpointOps, KillOps, MemoryAccessError,
                     MonitorOps, PhysicalMemoryOps, RawRegistersOps, ResumeAction, ResumeKind, SingleStepFlagsOps,
                     SstepFlags, StopEvent, SwBreakpointOps, Target, TargetError, ThreadExtraInfoOps,
                     ThreadInfo, WatchKind, WatchpointOps)
from gdbstub.arch import Arch
from gdbstub.arch.i386 import WIDE_NAMES
from gdbstub.arch.x86_64 import X86_64
from gdbstub.target import SIGTRAP
from hvdbg.arch.control_rules import ControlState, control_state_problem
from hvdbg.arch.events import GuestFault
from hvdbg.arch.regs import AR_L, CR0_PG, EFER_LMA
from hvdbg.debug.session import DebugSession, Stop, StopKind
from hvdbg.engine import debug_hooks
from hvdbg.errors import GuestMemoryError, HvdbgError
from hvdbg.hv.vcpu import Vcpu

__all__ = ["VmTarget", "ControlState", "control_state_problem"]

_WATCH = {WatchKind.WRITE: "write", WatchKind.READ: "read", WatchKind.ACCESS: "access"}
_WATCH_BACK = {v: k for k, v in _WATCH.items()}

#: The signal of the stop that reports the VM's end, by outcome (hvdbg.errors.Outcome).
END_SIGNALS = {"triple_fault": 11, "ept_violation": 11, "ept_misconfig": 11, "exception": 11,
               "budget": 24, "hang": 14, "internal_error": 6, "fatal": 6, "stopped": 2}


class VmTarget(Target, SwBreakpointOps, HwBreakpointOps, WatchpointOps, MonitorOps, ThreadExtraInfoOps,
               SingleStepFlagsOps, PhysicalMemoryOps, RawRegistersOps, DetachOps, KillOps):
    """GDB's view of some vCPUs of a VM."""

    def __init__(self, session: DebugSession, scope: frozenset[int] | None = None,
                 monitor=None, layout: Arch = X86_64) -> None:
        self.session = session
        self.layout = layout
        #: gdb's 32-bit name -> the 64-bit register it shows (None: the 64-bit layout)
        self._wide = None if layout is X86_64 else {n: WIDE_NAMES.get(n, n) for n in
                                                     (r.name for r in layout.registers)}
        self.vm = session.vm
        self.scope = frozenset(v.index for v in session.vcpus_of(scope))
        self.all_stop = len(self.scope) == len(self.vm.vcpus)
        self.monitor = monitor
        self._events: queue.Queue[Stop] | None = None
        self._sstep = SstepFlags.ENABLE | SstepFlags.NOIRQ | SstepFlags.NOTIMER
        self._current = min(self.scope)
        self._tids = tuple(sorted(i + 1 for i in self.scope))   # vCPUs never come or go
        self._lock = threading.Lock()
        self._g_registers: dict[int, debug_hooks.GdbRegisters] = {}
        self._g_images: dict[tuple[int, tuple[str, ...] | None], debug_hooks.GdbRegisterImage] = {}

    def __str__(self) -> str:
        """The name of this debugger as an owner of run control (``vcpus`` shows it)."""
        return "gdb (all vCPUs)" if self.all_stop else f"gdb (vCPU {min(self.scope)})"

    @property
    def arch(self) -> Arch:
        return self.layout

    # -- helpers ---------------------------------------------------------------------
    def _scope_arg(self) -> frozenset[int] | None:
        return None if self.all_stop else self.scope

    def _vcpu(self, tid: int) -> Vcpu:
        index = tid - 1
        if index not in self.scope:
            raise TargetError(f"no thread {tid}")
        return self.vm.vcpus[index]

    def _ensure_events(self) -> queue.Queue[Stop]:
        if self._events is None:
            self._events = self.session.subscribe()
        return self._events

    # -- threads ---------------------------------------------------------------------
    def threads(self) -> Sequence[ThreadInfo]:
        return [ThreadInfo(v.index + 1, self._name(v)) for v in self.session.vcpus_of(self.scope)]

    def thread_ids(self) -> Sequence[int]:
        return self._tids

    def _name(self, v: Vcpu) -> str:
        """gdb's thread name; in a guest hypervisor's VMX operation with the software level
        running: L1 (the guest hypervisor) or L2 (its guest)."""
        level = f", {v.vmx.level}" if v.vmx is not None and v.vmx.in_vmx_operation else ""
        return f"vCPU {v.index} (APIC id {v.apic_id}, {v.activity.label}{level})"

    def thread_extra_info(self, tid: int) -> str:
        v = self._vcpu(tid)
        rip = v.engine.rip()
        sym = self.vm.symbols.symbolize(rip)
        return f"{self._name(v)} {v.code_bits()}-bit" + (f" in {sym}" if sym else "")

    # -- registers -------------------------------------------------------------------
    def read_registers(self, tid: int) -> Mapping[str, int | bytes]:
        """Every register of the target description with one batch read (gdb sends a
        ``g`` after every stop and step), plus the two MSRs."""
        v = self._vcpu(tid)
        regs = self._g_registers.get(tid)
        if regs is None:
            regs = self._g_registers[tid] = debug_hooks.GdbRegisters(v.engine)
        values = regs.read()
        base = self._pc_base(v)
        if base:
            values["rip"] = base + int(values["rip"])
        if self._wide is not None:    # the 32-bit layout: eax is rax's low half, ...
            return {name: values.get(wide) for name, wide in self._wide.items()}
        return values

    def read_registers_hex(self, tid: int, names: Sequence[str] | None = None) -> bytes:
        """The ``g`` reply (or the part of it of ``names``), put together from one batch
        read (:class:`GdbRegisterImage`); the same values as :meth:`read_registers`."""
        v = self._vcpu(tid)
        key = (tid, None if names is None else tuple(names))
        image = self._g_images.get(key)
        if image is None:
            regs = self.layout.registers if names is None else [self.layout.register(self.layout.regnum(n))
                                                                 for n in names]
            layout = [((self._wide or {}).get(r.name, r.name), r.size) for r in regs]
            image = self._g_images[key] = debug_hooks.GdbRegisterImage(v.engine, layout)
        base = self._pc_base(v)
        return image.read({"rip": base + v.engine.rip()} if base and "rip" in image.offsets else None)

    @staticmethod
    def _pc_base(v) -> int:
        """Outside 64-bit mode gdb's $pc is the linear address CS.base + EIP: gdb's x86
        target knows no segments, and breakpoints (``hbreak *0x8000`` in an AP's real-mode
        trampoline), ``x/i $pc`` and the stop PC must all agree on one address.  Writes of
        $pc subtract the base again (docs/gdb.md)."""
        return v.code_base()

    def write_registers(self, tid: int, values: Mapping[str, int | bytes]) -> None:
        """Write registers; a control state the CPU could not reach is refused with E16
        (:func:`control_state_problem`) and nothing is written."""
        v = self._vcpu(tid)
        if self._wide is not None:
            values = {self._wide[name]: value for name, value in values.items()}
        base = self._pc_base(v)
        if base and isinstance(values.get("rip"), int):
            values = {**values, "rip": (int(values["rip"]) - base) & 0xFFFFFFFF}
        old = ControlState(*(v.engine.read(n) for n in ("cr0", "cr3", "cr4", "efer", "rip")),
                           bool(v.get_segment("cs").access_rights & AR_L))
        new = replace(old, **{n: values[n] for n in ("cr0", "cr3", "cr4", "efer", "rip")
                              if isinstance(values.get(n), int)})
        problem = control_state_problem(old, new)
        if problem is not None:
            raise TargetError(problem, errno.EINVAL)
        # the CPU's order: leaving paging, CR0 goes first; entering it, CR0 goes last (the
        # engine sets and clears EFER.LMA on the CR0.PG transition, 10.8.5)
        order = sorted(values, key=lambda n: (n == "cr0") == bool(new.cr0 & CR0_PG))
        debug_hooks.write_gdb_registers(v.engine, values, order)

    # -- memory ----------------------------------------------------------------------
    @staticmethod
    def _check_linear(v: Vcpu, address: int, length: int) -> None:
        """Outside IA-32e mode linear addresses have 32 bits (SDM 3.3.1): gdb's 64-bit
        address 0xdead00000000 is no address of the vCPU (QEMU: "Cannot access memory"),
        not linear 0 after a cut to 32 bits."""
        end = address + length
        if end > 1 << 64 or (end > 1 << 32 and not v.engine.read("efer") & EFER_LMA):
            raise MemoryAccessError(f"{address:#x}+{length:#x} is beyond the vCPU's linear address space")

    def read_memory(self, tid: int, address: int, length: int) -> bytes:
        v = self._vcpu(tid)
        self._check_linear(v, address, length)
        try:
            return v.read_linear(address, length)
        except (GuestFault, GuestMemoryError, ValueError) as e:
            raise MemoryAccessError(str(e)) from None

    def write_memory(self, tid: int, address: int, data: bytes) -> None:
        v = self._vcpu(tid)
        self._check_linear(v, address, len(data))
        try:
            v.write_linear(address, data)
            gpa = v.linear_to_physical(address)
        except (GuestFault, GuestMemoryError, ValueError) as e:
            raise MemoryAccessError(str(e)) from None
        self.session.flush_code([(address, address + len(data)), (gpa, gpa + len(data))], self._scope_arg())

    def read_physical_memory(self, address: int, length: int) -> bytes:
        try:
            return self.vm.memory.read(address, length)
        except GuestMemoryError as e:
            raise MemoryAccessError(str(e)) from None

    def write_physical_memory(self, address: int, data: bytes) -> None:
        try:
            self.vm.memory.write(address, data)
        except GuestMemoryError as e:
            raise MemoryAccessError(str(e)) from None
        self.session.flush_code([(address, address + len(data))], self._scope_arg())

    # -- run control -----------------------------------------------------------------
    def attach(self) -> StopEvent:
        self._ensure_events()
        self.session.stop(self._scope_arg(), owner=self)
        if self.vm.ended and not self.session.running:
            return self._ended_event()
        return StopEvent.signalled(self._current + 1, SIGTRAP)

    def resume(self, actions: Mapping[int, ResumeAction]) -> None:
        events = self._ensure_events()
        while not events.empty():  # stops seen while gdb was stopped (e.g. a shell step)
            events.get_nowait()
        if self.vm.ended and not self.session.running:
            # the VM ended while gdb looked at it (its ENDED stop was just drained): the
            # resume ends at once with the exit, as on a target process that has exited
            events.put(Stop(StopKind.ENDED))
            return
        steps = [tid for tid, a in actions.items() if a.kind == ResumeKind.STEP]
        if steps:
            # the stepped vCPU runs one instruction; the others stay stopped (like
            # QEMU's NOIRQ|NOTIMER single step with scheduler locking)
            v = self._vcpu(steps[0])
            self._current = v.index
            self.session.step(v)
            return
        self.session.resume(self._scope_arg(), owner=self)

    def wait_for_stop(self, timeout: float | None) -> StopEvent | None:
        events = self._ensure_events()
        try:
            stop = events.get(timeout=timeout)
        except queue.Empty:
            return None
        if stop.kind == StopKind.ENDED:
            return self._ended_event()
        if stop.vcpu is not None and stop.vcpu not in self.scope:
            return None  # another stub's vCPU
        self.session.stop(self._scope_arg(), owner=self)
        if stop.vcpu is not None:
            self._current = stop.vcpu
        tid = self._current + 1
        if stop.kind == StopKind.BREAKPOINT:
            return StopEvent.sw_breakpoint(tid)
        if stop.kind == StopKind.WATCHPOINT:
            return StopEvent.watchpoint(tid, _WATCH_BACK[stop.watch or "write"], stop.address or 0)
        if stop.kind == StopKind.STEP:
            return StopEvent.step_done(tid)
        if stop.kind == StopKind.INTERRUPT:
            return StopEvent.interrupted(tid)
        return StopEvent.signalled(tid, SIGTRAP)

    def _ended_event(self) -> StopEvent:
        """The guest exiting is an exit, gdb's kill a kill; any other end (EPT violation,
        triple fault, budget, ...) is a stop with a signal (:data:`END_SIGNALS`), so the
        user can still read registers, memory and ``monitor vmcs`` (the exit fields):
        every continue reports it again, only ``kill`` ends the session."""
        ending = self.vm.ending
        if ending is not None and ending.outcome == "exited":
            return StopEvent.exited((ending.status or 0) & 0xFF)
        if ending is None or ending.outcome == "killed":
            return StopEvent.terminated()
        return StopEvent.signalled(self._current + 1, END_SIGNALS.get(str(ending.outcome), SIGTRAP))

    def interrupt(self) -> None:
        self.session.stop(self._scope_arg(), owner=self)
        self.session.interrupted(self.vm.vcpus[self._current])

    # -- breakpoints and watchpoints ---------------------------------------------------
    def add_sw_breakpoint(self, address: int, kind: int) -> bool:
        try:
            self.session.add_breakpoint(address, self._scope_arg())
        except ValueError as e:  # not a 64-bit address
            raise TargetError(str(e), errno.EINVAL) from None
        return True

    def remove_sw_breakpoint(self, address: int, kind: int) -> bool:
        return self.session.remove_breakpoint(address, self._scope_arg())

    add_hw_breakpoint = add_sw_breakpoint
    remove_hw_breakpoint = remove_sw_breakpoint

    def add_watchpoint(self, address: int, length: int, kind: WatchKind) -> bool:
        """False (E28) for a range that cannot be watched: unmapped, empty, or longer than
        :data:`hvdbg.debug.session.MAX_WATCH_LENGTH`."""
        try:
            self.session.add_watchpoint(address, length, _WATCH[kind], self._scope_arg(),
                                        translate_with=self.vm.vcpus[self._current])
        except (GuestFault, GuestMemoryError, ValueError):
            return False
        return True

    def remove_watchpoint(self, address: int, length: int, kind: WatchKind) -> bool:
        return self.session.remove_watchpoint(address, length, _WATCH[kind], self._scope_arg())

    # -- monitor, QEMU probes, detach, kill -------------------------------------------------
    def monitor_command(self, command: str, out: ConsoleOutput) -> None:
        if self.monitor is None:
            raise TargetError("no monitor commands")
        try:
            text = self.monitor(command, self.vm.vcpus[self._current])
        except HvdbgError as e:
            text = f"error: {e}\n"
        if text.strip():        # QEMU sends no output at all for a command that prints nothing
            out.write(text if text.endswith("\n") else text + "\n")

    def single_step_flags(self) -> SstepFlags:
        return self._sstep

    def set_single_step_flags(self, flags: SstepFlags) -> None:
        self._sstep = flags

    def detach(self) -> None:
        for bp in list(self.session.breakpoints.values()):
            if bp.vcpus == self.scope:
                self.session.remove_breakpoint(bp.address, self._scope_arg())
        # this debugger's holds end; what others hold (another debugger, the shell, the
        # --gdb-wait start: QEMU -S stays paused when gdb leaves) stays stopped
        self.session.release(self._scope_arg(), owner=self)
        if self._events is not None:
            self.session.unsubscribe(self._events)
            self._events = None

    def kill(self) -> None:
        self.vm.end("killed", detail="killed by the debugger")
        self.session.control.release_all()
