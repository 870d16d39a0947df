"""EngineCpu: the one object through which the hypervisor model drives a Unicorn engine
(the accelerator role of QEMU's ``accel/tcg``).  Everything above engine/ reaches the
engine only through this class and the other engine/ modules; nothing above imports
unicorn (tests/test_layers.py).

The engine reports what it cannot execute by itself as calls on an :class:`EngineEvents`
(the vCPU): CPUID, IN/OUT, interrupts and exceptions, invalid opcodes, accesses outside
what the EPT maps, the xAPIC page, and (through hvdbg.engine.intercepts) every RDMSR,
WRMSR, HLT, MOV to CR0/CR4, PAUSE when asked, and interrupt windows.  Each callback is
guarded: an exception inside it is handed to ``hook_failed`` and the engine stops, with
the guest state intact (a Python exception would otherwise vanish in the binding)."""

from __future__ import annotations

import collections
import functools
import threading
import traceback
from typing import Callable, Protocol

from unicorn import (UC_ARCH_X86, UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED, UC_ERR_READ_PROT,
                     UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED,
                     UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_PROT,
                     UC_HOOK_MEM_FETCH_UNMAPPED, UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_READ_UNMAPPED,
                     UC_HOOK_MEM_WRITE_PROT, UC_HOOK_MEM_WRITE_UNMAPPED, UC_MEM_FETCH_PROT,
                     UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED, UC_MODE_64,
                     UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError)
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from hvdbg.arch.regs import IA32_EFER
from hvdbg.arch.segments import Segment
from hvdbg.engine import hooks, ucx
from hvdbg.engine.intercepts import Intercepted, Intercepts
from hvdbg.engine.regs import FULL_WIDTH, RegisterBatch, RegisterFile

#: Register names -> Unicorn ids for single reads/writes (RFLAGS through the 32-bit
#: EFLAGS view, as the events code has always used it).
REG_IDS: dict[str, int] = {
    "rax": X.UC_X86_REG_RAX, "rbx": X.UC_X86_REG_RBX, "rcx": X.UC_X86_REG_RCX, "rdx": X.UC_X86_REG_RDX,
    "rsi": X.UC_X86_REG_RSI, "rdi": X.UC_X86_REG_RDI, "rbp": X.UC_X86_REG_RBP, "rsp": X.UC_X86_REG_RSP,
    "r8": X.UC_X86_REG_R8, "r9": X.UC_X86_REG_R9, "r10": X.UC_X86_REG_R10, "r11": X.UC_X86_REG_R11,
    "r12": X.UC_X86_REG_R12, "r13": X.UC_X86_REG_R13, "r14": X.UC_X86_REG_R14, "r15": X.UC_X86_REG_R15,
    "rip": X.UC_X86_REG_RIP, "rflags": X.UC_X86_REG_EFLAGS,
    "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3, "cr4": X.UC_X86_REG_CR4,
    "cr8": X.UC_X86_REG_CR8, "dr7": X.UC_X86_REG_DR7,
    "fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE,
}
#: The same registers as 64-bit scalars for batches (RFLAGS, not EFLAGS).
_BATCH_IDS: dict[str, int] = {**REG_IDS, "rflags": X.UC_X86_REG_RFLAGS}
_TABLES = {"gdtr": X.UC_X86_REG_GDTR, "idtr": X.UC_X86_REG_IDTR}
_RIP = X.UC_X86_REG_RIP
_RFLAGS = X.UC_X86_REG_RFLAGS
_MEM_ERRORS = {UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
               UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT}
_FAULT_HOOKS = (UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
                | UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_FETCH_PROT)
_FAULT_KIND = {UC_MEM_WRITE_UNMAPPED: "write", UC_MEM_WRITE_PROT: "write",
               UC_MEM_FETCH_UNMAPPED: "fetch", UC_MEM_FETCH_PROT: "fetch"}


