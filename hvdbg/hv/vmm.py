"""The VMM: what hvdbg's hypervisor does on each VM exit (one handler per basic exit
reason, SDM Appendix C), like the exit-handler table of KVM's vmx.c or an ArceOS
hypervisor's ``vmexit_handler``.

Each handler is a function of (vCPU, exit) that returns an
:class:`~hvdbg.hv.exit.ExitDecision` (resume, leave, native, fault); the vCPU applies it.
A handler that ends the whole VM (guest exit, fatal exit) tells the :class:`Lifecycle`.
The handlers reach the vCPU only through :class:`VcpuPort`, so they are unit-tested on
synthetic exits against a fake vCPU (tests/test_vmm_handlers.py).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from hvdbg.arch.apic import (APIC_BASE_BSP, APIC_BASE_EN, APIC_BASE_EXTD, IA32_APIC_BASE_MSR, X2APIC_MSR_BASE,
                             X2APIC_MSR_END, Reg, apic_base_write_problem)
from hvdbg.arch.regs import (DEBUGCTL_DEFINED, IA32_DEBUGCTL, IA32_EFER, IA32_MISC_ENABLE, IA32_PAT, IA32_TSC,
                             IA32_TSC_DEADLINE)
from hvdbg.platform.devices.bus import IoBus, MmioBus
from hvdbg.platform.devices.debug_exit import DEBUG_EXIT_PORT
from hvdbg.arch.events import hardware_exception
from hvdbg.vmx.exits import ExitReason
from hvdbg.hv.trace import ExitTrace
from hvdbg.hv.exit import ApicAccess, ExceptionExit, ExitDecision, ExitInfo, MmioAccess, MsrAccess
from hvdbg.arch.cpuid import CpuidModel
from hvdbg.arch.events import Event
from hvdbg.arch.segments import Segment, real_mode_segments
from hvdbg.platform.apic import LocalApic
from hvdbg.vmx.controls import PRIMARY_PROCESSOR_BASED, ActivityState
from hvdbg.vmx.vmcs import Vmcs
from hvdbg.hv import activity as act
from hvdbg.hv import nested, nested_guest, timekeeping
from hvdbg.vmx.instructions import Result, VmxState

HYPERCALL_PING = 0
HYPERCALL_EXIT = 1
HYPERCALL_MAGIC = 0x68766462  # "hvdb"

_INTERRUPT_WINDOW = PRIMARY_PROCESSOR_BASED.mask("INTERRUPT_WINDOW_EXITING")
_NMI_WINDOW = PRIMARY_PROCESSOR_BASED.mask("NMI_WINDOW_EXITING")
_CPUID_IN = ("rax", "rcx")
_CPUID_OUT = ("rax", "rbx", "rcx", "rdx")
#: MSRs the VMM emulates itself (besides the x2APIC range); the processor executes the rest
#: (hvdbg.arch.msrs: #GP for an MSR it does not implement).
VMM_MSRS = frozenset({IA32_APIC_BASE_MSR, IA32_TSC, IA32_MISC_ENABLE, IA32_TSC_DEADLINE, IA32_PAT, IA32_DEBUGCTL})
#: MSRs that exit only to be traced (their writes switch the guest's mode), then run natively.
TRACED_MSRS = frozenset({IA32_EFER})


def msr_bitmap_exiting() -> frozenset[int]:
    """The MSRs whose MSR-bitmap bits the VMM sets: the emulated ones, the x2APIC range,
    the nested-VMX ones and the traced ones (SDM 25.6.9)."""
    return VMM_MSRS | TRACED_MSRS | frozenset(range(X2APIC_MSR_BASE, X2APIC_MSR_END + 1)) | nested.VMX_MSR_INDEXES


class EnginePort(Protocol):
    """The engine operations the handlers use (hvdbg.engine.cpu.EngineCpu)."""

    def batch_of(self, names: tuple[str, ...]) -> Any: ...
    def read(self, name: str) -> int: ...
    def write(self, name: str, value: int) -> None: ...
    def rip(self) -> int: ...
    def set_rip(self, value: int) -> None: ...
    def load_reset_state(self) -> None: ...


class VcpuPort(Protocol):
    """What an exit handler may see and change of a vCPU (hvdbg.hv.vcpu.Vcpu): the
    handlers are functions of (VcpuPort, ExitInfo), unit-tested with a fake vCPU."""

    index: int
    engine: EnginePort
    cpuid: CpuidModel
    apic: LocalApic
    vmcs: Vmcs
    msrs: dict[int, int]
    activity: ActivityState
    pending_init: bool
    pending_sipi: int | None
    pending_event: Event | None
    pending_event_rip: int
    pending_event_length: int
    started_by_sipi: bool
    sipi_vector: int | None
    sipi_entry: int | None
    vmx: VmxState | None        # a guest hypervisor's VMX operation (CPUID offers vmx)

    def clock(self) -> int: ...
    def tsc(self) -> int: ...
    def set_tsc(self, value: int) -> None: ...
    def interrupts_enabled(self) -> bool: ...
    def code_bits(self) -> int: ...
    def get_segment(self, name: str) -> Segment: ...
    def decode(self, rip: int, count: int = 1) -> list: ...
    def set_guest_state(self, **state: Any) -> None: ...
    def vm_exit(self, info: ExitInfo) -> bool: ...
    def kick(self) -> None: ...
    def raise_exception(self, ev: Event, rip: int, length: int = 0) -> None: ...


class Lifecycle(Protocol):
    """How the VMM ends the VM and reaches the other vCPUs."""

    vcpus: list

    def end(self, outcome: str, status: int | None = None, detail: str = "") -> None: ...

    @property
    def ended(self) -> bool: ...


class Vmm:
    """Exit handlers for every vCPU of one VM."""

    def __init__(self, life: Lifecycle, bus: IoBus, trace: ExitTrace, *,
                 mmio: MmioBus | None = None, sipi_offset: int = 0) -> None:
        self.life = life
        self.bus = bus
        self.mmio = mmio if mmio is not None else MmioBus()
        self.trace = trace
        self.sipi_offset = sipi_offset
        self.exit_breakpoints: set[int] = set()
        self.internal_errors: list[str] = []
        self.preemption_timer = 0
        self.on_exit_breakpoint: Callable[[VcpuPort, ExitInfo], None] | None = None
        self._ept_fatal = self._fatal("ept_violation")
        self._handlers: dict[ExitReason, Callable[[VcpuPort, ExitInfo], ExitDecision]] = {
            ExitReason.CPUID: self._cpuid,
            ExitReason.IO_INSTRUCTION: self._io,
            ExitReason.APIC_ACCESS: self._apic_access,
            ExitReason.MSR_READ: self._msr_read,
            ExitReason.MSR_WRITE: self._msr_write,
            ExitReason.HLT: self._hlt,
            ExitReason.VMCALL: self._vmcall,
            ExitReason.INVD: self._invd,
            ExitReason.INIT_SIGNAL: self._init_signal,
            ExitReason.SIPI: self._sipi,
            ExitReason.EPT_VIOLATION: self._ept_violation,
            ExitReason.EPT_MISCONFIG: self._fatal("ept_misconfig"),
            ExitReason.TRIPLE_FAULT: self._fatal("triple_fault"),
            ExitReason.EXCEPTION_NMI: self._exception,
            ExitReason.PAUSE_INSTRUCTION: self._pause_loop,
            ExitReason.PREEMPTION_TIMER: self._preemption_timer,
            ExitReason.INTERRUPT_WINDOW: self._window(_INTERRUPT_WINDOW, "interrupt window open"),
            ExitReason.NMI_WINDOW: self._window(_NMI_WINDOW, "NMI window open (the last NMI's IRET ran)"),
        }
        self._handlers.update(dict.fromkeys(nested.VMX_INSTRUCTION_EXITS, self._vmx_instruction))

    # -- dispatch ---------------------------------------------------------------------
    def handle_exit(self, vcpu: VcpuPort, exit: ExitInfo) -> bool:
        """Decide ``exit`` (its ``decision`` is set), record it in the trace; True if the
        guest stays in the engine, False if it leaves (not RESUME, a break on this exit
        reason, or the VM has ended)."""
        if vcpu.vmx is not None and vcpu.vmx.non_root and nested_guest.l1_wants(nested_guest.vmcs12(vcpu), exit):
            handler = self._reflect
        else:
            handler = self._handlers.get(exit.reason, self._unhandled)
        decision = exit.decision = handler(vcpu, exit)
        self.trace.record(vcpu.index, exit.reason, exit.qualification, exit.rip, vcpu.clock(), exit.detail)
        if int(exit.reason) in self.exit_breakpoints and self.on_exit_breakpoint is not None:
            self.on_exit_breakpoint(vcpu, exit)
            return False
        return (decision is ExitDecision.RESUME or decision is ExitDecision.NATIVE) and not self.life.ended

    def _reflect(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        """An exit of the guest hypervisor's guest that the guest hypervisor asked for: it
        becomes its VM exit when the engine run ends (hvdbg.hv.nested_guest)."""
        x = nested_guest.reflect(vcpu, exit)
        x.detail = nested_guest.describe(x, exit)
        exit.detail = f"L2 -> L1 at {x.rip:#x}: {x.detail}"
        return ExitDecision.REFLECTED

    def internal_error(self, vcpu: VcpuPort, exc: BaseException, tb: str) -> None:
        """A bug in hvdbg itself while handling this vCPU: end the VM, keep the state."""
        self.internal_errors.append(tb)
        self.life.end("internal_error", detail=f"vCPU {vcpu.index}: hvdbg internal error "
                      f"({type(exc).__name__}: {exc}); the guest state is preserved for inspection")

    def _unhandled(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        exit.detail = f"no handler for exit reason {exit.reason.name}"
        self.life.end("fatal", detail=f"vCPU {vcpu.index}: {exit.detail}")
        return ExitDecision.LEAVE

    def _fatal(self, outcome: str) -> Callable[[VcpuPort, ExitInfo], ExitDecision]:
        def handle(vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
            self.life.end(outcome, detail=f"vCPU {vcpu.index}: {exit.reason.name} at RIP {exit.rip:#x}")
            return ExitDecision.LEAVE
        return handle

    # -- CPUID (exit reason 10) -----------------------------------------------------------
    def _cpuid(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        rax, rcx = vcpu.engine.batch_of(_CPUID_IN).read()
        leaf = rax & 0xFFFFFFFF
        sub = rcx & 0xFFFFFFFF
        eax, ebx, ecx, edx = vcpu.cpuid.query(leaf, sub)
        if leaf == 1 and not (vcpu.apic.base_msr & (1 << 11)):
            edx &= ~(1 << 9)  # APIC globally disabled: CPUID.1:EDX.APIC = 0 (SDM 11.4.3)
        if leaf in (1, 7):
            ecx = vcpu.cpuid.with_control_bits(leaf, ecx, vcpu.engine.read("cr4"))
        vcpu.engine.batch_of(_CPUID_OUT).write((eax, ebx, ecx, edx))
        exit.detail = f"leaf {leaf:#x}.{sub:#x}"
        return ExitDecision.RESUME

    # -- I/O instruction (exit reason 30) -------------------------------------------------
    def _io(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        q = exit.qualification
        size = (q & 7) + 1
        port = q >> 16
        if q & (1 << 3):
            exit.data = self.bus.read(port, size)
            exit.detail = f"in {port:#x} -> {exit.data:#x}"
            return ExitDecision.RESUME
        self.bus.write(port, size, exit.data)
        exit.detail = f"out {port:#x} <- {exit.data:#x}"
        if port == DEBUG_EXIT_PORT:
            return ExitDecision.LEAVE  # the debug-exit device ended the VM
        return ExitDecision.RESUME

    # -- EPT violation (exit reason 48) ----------------------------------------------------
    def _ept_violation(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        """An access to device MMIO is emulated (the device model completes it, as KVM's
        MMIO emulation does); any other EPT violation ends the VM (the guest touched a
        GPA it was not given)."""
        access = exit.payload
        if isinstance(access, MmioAccess):
            gpa = exit.guest_physical
            if access.write:
                if self.mmio.write(gpa, access.size, exit.data):
                    exit.detail = f"mmio write {gpa:#x} <- {exit.data:#x}"
                    return ExitDecision.RESUME
            else:
                value = self.mmio.read(gpa, access.size)
                if value is not None:
                    exit.data = value
                    exit.detail = f"mmio read {gpa:#x} -> {value:#x}"
                    return ExitDecision.RESUME
        return self._ept_fatal(vcpu, exit)

    # -- APIC access (exit reason 44) ------------------------------------------------------
    def _apic_access(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        offset = exit.qualification & 0xFFF
        size = exit.payload.size if isinstance(exit.payload, ApicAccess) else 4
        reg = offset & ~0xF
        shift = (offset & 3) * 8
        write = exit.qualification >> 12 & 0xF != 0
        if vcpu.apic.x2apic_mode or not vcpu.apic.base_msr & APIC_BASE_EN:
            # the xAPIC page is not decoded (SDM 11.4.3: globally disabled; 11.12.1: x2APIC
            # mode): nothing answers, reads are all-ones and writes go nowhere
            why = "x2APIC mode" if vcpu.apic.x2apic_mode else "the APIC globally disabled"
            exit.data = exit.data if write else (1 << (8 * size)) - 1
            exit.detail = f"xAPIC MMIO {'write' if write else 'read'} with {why}: not decoded ({_reg_name(reg)})"
            return ExitDecision.RESUME
        if not write:
            value = vcpu.apic.read(reg) >> shift
            exit.data = value & ((1 << (8 * size)) - 1)
            exit.detail = f"read {_reg_name(reg)} -> {exit.data:#x}"
            return ExitDecision.RESUME
        value = exit.data << shift
        exit.detail = f"write {_reg_name(reg)} <- {value:#x}"
        vcpu.apic.write(reg, value)
        self._complete_write(vcpu, exit)
        return ExitDecision.LEAVE if self.life.ended else ExitDecision.RESUME

    @staticmethod
    def _complete_write(vcpu: VcpuPort, exit: ExitInfo) -> None:
        """An APIC-access exit is fault-like: the VMM emulates the access and moves RIP past
        the instruction (SDM 29.4.2, 28.2.1).  Doing so here matters when the write makes
        this vCPU leave the engine (a self-IPI or self-NMI, an EOI that unmasks a pending
        interrupt, the end of the VM): Unicorn would otherwise resume at the store and
        replay it, so a self-NMI would be sent again after every IRET."""
        if vcpu.code_bits() != 64 and vcpu.get_segment("cs").base:
            return  # Vcpu.decode reads at RIP, not CS.base + RIP: leave such code alone
        insns = vcpu.decode(exit.rip, 1)
        if insns:
            exit.instruction_length = insns[0].size
            vcpu.engine.set_rip(exit.rip + insns[0].size)

    # -- RDMSR / WRMSR (exit reasons 31, 32) ------------------------------------------------
    def _msr_read(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        msr = _msr_of(exit)
        exit.detail = f"rdmsr {msr:#x}"
        value, why = self.read_msr(vcpu, msr)
        if why is not None:
            return self._inject_gp(vcpu, exit, why)
        if value is None:
            return ExitDecision.NATIVE  # not the VMM's: the engine executes it
        exit.data = value
        exit.detail += f" -> {exit.data:#x}"
        return ExitDecision.RESUME

    def read_msr(self, vcpu: VcpuPort, msr: int) -> tuple[int | None, str | None]:
        """RDMSR of ``msr`` as the VMM performs it (the exit handler and the VMX MSR-store
        list): (value, why it raises #GP(0)); (None, None): the processor's MSR."""
        if msr == IA32_APIC_BASE_MSR:
            return vcpu.apic.base_msr, None
        if X2APIC_MSR_BASE <= msr <= X2APIC_MSR_END:
            if not vcpu.apic.x2apic_mode:
                return None, "x2APIC MSR read while x2APIC mode is off"
            return vcpu.apic.read_msr(msr), None
        if msr == IA32_TSC:
            return vcpu.tsc(), None
        if msr == IA32_TSC_DEADLINE:
            deadline = vcpu.apic.tsc_deadline()
            return (0 if deadline is None else timekeeping.tsc_at(vcpu, deadline)), None
        if msr in vcpu.msrs or msr == IA32_DEBUGCTL:
            return vcpu.msrs.get(msr, 0), None
        if nested.owns_msr(vcpu, msr):
            return nested.read_msr(vcpu, msr) or 0, None
        return None, None

    def _msr_write(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        msr = _msr_of(exit)
        value = exit.data
        exit.detail = f"wrmsr {msr:#x} <- {value:#x}"
        done, why = self.write_msr(vcpu, msr, value)
        if why is not None:
            return self._inject_gp(vcpu, exit, why)
        if not done:
            return ExitDecision.NATIVE
        return ExitDecision.LEAVE if self.life.ended else ExitDecision.RESUME

    def write_msr(self, vcpu: VcpuPort, msr: int, value: int) -> tuple[bool, str | None]:
        """WRMSR of ``value`` to ``msr`` as the VMM performs it (the exit handler and the
        VMX MSR-load lists): (done, why it raises #GP(0)); done False and no reason: not
        an MSR the VMM emulates (the processor executes it)."""
        if msr == IA32_APIC_BASE_MSR:
            maxphyaddr = vcpu.cpuid.query(0x80000008)[0] & 0xFF     # what the guest was told
            why = apic_base_write_problem(vcpu.apic.base_msr, value & ~APIC_BASE_BSP, vcpu.apic.x2apic_supported,
                                          maxphyaddr)
            if why is not None:
                return False, why
            vcpu.apic.base_msr = (value & ~0xFF) | (vcpu.apic.base_msr & APIC_BASE_BSP)
        elif X2APIC_MSR_BASE <= msr <= X2APIC_MSR_END:
            if not vcpu.apic.x2apic_mode:
                return False, "x2APIC MSR write while x2APIC mode is off"
            vcpu.apic.write_msr(msr, value)
        elif msr == IA32_TSC:
            vcpu.set_tsc(value)
        elif msr == IA32_TSC_DEADLINE:   # on the TSC, in virtual time (SDM 11.5.4.1)
            vcpu.apic.arm_tsc_deadline(timekeeping.clock_at(vcpu, value) if value else None)
        elif msr in (IA32_PAT, IA32_MISC_ENABLE):
            vcpu.msrs[msr] = value
        elif msr == IA32_DEBUGCTL:    # kept, not acted on: hvdbg records no branches (no LBR/BTS)
            if value & ~DEBUGCTL_DEFINED:
                return False, f"IA32_DEBUGCTL {value:#x}: reserved bits set"
            vcpu.msrs[msr] = value
        elif nested.owns_msr(vcpu, msr):
            if why := nested.write_msr_problem(vcpu, msr, value):
                return False, why
        else:
            return False, None
        return True, None

    def _inject_gp(self, vcpu: VcpuPort, exit: ExitInfo, why: str) -> ExitDecision:
        exit.detail += f": #GP injected ({why})"
        vcpu.pending_event = hardware_exception(13, 0)
        vcpu.pending_event_rip, vcpu.pending_event_length = exit.rip, 0
        vcpu.engine.set_rip(exit.rip)
        return ExitDecision.FAULT

    # -- interrupt and NMI windows (exit reasons 7, 8) --------------------------------------------------
    def _window(self, control: int, detail: str) -> Callable[[VcpuPort, ExitInfo], ExitDecision]:
        """Interrupt window (reason 7) / NMI window (reason 8): the guest can take the
        event the VMM holds for it.  Stop asking for the window (VM entry set it when it
        could not inject, like KVM's enable_irq_window / enable_nmi_window) and leave, so
        that the next VM entry injects it (SDM 25.2)."""
        def handle(vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
            controls = vcpu.vmcs.read("CPU_BASED_VM_EXEC_CONTROL")
            vcpu.vmcs.write("CPU_BASED_VM_EXEC_CONTROL", controls & ~control)
            exit.detail = detail
            return ExitDecision.LEAVE
        return handle

    # -- HLT (exit reason 12) ---------------------------------------------------------------
    def _hlt(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        if vcpu.interrupts_enabled() and vcpu.apic.has_pending():
            exit.detail = "interrupt already pending: not halting"
            return ExitDecision.LEAVE
        act.halt(vcpu)
        exit.detail = "IF=1, waiting for an interrupt" if vcpu.interrupts_enabled() else "IF=0: halted for good unless NMI/INIT/SIPI"
        return ExitDecision.LEAVE

    # -- PAUSE-loop exiting (exit reason 40) --------------------------------------------------
    def _pause_loop(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        """The vCPU spins on PAUSE: leave the engine so the scheduler can run another
        vCPU (the lock holder, with luck); the guest resumes at the next PAUSE."""
        return ExitDecision.LEAVE

    # -- VMX-preemption timer (exit reason 52) ------------------------------------------------
    def _preemption_timer(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        """Re-arm the timer (the VMM's time slice tick) and go on."""
        vcpu.vmcs.write("VMX_PREEMPTION_TIMER_VALUE", self.preemption_timer)
        exit.detail = f"re-armed with {self.preemption_timer}"
        return ExitDecision.LEAVE

    # -- VMCALL (exit reason 18) -------------------------------------------------------------
    def _invd(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        """INVD (exit reason 13): hvdbg has no caches to invalidate; the guest goes on."""
        exit.detail = "invd"
        return ExitDecision.RESUME

    def _vmcall(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        e = vcpu.engine
        nr = e.read("rax")
        if nr == HYPERCALL_PING:
            e.write("rax", HYPERCALL_MAGIC)
            exit.detail = "hypercall ping"
            return ExitDecision.RESUME
        if nr == HYPERCALL_EXIT:
            status = e.read("rbx")
            exit.detail = f"hypercall exit({status})"
            self.life.end("exited", status=status, detail=f"vCPU {vcpu.index} called the exit hypercall")
            return ExitDecision.LEAVE
        e.write("rax", 0xFFFFFFFFFFFFFFFF)
        exit.detail = f"unknown hypercall {nr:#x}"
        return ExitDecision.RESUME

    # -- a guest hypervisor's VMX instructions (exit reasons 19-27, 50, 53) -------------------
    def _vmx_instruction(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        """Emulated for the guest (hvdbg.hv.nested).  A VM entry that passed its checks runs
        the guest hypervisor's guest from the next engine run (hvdbg.hv.nested_guest)."""
        decision, outcome = nested.emulate(vcpu, exit)
        if outcome is not None and outcome.result is Result.VM_ENTRY:
            vcpu.vmx.pending_entry = exit.reason     # loaded when the engine run ends
        return decision

    # -- exceptions the exception bitmap intercepts (exit reason 0) ---------------------------
    def _exception(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        ev = exit.payload.event if isinstance(exit.payload, ExceptionExit) else None
        exit.detail = ev.describe() if ev else "exception"
        self.life.end("exception", detail=f"vCPU {vcpu.index}: exception exit: {exit.detail}")
        return ExitDecision.LEAVE

    # -- INIT and SIPI (exit reasons 3 and 4, SDM 26.2 / 9.4) ---------------------------------
    def _init_signal(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        """INIT (SDM 9.1.1, Table 9-1): the processor state after INIT, then wait-for-SIPI."""
        vcpu.engine.load_reset_state()
        vcpu.apic.reset()
        act.enter_wait_for_sipi(vcpu)
        vcpu.pending_event = None
        exit.detail = "INIT: vCPU reset, now waiting for SIPI"
        return ExitDecision.LEAVE

    def _sipi(self, vcpu: VcpuPort, exit: ExitInfo) -> ExitDecision:
        vector = exit.qualification & 0xFF
        base = (vector << 12) + self.sipi_offset  # sipi_offset != 0 only in the bug scenario
        vcpu.set_guest_state(rip=0, cr0=0x60000010, segments=real_mode_segments(vector << 8, base),
                             rflags=0x2, gdtr=(0, 0xFFFF), idtr=(0, 0xFFFF),
                             gprs={"rdx": 0x000506E3})
        vcpu.started_by_sipi = True
        vcpu.sipi_vector = vector
        vcpu.sipi_entry = base
        exit.detail = f"SIPI vector {vector:#04x}: real mode at CS:IP {vector << 8:#06x}:0000 (base {base:#x})"
        return ExitDecision.RESUME

    def take_signals(self, vcpu: VcpuPort) -> bool:
        """INIT / SIPI delivered to ``vcpu`` become its INIT-signal and SIPI exits, taken
        on its own executor (the target of an IPI sees the exit, SDM 26.2).  Returns True
        when an exit asked the vCPU to leave (e.g. a break on that exit reason)."""
        leave = False
        if not nested_guest.init_blocked(vcpu) and act.take_init(vcpu):
            vcpu.vm_exit(ExitInfo(ExitReason.INIT_SIGNAL, rip=vcpu.engine.rip()))
            leave |= int(ExitReason.INIT_SIGNAL) in self.exit_breakpoints
        vector = act.take_sipi(vcpu)
        if vector is not None:
            leave |= not vcpu.vm_exit(ExitInfo(ExitReason.SIPI, qualification=vector, rip=vcpu.engine.rip()))
        return leave


def _msr_of(exit: ExitInfo) -> int:
    """The MSR index of an RDMSR/WRMSR exit."""
    if not isinstance(exit.payload, MsrAccess):
        raise TypeError(f"{exit.reason.name} exit without its MSR")
    return exit.payload.msr


def _reg_name(offset: int) -> str:
    try:
        return Reg(offset).name
    except ValueError:
        return f"APIC+{offset:#x}"
