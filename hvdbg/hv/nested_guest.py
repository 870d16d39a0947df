"""The guest hypervisor's guest (L2): VM entry from the L1's VMCS (SDM 27.3-27.6), the VM
exits its controls ask for (SDM 26.1-26.2, 25.6) and the VM exit that hands them to the
L1 (SDM 28.1-28.5).

L2 runs in the vCPU's own engine.  Every exit hvdbg's intercepts see while the vCPU is in
the L1's VMX non-root operation goes first to :func:`l1_wants`, a function of the L1's
VMCS and the exit: an exit the L1 asked for is *reflected* (:func:`reflect`), otherwise
hvdbg handles it as for any guest (a port the L1 passes through reaches hvdbg's device).
Transitions happen between engine runs, never inside an engine callback: a reflected exit
or a VMLAUNCH ends the run, and :func:`complete` then saves the L2 state into the L1's
VMCS and loads its host state (or loads the L2 state at an entry).  With "enable EPT" in
the L1's controls the engine's memory map is the L1's EPT composed with hvdbg's
(:class:`L2Memory`): what the L1's EPT does not map is an EPT violation for the L1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hvdbg.arch.events import Event, EventType, hardware_exception
from hvdbg.arch.regs import (EFER_LMA, EFER_LME, IA32_DEBUGCTL, IA32_PAT, IA32_SYSENTER_CS, IA32_SYSENTER_EIP,
                             IA32_SYSENTER_ESP)
from hvdbg.arch.segments import Segment
from hvdbg.hv import activity as act
from hvdbg.hv import nested_memory, vmx_msr_lists
from hvdbg.hv.exit import ExitInfo, MsrAccess, NestedEptFault
from hvdbg.hv.guest_state import load_segment_fields, segment_fields
from hvdbg.vmx.bitmaps import IoBitmaps, MsrBitmap
from hvdbg.vmx.controls import PIN_BASED, PRIMARY_PROCESSOR_BASED, SECONDARY_PROCESSOR_BASED, VM_ENTRY, VM_EXIT
from hvdbg.vmx.ept import ADDR_MASK, EptStatus, walk_ept
from hvdbg.vmx.exit_text import describe_exit
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.instructions import VmxState
from hvdbg.vmx.vmcs import LaunchState
from hvdbg.vmx.vmcs_region import OpenBusMemory, VmcsRegion

_PIN = {n: PIN_BASED.mask(n) for n in ("EXTERNAL_INTERRUPT_EXITING", "NMI_EXITING")}
_PRIMARY = {n: PRIMARY_PROCESSOR_BASED.mask(n) for n in (
    "HLT_EXITING", "UNCONDITIONAL_IO_EXITING", "USE_IO_BITMAPS", "USE_MSR_BITMAPS", "CR8_LOAD_EXITING",
    "CR8_STORE_EXITING", "ACTIVATE_SECONDARY_CONTROLS", "RDTSC_EXITING", "USE_TSC_OFFSETTING")}
_ENABLE_EPT = SECONDARY_PROCESSOR_BASED.mask("ENABLE_EPT")
_VIRTUALIZE_APIC = SECONDARY_PROCESSOR_BASED.mask("VIRTUALIZE_APIC_ACCESSES")
_ENTRY = {n: VM_ENTRY.mask(n) for n in ("IA32E_MODE_GUEST", "LOAD_EFER", "LOAD_PAT", "LOAD_DEBUG_CONTROLS")}
_EXIT = {n: VM_EXIT.mask(n) for n in ("HOST_ADDRESS_SPACE_SIZE", "LOAD_EFER", "LOAD_PAT", "SAVE_EFER", "SAVE_PAT",
                                      "SAVE_DEBUG_CONTROLS", "ACK_INTERRUPT_ON_EXIT")}
#: the SYSENTER MSRs and their VMCS field names after GUEST_ / HOST_IA32_ (SDM 25.4.2, 25.5)
_SYSENTER = ((IA32_SYSENTER_CS, "SYSENTER_CS"), (IA32_SYSENTER_ESP, "SYSENTER_ESP"),
             (IA32_SYSENTER_EIP, "SYSENTER_EIP"))

_CR3_LOAD = PRIMARY_PROCESSOR_BASED.mask("CR3_LOAD_EXITING")
_CR3_STORE = PRIMARY_PROCESSOR_BASED.mask("CR3_STORE_EXITING")


#: The exits of the VMX instructions (VMCALL, the VMM's hypercall, apart)
VMX_INSTRUCTION_EXITS = frozenset({ExitReason.VMCLEAR, ExitReason.VMLAUNCH, ExitReason.VMPTRLD, ExitReason.VMPTRST,
                                   ExitReason.VMREAD, ExitReason.VMRESUME, ExitReason.VMWRITE, ExitReason.VMXOFF,
                                   ExitReason.VMXON, ExitReason.INVEPT, ExitReason.INVVPID})
#: Exits that happen whatever the L1's controls say (SDM 26.1.2, 26.2)
_UNCONDITIONAL = frozenset({ExitReason.CPUID, ExitReason.VMCALL, ExitReason.INVD, ExitReason.TRIPLE_FAULT,
                            ExitReason.INIT_SIGNAL, ExitReason.SIPI}) | VMX_INSTRUCTION_EXITS
#: Exits a primary processor-based control asks for (SDM 25.6.2)
_PRIMARY_EXITS = {ExitReason.HLT: PRIMARY_PROCESSOR_BASED.mask("HLT_EXITING"),
                  ExitReason.INTERRUPT_WINDOW: PRIMARY_PROCESSOR_BASED.mask("INTERRUPT_WINDOW_EXITING"),
                  ExitReason.INVLPG: PRIMARY_PROCESSOR_BASED.mask("INVLPG_EXITING"),
                  ExitReason.NMI_WINDOW: PRIMARY_PROCESSOR_BASED.mask("NMI_WINDOW_EXITING"),
                  ExitReason.RDTSC: PRIMARY_PROCESSOR_BASED.mask("RDTSC_EXITING"),
                  ExitReason.RDTSCP: PRIMARY_PROCESSOR_BASED.mask("RDTSC_EXITING")}
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class L2Exit:
    """A VM exit from L2 to the guest hypervisor, as it will be written into its VMCS."""

    reason: int
    qualification: int
    rip: int                 # GUEST_RIP to save: the instruction that exited (or the next one)
    instruction_length: int = 0
    guest_linear: int | None = None
    guest_physical: int | None = None
    interruption_info: int = 0
    interruption_error: int | None = None
    instruction_info: int = 0
    gprs: tuple[int, ...] = ()   # the GPRs when the exit was recognised (an IN/MMIO read may write one after)
    detail: str = ""


@dataclass
class NestedVmx(VmxState):
    """A vCPU's VMX operation as guest hypervisor (:class:`VmxState`) and what hvdbg keeps
    to run its guest: the transition due when the current engine run ends, the L2
    memory view, counters for the debugger."""

    pending_entry: ExitReason | None = None    # VMLAUNCH / VMRESUME whose entry is due
    pending_exit: L2Exit | None = None
    memory_view: "nested_memory.L2Memory | None" = None
    l2_entries: int = 0
    l2_exits: int = 0
    exits_by_reason: dict[int, int] = field(default_factory=dict)
    entered_at: int = 0           # the vCPU's clock at the last entry into L2
    left_at: int = 0              # ... at the last exit to L1
    time_in_l1: int = 0           # virtual time from exits to the next entries
    time_in_l2: int = 0
    entry_failures: list[str] = field(default_factory=list)   # the last MSR-list failures, in words
    first_entry: dict[str, int] | None = None     # L2's state at its first entry (the diagnosis reads it)
    cpuid_leaf: int | None = None                 # the CPUID leaf of the exit the L1 is handling
    cpuid_answers: dict[int, tuple[int, ...]] = field(default_factory=dict)   # leaf -> what the L1 answered

    @property
    def level(self) -> str:
        """Which software the vCPU runs: "L1" (the guest hypervisor) or "L2" (its guest)."""
        return "L2" if self.non_root else "L1"


def vmcs12(vcpu) -> VmcsRegion:
    """The guest hypervisor's current VMCS (in its own memory)."""
    return VmcsRegion(OpenBusMemory(vcpu.memory), vcpu.vmx.current_vmcs)


