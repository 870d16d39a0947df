"""A virtual CPU in VMX non-root operation: an execution engine (hvdbg.engine.cpu), its
software VMCS, its local APIC and its CPUID view.

Intercepted instructions and events become VM exits (SDM Vol. 3C chapter 28, basic exit
reasons of Appendix C).  Each exit fills the exit-information fields of the VMCS and is
handed to the VMM (:class:`ExitHandler`), whose :class:`~hvdbg.hv.exit.ExitDecision`
the vCPU applies.  Exits the VMM handles without leaving the engine (CPUID, I/O, APIC
accesses, MSRs) resume the guest at once, inside the engine callback - the "fast path"
of a real VMM.  The others (HLT, exceptions, EPT violations, triple fault, INIT/SIPI...)
stop the engine; :meth:`Vcpu.run` returns to the executor.

Guest state lives in the engine while the vCPU runs; the VMCS guest-state area is written
lazily after an exit that left the engine (hvdbg.hv.guest_state), and loaded at VM entry
when the VMM changed it.  Activity-state transitions go through hvdbg.hv.activity.
"""

from __future__ import annotations

import enum
import threading
from typing import Callable, Protocol

from hvdbg.arch import paging
from hvdbg.arch.apic import XAPIC_BASE, XAPIC_SIZE
from hvdbg.arch.cpuid import CpuidModel
from hvdbg.arch.events import PF, Delivery, Event, EventType, hardware_exception
from hvdbg.arch.regs import RFLAGS_IF
from hvdbg.engine.cpu import EngineCpu, EngineError, ExecutionTurns
from hvdbg.arch.msrs import MsrModel
from hvdbg.hv import activity as act
from hvdbg.hv import (cr_access, injection, mmio_access, msr_access, nested, nested_guest, nested_memory, pause_loop,
                      system_calls, timekeeping)
from hvdbg.hv.exit import EptFault, ExceptionExit, ExitDecision, ExitInfo, TripleFault
from hvdbg.hv.guest_state import GPRS, GuestStateArea
from hvdbg.hv.guest_view import GuestView
from hvdbg.hv.timekeeping import PORT_ACCESS_NS, exit_time
from hvdbg.platform.apic import LocalApic
from hvdbg.platform.devices.bus import IoBus
from hvdbg.platform.memory import GuestMemory
from hvdbg.vmx.bitmaps import IoBitmaps, MsrBitmap, NoIoExits
from hvdbg.vmx.controls import PRIMARY_PROCESSOR_BASED, ActivityState
from hvdbg.vmx.exits import ExitReason, ept_violation_qualification, io_qualification
from hvdbg.vmx.vmcs import Vmcs

_USE_IO_BITMAPS = PRIMARY_PROCESSOR_BASED.mask("USE_IO_BITMAPS")
_UNCONDITIONAL_IO = PRIMARY_PROCESSOR_BASED.mask("UNCONDITIONAL_IO_EXITING")
_USE_MSR_BITMAPS = PRIMARY_PROCESSOR_BASED.mask("USE_MSR_BITMAPS")
_INTERRUPT_WINDOW = PRIMARY_PROCESSOR_BASED.mask("INTERRUPT_WINDOW_EXITING")
_NMI_WINDOW = PRIMARY_PROCESSOR_BASED.mask("NMI_WINDOW_EXITING")


class ExitHandler(Protocol):
    """The VMM (hvdbg.hv.vmm.Vmm): decides every exit, reaches the I/O bus for ports whose
    I/O-bitmap bit is clear, and hears of hvdbg's own failures."""

    bus: IoBus

    def handle_exit(self, vcpu: "Vcpu", exit: ExitInfo) -> bool:
        """Set ``exit.decision``; True to stay in the engine, False to leave it."""

    def internal_error(self, vcpu: "Vcpu", exc: BaseException, tb: str) -> None: ...


