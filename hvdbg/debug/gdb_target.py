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
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from unicorn import x86_const as X

from gdbstub import (ConsoleOutput, DetachOps, HwBreakpointOps, KillOps, MemoryAccessError,
                     MonitorOps, PhysicalMemoryOps, ResumeAction, ResumeKind, SingleStepFlagsOps,
                     SstepFlags, StopEvent, SwBreakpointOps, Target, TargetError, ThreadExtraInfoOps,
                     ThreadInfo, WatchKind, WatchpointOps)
from gdbstub.arch.x86_64 import X86_64
from gdbstub.target import SIGTRAP
from hvdbg.arch import paging
from hvdbg.engine import ucx
from hvdbg.debug.session import DebugSession, Stop, StopKind
from hvdbg.errors import GuestMemoryError, HvdbgError
from hvdbg.arch.events import GuestFault
from hvdbg.engine.regs import RawRegisterBatch
from hvdbg.hv.vcpu import Vcpu

_GPR = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in
        ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
         "r12", "r13", "r14", "r15", "rip")}
_SEG = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in ("cs", "ss", "ds", "es", "fs", "gs")}
_MISC = {"eflags": X.UC_X86_REG_EFLAGS, "fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE,
         "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3,
         "cr4": X.UC_X86_REG_CR4, "cr8": X.UC_X86_REG_CR8, "mxcsr": X.UC_X86_REG_MXCSR,
         "fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW, "ftag": X.UC_X86_REG_FPTAG}
_MSR = {"efer": 0xC0000080, "k_gs_base": 0xC0000102}
_X87 = {f"st{i}": getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)}
_XMM = {f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)}
# what a 'g' reads, as one batch: (name, Unicorn register); st*/xmm* stay bytes
_G_LAYOUT = tuple({**_GPR, **_SEG, **_MISC, **_X87, **_XMM}.items())
_G_BYTES = frozenset(_X87) | frozenset(_XMM)
_WATCH = {WatchKind.WRITE: "write", WatchKind.READ: "read", WatchKind.ACCESS: "access"}
_WATCH_BACK = {v: k for k, v in _WATCH.items()}

# Architectural bits (SDM Vol. 3A 2.5 "Control Registers", 2.2.1 "Extended Feature Enable Register").
_CR0_PE, _CR0_NW, _CR0_CD, _CR0_PG = 1 << 0, 1 << 29, 1 << 30, 1 << 31
_CR4_RESERVED = 1 << 15 | ~((1 << 26) - 1)        # bit 15 and 63:26 (25:0 less 15 are defined)
_EFER_SCE, _EFER_LME, _EFER_LMA, _EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
_EFER_DEFINED = _EFER_SCE | _EFER_LME | _EFER_LMA | _EFER_NXE   # the Intel 64 bits
_CS_L = 1 << 13                                    # VMCS access-rights format


@dataclass(frozen=True)
class ControlState:
    """What decides whether a register write is one the CPU could make."""

    cr0: int
    cr3: int
    cr4: int
    efer: int
    rip: int
    cs_long: bool   # CS.L

    @property
    def code64(self) -> bool:
        return bool(self.efer & _EFER_LMA) and self.cs_long