def unrestricted(vcpu) -> bool:
    """Does the L1 run its guest with "unrestricted guest" (SDM 25.6.2)?"""
    return bool(secondary(vmcs12(vcpu)) & SECONDARY_PROCESSOR_BASED.mask("UNRESTRICTED_GUEST"))


def ept_enabled(region: VmcsRegion) -> bool:
    """Does the L1 give its guest an EPT ("enable EPT", SDM 25.6.2)?"""
    return bool(secondary(region) & _ENABLE_EPT)


def secondary(region: VmcsRegion) -> int:
    if region.read("CPU_BASED_VM_EXEC_CONTROL") & _PRIMARY["ACTIVATE_SECONDARY_CONTROLS"]:
        return region.read("SECONDARY_VM_EXEC_CONTROL")
    return 0


# -- which exits the guest hypervisor asked for (a function of its VMCS and the exit) -----------

def l1_wants(region: VmcsRegion, info: ExitInfo) -> bool:
    """Does the L1's VMCS ``region`` make ``info`` a VM exit to the L1 (SDM 26.1, 26.2)?
    The MOV-to-CR decision was made with the L1's masks where it was recognised
    (:func:`cr_guard`), so a CR access that reaches here is one."""
    r = info.reason
    if r in _UNCONDITIONAL:
        return True
    primary = region.read("CPU_BASED_VM_EXEC_CONTROL")
    if r in _PRIMARY_EXITS:
        return bool(primary & _PRIMARY_EXITS[r])
    if r is ExitReason.IO_INSTRUCTION:
        if primary & _PRIMARY["USE_IO_BITMAPS"]:
            q = info.qualification
            return IoBitmaps(region.mem, region.read("IO_BITMAP_A"), region.read("IO_BITMAP_B")).exits(
                q >> 16, (q & 7) + 1)
        return bool(primary & _PRIMARY["UNCONDITIONAL_IO_EXITING"])
    if r in (ExitReason.MSR_READ, ExitReason.MSR_WRITE):
        if not primary & _PRIMARY["USE_MSR_BITMAPS"]:
            return True
        msr = info.payload.msr if isinstance(info.payload, MsrAccess) else 0
        return MsrBitmap(region.mem, region.read("MSR_BITMAP")).exits(msr, r is ExitReason.MSR_WRITE)
    if r is ExitReason.CR_ACCESS:
        return True
    if r in (ExitReason.EPT_VIOLATION, ExitReason.EPT_MISCONFIG):
        # the guest hypervisor's EPT decided it (nested_memory.ept_fault); one of hvdbg's own
        # EPT, on the L1-physical address its EPT led to, is hvdbg's (MMIO, RAM it lacks)
        return isinstance(info.payload, NestedEptFault)
    if r is ExitReason.EXCEPTION_NMI:
        vector = info.interruption_info & 0xFF
        hit = bool(region.read("EXCEPTION_BITMAP") >> vector & 1)
        if vector == 14:   # #PF: the error-code mask/match decides which way bit 14 counts (SDM 25.6.3)
            error = info.interruption_error or 0
            if (error & region.read("PAGE_FAULT_ERROR_CODE_MASK")) != region.read("PAGE_FAULT_ERROR_CODE_MATCH"):
                hit = not hit
        return hit
    if r is ExitReason.APIC_ACCESS:   # an access to the APIC-access page (SDM 30.4), found through the EPT
        if not secondary(region) & _VIRTUALIZE_APIC:
            return False
        page = info.guest_physical & ~0xFFF if info.guest_physical is not None else 0xFEE00000
        if ept_enabled(region):
            walk = walk_ept(region.mem, region.read("EPT_POINTER") & ADDR_MASK, page)
            page = walk.hpa if walk.status is EptStatus.OK and walk.hpa is not None else None
        return page is not None and page == region.read("APIC_ACCESS_ADDR") & ~0xFFF
    return False