class EngineEvents(Protocol):
    """What the engine tells its vCPU (each call is made on the engine's thread)."""

    def on_cpuid(self) -> None: ...
    def on_rdtsc(self, rdtscp: bool) -> None: ...
    def on_in(self, port: int, size: int) -> int: ...
    def on_out(self, port: int, size: int, value: int) -> None: ...
    def on_interrupt(self, vector: int) -> None: ...
    def on_msr(self, write: bool) -> None: ...
    def on_cr_access(self, cr: int, write: bool) -> None: ...
    def on_hlt(self) -> None: ...
    def on_invd(self) -> None: ...
    def on_invlpg(self) -> None: ...
    def on_pause(self) -> None: ...
    def on_interrupt_window(self) -> None: ...
    def on_nmi_window(self) -> None: ...
    def on_shutdown(self) -> None: ...
    def on_syscall(self) -> None: ...
    def on_sysenter(self) -> None: ...
    def on_invalid_opcode(self) -> None: ...
    def on_memory_fault(self, access: str, gpa: int) -> bool: ...
    def on_apic_read(self, offset: int, size: int) -> int: ...
    def on_apic_write(self, offset: int, size: int, value: int) -> None: ...
    def on_mmio_read(self, gpa: int, size: int) -> int: ...
    def on_mmio_write(self, gpa: int, size: int, value: int) -> None: ...
    def hook_failed(self, exc: BaseException, tb: str) -> None: ...