def control_state_problem(old: ControlState, new: ControlState) -> str | None:
    """Why the CPU could not go from ``old`` to ``new`` by MOV to CR0/CR3/CR4, WRMSR to
    IA32_EFER and a jump (they would raise #GP), or None. Only what changes is judged.

    SDM Vol. 3A 2.5 and Vol. 2B MOV (control registers) / WRMSR: reserved bits of CR0
    (63:32), CR4 and EFER; PG without PE; NW without CD; CR3 above MAXPHYADDR (above 32
    bits outside IA-32e mode); PG with LME but without PAE; LME changed while paging is
    on; PAE or PG cleared in IA-32e / 64-bit mode. EFER.LMA is read-only (it is LME & PG,
    10.8.5); RIP must fit the code size (canonical in 64-bit code).
    """
    cr0_changed, efer_changed = new.cr0 != old.cr0, new.efer != old.efer
    if cr0_changed:
        if new.cr0 >> 32:
            return f"CR0 {new.cr0:#x}: bits 63:32 are reserved"
        if new.cr0 & _CR0_PG and not new.cr0 & _CR0_PE:
            return f"CR0 {new.cr0:#x}: PG without PE"
        if new.cr0 & _CR0_NW and not new.cr0 & _CR0_CD:
            return f"CR0 {new.cr0:#x}: NW without CD"
        if old.code64 and not new.cr0 & _CR0_PG:
            return "CR0.PG cannot be cleared in 64-bit code"
    if new.cr4 != old.cr4:
        if new.cr4 & _CR4_RESERVED:
            return f"CR4 {new.cr4:#x}: reserved bits set"
        if old.efer & _EFER_LMA and not new.cr4 & paging.CR4_PAE:
            return "CR4.PAE cannot be cleared in IA-32e mode"
    lma = bool(new.efer & _EFER_LME and new.cr0 & _CR0_PG)
    if (cr0_changed or efer_changed) and lma and not new.cr4 & paging.CR4_PAE:
        return "paging with EFER.LME needs CR4.PAE"
    if efer_changed:
        if new.efer & ~_EFER_DEFINED:
            return f"EFER {new.efer:#x}: reserved bits set"
        if (new.efer ^ old.efer) & _EFER_LME and old.cr0 & new.cr0 & _CR0_PG:
            return "EFER.LME cannot change while paging is on"
        if bool(new.efer & _EFER_LMA) != lma:
            return f"EFER {new.efer:#x}: LMA is read-only (it is LME and CR0.PG: {int(lma)})"
    if new.cr3 != old.cr3 and new.cr3 >> (paging.DEFAULT_MAXPHYADDR if lma else 32):
        return f"CR3 {new.cr3:#x} is wider than {paging.DEFAULT_MAXPHYADDR if lma else 32} bits"
    if new.rip != old.rip:
        code64 = lma and new.cs_long
        width = (57 if new.cr4 & paging.CR4_LA57 else 48) if code64 else 32
        top = new.rip >> (width - 1) if code64 else new.rip >> 32
        if top not in ((0, (1 << (65 - width)) - 1) if code64 else (0,)):
            return f"RIP {new.rip:#x} does not fit {'64-bit (canonical)' if code64 else '16/32-bit'} code"
    return None