def cr_guard(vcpu, cr: int) -> tuple[int, int] | None:
    """In L2: the L1's CR0/CR4 guest/host mask and read shadow (SDM 25.6.6), which decide
    whether a MOV to that CR exits to the L1; None outside L2."""
    state = vcpu.vmx
    if state is None or not state.non_root or cr not in (0, 4):
        return None
    region = vmcs12(vcpu)
    return region.read(f"CR{cr}_GUEST_HOST_MASK"), region.read(f"CR{cr}_READ_SHADOW")


def exception_exits(vcpu, ev: Event) -> bool:
    """In L2: does the L1's exception bitmap (with the #PF error-code mask/match) make
    exception ``ev`` a VM exit to the L1 (SDM 25.6.3)?"""
    if not in_l2(vcpu):
        return False
    info = ExitInfo(ExitReason.EXCEPTION_NMI, interruption_info=ev.interruption_info(),
                    interruption_error=ev.error_code)
    return l1_wants(vmcs12(vcpu), info)


def init_blocked(vcpu) -> bool:
    """INIT is blocked in VMX root operation (SDM 24.8): it stays pending for the guest
    hypervisor until VMXOFF or until it runs its guest (where INIT is an exit to it)."""
    state = vcpu.vmx
    return state is not None and state.in_vmx_operation and not state.non_root


