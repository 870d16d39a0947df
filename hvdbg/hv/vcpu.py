"""A virtual CPU: one Unicorn engine running the guest in "VMX non-root operation",
its software VMCS, its local APIC and its CPUID view.

Intercepted instructions and events become VM exits (SDM Vol. 3, chapter 26 "VM Exits",
basic exit reasons of Appendix C).  Each exit fills the exit-information fields of the
VMCS, is recorded in the VM's exit trace and is handed to the VMM's exit handler
(:class:`ExitHandler`).  Exits the VMM can handle without leaving the engine (CPUID,
I/O, APIC accesses, MSRs) are handled inside the Unicorn hook and the guest resumes at
once - the "fast path" of a real VMM.  The others (HLT, exceptions, EPT violations,
triple fault, INIT/SIPI...) stop the engine; :meth:`Vcpu.run` then returns to the
executor, and the whole guest state is saved in the VMCS guest-state area.

Guest state lives in the engine while the vCPU runs; the VMCS guest-state area is
written at every exit that leaves the engine (:meth:`Vcpu.save_guest_state`), and the
engine is loaded from it at VM entry when the VMM changed it (:meth:`Vcpu.load_guest_state`).
"""

from __future__ import annotations

import enum
import functools
import traceback
import threading
from typing import Callable, Protocol

import capstone
from unicorn import (UC_ARCH_X86, UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED, UC_ERR_READ_PROT,
                     UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED,
                     UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_PROT,
                     UC_HOOK_MEM_FETCH_UNMAPPED, UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_READ_UNMAPPED,
                     UC_HOOK_MEM_WRITE_PROT, UC_HOOK_MEM_WRITE_UNMAPPED, UC_MEM_FETCH_PROT,
                     UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_PROT, UC_MEM_WRITE_UNMAPPED, UC_MODE_64, Uc,
                     UcError)
from unicorn import x86_const as X

from hvdbg.arch import paging

from hvdbg.engine import hooks as uchooks

from hvdbg.engine import ucx
from hvdbg.platform.apic import XAPIC_BASE, XAPIC_SIZE, LocalApic
from hvdbg.arch.cpuid import CpuidModel
from hvdbg.errors import GuestMemoryError
from hvdbg.arch.events import (PF, Delivery, Event, EventType, GuestFault, Shutdown, deliver,
                          hardware_exception)
from hvdbg.hv.exit import (ApicAccess, EptFault, ExceptionExit, ExitDecision, ExitInfo, MsrAccess,
                          TripleFault)
from hvdbg.platform.devices.bus import IoBus
from hvdbg.vmx.exits import ExitReason, apic_access_qualification, ept_violation_qualification, io_qualification
from hvdbg.platform.memory import GuestMemory
from hvdbg.engine.cpu import EngineCpu
from hvdbg.engine.regs import RegisterBatch
from hvdbg.engine.ucx import Segment
from hvdbg.vmx.controls import ActivityState
from hvdbg.vmx.vmcs import Vmcs


# The one activity-state enum (SDM 25.4.2) is hvdbg.vmx.controls.ActivityState.
Activity = ActivityState   # removed once every importer names ActivityState


REG_IDS = {
    "rax": X.UC_X86_REG_RAX, "rbx": X.UC_X86_REG_RBX, "rcx": X.UC_X86_REG_RCX, "rdx": X.UC_X86_REG_RDX,
    "rsi": X.UC_X86_REG_RSI, "rdi": X.UC_X86_REG_RDI, "rbp": X.UC_X86_REG_RBP, "rsp": X.UC_X86_REG_RSP,
    "r8": X.UC_X86_REG_R8, "r9": X.UC_X86_REG_R9, "r10": X.UC_X86_REG_R10, "r11": X.UC_X86_REG_R11,
    "r12": X.UC_X86_REG_R12, "r13": X.UC_X86_REG_R13, "r14": X.UC_X86_REG_R14, "r15": X.UC_X86_REG_R15,
    "rip": X.UC_X86_REG_RIP, "rflags": X.UC_X86_REG_EFLAGS,
    "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3, "cr4": X.UC_X86_REG_CR4,
    "cr8": X.UC_X86_REG_CR8, "dr7": X.UC_X86_REG_DR7,
    "fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE,
}
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
EFER = 0xC0000080
# the same registers as 64-bit scalars for hvdbg.engine.regs (RFLAGS, not the 32-bit EFLAGS)
_FULL_IDS = {**REG_IDS, "rflags": X.UC_X86_REG_RFLAGS}
_RIP = X.UC_X86_REG_RIP
_RFLAGS = X.UC_X86_REG_RFLAGS