class VmTarget(Target, SwBreakpointOps, HwBreakpointOps, WatchpointOps, MonitorOps, ThreadExtraInfoOps,
               SingleStepFlagsOps, PhysicalMemoryOps, DetachOps, KillOps):
    """GDB's view of some vCPUs of a VM."""

    def __init__(self, session: DebugSession, scope: frozenset[int] | None = None,
                 monitor=None) -> None:
        self.session = session
        self.vm = session.vm
        self.scope = frozenset(v.index for v in session.vcpus_of(scope))
        self.all_stop = len(self.scope) == len(self.vm.vcpus)
        self.monitor = monitor
        self._events: queue.Queue[Stop] | None = None
        self._sstep = SstepFlags.ENABLE | SstepFlags.NOIRQ | SstepFlags.NOTIMER
        self._current = min(self.scope)
        self._lock = threading.Lock()
        self._g_batches: dict[int, RawRegisterBatch] = {}

    @property
    def arch(self):
        return X86_64

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

    def _name(self, v: Vcpu) -> str:
        return f"vCPU {v.index} (APIC id {v.apic_id}, {v.activity.label})"

    def thread_extra_info(self, tid: int) -> str:
        v = self._vcpu(tid)
        rip = v.uc.reg_read(X.UC_X86_REG_RIP)
        sym = self.vm.symbols.symbolize(rip)
        return f"{self._name(v)} {v.code_bits()}-bit" + (f" in {sym}" if sym else "")

    # -- registers -------------------------------------------------------------------
    def read_registers(self, tid: int) -> Mapping[str, int | bytes]:
        """Every register of the target description with one batch read (gdb sends a
        ``g`` after every stop and step), plus the two MSRs."""
        v = self._vcpu(tid)
        batch = self._g_batches.get(tid)
        if batch is None:
            batch = self._g_batches[tid] = RawRegisterBatch(v.uc, [r for _n, r in _G_LAYOUT])
        out: dict[str, int | bytes] = {}
        for (name, _reg), raw in zip(_G_LAYOUT, batch.read()):
            out[name] = raw if name in _G_BYTES else int.from_bytes(raw, "little")
        # not uc.msr_read: its RDMSR helper saves and restores RAX/RCX/RDX of the live CPU
        out["efer"] = ucx.read_efer(v.uc)
        out["k_gs_base"] = ucx.read_kernel_gs_base(v.uc)
        return out

    def write_registers(self, tid: int, values: Mapping[str, int | bytes]) -> None:
        """Write registers; a control state the CPU could not reach is refused with E16
        (:func:`control_state_problem`) and nothing is written."""
        v = self._vcpu(tid)
        uc = v.uc
        old = ControlState(uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3),
                           uc.reg_read(X.UC_X86_REG_CR4), ucx.read_efer(uc),
                           uc.reg_read(X.UC_X86_REG_RIP), bool(v.get_segment("cs").access_rights & _CS_L))
        new = replace(old, **{n: values[n] for n in ("cr0", "cr3", "cr4", "efer", "rip")
                              if isinstance(values.get(n), int)})
        problem = control_state_problem(old, new)
        if problem is not None:
            raise TargetError(problem, errno.EINVAL)
        # the CPU's order: leaving paging, CR0 goes first; entering it, CR0 goes last (the
        # engine sets and clears EFER.LMA on the CR0.PG transition, 10.8.5)
        names = sorted(values, key=lambda n: (n == "cr0") == bool(new.cr0 & _CR0_PG))
        for name in names:
            value = values[name]
            if name in _GPR:
                uc.reg_write(_GPR[name], value)
            elif name in _MISC and name not in ("fstat", "ftag"):
                uc.reg_write(_MISC[name], value)
            elif name in _MSR:
                uc.msr_write(_MSR[name], value)
            elif name.startswith("xmm") and isinstance(value, bytes):
                uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), int.from_bytes(value, "little"))
            # segment selectors and x87 stack: read-only from GDB (their hidden parts
            # would not follow a selector write)

    # -- memory ----------------------------------------------------------------------
    def read_memory(self, tid: int, address: int, length: int) -> bytes:
        try:
            return self._vcpu(tid).read_linear(address, length)
        except (GuestFault, GuestMemoryError, ValueError) as e:
            raise MemoryAccessError(str(e)) from None

    def write_memory(self, tid: int, address: int, data: bytes) -> None:
        v = self._vcpu(tid)
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
        self.session.stop(self._scope_arg())
        if self.vm.ended and not self.session.running:
            return self._ended_event()
        return StopEvent.signalled(self._current + 1, SIGTRAP)

    def resume(self, actions: Mapping[int, ResumeAction]) -> None:
        events = self._ensure_events()
        while not events.empty():  # stops seen while gdb was stopped (e.g. a shell step)
            events.get_nowait()
        steps = [tid for tid, a in actions.items() if a.kind == ResumeKind.STEP]
        if steps:
            # the stepped vCPU runs one instruction; the others stay stopped (like
            # QEMU's NOIRQ|NOTIMER single step with scheduler locking)
            v = self._vcpu(steps[0])
            self._current = v.index
            self.session.step(v)
            return
        self.session.resume(self._scope_arg())

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
        self.session.stop(self._scope_arg())
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
        ending = self.vm.ending
        if ending is not None and ending.outcome == "exited":
            return StopEvent.exited((ending.status or 0) & 0xFF)
        return StopEvent.terminated()

    def interrupt(self) -> None:
        self.session.stop(self._scope_arg())
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
        out.write(text if text.endswith("\n") else text + "\n")

    def single_step_flags(self) -> SstepFlags:
        return self._sstep

    def set_single_step_flags(self, flags: SstepFlags) -> None:
        self._sstep = flags

    def detach(self) -> None:
        for bp in list(self.session.breakpoints.values()):
            if bp.vcpus == self.scope:
                self.session.remove_breakpoint(bp.address, self._scope_arg())
        self.session.resume(self._scope_arg())
        if self._events is not None:
            self.session.unsubscribe(self._events)
            self._events = None

    def kill(self) -> None:
        self.vm.end("killed", detail="killed by the debugger")
        self.session.resume()