def l1_primary_controls(vcpu) -> int | None:
    """In L2: the L1's primary processor-based controls (its interrupt- and NMI-window
    exiting arm the engine's window intercepts, SDM 26.7.5); None outside L2."""
    return vmcs12(vcpu).read("CPU_BASED_VM_EXEC_CONTROL") if in_l2(vcpu) else None


def rdtsc_exits(vcpu, rdtscp: bool) -> bool:
    """In L2 with the L1's RDTSC exiting: RDTSC (reason 16) / RDTSCP (51) is its VM exit
    (SDM 26.1.3); the engine leaves EDX:EAX alone.  RDTSCP without "enable RDTSCP" is #UD
    (SDM 25.6.2), which the L1's exception bitmap may make an exit."""
    if not in_l2(vcpu):
        return False
    region = vmcs12(vcpu)
    if rdtscp and not secondary(region) & SECONDARY_PROCESSOR_BASED.mask("ENABLE_RDTSCP"):
        vcpu.raise_exception(hardware_exception(6), vcpu.engine.rip())
        return True
    if not region.read("CPU_BASED_VM_EXEC_CONTROL") & _PRIMARY["RDTSC_EXITING"]:
        return False
    reason = ExitReason.RDTSCP if rdtscp else ExitReason.RDTSC
    vcpu.vm_exit(ExitInfo(reason, rip=vcpu.engine.rip(), instruction_length=3 if rdtscp else 2))
    return True


def tsc_offset(vcpu) -> int:
    """What L2 adds to the TSC: the L1's TSC_OFFSET with "use TSC offsetting" (SDM 26.3,
    25.6.5); 0 outside L2."""
    if not in_l2(vcpu):
        return 0
    region = vmcs12(vcpu)
    return region.read("TSC_OFFSET") if region.read("CPU_BASED_VM_EXEC_CONTROL") & _PRIMARY["USE_TSC_OFFSETTING"] else 0


def cr3_load_exits(vcpu, value: int) -> bool:
    """In L2 with CR3-load exiting: is MOV to CR3 of ``value`` an exit (not one of the first
    CR3_TARGET_COUNT CR3-target values, SDM 25.6.7)?"""
    if not in_l2(vcpu):
        return False
    region = vmcs12(vcpu)
    if not region.read("CPU_BASED_VM_EXEC_CONTROL") & _CR3_LOAD:
        return False
    count = min(region.read("CR3_TARGET_COUNT"), 4)
    return value not in {region.read(f"CR3_TARGET_VALUE{i}") for i in range(count)}


def invlpg(vcpu) -> None:
    """INVLPG m, intercepted while L2 runs under the L1's INVLPG exiting: exit reason 14
    with the linear address as qualification (SDM 28.2.1); RIP is at the instruction."""
    from hvdbg.hv.nested import linear_of_memory_operand
    e = vcpu.engine
    rip = e.rip()
    insn = next(iter(vcpu.decode(vcpu.code_base() + rip)), None)
    length = insn.size if insn is not None else 3
    linear = linear_of_memory_operand(vcpu, insn) if insn is not None else 0
    if not vcpu.vm_exit(ExitInfo(ExitReason.INVLPG, qualification=linear, rip=rip, instruction_length=length,
                                 guest_linear=linear)):
        return
    e.flush_tlb()       # not the guest hypervisor's: the processor's INVLPG (hvdbg keeps no TLB to spare)
    e.set_rip(rip + length)


def in_l2(vcpu) -> bool:
    state = vcpu.vmx
    return state is not None and state.non_root


def reflect(vcpu, info: ExitInfo) -> L2Exit:
    """Make ``info`` the L1's VM exit once the current engine run ends."""
    state: NestedVmx = vcpu.vmx
    e = vcpu.engine
    rip = info.rip
    length = info.instruction_length
    if info.reason is ExitReason.EXCEPTION_NMI and (info.interruption_info >> 8 & 7) in (
            EventType.SOFTWARE_INTERRUPT, EventType.SOFTWARE_EXCEPTION, EventType.PRIVILEGED_SOFTWARE_EXCEPTION):
        rip -= length     # INT3 / INTO / INT n exit with RIP at the instruction (SDM 28.2.4)
    instruction_info = vcpu._vmcs.read("VMX_INSTRUCTION_INFO") if info.reason in VMX_INSTRUCTION_EXITS else 0
    qualification = info.qualification
    if info.reason is ExitReason.IO_INSTRUCTION:
        length, qualification = _io_instruction(vcpu, rip, qualification)
    state.pending_exit = L2Exit(int(info.reason), qualification, rip, length, info.guest_linear,
                                info.guest_physical, info.interruption_info, info.interruption_error,
                                instruction_info, e.batch_of(GPRS).read(), info.detail)
    if info.reason is ExitReason.IO_INSTRUCTION and info.qualification & 8:
        info.data = e.read("rax")     # the IN completes in the engine: leave RAX as it is
    state.cpuid_leaf = e.read("rax") & 0xFFFFFFFF if info.reason is ExitReason.CPUID else None
    return state.pending_exit