# VMCS guest-state fields saved/loaded at exit/entry (SDM 25.4.1, 27.3.1, 28.3.2)
_GUEST_REG_FIELDS = {"rip": "GUEST_RIP", "rsp": "GUEST_RSP", "rflags": "GUEST_RFLAGS",
                     "cr0": "GUEST_CR0", "cr3": "GUEST_CR3", "cr4": "GUEST_CR4", "dr7": "GUEST_DR7"}
_GUEST_SEG_FIELDS = {s: s.upper() for s in ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")}

_UC_MEM_ERRORS = {UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
                  UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT}


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


def _guarded(default):
    """Hook wrapper: a bug in hvdbg inside a Unicorn callback must not vanish in the
    binding (it would be swallowed); it stops the vCPU and is reported as an internal
    error with the guest state intact."""
    def wrap(fn):
        @functools.wraps(fn)
        def hook(self, uc, *args):
            try:
                return fn(self, uc, *args)
            except Exception as e:  # noqa: BLE001 - reported, never lost
                self.hook_error = (e, traceback.format_exc())
                self._leave = True
                uc.emu_stop()
                return default
        return hook
    return wrap


class Vcpu:
    """One vCPU.  Thread affinity: :meth:`run` is called by one executor thread at a time;
    :meth:`kick` and the APIC's interrupt acceptance may be called from any thread."""

    def __init__(self, index: int, apic_id: int, memory: GuestMemory, handler: ExitHandler,
                 cpuid: CpuidModel, *, bsp: bool, x2apic: bool,
                 send_ipi: Callable, msr_sites: list[int] = ()) -> None:
        self.index = index
        self.memory = memory
        self.handler = handler
        self.cpuid = cpuid
        self.bsp = bsp
        self._vmcs = Vmcs()
        self._guest_stale = False       # the engine holds newer guest state than the VMCS
        self.engine = EngineCpu()       # SDM Table 9-1 reset state loaded
        self.uc = self.engine.uc
        self.regs = self.engine.regs    # hot-path register access (hvdbg.engine.regs)
        self.counter = self.engine.counter
        self.instructions = 0          # retired in finished runs
        self.idle_ticks = 0            # virtual time that passed without instructions
        self.spin_skipped = 0          # ... of it skipped in loops without progress (spin_skip)
        self.ipi_log: list = []        # (IcrCommand, [target vCPU indexes]) sent by this vCPU
        self.sipi_entry: int | None = None
        self.pending_event_rip = 0
        self.hook_error: tuple[BaseException, str] | None = None
        self.on_kick: Callable[["Vcpu"], None] | None = None   # the executor's wake-up hook
        self.ple_window = 0
        self.io_bitmaps = None          # hvdbg.vmx.bitmaps.IoBitmaps (set by the VMM)
        self.msr_bitmap = None          # hvdbg.vmx.bitmaps.MsrBitmap
        self.pauses_in_run = 0
        self.spin_exit = False          # the last run ended in a PAUSE-loop exit
        self.delivered: list[tuple[Event, int]] = []   # exceptions delivered to the guest (first 64)
        self._in_run = False
        self.activity = Activity.ACTIVE if bsp else Activity.WAIT_FOR_SIPI
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
        self._kick = threading.Event()
        self._leave = False
        self._state_dirty = False
        self.pcpu: int | None = None
        self.apic = LocalApic(apic_id, bsp=bsp, x2apic_supported=x2apic, send_ipi=send_ipi,
                              clock=self.clock, on_pending=self.kick)
        memory.attach(self.uc)
        self.uc.mmio_map(XAPIC_BASE, XAPIC_SIZE, self._apic_read, None, self._apic_write, None)
        self._cs = {64: capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64),
                    32: capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32),
                    16: capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)}
        for md in self._cs.values():
            md.detail = True
        self._install_hooks(msr_sites)

    def batch(self, reg_ids: tuple[int, ...]) -> RegisterBatch:
        """A register batch on this vCPU's engine (built once per register list)."""
        return self.engine.batch(reg_ids)

    @property
    def vmcs(self) -> Vmcs:
        """The software VMCS.  Its guest-state area is written lazily: the first read after
        an exit that left the engine saves the engine's state into it (SDM 28.3)."""
        if self._guest_stale and not self._in_run:
            self._guest_stale = False
            self.save_guest_state()
        return self._vmcs

    # -- identity --------------------------------------------------------------------
    @property
    def apic_id(self) -> int:
        return self.apic.apic_id

    def clock(self) -> int:
        """Virtual time of this vCPU: guest instructions retired."""
        if self._in_run:
            return self.instructions + self.idle_ticks + self.counter.value()
        return self.instructions + self.idle_ticks

    # -- hooks -----------------------------------------------------------------------
    def _install_hooks(self, msr_sites: list[int]) -> None:
        uc = self.uc
        uchooks.add_cpuid_hook(uc, self._on_cpuid)
        uchooks.add_in_hook(uc, self._on_in)
        uchooks.add_out_hook(uc, self._on_out)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
                    | UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_FETCH_PROT,
                    self._on_ept_fault)
        for site in sorted(set(msr_sites)):
            uchooks.add_code_hook(uc, self._on_msr_site, site, site)

    _EXIT_FIELDS = Vmcs.plan(("VM_EXIT_REASON", "EXIT_QUALIFICATION", "GUEST_RIP", "VM_EXIT_INSTRUCTION_LEN"))

    def vm_exit(self, info: ExitInfo) -> bool:
        """Record a VM exit in the VMCS and hand it to the VMM (SDM 28.2)."""
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
        resume = self.handler.handle_exit(self, info)
        if not resume:
            self._leave = True
            self.uc.emu_stop()
        return resume

    @_guarded(1)
    def _on_cpuid(self, uc: Uc, _ud) -> int:
        rip = self.regs.read(_RIP)
        self.vm_exit(ExitInfo(ExitReason.CPUID, rip=rip, instruction_length=2))
        return 1

    @_guarded(0)
    def _on_in(self, uc: Uc, port: int, size: int, _ud) -> int:
        if self.io_bitmaps is not None and not self.io_bitmaps.exits(port, size):
            return self.handler.bus.read(port, size)  # I/O-bitmap bit clear: no VM exit
        rip = self.regs.read(_RIP)
        info = ExitInfo(ExitReason.IO_INSTRUCTION, qualification=io_qualification(port, size, True),
                        rip=rip, instruction_length=1)
        self.vm_exit(info)
        return info.data & ((1 << (8 * size)) - 1)

    @_guarded(None)
    def _on_out(self, uc: Uc, port: int, size: int, value: int, _ud) -> None:
        if self.io_bitmaps is not None and not self.io_bitmaps.exits(port, size):
            self.handler.bus.write(port, size, value)
            return
        rip = self.regs.read(_RIP)
        info = ExitInfo(ExitReason.IO_INSTRUCTION, qualification=io_qualification(port, size, False), rip=rip,
                        instruction_length=1, data=value)
        self.vm_exit(info)

    @_guarded(0)
    def _apic_read(self, uc: Uc, offset: int, size: int, _ud) -> int:
        rip = self.regs.read(_RIP)
        info = ExitInfo(ExitReason.APIC_ACCESS, qualification=apic_access_qualification(offset, False), rip=rip,
                        guest_physical=XAPIC_BASE + offset, payload=ApicAccess(size))
        self.vm_exit(info)
        return info.data

    @_guarded(None)
    def _apic_write(self, uc: Uc, offset: int, size: int, value: int, _ud) -> None:
        rip = self.regs.read(_RIP)
        info = ExitInfo(ExitReason.APIC_ACCESS, qualification=apic_access_qualification(offset, True), rip=rip,
                        guest_physical=XAPIC_BASE + offset, data=value, payload=ApicAccess(size))
        self.vm_exit(info)

    @_guarded(None)
    def _on_msr_site(self, uc: Uc, address: int, size: int, _ud) -> None:
        code = self.read_linear_safe(address, 2)
        if code not in (b"\x0f\x30", b"\x0f\x32"):
            return
        write = code == b"\x0f\x30"
        ecx = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        if self.msr_bitmap is not None and not self.msr_bitmap.exits(ecx, write):
            return  # MSR-bitmap bit clear: the engine executes it, no VM exit
        value = (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | (uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
        info = ExitInfo(ExitReason.MSR_WRITE if write else ExitReason.MSR_READ, rip=address,
                        instruction_length=2, data=value if write else 0, payload=MsrAccess(ecx))
        self.vm_exit(info)
        decision = info.decision
        if decision is ExitDecision.NATIVE or decision is ExitDecision.FAULT:
            return  # the engine executes it / the #GP is delivered at the next entry
        if not write:
            uc.reg_write(X.UC_X86_REG_RAX, info.data & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_RDX, (info.data >> 32) & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_RIP, address + 2)

    def enable_pause_exiting(self, sites: list[int], window: int) -> None:
        """PAUSE-loop exiting (SDM 25.1.3): after ``window`` PAUSEs in one run the vCPU
        exits with reason 40 so that the scheduler can run someone else (KVM's PLE)."""
        self.ple_window = window
        for site in sites:
            uchooks.add_code_hook(self.uc, self._on_pause_site, site, site)

    @_guarded(None)
    def _on_pause_site(self, uc: Uc, address: int, size: int, _ud) -> None:
        if size != 2:
            return  # not an instruction boundary at this site (the F3 90 bytes were data)
        self.pauses_in_run += 1
        if self.pauses_in_run == self.ple_window:
            self.spin_exit = True
            self.vm_exit(ExitInfo(ExitReason.PAUSE_INSTRUCTION, rip=address, instruction_length=2,
                                  detail=f"{self.ple_window} PAUSEs in one run: spinning"))

    @_guarded(True)
    def _on_invalid(self, uc: Uc, _ud) -> bool:
        rip = self.regs.read(_RIP)
        code = self.read_linear_safe(rip, 3)
        if code == b"\x0f\x01\xc1":
            info = ExitInfo(ExitReason.VMCALL, rip=rip, instruction_length=3)
            if self.vm_exit(info):
                uc.reg_write(X.UC_X86_REG_RIP, rip + 3)
            return True
        # any other invalid opcode is a #UD for the guest
        self._raise_exception(hardware_exception(6), rip)
        return True

    @_guarded(None)
    def _on_interrupt(self, uc: Uc, intno: int, _ud) -> None:
        rip = self.regs.read(_RIP)
        error = ucx.reset_pending_exception(uc)
        if intno == 3 or intno == 4 or intno >= 32 or self._is_int_n(rip, intno):
            # INT3 / INTO / INT n: trap-like, RIP already points past the instruction
            length = 1 if intno in (3, 4) else 2
            ev = Event(intno, EventType.SOFTWARE_EXCEPTION if intno in (3, 4) else EventType.SOFTWARE_INTERRUPT)
            self._raise_exception(ev, rip, length)
            return
        cr2 = uc.reg_read(X.UC_X86_REG_CR2) if intno == PF else None
        ev = hardware_exception(intno, error, cr2)
        if intno == PF and self._paging_structure_ept_violation(cr2 or 0, error):
            return
        self._raise_exception(ev, rip)

    def _is_int_n(self, rip: int, intno: int) -> bool:
        """INT n with n < 32 (BIOS INT 10h/13h/15h) reaches the interrupt hook like an
        exception; it is a software interrupt if the bytes before RIP are CD n."""
        base = 0 if self.code_bits() == 64 else ucx.read_segments(self.uc)["cs"].base
        return self.read_linear_safe(base + rip - 2, 2) == bytes((0xCD, intno))

    def _raise_exception(self, ev: Event, rip: int, length: int = 0) -> None:
        """An exception in the guest: a VM exit if its exception-bitmap bit is set
        (SDM 26.2), otherwise delivered through the guest IDT at the next entry."""
        if ev.vector < 32 and ev.type != EventType.SOFTWARE_INTERRUPT and \
                self._vmcs.read("EXCEPTION_BITMAP") >> ev.vector & 1:
            info = ExitInfo(ExitReason.EXCEPTION_NMI, qualification=ev.cr2 or 0, rip=rip,
                            instruction_length=length, interruption_info=ev.interruption_info(),
                            interruption_error=ev.error_code, payload=ExceptionExit(ev))
            self.vm_exit(info)
            self._leave = True
            self.uc.emu_stop()
            return
        self.pending_event = ev
        self.pending_event_rip = rip
        self._leave = True
        self.uc.emu_stop()

    @_guarded(False)
    def _on_ept_fault(self, uc: Uc, access: int, address: int, size: int, value: int, _ud) -> bool:
        rip = self.regs.read(_RIP)
        kind = {UC_MEM_WRITE_UNMAPPED: "write", UC_MEM_WRITE_PROT: "write",
                UC_MEM_FETCH_UNMAPPED: "fetch", UC_MEM_FETCH_PROT: "fetch"}.get(access, "read")
        gla = self._guess_linear_address(rip, address, kind)
        return self._ept_violation(address, kind, rip, gla, translated=True)

    def _ept_violation(self, gpa: int, kind: str, rip: int, gla: int | None, translated: bool) -> bool:
        from hvdbg.vmx.ept import GPA_WIDTH, EptStatus, EptWalk
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
        resume = self.vm_exit(info)
        if not resume:
            self._leave = True
            self.uc.emu_stop()
        return resume

    def _paging_structure_ept_violation(self, cr2: int, error: int) -> bool:
        """A guest page walk through a GPA the EPT does not map reaches Unicorn as a #PF;
        on hardware it is an EPT violation on a paging-structure access (bit 8 = 0)."""
        access = "fetch" if error & 0x10 else "write" if error & 2 else "read"
        w = self.page_walk(cr2, access)  # CR2 holds 32 bits outside IA-32e paging, as on the CPU
        if w.fault is not None and w.fault.kind == paging.FaultKind.READ_ERROR and w.fault.entry_gpa is not None:
            self._ept_violation(w.fault.entry_gpa, "read", self.uc.reg_read(X.UC_X86_REG_RIP), w.gva,
                                translated=False)
            return True
        return False

    # -- linear address helpers ------------------------------------------------------
    _CR_IDS = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)

    def control_regs(self) -> dict[str, int]:
        cr0, cr3, cr4 = self.batch(self._CR_IDS).read()
        return {"cr0": cr0, "cr3": cr3, "cr4": cr4, "efer": ucx.read_efer(self.uc)}

    def page_walk(self, gva: int, access: str = "read") -> paging.PageWalk:
        r = self.control_regs()
        wide = paging.paging_mode(r["cr0"], r["cr4"], r["efer"]) in (paging.PagingMode.LEVEL4, paging.PagingMode.LEVEL5)
        gva &= 0xFFFFFFFFFFFFFFFF if wide else 0xFFFFFFFF
        return paging.walk(self.memory.read, r["cr0"], r["cr3"], r["cr4"], r["efer"], gva, access)

    def linear_to_physical(self, gva: int, access: str = "read") -> int:
        return self._translate(gva, access)[0]

    def _translate(self, gva: int, access: str) -> tuple[int, int]:
        """(GPA, bytes up to the end of the page that maps ``gva``): a 2 MiB or 1 GiB page
        is translated once for all of its 4 KiB frames."""
        w = self.page_walk(gva, access)
        if w.gpa is None:
            code = w.error_code or 0
            raise GuestFault(hardware_exception(PF, code, gva), w.reason)
        page = w.page_size or 0x1000
        return w.gpa, page - (gva & (page - 1))

    def read_linear(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            gpa, span = self._translate(addr, "read")
            n = min(size, span)
            try:
                out += self.memory.read(gpa, n)
            except GuestMemoryError as e:
                raise GuestFault(hardware_exception(13, 0), str(e)) from None
            addr += n
            size -= n
        return bytes(out)

    def write_linear(self, addr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            gpa, span = self._translate(addr + pos, "write")
            n = min(len(data) - pos, span)
            try:
                self.memory.write(gpa, data[pos:pos + n])
            except GuestMemoryError as e:
                raise GuestFault(hardware_exception(13, 0), str(e)) from None
            pos += n

    def read_linear_safe(self, addr: int, size: int) -> bytes | None:
        try:
            return self.read_linear(addr, size)
        except (GuestFault, GuestMemoryError):
            return None

    def code_bits(self) -> int:
        """Operand size of the current code segment: 16, 32 or 64."""
        cs = ucx.read_segments(self.uc)["cs"]
        efer = ucx.read_efer(self.uc)
        if efer & (1 << 10) and cs.access_rights & (1 << 13):
            return 64
        if not self.uc.reg_read(X.UC_X86_REG_CR0) & 1:
            return 16
        return 32 if cs.access_rights & (1 << 14) else 16

    def decode(self, rip: int, count: int = 1) -> list:
        code = self.read_linear_safe(rip, 16 * count)
        if not code:
            return []
        return list(self._cs[self.code_bits()].disasm(code, rip, count))

    def _guess_linear_address(self, rip: int, gpa: int, kind: str) -> int | None:
        """The linear address behind a faulting GPA: decode the instruction and compute its
        memory operand's effective address (what a VMM's instruction emulator does), then
        keep it only if the guest's page tables really map it to the faulting page."""
        mask = 0xFFFFFFFFFFFFFFFF if self.code_bits() == 64 else 0xFFFFFFFF
        if kind == "fetch":
            cs_base = 0 if self.code_bits() == 64 else ucx.read_segments(self.uc)["cs"].base
            candidates = [(cs_base + rip) & mask]
        else:
            candidates = []
            for insn in self.decode(rip):
                for op in insn.operands:
                    if op.type != capstone.x86.X86_OP_MEM:
                        continue
                    ea = op.mem.disp
                    for reg, scale in ((op.mem.base, 1), (op.mem.index, op.mem.scale)):
                        if reg:
                            name = insn.reg_name(reg)
                            if name == "rip":
                                ea += insn.address + insn.size
                            else:
                                ea += self._gpr_by_name(name) * scale
                    candidates.append(ea & mask)
                if insn.mnemonic.startswith(("stos", "movs")):
                    candidates.append(self.uc.reg_read(X.UC_X86_REG_RDI))
                if insn.mnemonic.startswith(("push", "call")):
                    candidates.append(self.uc.reg_read(X.UC_X86_REG_RSP) - 8)
        for cand in candidates:
            for off in range(0, 16):
                try:
                    w = self.page_walk((cand + off) & mask)
                except ValueError:
                    break
                if w.gpa is not None and (w.gpa >> 12) == (gpa >> 12):
                    return (cand + off) - (((cand + off) & 0xFFF) - (gpa & 0xFFF))
        return None

    def _gpr_by_name(self, name: str) -> int:
        regmap = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi",
                  "ebp": "rbp", "esp": "rsp"}
        full = regmap.get(name, name)
        reg = getattr(X, f"UC_X86_REG_{full.upper()}", None)
        return self.uc.reg_read(reg) if reg is not None else 0

    # -- EventCpu interface (for hvdbg.arch.events) -----------------------------------------
    def get_reg(self, name: str) -> int:
        if name == "efer":
            return ucx.read_efer(self.uc)
        return self.uc.reg_read(REG_IDS[name])

    def set_reg(self, name: str, value: int) -> None:
        if name == "efer":
            self.uc.msr_write(EFER, value)
        else:
            self.uc.reg_write(REG_IDS[name], value)

    def get_segment(self, name: str) -> Segment:
        return ucx.read_segments(self.uc)[name]

    def set_segments(self, segs: dict[str, Segment]) -> None:
        ucx.write_segments(self.uc, segs)

    def get_table(self, name: str) -> tuple[int, int]:
        reg = X.UC_X86_REG_GDTR if name == "gdtr" else X.UC_X86_REG_IDTR
        _sel, base, limit, _flags = self.uc.reg_read(reg)
        return base, limit

    def cpl(self) -> int:
        return ucx.current_cpl(self.uc)

    # -- VMCS guest-state area ---------------------------------------------------------
    _SAVE_REGS = ("rip", "rsp", "rflags", "cr0", "cr3", "cr4", "dr7")
    _SAVE_IDS = tuple(_FULL_IDS[n] for n in _SAVE_REGS)
    _SAVE_FIELDS = [_GUEST_REG_FIELDS[n] for n in _SAVE_REGS]
    _SEG_FIELDS = {name: tuple(f"GUEST_{fld}_{part}" for part in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES"))
                   for name, fld in _GUEST_SEG_FIELDS.items()}

    def save_guest_state(self) -> None:
        """Copy the engine's state into the VMCS guest-state area (SDM 28.3)."""
        values = dict(zip(self._SAVE_FIELDS, self.batch(self._SAVE_IDS).read()))
        values["GUEST_IA32_EFER"] = ucx.read_efer(self.uc)
        for name, seg in ucx.read_segments(self.uc).items():
            sel, base, limit, ar = self._SEG_FIELDS[name]
            values[sel] = seg.selector
            values[base] = seg.base
            values[limit] = seg.limit
            values[ar] = seg.access_rights
        for name, reg in (("GDTR", X.UC_X86_REG_GDTR), ("IDTR", X.UC_X86_REG_IDTR)):
            _sel, base, limit, _flags = self.uc.reg_read(reg)
            values[f"GUEST_{name}_BASE"] = base
            values[f"GUEST_{name}_LIMIT"] = limit
        values["GUEST_ACTIVITY_STATE"] = int(self.activity)
        self._vmcs.update(values)

    def load_guest_state(self) -> None:
        """Load the engine from the VMCS guest-state area (VM entry, SDM 27.3.2)."""
        v = self.vmcs
        ucx.set_control_registers(self.uc, v.read("GUEST_CR0"), v.read("GUEST_CR3"), v.read("GUEST_CR4"),
                                  v.read("GUEST_IA32_EFER"))
        self.uc.reg_write(X.UC_X86_REG_EFLAGS, v.read("GUEST_RFLAGS"))
        self.uc.reg_write(X.UC_X86_REG_RSP, v.read("GUEST_RSP"))
        self.uc.reg_write(X.UC_X86_REG_DR7, v.read("GUEST_DR7"))
        for name in ("gdtr", "idtr"):
            reg = X.UC_X86_REG_GDTR if name == "gdtr" else X.UC_X86_REG_IDTR
            self.uc.reg_write(reg, (0, v.read(f"GUEST_{name.upper()}_BASE"), v.read(f"GUEST_{name.upper()}_LIMIT"), 0))
        segs = {}
        for name, fld in _GUEST_SEG_FIELDS.items():
            pre = f"GUEST_{fld}"
            segs[name] = Segment(v.read(f"{pre}_SELECTOR"), v.read(f"{pre}_BASE"), v.read(f"{pre}_LIMIT"),
                                 v.read(f"{pre}_AR_BYTES"))
        ucx.write_segments(self.uc, segs)
        self.uc.reg_write(X.UC_X86_REG_RIP, v.read("GUEST_RIP"))
        self.activity = Activity(v.read("GUEST_ACTIVITY_STATE"))

    def set_guest_state(self, *, rip: int, cr0: int, cr3: int = 0, cr4: int = 0, efer: int = 0,
                        rflags: int = 0x2, rsp: int = 0, segments: dict[str, Segment],
                        gdtr: tuple[int, int] = (0, 0xFFFF), idtr: tuple[int, int] = (0, 0xFFFF),
                        gprs: dict[str, int] | None = None, activity: Activity = Activity.ACTIVE) -> None:
        """Write a complete guest state into the VMCS and load it (used for the BSP's
        multiboot entry state and the SIPI state of APs)."""
        v = self.vmcs
        for reg, val in (("rip", rip), ("rsp", rsp), ("rflags", rflags), ("cr0", cr0), ("cr3", cr3),
                         ("cr4", cr4), ("dr7", 0x400)):
            v.write(_GUEST_REG_FIELDS[reg], val)
        v.write("GUEST_IA32_EFER", efer)
        null = Segment(0, 0, 0, 1 << 16)
        for name, fld in _GUEST_SEG_FIELDS.items():
            s = segments.get(name, null if name != "tr" else Segment(0, 0, 0xFFFF, 0x8B))
            pre = f"GUEST_{fld}"
            v.write(f"{pre}_SELECTOR", s.selector)
            v.write(f"{pre}_BASE", s.base)
            v.write(f"{pre}_LIMIT", s.limit)
            v.write(f"{pre}_AR_BYTES", s.access_rights)
        v.write("GUEST_GDTR_BASE", gdtr[0])
        v.write("GUEST_GDTR_LIMIT", gdtr[1])
        v.write("GUEST_IDTR_BASE", idtr[0])
        v.write("GUEST_IDTR_LIMIT", idtr[1])
        v.write("GUEST_ACTIVITY_STATE", int(activity))
        self.load_guest_state()
        for name in GPRS:
            if name != "rsp":
                self.uc.reg_write(REG_IDS[name], (gprs or {}).get(name, 0))

    # -- run control -------------------------------------------------------------------
    def request_leave(self) -> None:
        """Make the engine return at the next instruction boundary and the run loop
        leave (from a hook on this vCPU's thread: a debugger's breakpoint or watchpoint)."""
        self._leave = True
        self.engine.stop()

    def kick(self) -> None:
        """Make a running vCPU leave the engine soon (like a posted-interrupt IPI)."""
        self._kick.set()
        if self._in_run:
            self.uc.emu_stop()
        if self.on_kick is not None:
            self.on_kick(self)

    def wait_for_kick(self, timeout: float) -> None:
        """Block a not-runnable vCPU's thread until something is sent to it."""
        self._kick.wait(timeout)
        self._kick.clear()

    def runnable(self) -> bool:
        return self.activity == Activity.ACTIVE

    def interrupts_enabled(self) -> bool:
        return bool(self.regs.read(_RFLAGS) & (1 << 9))

    def _inject_pending(self) -> None:
        """VM entry event injection (SDM 27.6): a pending exception first, then the highest
        pending APIC interrupt if RFLAGS.IF = 1."""
        if self.pending_event is not None:
            ev, rip = self.pending_event, self.pending_event_rip
            self.pending_event = None
            self._deliver(ev, rip)
            return
        if self.apic.nmi_pending:
            self.apic.nmi_pending = False
            self._deliver(Event(2, EventType.NMI), self.uc.reg_read(X.UC_X86_REG_RIP))
            return
        if self.interrupts_enabled():
            vec = self.apic.pending_vector()
            if vec is not None:
                self.apic.ack(vec)
                self._deliver(Event(vec, EventType.EXTERNAL), self.uc.reg_read(X.UC_X86_REG_RIP))

    def _deliver(self, ev: Event, rip: int) -> None:
        try:
            self.last_delivery = deliver(self, ev, rip)
            if ev.type != EventType.EXTERNAL and len(self.delivered) < 64:
                self.delivered.append((self.last_delivery.event, rip))
        except Shutdown as sd:
            chain = "; ".join(f"{e.describe()}: {why}" for e, why in sd.chain)
            info = ExitInfo(ExitReason.TRIPLE_FAULT, rip=rip, detail=chain, payload=TripleFault(sd.chain, ev))
            self.activity = Activity.SHUTDOWN
            self.vm_exit(info)

    def run(self, max_instructions: int) -> RunEnd:
        """VM entry, run until a leaving exit, a kick or ``max_instructions``; VM exit."""
        if self.activity != Activity.ACTIVE:
            return RunEnd.NOT_RUNNABLE
        self._kick.clear()
        self._leave = False
        self.pauses_in_run = 0
        self.spin_exit = False
        self._inject_pending()
        if self.activity != Activity.ACTIVE or self._leave:
            self._guest_stale = True
            return RunEnd.EXIT
        deadline = self.apic.next_event()
        budget = max_instructions
        timer = self.preemption_timer_value()
        if timer is not None:
            budget = min(budget, max(1, timer << 5))
        if deadline is not None:
            budget = max(1, min(budget, deadline - self.instructions))
        rip = self.regs.read(_RIP)
        error = None
        self._in_run = True
        try:
            self.uc.emu_start(rip, 0, count=budget)
        except UcError as e:
            error = e
        finally:
            self._in_run = False
        counted = self.counter.value()
        natural = not self._leave and not self._kick.is_set() and counted <= budget and error is None
        executed = counted if natural else max(0, counted - 1)
        self.instructions += executed
        if timer is not None:
            self._tick_preemption_timer(timer, executed)
        if self.hook_error is not None:
            exc, tb = self.hook_error
            self.hook_error = None
            self._guest_stale = True
            self.handler.internal_error(self, exc, tb)
            return RunEnd.EXIT
        if error is not None and (error.errno not in _UC_MEM_ERRORS or not self._leave):
            self._internal_error(error, rip)
        if natural:
            # emu_start returned by itself before the budget: the guest executed HLT
            self._on_hlt()
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

    def preemption_timer_value(self) -> int | None:
        """VMX-preemption timer value if the pin-based control is set (SDM 26.5.1); it counts
        down once every 2^5 guest instructions (our TSC), like IA32_VMX_MISC[4:0] = 5."""
        if not self._vmcs.read("PIN_BASED_VM_EXEC_CONTROL") >> 6 & 1:
            return None
        return self._vmcs.read("VMX_PREEMPTION_TIMER_VALUE")

    def _tick_preemption_timer(self, value: int, executed: int) -> None:
        left = value - (executed >> 5)
        if left > 0:
            self._vmcs.write("VMX_PREEMPTION_TIMER_VALUE", left)
            return
        self._vmcs.write("VMX_PREEMPTION_TIMER_VALUE", 0)
        self.vm_exit(ExitInfo(ExitReason.PREEMPTION_TIMER, rip=self.uc.reg_read(X.UC_X86_REG_RIP)))

    def _on_hlt(self) -> None:
        rip = self.regs.read(_RIP)
        info = ExitInfo(ExitReason.HLT, rip=rip - 1, instruction_length=1)
        self.vm_exit(info)

    def _internal_error(self, error: UcError, rip: int) -> None:
        info = ExitInfo(ExitReason.TRIPLE_FAULT, rip=rip, detail=f"emulation error: {error}",
                        payload=TripleFault(internal=str(error)))
        self.activity = Activity.SHUTDOWN
        self.vm_exit(info)

    # -- register snapshot for users ------------------------------------------------------
    _SNAPSHOT = GPRS + ("rip", "rflags", "cr0", "cr2", "cr3", "cr4", "cr8", "fs_base", "gs_base")
    _SNAPSHOT_IDS = tuple(_FULL_IDS[n] for n in _SNAPSHOT)

    def registers(self) -> dict[str, int]:
        out = dict(zip(self._SNAPSHOT, self.batch(self._SNAPSHOT_IDS).read()))
        out["efer"] = ucx.read_efer(self.uc)
        return out

    _SPIN_IDS = tuple(_FULL_IDS[n] for n in ("rip",) + GPRS)

    def progress_state(self) -> tuple[int, ...]:
        """RIP and the GPRs, for the hang detector's no-progress check."""
        return self.batch(self._SPIN_IDS).read()


def flat_segments_32() -> dict[str, Segment]:
    """The multiboot machine state: flat 4 GiB code (0x10) and data (0x18) segments
    (Multiboot 0.6.96, 3.2)."""
    code = Segment(0x10, 0, 0xFFFFFFFF, 0xC09B)
    data = Segment(0x18, 0, 0xFFFFFFFF, 0xC093)
    return {"cs": code, "ds": data, "es": data, "ss": data, "fs": data, "gs": data,
            "ldtr": Segment(0, 0, 0, 1 << 16), "tr": Segment(0, 0, 0xFFFF, 0x8B)}


def real_mode_segments(cs_selector: int, cs_base: int) -> dict[str, Segment]:
    """State after INIT + SIPI: CS.sel = vector << 8, CS.base = vector << 12 (SDM 9.1.1, 11.4.4)."""
    data = Segment(0, 0, 0xFFFF, 0x93)
    return {"cs": Segment(cs_selector, cs_base, 0xFFFF, 0x9B), "ds": data, "es": data, "ss": data,
            "fs": data, "gs": data, "ldtr": Segment(0, 0, 0xFFFF, 0x82), "tr": Segment(0, 0, 0xFFFF, 0x8B)}