class RunEnd(enum.Enum):
    """Why :meth:`Vcpu.run` returned."""

    SLICE = "slice"          # instruction budget of the slice used up
    EXIT = "exit"            # a VM exit that leaves the engine
    KICKED = "kicked"        # another thread asked this vCPU to stop
    NOT_RUNNABLE = "idle"    # halted / waiting for SIPI / shutdown


class Vcpu(GuestView, GuestStateArea):
    """One vCPU.  Thread affinity: :meth:`run` is called by one executor thread at a time;
    :meth:`kick` and the APIC's interrupt acceptance may be called from any thread."""

    def __init__(self, index: int, apic_id: int, memory: GuestMemory, handler: ExitHandler,
                 cpuid: CpuidModel, *, bsp: bool, x2apic: bool,
                 send_ipi: Callable, turns: ExecutionTurns | None = None,
                 mmio_ranges: list[tuple[int, int]] = ()) -> None:
        self.index = index
        self.memory = memory
        self.handler = handler
        self.cpuid = cpuid
        self.bsp = bsp
        self._vmcs = Vmcs()
        self._guest_stale = False       # the engine holds newer guest state than the VMCS
        self.engine = EngineCpu(cpuid.engine_model)   # SDM Table 9-1 reset state loaded
        self.turns = turns if turns is not None else ExecutionTurns()   # shared by the machine's vCPUs
        self.regs = self.engine.regs    # hot-path register access (hvdbg.engine.regs)
        self.msr_regs = self.engine.batch_of(("rcx", "rax", "rdx"))
        self.counter = self.engine.counter
        self.instructions = 0          # retired in finished runs
        self.idle_ticks = 0            # virtual time that passed without instructions
        self.woken_ticks = 0           # ... of which: slept in HLT until a sender's time (activity)
        self.spin_skipped = 0          # ... of it skipped in loops without progress (spin_skip)
        self.ipi_log: list = []        # (IcrCommand, [target vCPU indexes]) sent by this vCPU
        self.sipi_entry: int | None = None
        self.pending_event_rip = self.pending_event_length = 0   # its RIP, and its instruction's length if trap-like
        self.hook_error: tuple[BaseException, str] | None = None
        self.on_kick: Callable[["Vcpu"], None] | None = None   # the executor's wake-up hook
        self.ple_window = 0
        # the VM-execution controls in effect, decoded from the VMCS at VM entry
        self._controls_key: tuple[int, ...] | None = None
        self.io_bitmaps: IoBitmaps | NoIoExits | None = None   # None: every I/O exits
        self.msr_bitmap: MsrBitmap | None = None               # None: every RDMSR/WRMSR exits
        self.pauses_in_run = 0
        self.spin_exit = False          # the last run ended in a PAUSE-loop exit
        self.delivered: list[tuple[Event, int]] = []   # exceptions delivered to the guest (first 64)
        self.exception_counts: dict[int, int] = {}      # vector -> exceptions delivered
        self.interrupt_counts: dict[int, int] = {}      # vector -> external interrupts delivered
        self.last_exception_vector, self.last_exception_rip = -1, 0
        self.exception_streak = 0           # the same exception at the same RIP, in a row
        self.longest_exception_streak = 0
        self.entries = 0                # VM entries (runs)
        self.tiny_entries = 0           # ... whose budget was one instruction
        self.blocked_injections = 0     # entries with an interrupt pending that could not be injected
        self._in_run = False
        self.activity = ActivityState.ACTIVE if bsp else ActivityState.WAIT_FOR_SIPI
        self.started_by_sipi = False
        self.sipi_vector: int | None = None
        self.pending_init = False
        self.pending_sipi: int | None = None
        self.pending_event: Event | None = None   # an exception to deliver at next entry
        self.last_exit: ExitInfo | None = None
        self.last_delivery: Delivery | None = None
        self.exit_count = 0
        self.runs_without_exit = 0
        self.msrs: dict[int, int] = {}
        self.tsc_adjust = 0             # IA32_TSC minus the virtual time (WRMSR to IA32_TSC)
        self.msr_model = MsrModel(cpuid.features + (("x2apic",) if x2apic else ()))
        self.vmx = nested.new_vmx_state() if "vmx" in cpuid.features else None   # nested VMX
        self.msr_faults: list[tuple[int, bool, int, str]] = []   # (msr, write, rip, why): last 16 #GPs
        self.cr_faults: list[tuple[int, int, int, str]] = []     # (cr, value, rip, why): last 16 #GPs
        self._hlt_at: int | None = None       # RIP of the HLT that ended the run
        self._boundary_stop = False           # the run stopped between two instructions
        self._window_exiting = False          # primary control bit 2 at the last entry
        self._nmi_window_exiting = False      # ... and bit 22
        self._finishing = False               # leaving after the current instruction
        self._event_deadline: int | None = None   # the APIC's next event, when the run began
        self._budget_cut = False              # the run's budget was ended early (I/O time)
        self.board = None     # the PC board's timers (hvdbg.platform.board.PcBoard), set by the machine
        self._kick, self._leave = threading.Event(), False
        self._park = False              # a debugger stop arrived: skip the next slice
        self.pcpu: int | None = None
        self.apic = LocalApic(apic_id, bsp=bsp, x2apic_supported=x2apic, send_ipi=send_ipi,
                              clock=self.clock, on_pending=self.kick, on_timer_armed=self.bound_run)
        memory.attach(self.engine)
        self.engine.connect(self, XAPIC_BASE, XAPIC_SIZE, mmio_ranges)

    @property
    def vmcs(self) -> Vmcs:
        """The software VMCS.  Its guest-state area is written lazily: the first read after
        an exit that left the engine saves the engine's state into it (SDM 28.3)."""
        if self._guest_stale and not self._in_run:
            self._guest_stale = False
            self.save_guest_state()
        return self._vmcs

    @property
    def apic_id(self) -> int:
        return self.apic.apic_id

    def clock(self) -> int:
        """Virtual time of this vCPU: guest instructions retired."""
        return self.instructions + self.idle_ticks + (self.counter.value() if self._in_run else 0)

    def tsc(self) -> int:
        """The time-stamp counter: the virtual time at 1 GHz (hvdbg.hv.timekeeping)."""
        return timekeeping.tsc(self)

    def set_tsc(self, value: int) -> None:
        timekeeping.set_tsc(self, value)

    def next_event(self) -> int | None:
        return timekeeping.next_event(self)

    def poll_board(self) -> None:
        timekeeping.poll_board(self)

    # -- VM exits ------------------------------------------------------------------------
    _EXIT_FIELDS = Vmcs.plan(("VM_EXIT_REASON", "EXIT_QUALIFICATION", "GUEST_RIP", "VM_EXIT_INSTRUCTION_LEN"))

    def vm_exit(self, info: ExitInfo) -> bool:
        """Record a VM exit in the VMCS and hand it to the VMM (SDM 28.2).  True if the
        guest stays in the engine."""
        v = self._vmcs
        v.write_planned(self._EXIT_FIELDS, (info.reason, info.qualification, info.rip, info.instruction_length))
        if info.guest_physical is not None:
            v.write("GUEST_PHYSICAL_ADDRESS", info.guest_physical)
        if info.guest_linear is not None:
            v.write("GUEST_LINEAR_ADDRESS", info.guest_linear)
        if info.interruption_info:
            v.write("VM_EXIT_INTR_INFO", info.interruption_info)
            if info.interruption_error is not None:
                v.write("VM_EXIT_INTR_ERROR_CODE", info.interruption_error)
        self.exit_count += 1
        self.last_exit = info
        self._pass_time(exit_time(info.reason))
        stay = self.handler.handle_exit(self, info)
        if not stay:
            self.request_leave()
        return stay

    # -- engine events (hvdbg.engine.cpu.EngineEvents) -------------------------------------
    def hook_failed(self, exc: BaseException, tb: str) -> None:
        """hvdbg's own bug in an engine callback: an internal error, the guest state intact."""
        self.hook_error = (exc, tb)
        self._leave = True

    def on_cpuid(self) -> None:
        self.vm_exit(ExitInfo(ExitReason.CPUID, rip=self.engine.rip(), instruction_length=2))

    def on_rdtsc(self, rdtscp: bool) -> None:
        timekeeping.rdtsc(self, rdtscp)

    def _pass_time(self, ns: int) -> None:   # an IN/OUT or a VM exit (hvdbg.hv.timekeeping)
        self.idle_ticks += ns
        self.bound_run(None)

    def bound_run(self, deadline: int | None) -> None:
        """End the current run by ``deadline`` too (a timer armed during it) and its event deadline."""
        if not self._in_run:
            return
        if deadline is not None and (self._event_deadline is None or deadline < self._event_deadline):
            self._event_deadline = deadline
        if self._event_deadline is not None and self.engine.stop_within(self._event_deadline - self.clock()):
            self._budget_cut = True

    def on_in(self, port: int, size: int) -> int:
        if self.io_bitmaps is not None and not self.io_bitmaps.exits(port, size):
            self._pass_time(PORT_ACCESS_NS)
            return self.handler.bus.read(port, size)  # I/O-bitmap bit clear: no VM exit
        info = ExitInfo(ExitReason.IO_INSTRUCTION, qualification=io_qualification(port, size, True),
                        rip=self.engine.rip(), instruction_length=1)
        self.vm_exit(info)
        return info.data & ((1 << (8 * size)) - 1)

    def on_out(self, port: int, size: int, value: int) -> None:
        if self.io_bitmaps is not None and not self.io_bitmaps.exits(port, size):
            self._pass_time(PORT_ACCESS_NS)
            self.handler.bus.write(port, size, value)
            return
        self.vm_exit(ExitInfo(ExitReason.IO_INSTRUCTION, qualification=io_qualification(port, size, False),
                              rip=self.engine.rip(), instruction_length=1, data=value))

    def on_apic_read(self, offset: int, size: int) -> int:
        return mmio_access.apic_read(self, offset, size)

    def on_apic_write(self, offset: int, size: int, value: int) -> None:
        mmio_access.apic_write(self, offset, size, value)

    def on_mmio_read(self, gpa: int, size: int) -> int:
        return mmio_access.mmio_access(self, gpa, size, None)

    def on_mmio_write(self, gpa: int, size: int, value: int) -> None:
        mmio_access.mmio_access(self, gpa, size, value)

    def on_msr(self, write: bool) -> None:
        msr_access.rdmsr_wrmsr(self, write)

    def enable_pause_exiting(self, window: int) -> None:
        pause_loop.enable(self, window)

    def on_pause(self) -> None:
        pause_loop.pause(self)

    def on_invlpg(self) -> None:   # intercepted only for a guest hypervisor's INVLPG exiting
        nested_guest.invlpg(self)

    def on_hlt(self) -> None:
        """HLT completes (RIP past it); its exit is taken after the run, out of the engine."""
        rip = self.engine.rip()
        self.engine.set_rip(rip + 1)
        self.engine.intercepts.end_interrupt_shadow()   # "sti; hlt" wakes on an interrupt
        self._hlt_at = rip
        self._stop_between_instructions()

    def on_cr_access(self, cr: int, write: bool) -> None:
        (cr_access.mov_to_cr if write else cr_access.mov_from_cr)(self, cr)

    def on_syscall(self) -> None:
        system_calls.syscall(self)

    def on_sysenter(self) -> None:
        system_calls.sysenter(self)

    def on_invd(self) -> None:
        """INVD exits (SDM 26.1.2); WBINVD (0F 09, reported alike) has no caches to write back."""
        rip = self.engine.rip()
        if self.read_linear_safe(self.code_base() + rip, 2) == b"\x0f\x09" or \
                self.vm_exit(ExitInfo(ExitReason.INVD, rip=rip, instruction_length=2)):
            self.engine.set_rip(rip + 2)

    def on_interrupt_window(self) -> None:
        """Interrupt-window exiting, and the guest can take an interrupt now (SDM 25.2): exit 7."""
        self._boundary_stop = True
        self.vm_exit(ExitInfo(ExitReason.INTERRUPT_WINDOW, rip=self.engine.rip()))
        self.request_leave()

    def on_nmi_window(self) -> None:
        """No NMI blocking any more, and NMI-window exiting is on: VM exit reason 8."""
        self._boundary_stop = True
        self.vm_exit(ExitInfo(ExitReason.NMI_WINDOW, rip=self.engine.rip()))
        self.request_leave()

    def on_shutdown(self) -> None:
        """The engine's own triple fault (QEMU's check_exception): a shutdown."""
        self._internal_error(EngineError("triple fault inside the engine", False), self.engine.rip())
        self.request_leave()

    def _stop_between_instructions(self) -> None:
        """Leave the engine at an instruction boundary after the last counted instruction
        completed (the run's instruction count is exact, see :meth:`run`)."""
        self._boundary_stop = True
        self.request_leave()

    def on_invalid_opcode(self) -> None:
        rip = self.engine.rip()
        if self.vmx is not None and nested.intercept(self, rip):
            return   # a guest hypervisor's VMX instruction: a VM exit
        if self.read_linear_safe(rip, 3) == b"\x0f\x01\xc1":
            if self.vm_exit(ExitInfo(ExitReason.VMCALL, rip=rip, instruction_length=3)):
                self.engine.set_rip(rip + 3)
            return
        # any other invalid opcode is a #UD for the guest
        self.raise_exception(hardware_exception(6), rip)

    def on_interrupt(self, intno: int) -> None:
        rip = self.engine.rip()
        error = self.engine.take_exception_error_code()
        if intno == 3 or intno == 4 or intno >= 32 or self._is_int_n(rip, intno):
            # INT3 / INTO / INT n: trap-like, RIP already points past the instruction
            length = 1 if intno in (3, 4) else 2
            ev = Event(intno, EventType.SOFTWARE_EXCEPTION if intno in (3, 4) else EventType.SOFTWARE_INTERRUPT)
            self.raise_exception(ev, rip, length)
            return
        cr2 = self.engine.read("cr2") if intno == PF else None
        ev = hardware_exception(intno, error, cr2)
        if intno == PF and self._paging_structure_ept_violation(cr2 or 0, error):
            return
        self.raise_exception(ev, rip)

    def _is_int_n(self, rip: int, intno: int) -> bool:
        """INT n with n < 32 (BIOS INT 10h/13h/15h) reaches the hook like an exception: CD n before RIP."""
        return self.read_linear_safe(self.code_base() + rip - 2, 2) == bytes((0xCD, intno))

    def raise_exception(self, ev: Event, rip: int, length: int = 0) -> None:
        """An exception in the guest: a VM exit if its exception-bitmap bit is set
        (SDM 26.2), otherwise delivered through the guest IDT at the next entry."""
        if ev.vector < 32 and ev.type != EventType.SOFTWARE_INTERRUPT and (
                self._vmcs.read("EXCEPTION_BITMAP") >> ev.vector & 1 or nested_guest.exception_exits(self, ev)):
            self.vm_exit(ExitInfo(ExitReason.EXCEPTION_NMI, qualification=ev.cr2 or 0, rip=rip,
                                  instruction_length=length, interruption_info=ev.interruption_info(),
                                  interruption_error=ev.error_code, payload=ExceptionExit(ev)))
            self.request_leave()
            return
        self.pending_event = ev
        self.pending_event_rip, self.pending_event_length = rip, length
        self.request_leave()

    def on_memory_fault(self, access: str, gpa: int) -> bool:
        rip = self.engine.rip()
        gla = self.guess_linear_address(rip, gpa, access)
        return self._ept_violation(gpa, access, rip, gla, translated=True)

    def _ept_violation(self, gpa: int, kind: str, rip: int, gla: int | None, translated: bool) -> bool:
        from hvdbg.vmx.ept import GPA_WIDTH, EptStatus, EptWalk
        if self.vmx is not None and self.vmx.non_root:   # an L2-physical address: the L1's EPT first
            gpa, stay = nested_memory.ept_fault(self, gpa, kind, rip, gla, translated)
            if gpa is None:
                return stay
        if gpa >> GPA_WIDTH:
            # Wider than a 4-level EPT translates (only an impossible engine state, such as
            # EFER.LMA with paging off, produces one): no EPT entry maps it.
            walk = EptWalk(gpa, self.memory.ept.pml4_hpa, (), EptStatus.NOT_PRESENT,
                           f"GPA wider than the {GPA_WIDTH} bits the EPT translates", None)
        else:
            walk = self.memory.ept.walk(gpa)
        if walk.is_misconfig:
            info = ExitInfo(ExitReason.EPT_MISCONFIG, rip=rip, guest_physical=gpa, payload=EptFault(walk, kind))
        else:
            qual = ept_violation_qualification(kind, walk, gla_valid=gla is not None, translated_access=translated)
            info = ExitInfo(ExitReason.EPT_VIOLATION, qualification=qual.encode(), rip=rip, guest_physical=gpa,
                            guest_linear=gla, payload=EptFault(walk, kind))
        stay = self.vm_exit(info)
        if not stay:
            self.request_leave()
        return stay

    def _paging_structure_ept_violation(self, cr2: int, error: int) -> bool:
        """A guest page walk through a GPA the EPT does not map reaches the engine as a #PF;
        on hardware it is an EPT violation on a paging-structure access (bit 8 = 0)."""
        access = "fetch" if error & 0x10 else "write" if error & 2 else "read"
        w = self.page_walk(cr2, access)  # CR2 holds 32 bits outside IA-32e paging, as on the CPU
        if w.fault is not None and w.fault.kind == paging.FaultKind.READ_ERROR and w.fault.entry_gpa is not None:
            self._ept_violation(w.fault.entry_gpa, "read", self.engine.rip(), w.gva, translated=False)
            return True
        return False

    # -- run control -------------------------------------------------------------------
    def request_leave(self) -> None:
        """Make the engine return at the next instruction boundary and the run loop
        leave (from a hook on this vCPU's thread: an exit, a breakpoint, a watchpoint)."""
        self._leave = True
        if not self._finishing:
            self.engine.stop()

    def leave_after_instruction(self) -> None:
        """From a memory hook on this vCPU's thread (a watchpoint): leave the engine once
        the accessing instruction has completed, so that the debugger stops after the
        access, as hardware data breakpoints do (SDM 18.2.4: trap-like), and resuming
        does not execute it again.  A park requested meanwhile waits for that boundary."""
        self._leave = True
        self._finishing = True
        self.engine.stop_after_instruction()

    def kick(self) -> None:
        """Make a running vCPU leave the engine at its next instruction boundary (like a
        posted-interrupt IPI).  Not ``emu_stop``: from another thread, or from a hook, that
        can end the run inside an instruction that then runs again (a ``lock incq`` counted
        twice, an ICR write sending its IPI twice)."""
        self._kick.set()
        if self._in_run and not self._finishing:
            self.engine.stop_after_instruction()
        if self.on_kick is not None:
            self.on_kick(self)

    def request_park(self) -> None:
        """The debugger's run control stops this vCPU: leave the engine now, and do not
        start the slice it may be waiting to run (hvdbg.engine.cpu.ExecutionTurns)."""
        self._park = True
        self.kick()

    def parked(self) -> None:
        """The run control holds this vCPU: the stop has taken effect (single steps run)."""
        self._park = False

    def on_init_ipi(self) -> None:
        """The APIC bus delivered INIT (hvdbg.platform.apic.ApicBus)."""
        act.post_init(self)

    def on_startup_ipi(self, vector: int) -> None:
        """The APIC bus delivered a start-up IPI."""
        act.post_sipi(self, vector)

    def wait_for_kick(self, timeout: float) -> None:
        """Block a not-runnable vCPU's thread until something is sent to it."""
        self._kick.wait(timeout)
        self._kick.clear()

    def transition_due(self) -> bool:
        return self.vmx is not None and (self.vmx.pending_exit is not None or self.vmx.pending_entry is not None)

    def runnable(self) -> bool:
        """Can this vCPU make progress when given a pCPU (hvdbg.hv.activity)?"""
        return act.blocked_reason(self) is None

    def interrupts_enabled(self) -> bool:
        return bool(self.engine.rflags() & RFLAGS_IF)

    def request_window(self, control: int) -> None:
        """Set interrupt- or NMI-window exiting in the primary controls (SDM 25.2)."""
        controls = self._vmcs.read("CPU_BASED_VM_EXEC_CONTROL")
        self._vmcs.write("CPU_BASED_VM_EXEC_CONTROL", controls | control)

    def deliver(self, ev: Event, rip: int, length: int = 0) -> None:
        """Deliver an event through the guest IDT now (hvdbg.hv.injection.deliver)."""
        injection.deliver(self, ev, rip, length)

    def run(self, max_instructions: int) -> RunEnd:
        """VM entry, run until a leaving exit, a kick or ``max_instructions``; VM exit."""
        if self.vmx is not None:
            nested_guest.complete(self)    # a guest hypervisor's VM entry / exit the last run ended with
        if self.activity != ActivityState.ACTIVE:
            return RunEnd.NOT_RUNNABLE
        self._kick.clear()
        self._leave = False
        self._hlt_at = None
        self._boundary_stop = False
        self._finishing = False
        self.pauses_in_run = 0
        self.spin_exit = False
        self.poll_board()
        one_instruction = injection.inject_pending(self)
        if self.activity != ActivityState.ACTIVE or self._leave:
            self._guest_stale = True
            return RunEnd.EXIT
        if not self._vmcs.launched:
            self._vmcs.mark_launched()   # the first VM entry is the VMLAUNCH (SDM 26.1)
        self._load_execution_controls()
        if self._window_exiting:
            self.engine.intercepts.request_interrupt_window(True)
        if self._nmi_window_exiting:
            self.engine.intercepts.request_nmi_window(True)
        deadline = self.next_event()
        budget = 1 if one_instruction else max_instructions
        timer = self.preemption_timer_value()
        if timer is not None:
            budget = min(budget, max(1, timer << 5))
        if deadline is not None:
            budget = max(1, min(budget, deadline - self.clock()))
        self._event_deadline = deadline
        self._budget_cut = False
        self.entries += 1
        if budget == 1:
            self.tiny_entries += 1
        with self.turns:     # one engine of the machine at a time: atomic across vCPUs
            if self._park:
                # the debugger stopped this vCPU while it waited for its turn: do not run
                # a whole slice past the stop
                self._park = False
                return RunEnd.KICKED
            rip = self.engine.rip()
            self._in_run = True
            try:
                error = self.engine.run(rip, budget)
            finally:
                self._in_run = False
                self.engine.intercepts.request_interrupt_window(False)
                self.engine.intercepts.request_nmi_window(False)
        counted = self.counter.value()
        natural = (not self._leave and not self._kick.is_set() and not self._budget_cut
                   and counted <= budget and error is None)
        # Unicorn counts an instruction before it executes it: a stop inside an instruction
        # (an exception, the budget, a kick) counted one that did not complete
        executed = counted if natural or self._boundary_stop else max(0, counted - 1)
        self.instructions += executed
        if timer is not None:
            timekeeping.tick_preemption_timer(self, self._vmcs, timer, executed)
        if self.hook_error is not None:
            exc, tb = self.hook_error
            self.hook_error = None
            self._guest_stale = True
            self.handler.internal_error(self, exc, tb)
            return RunEnd.EXIT
        if error is not None and (not error.memory or not self._leave):
            self._internal_error(error, rip)
        if self._hlt_at is not None:
            self.vm_exit(ExitInfo(ExitReason.HLT, rip=self._hlt_at, instruction_length=1))
        elif natural:
            # emu_start returned by itself before the budget, with no intercepted HLT
            self._internal_error(EngineError(f"the engine stopped by itself at RIP {self.engine.rip():#x} "
                                             "(an internal Unicorn stop)", False), rip)
        if self._leave or natural or error is not None:
            # an exit that leaves the engine: the VMCS guest area gets the whole state
            # (lazily, on the next read of the VMCS: see the vmcs property)
            self._guest_stale = True
            self.runs_without_exit = 0
            return RunEnd.EXIT
        if self._kick.is_set():
            return RunEnd.KICKED
        self.runs_without_exit += 1
        return RunEnd.SLICE

    _CONTROL_FIELDS = ("CPU_BASED_VM_EXEC_CONTROL", "IO_BITMAP_A", "IO_BITMAP_B", "MSR_BITMAP")

    def _load_execution_controls(self) -> None:
        """VM entry: the I/O and MSR exiting the VMCS asks for (SDM 25.6.2, 25.6.4, 25.6.9)
        is what the exit hooks consult; decoded again only when those fields change."""
        key = tuple(self._vmcs.read(f) for f in self._CONTROL_FIELDS) + (nested_guest.l1_primary_controls(self),)
        if key == self._controls_key:
            return
        self._controls_key = key
        primary, io_a, io_b, msr_page, l2 = key
        host = self.memory.host
        if l2 is not None:   # L2: every I/O and MSR access is decided with the guest hypervisor's VMCS
            self.io_bitmaps = self.msr_bitmap = None
            primary |= l2 & (_INTERRUPT_WINDOW | _NMI_WINDOW)
        elif primary & _USE_IO_BITMAPS:
            self.io_bitmaps = IoBitmaps(host, io_a, io_b)
        else:
            self.io_bitmaps = None if primary & _UNCONDITIONAL_IO else NoIoExits()
        if l2 is None:
            self.msr_bitmap = MsrBitmap(host, msr_page) if primary & _USE_MSR_BITMAPS else None
        self._window_exiting = bool(primary & _INTERRUPT_WINDOW)
        self._nmi_window_exiting = bool(primary & _NMI_WINDOW)

    def preemption_timer_value(self) -> int | None:
        return timekeeping.preemption_timer_value(self._vmcs)

    def _internal_error(self, error: EngineError, rip: int) -> None:
        info = ExitInfo(ExitReason.TRIPLE_FAULT, rip=rip, detail=f"emulation error: {error}",
                        payload=TripleFault(internal=str(error)))
        act.shutdown(self)
        self.vm_exit(info)

    # -- register snapshot for users ------------------------------------------------------
    _SNAPSHOT = GPRS + ("rip", "rflags", "cr0", "cr2", "cr3", "cr4", "cr8", "fs_base", "gs_base")

    def registers(self) -> dict[str, int]:
        out = dict(zip(self._SNAPSHOT, self.engine.batch_of(self._SNAPSHOT).read()))
        out["efer"] = self.engine.read("efer")
        return out

    _SPIN_REGS = ("rip",) + GPRS

    def progress_state(self) -> tuple[int, ...]:
        """RIP and the GPRs, for the hang detector's no-progress check."""
        return self.engine.batch_of(self._SPIN_REGS).read()