def describe(x: L2Exit, info: ExitInfo) -> str:
    """The exit in words, for the trace (hvdbg.vmx.exit_text)."""
    extra = {"gpa": x.guest_physical, "gla": x.guest_linear} if x.guest_physical is not None else {}
    if isinstance(info.payload, MsrAccess):
        extra["msr"] = info.payload.msr
    if x.interruption_info:
        extra.update(intr_info=x.interruption_info, error_code=x.interruption_error)
    return info.detail or describe_exit(x.reason, x.qualification, **extra)


def _io_instruction(vcpu, rip: int, qualification: int) -> tuple[int, int]:
    """The length of the IN/OUT/INS/OUTS at ``rip`` and its exit qualification with the
    string (bit 4), REP (bit 5) and immediate-operand (bit 6) bits (SDM Table 28-5)."""
    insn = next(iter(vcpu.decode(vcpu.code_base() + rip)), None)
    if insn is None:
        return 1, qualification
    opcode = insn.opcode[0]
    if opcode in (0xE4, 0xE5, 0xE6, 0xE7):
        qualification |= 1 << 6
    if opcode in (0x6C, 0x6D, 0x6E, 0x6F):
        qualification |= 1 << 4 | (1 << 5 if 0xF3 in insn.prefix or 0xF2 in insn.prefix else 0)
    return insn.size, qualification


def external_interrupt_exits(vcpu, vector: int) -> bool:
    """An interrupt the local APIC would deliver to L2: with the L1's "external-interrupt
    exiting" it is an exit to the L1 instead (reason 1, SDM 26.2), acknowledged with its
    vector in the exit interruption information if the L1 asked for that (SDM 28.2.2)."""
    region = vmcs12(vcpu)
    if not region.read("PIN_BASED_VM_EXEC_CONTROL") & _PIN["EXTERNAL_INTERRUPT_EXITING"]:
        return False
    info = 0
    if region.read("VM_EXIT_CONTROLS") & _EXIT["ACK_INTERRUPT_ON_EXIT"]:
        vector = vcpu.apic.ack(vector)
        info = vector | 1 << 31
    vcpu.vmx.pending_exit = L2Exit(int(ExitReason.EXTERNAL_INTERRUPT), 0, vcpu.engine.rip(), interruption_info=info,
                                   gprs=vcpu.engine.batch_of(GPRS).read(), detail=f"external interrupt {vector:#x}")
    vcpu.request_leave()
    return True


def nmi_exits(vcpu) -> bool:
    """An NMI for L2 under the L1's "NMI exiting": an exception-or-NMI exit (reason 0) with
    the NMI in the exit interruption information instead of its delivery (SDM 26.2, 28.2.2).
    With "virtual NMIs" the L1 injects NMIs itself; their blocking until IRET is the
    engine's NMI blocking, as for a real NMI (SDM 25.3)."""
    if not vmcs12(vcpu).read("PIN_BASED_VM_EXEC_CONTROL") & _PIN["NMI_EXITING"]:
        return False
    vcpu.apic.nmi_pending = False
    vcpu.vmx.pending_exit = L2Exit(int(ExitReason.EXCEPTION_NMI), 0, vcpu.engine.rip(),
                                   interruption_info=2 | int(EventType.NMI) << 8 | 1 << 31,
                                   gprs=vcpu.engine.batch_of(GPRS).read(), detail="NMI")
    vcpu.request_leave()
    return True


# -- the transitions ------------------------------------------------------------------------------

def complete(vcpu) -> None:
    """Perform the transition the last engine run ended with (outside the engine)."""
    state = vcpu.vmx
    if state is None:
        return
    if state.pending_exit is not None:
        pending, state.pending_exit = state.pending_exit, None
        exit_to_l1(vcpu, pending)
    if state.pending_entry is not None:
        launch, state.pending_entry = state.pending_entry is ExitReason.VMLAUNCH, None
        enter_l2(vcpu, launch)