class ExecutionTurns:
    """Only one engine of a machine executes guest code at any instant, and engines take
    turns in the order they asked (a FIFO hand-off lock).

    Unicorn 2.1.4 never translates with CF_PARALLEL, so ``lock xadd``/``cmpxchg``/``xchg``
    are plain load-op-store sequences: two engines running at once on two host threads
    over one RAM lose updates (../shared/notes/unicorn-2.1.4.md, 2026-12-01).  With one
    engine at a time every instruction, locked or not, is atomic with respect to the other
    vCPUs, as in QEMU's single-threaded TCG.  The executors still model pCPUs and run
    vCPU threads; only guest execution is serialized.  FIFO order keeps a spinning vCPU
    from starving the lock holder it waits for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self._busy = False
        #: grows when a turn starts and when it ends: while it stays the same, no guest
        #: code ran (a debugger's cached translations stay valid, hvdbg.hv.guest_view)
        self.taken = 0

    def __enter__(self) -> "ExecutionTurns":
        with self._lock:
            self.taken += 1
            if not self._busy:
                self._busy = True
                return self
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()   # the previous holder handed its turn over: _busy stays True
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.taken += 1
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._busy = False


class EngineError:
    """Why ``emu_start`` failed: Unicorn's message, and whether it was a memory access
    the EPT does not allow (a fault hook declined it)."""

    __slots__ = ("message", "memory")

    def __init__(self, message: str, memory: bool) -> None:
        self.message = message
        self.memory = memory

    def __str__(self) -> str:
        return self.message


def uc_perms(perms: int) -> int:
    """EPT R/W/X bits (0/1/2) -> Unicorn protection bits."""
    return (UC_PROT_READ if perms & 1 else 0) | (UC_PROT_WRITE if perms & 2 else 0) | \
        (UC_PROT_EXEC if perms & 4 else 0)


#: The Unicorn CPU models a vCPU can run on (hvdbg.arch.cpuid.CPU_MODELS names one per
#: model): the model decides which instructions the decoder accepts (ADX, CLAC/STAC, ...).
ENGINE_MODELS = {"haswell": X.UC_CPU_X86_HASWELL, "icelake-server": X.UC_CPU_X86_ICELAKE_SERVER}


class EngineCpu:
    """One Unicorn engine in 64-bit mode with the SDM reset state (Table 9-1) loaded."""

    def __init__(self, model: str = "haswell") -> None:
        ucx.self_test()
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.ctl_set_cpu_model(ENGINE_MODELS[model])   # before any other use of the engine
        # No stop address: emu_start's ``until`` is an address (0 would stop code at linear
        # 0, e.g. an AP started by SIPI vector 0), and after each run Unicorn invalidates the
        # block at until - 1 through a guest page walk that can leave a sticky #PF.  An empty
        # exits list turns both off (../shared/notes/unicorn-2.1.4.md, 2026-12-01).
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        ucx.use_live_state(self.uc)     # CPU state read and patched in place, no context copies
        ucx.load_reset_state(self.uc)
        self.intercepts = Intercepts(self.uc)
        self.regs = RegisterFile(self.uc)
        self.counter = ucx.InstructionCounter(self.uc)
        self._batches: dict[tuple[int, ...], RegisterBatch] = {}
        self._named_batches: dict[tuple[str, ...], RegisterBatch] = {}
        self._events: EngineEvents | None = None
        self._ram: list[tuple[int, int]] = []        # (gpa, size) mapped as RAM
        self._mmio: list[tuple[int, int]] = []       # (gpa, size) mapped as MMIO
        self._ram_replaced = False                   # a nested guest's memory view is mapped

    # -- events ------------------------------------------------------------------------------
    def _guard(self, fn: Callable, default):
        """A callback that never lets an exception into the binding."""
        @functools.wraps(fn)
        def hook(*args):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - reported, never lost
                assert self._events is not None
                self._events.hook_failed(e, traceback.format_exc())
                self.uc.emu_stop()
                return default
        return hook

    def connect(self, events: EngineEvents, apic_base: int, apic_size: int,
                mmio_ranges: list[tuple[int, int]] = ()) -> None:
        """Route the engine's hooks to ``events``; map the xAPIC page and the device
        ``mmio_ranges`` (base, length) as MMIO."""
        self._events = events
        g = self._guard
        uc = self.uc

        def cpuid(_uc, _ud) -> int:
            events.on_cpuid()
            return 1  # the hook has set the result registers

        def port_in(_uc, port, size, _ud) -> int:
            return events.on_in(port, size)

        def port_out(_uc, port, size, value, _ud) -> None:
            events.on_out(port, size, value)

        intercepted = {Intercepted.RDMSR: lambda _cr: events.on_msr(False),
                       Intercepted.WRMSR: lambda _cr: events.on_msr(True),
                       Intercepted.MOV_TO_CR: lambda cr: events.on_cr_access(cr, True),
                       Intercepted.MOV_FROM_CR: lambda cr: events.on_cr_access(cr, False),
                       Intercepted.HLT: lambda _cr: events.on_hlt(),
                       Intercepted.INVD: lambda _cr: events.on_invd(),
                       Intercepted.INVLPG: lambda _cr: events.on_invlpg(),
                       Intercepted.PAUSE: lambda _cr: events.on_pause(),
                       Intercepted.INTERRUPT_WINDOW: lambda _cr: events.on_interrupt_window(),
                       Intercepted.NMI_WINDOW: lambda _cr: events.on_nmi_window(),
                       Intercepted.SHUTDOWN: lambda _cr: events.on_shutdown()}
        decode = self.intercepts.decode
        exception_taken = self.intercepts.exception_taken

        def interrupt(_uc, intno, _ud) -> None:
            event = decode(intno)
            if event is None:
                events.on_interrupt(intno)
                exception_taken()
            else:
                intercepted[event[0]](event[1])

        def invalid(_uc, _ud) -> bool:
            events.on_invalid_opcode()
            return True  # handled: the engine goes on at the RIP the vCPU left

        def fault(_uc, access, gpa, _size, _value, _ud) -> bool:
            return events.on_memory_fault(_FAULT_KIND.get(access, "read"), gpa)

        def apic_read(_uc, offset, size, _ud) -> int:
            return events.on_apic_read(offset, size)

        def apic_write(_uc, offset, size, value, _ud) -> None:
            events.on_apic_write(offset, size, value)

        hooks.add_system_call_hook(uc, X.UC_X86_INS_SYSCALL, g(lambda _uc, _ud: events.on_syscall(), None))
        hooks.add_system_call_hook(uc, X.UC_X86_INS_SYSENTER, g(lambda _uc, _ud: events.on_sysenter(), None))
        hooks.add_cpuid_hook(uc, g(cpuid, 1))
        hooks.add_tsc_hook(uc, X.UC_X86_INS_RDTSC, g(lambda _uc, _ud: events.on_rdtsc(False) or 1, 1))
        hooks.add_tsc_hook(uc, X.UC_X86_INS_RDTSCP, g(lambda _uc, _ud: events.on_rdtsc(True) or 1, 1))
        hooks.add_in_hook(uc, g(port_in, 0))
        hooks.add_out_hook(uc, g(port_out, None))
        uc.hook_add(UC_HOOK_INTR, g(interrupt, None))
        uc.hook_add(UC_HOOK_INSN_INVALID, g(invalid, True))
        uc.hook_add(_FAULT_HOOKS, g(fault, False))
        uc.mmio_map(apic_base, apic_size, g(apic_read, 0), None, g(apic_write, None), None)
        self._mmio = [(apic_base, apic_size)] + list(mmio_ranges)
        for base, length in mmio_ranges:
            def mmio_read(_uc, offset, size, _ud, base=base) -> int:
                return events.on_mmio_read(base + offset, size)

            def mmio_write(_uc, offset, size, value, _ud, base=base) -> None:
                events.on_mmio_write(base + offset, size, value)
            uc.mmio_map(base, length, g(mmio_read, 0), None, g(mmio_write, None), None)

    def add_code_site(self, address: int, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(address, instruction_size)`` before the instruction at ``address``
        (a per-address code hook: RDMSR/WRMSR/PAUSE, which Unicorn cannot hook otherwise)."""
        hooks.add_code_hook(self.uc, self._guard(lambda _uc, addr, size, _ud: callback(addr, size), None),
                            address, address)

    # -- running -------------------------------------------------------------------------------
    def run(self, begin: int, count: int) -> EngineError | None:
        """Execute from ``begin`` for at most ``count`` instructions (or until stopped)."""
        try:
            self.uc.emu_start(begin, 0, count=count)
        except UcError as e:
            return EngineError(str(e), e.errno in _MEM_ERRORS)
        return None

    def stop(self) -> None:
        """Make a running engine return from emu_start at the next instruction boundary."""
        self.uc.emu_stop()

    def stop_after_instruction(self) -> None:
        """From a memory hook: let the instruction doing the access complete, and stop
        before the next one.  ``emu_stop`` there lets the store happen but rolls RIP back
        to the instruction, which resuming would then execute a second time."""
        self.counter.end_budget_now()

    def stop_within(self, instructions: int) -> bool:
        """From a hook: let the run go on for at most ``instructions`` more instructions
        (after the current one); True if that shortened it."""
        return self.counter.end_budget_after(instructions)

    # -- registers -----------------------------------------------------------------------------
    def batch(self, reg_ids: tuple[int, ...]) -> RegisterBatch:
        """A register batch on this engine (built once per register list)."""
        b = self._batches.get(reg_ids)
        if b is None:
            b = self._batches[reg_ids] = RegisterBatch(self.uc, reg_ids)
        return b

    def batch_of(self, names: tuple[str, ...]) -> RegisterBatch:
        """A batch of named 64-bit registers (``batch_of(("rax", "rcx")).read()``); exit
        handlers call this at every exit, so the batch is found by the names themselves."""
        b = self._named_batches.get(names)
        if b is None:
            b = self._named_batches[names] = self.batch(tuple(_BATCH_IDS[n] for n in names))
        return b

    def read(self, name: str) -> int:
        """A register by name ("rax", "rip", "cr3", "efer", ... or a capstone name such as
        "eax", read as its 64-bit register)."""
        if name == "efer":
            return ucx.read_efer(self.uc)
        reg = REG_IDS.get(name)
        if reg is None:
            reg = getattr(X, f"UC_X86_REG_{name.upper()}", None)
            if reg is None:
                return 0
        if reg in FULL_WIDTH:
            return self.regs.read(reg)     # the binding's reg_read costs ~4x more
        return self.uc.reg_read(reg)

    def write(self, name: str, value: int) -> None:
        if name == "efer":
            ucx.msr_write(self.uc, IA32_EFER, value)
            return
        reg = REG_IDS[name]
        if reg in FULL_WIDTH:
            self.regs.write(reg, value)
        else:
            self.uc.reg_write(reg, value)

    def rip(self) -> int:
        return self.regs.read(_RIP)

    def land_system_call(self, target: int, length: int) -> None:
        """From a SYSCALL/SYSENTER event: continue at ``target``.  Unicorn's helper adds
        the instruction length to RIP after the hook returns, so RIP is set that much
        lower."""
        self.uc.reg_write(_RIP, (target - length) & 0xFFFFFFFFFFFFFFFF)

    def system_call_msrs(self) -> dict[str, int]:
        """SYSENTER_CS/ESP/EIP, STAR, LSTAR, CSTAR, FMASK (no RDMSR helper)."""
        return ucx.read_system_call_msrs(self.uc)

    def rflags(self) -> int:
        return self.regs.read(_RFLAGS)

    def set_rip(self, value: int) -> None:
        self.uc.reg_write(_RIP, value)

    def segments(self) -> dict[str, Segment]:
        return ucx.read_segments(self.uc)

    def segment(self, name: str) -> Segment:
        """One of :meth:`segments` (cs, ss, ds, es, fs, gs), read alone."""
        return ucx.read_segment(self.uc, name)

    def set_segments(self, segs: dict[str, Segment]) -> None:
        ucx.write_segments(self.uc, segs)

    def table(self, name: str) -> tuple[int, int]:
        """GDTR or IDTR as (base, limit)."""
        _sel, base, limit, _flags = self.uc.reg_read(_TABLES[name])
        return base, limit

    def set_table(self, name: str, base: int, limit: int) -> None:
        self.uc.reg_write(_TABLES[name], (0, base, limit, 0))

    def cpl(self) -> int:
        return ucx.current_cpl(self.uc)

    def set_control_registers(self, cr0: int, cr3: int, cr4: int, efer: int) -> None:
        ucx.set_control_registers(self.uc, cr0, cr3, cr4, efer)

    def load_reset_state(self) -> None:
        """The state after RESET/INIT (SDM Table 9-1)."""
        ucx.load_reset_state(self.uc)
        self.intercepts.arm()

    def msr_read(self, msr: int) -> int:
        """RDMSR as the engine's CPU model implements it (never intercepted); only on
        this engine's own thread (it uses the live RAX/RCX/RDX)."""
        return ucx.msr_read(self.uc, msr)

    def msr_write(self, msr: int, value: int) -> None:
        ucx.msr_write(self.uc, msr, value)

    def take_exception_error_code(self) -> int:
        """The error code of the exception being reported, clearing Unicorn's sticky
        pending-exception state (see engine/ucx.reset_pending_exception)."""
        return ucx.reset_pending_exception(self.uc)

    # -- memory views (hvdbg.platform.memory.EngineMapping) -------------------------------------
    def map_ram(self, gpa: int, size: int, perms: int, host_pointer: int) -> None:
        self.uc.mem_map_ptr(gpa, size, uc_perms(perms), host_pointer)
        self._ram.append((gpa, size))

    def protect_ram(self, gpa: int, size: int, perms: int) -> None:
        if self._ram_replaced:
            return    # the machine's own view is mapped again, with its current permissions, later
        self.uc.mem_protect(gpa, size, uc_perms(perms))
        self.flush_tlb()

    def replace_ram(self, pieces: list[tuple[int, int, int, int]], *, nested: bool) -> None:
        """Unmap every RAM mapping and map ``pieces`` (gpa, size, EPT perms, host pointer)
        instead: a nested guest's physical address space (``nested``), or the machine's own
        again.  Translated code and the TLB are dropped (the same addresses now hold other
        bytes)."""
        for gpa, size in self._ram:
            self.uc.mem_unmap(gpa, size)
        self._ram = []
        for gpa, size, perms, pointer in pieces:
            self.map_ram(gpa, size, perms, pointer)
        self._ram_replaced = nested
        self.uc.ctl_flush_tb()
        self.flush_tlb()
        # mem_unmap invalidates code through a page walk of the current paging structures,
        # which may be in memory just unmapped: measured, it leaves QEMU's sticky
        # old_exception at #DF, and the next guest exception became a shutdown
        ucx.reset_pending_exception(self.uc)

    def flush_tlb(self) -> None:
        """Drop every cached translation (Unicorn's binding has no ctl_flush_tlb)."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def overlaps_mmio(self, gpa: int, size: int) -> bool:
        return any(gpa < base + length and base < gpa + size for base, length in self._mmio)

    def flush_code(self, begin: int, end: int) -> None:
        """Drop translated code of [begin, end) (after code bytes changed)."""
        self.uc.ctl_remove_cache(begin, end)