def enter_l2(vcpu, launch: bool = True) -> None:
    """Load the L2 state of the L1's current VMCS (SDM 27.3.2 guest state, 27.3.4 activity,
    27.6 event injection) and its memory view; the engine runs L2 from its next run."""
    state: NestedVmx = vcpu.vmx
    region = vmcs12(vcpu)
    v = region.read
    e = vcpu.engine
    entry = v("VM_ENTRY_CONTROLS")
    efer = v("GUEST_IA32_EFER") if entry & _ENTRY["LOAD_EFER"] else e.read("efer")
    if not entry & _ENTRY["LOAD_EFER"]:   # LMA, and LME with paging, follow "IA-32e mode guest" (SDM 27.3.2.1)
        bits = EFER_LMA | (EFER_LME if v("GUEST_CR0") >> 31 & 1 else 0)
        efer = efer | bits if entry & _ENTRY["IA32E_MODE_GUEST"] else efer & ~bits
    if ept_enabled(region):
        state.memory_view = nested_memory.L2Memory.build(vcpu, v("EPT_POINTER"))
        state.memory_view.install(vcpu)
    e.set_control_registers(v("GUEST_CR0"), v("GUEST_CR3"), v("GUEST_CR4"), efer)
    primary = v("CPU_BASED_VM_EXEC_CONTROL")
    e.intercepts.set_invlpg_exiting(bool(primary & PRIMARY_PROCESSOR_BASED.mask("INVLPG_EXITING")))
    e.intercepts.set_cr_reads(   # read shadows, CR3-store and CR3-load exiting
        frozenset(cr for cr in (0, 4) if v(f"CR{cr}_GUEST_HOST_MASK")) | ({3} if primary & _CR3_STORE else set()),
        frozenset({3}) if primary & _CR3_LOAD else frozenset())
    if entry & _ENTRY["LOAD_DEBUG_CONTROLS"]:
        e.write("dr7", v("GUEST_DR7"))
        vcpu.msrs[IA32_DEBUGCTL] = v("GUEST_IA32_DEBUGCTL")
    if entry & _ENTRY["LOAD_PAT"]:
        vcpu.msrs[IA32_PAT] = v("GUEST_IA32_PAT")
    for msr, name in _SYSENTER:
        e.msr_write(msr, v(f"GUEST_{name}"))
    e.write("rflags", v("GUEST_RFLAGS") | 2)    # before the segments: hflags follow RFLAGS.VM
    load_segment_fields(e, v)
    e.write("rsp", v("GUEST_RSP"))
    e.set_rip(v("GUEST_RIP"))
    failed = vmx_msr_lists.load(vcpu, v("VM_ENTRY_MSR_LOAD_ADDR"), v("VM_ENTRY_MSR_LOAD_COUNT"))
    if failed is not None:    # SDM 27.8: a VM-entry failure, exit reason 34, the entry's number
        _entry_failure(vcpu, region, launch, ExitReason.MSR_LOAD_FAIL, failed)
        return
    injected = v("VM_ENTRY_INTR_INFO_FIELD")
    # an event injected into a HLT state is delivered and the processor is active after it
    # (SDM 27.6.1, 27.7.3: HLT is left for the event's delivery)
    act.restore(vcpu, 0 if injected >> 31 & 1 and v("GUEST_ACTIVITY_STATE") == 1 else v("GUEST_ACTIVITY_STATE"))
    if injected >> 31 & 1:
        kind = EventType(injected >> 8 & 7)
        error = v("VM_ENTRY_EXCEPTION_ERROR_CODE") if injected >> 11 & 1 else None
        vcpu.pending_event = Event(injected & 0xFF, kind, error)
        soft = kind in (EventType.SOFTWARE_INTERRUPT, EventType.SOFTWARE_EXCEPTION,
                        EventType.PRIVILEGED_SOFTWARE_EXCEPTION)
        length = v("VM_ENTRY_INSTRUCTION_LEN") if soft else 0
        vcpu.pending_event_rip, vcpu.pending_event_length = v("GUEST_RIP") + length, length
    state.l2_entries += 1
    _record_entry(vcpu, state)
    now = vcpu.clock()
    if state.left_at:
        state.time_in_l1 += now - state.left_at
    state.entered_at = now


def _record_entry(vcpu, state: NestedVmx) -> None:
    """What the diagnosis compares with what a kernel expects: L2's registers at its first
    entry (a loader's EAX magic, an AP's real-mode CS), and the CPUID answer the L1 gave
    for the exit it resumes from (the initial APIC ID it tells its guest)."""
    e = vcpu.engine
    if state.first_entry is None:
        cs = e.segment("cs")
        rax, rbx = e.batch_of(("rax", "rbx")).read()
        state.first_entry = {"rax": rax, "rbx": rbx, "rip": e.rip(), "cs_selector": cs.selector,
                             "cs_base": cs.base, "cr0": e.read("cr0")}
    if state.cpuid_leaf is not None:
        state.cpuid_answers[state.cpuid_leaf] = tuple(e.batch_of(("rax", "rbx", "rcx", "rdx")).read())
        state.cpuid_leaf = None


def _entry_failure(vcpu, region: VmcsRegion, launch: bool, reason: ExitReason, failed: tuple[int, str]) -> None:
    """A VM entry that failed after the guest state was loaded (the MSR-load list): exit
    reason with bit 31, the qualification, the host state; the VMCS stays not launched."""
    state: NestedVmx = vcpu.vmx
    number, why = failed
    region.write("VM_EXIT_REASON", int(reason) | 1 << 31)
    region.write("EXIT_QUALIFICATION", number)
    if launch:
        region.launch_state = LaunchState.CLEAR
    _back_to_l1(vcpu, region)
    state.entry_failures.append(why)
    del state.entry_failures[:-8]


def _back_to_l1(vcpu, region: VmcsRegion) -> None:
    """What every way out of L2 does: the machine's memory view and intercepts again, VMX
    root operation, the L1's host state (SDM 28.5)."""
    state: NestedVmx = vcpu.vmx
    if state.memory_view is not None:
        state.memory_view.remove(vcpu)
        state.memory_view = None
    state.non_root = False
    vcpu.engine.intercepts.set_cr_reads(frozenset())
    vcpu.engine.intercepts.set_invlpg_exiting(False)
    load_host_state(vcpu, region)


def exit_to_l1(vcpu, x: L2Exit) -> None:
    """The VM exit to the guest hypervisor (SDM 28.2 exit information, 28.3 guest state,
    28.5 host state): L2's state goes into the L1's VMCS, the L1 continues at HOST_RIP."""
    state: NestedVmx = vcpu.vmx
    region = vmcs12(vcpu)
    w = region.write
    e = vcpu.engine
    if x.gprs:
        e.batch_of(GPRS).write(x.gprs)
    w("VM_EXIT_REASON", x.reason)
    w("EXIT_QUALIFICATION", x.qualification)
    # the address fields are defined only for EPT violations / misconfigurations (SDM 28.2.1:
    # hvdbg's own APIC-access exits carry the page's GPA, which the L1's linear-access exit does not)
    ept_exit = x.reason in (int(ExitReason.EPT_VIOLATION), int(ExitReason.EPT_MISCONFIG))
    w("GUEST_LINEAR_ADDRESS", (x.guest_linear or 0) if x.reason == int(ExitReason.EPT_VIOLATION) else 0)
    w("GUEST_PHYSICAL_ADDRESS", (x.guest_physical or 0) if ept_exit else 0)
    w("VM_EXIT_INTR_INFO", x.interruption_info)
    w("VM_EXIT_INTR_ERROR_CODE", x.interruption_error or 0)
    w("IDT_VECTORING_INFO_FIELD", 0)
    w("VM_EXIT_INSTRUCTION_LEN", x.instruction_length)
    w("VMX_INSTRUCTION_INFO", x.instruction_info)
    w("VM_ENTRY_INTR_INFO_FIELD", region.read("VM_ENTRY_INTR_INFO_FIELD") & ~(1 << 31))   # SDM 28.2.? "cleared"
    controls = region.read("VM_EXIT_CONTROLS")
    efer = e.read("efer")
    w("GUEST_CR0", e.read("cr0"))
    w("GUEST_CR3", e.read("cr3"))
    w("GUEST_CR4", e.read("cr4"))
    if controls & _EXIT["SAVE_DEBUG_CONTROLS"]:
        w("GUEST_DR7", e.read("dr7"))
        w("GUEST_IA32_DEBUGCTL", vcpu.msrs.get(IA32_DEBUGCTL, 0))
    w("GUEST_RSP", e.read("rsp"))
    w("GUEST_RIP", x.rip)
    w("GUEST_RFLAGS", e.read("rflags"))
    for name, value in segment_fields(e).items():
        w(name, value)
    for msr, name in _SYSENTER:
        w(f"GUEST_{name}", e.msr_read(msr))
    if controls & _EXIT["SAVE_EFER"]:
        w("GUEST_IA32_EFER", efer)
    if controls & _EXIT["SAVE_PAT"]:
        w("GUEST_IA32_PAT", vcpu.msrs.get(IA32_PAT, 0x0007040600070406))
    entry = region.read("VM_ENTRY_CONTROLS")
    lma = _ENTRY["IA32E_MODE_GUEST"] if efer & EFER_LMA else 0      # SDM 28.2: the control follows EFER.LMA
    w("VM_ENTRY_CONTROLS", (entry & ~_ENTRY["IA32E_MODE_GUEST"]) | lma)
    w("GUEST_ACTIVITY_STATE", 0)
    w("GUEST_INTERRUPTIBILITY_INFO", 0)
    stored = vmx_msr_lists.store(vcpu, region.read("VM_EXIT_MSR_STORE_ADDR"), region.read("VM_EXIT_MSR_STORE_COUNT"))
    _back_to_l1(vcpu, region)
    act.restore(vcpu, 0)
    loaded = stored or vmx_msr_lists.load(vcpu, region.read("VM_EXIT_MSR_LOAD_ADDR"),
                                          region.read("VM_EXIT_MSR_LOAD_COUNT"))
    if loaded is not None:   # SDM 28.7 VMX abort: indicator 1 (store) or 4 (load), then shutdown
        region.record_abort(1 if stored else 4)
        state.entry_failures.append(f"VMX abort: {loaded[1]}")
        act.shutdown(vcpu)
    state.l2_exits += 1
    state.exits_by_reason[x.reason] = state.exits_by_reason.get(x.reason, 0) + 1
    now = vcpu.clock()
    state.time_in_l2 += now - state.entered_at
    state.left_at = now


def load_host_state(vcpu, region: VmcsRegion) -> None:
    """The processor state after a VM exit or a failed VM entry, from the VMCS host-state
    area (SDM 28.5.1-28.5.3): control registers, RSP/RIP, RFLAGS = 2, flat CS/SS/DS/ES/FS/
    GS with their selectors, TR, GDTR/IDTR (limits 0xFFFF), the SYSENTER MSRs and, as the
    VM-exit controls ask, EFER and PAT."""
    v = region.read
    e = vcpu.engine
    controls = v("VM_EXIT_CONTROLS")
    long_mode = bool(controls & _EXIT["HOST_ADDRESS_SPACE_SIZE"])
    efer = v("HOST_IA32_EFER") if controls & _EXIT["LOAD_EFER"] else e.read("efer")
    efer = (efer | EFER_LMA | EFER_LME) if long_mode else efer & ~(EFER_LMA | EFER_LME)
    e.set_control_registers(v("HOST_CR0"), v("HOST_CR3"), v("HOST_CR4"), efer)
    e.write("dr7", 0x400)                   # SDM 28.5.1: DR7 = 400H, IA32_DEBUGCTL = 0
    vcpu.msrs[IA32_DEBUGCTL] = 0
    if controls & _EXIT["LOAD_PAT"]:
        vcpu.msrs[IA32_PAT] = v("HOST_IA32_PAT")
    e.write("rflags", 0x2)
    flat = 0xFFFFFFFF
    segs = {"cs": Segment(v("HOST_CS_SELECTOR"), 0, flat, 0xA09B if long_mode else 0xC09B)}
    for name in ("ss", "ds", "es", "fs", "gs"):
        selector = v(f"HOST_{name.upper()}_SELECTOR")
        base = v(f"HOST_{name.upper()}_BASE") if name in ("fs", "gs") else 0
        unusable = 0 if selector or name == "ss" else 1 << 16
        segs[name] = Segment(selector, base, flat, 0xC093 | unusable)
    segs["tr"] = Segment(v("HOST_TR_SELECTOR"), v("HOST_TR_BASE"), 0x67, 0x8B)
    segs["ldtr"] = Segment(0, 0, 0, 1 << 16)
    e.set_segments(segs)
    e.set_table("gdtr", v("HOST_GDTR_BASE"), 0xFFFF)
    e.set_table("idtr", v("HOST_IDTR_BASE"), 0xFFFF)
    for msr, name in _SYSENTER:
        e.msr_write(msr, v(f"HOST_IA32_{name}"))
    e.write("rsp", v("HOST_RSP"))
    e.set_rip(v("HOST_RIP"))
