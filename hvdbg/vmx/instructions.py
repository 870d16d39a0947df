"""The VMX instructions a guest hypervisor executes, as functions of (per-vCPU VMX state,
processor mode, guest-physical memory, operands) -> :class:`VmxOutcome` (SDM Vol. 3C
chapter 31 "VMX Instruction Reference").

Each function follows the instruction's "Operation" pseudo-code: the #UD and #GP checks,
the VM exit when executed in VMX non-root operation (the guest hypervisor's own guest ran
it), then the operand checks ending in VMsucceed, VMfailInvalid or VMfailValid(error)
(SDM 31.2 "Conventions"; the error numbers are :class:`VmInstructionError`, SDM 31.4).
Memory operands arrive already fetched (the caller walks the guest's paging): the 64-bit
VMCS / VMXON pointer, the 128-bit INVEPT / INVVPID descriptor.  A result for a
destination (VMREAD, VMPTRST) is :attr:`VmxOutcome.value`, for the caller to store.
VMLAUNCH / VMRESUME end at the point of VM entry (:mod:`hvdbg.vmx.entry_checks`): the
caller loads guest state on ``VM_ENTRY`` and host state on ``ENTRY_FAILURE``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from hvdbg.arch.paging import is_canonical
from hvdbg.arch.physmem import PhysicalMemory
from hvdbg.arch.regs import CR0_PE, CR4_VMXE, EFER_LMA, RFLAGS_CF, RFLAGS_VM
from hvdbg.vmx.capabilities import DEFAULT_CAPABILITIES, FeatureControl, VmxCapabilities
from hvdbg.vmx.entry_checks import EntryVerdict, check_vm_entry, eptp_problem
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.fields import FieldRef, FieldType, UnknownVmcsFieldError, resolve
from hvdbg.vmx.vmcs import LaunchState
from hvdbg.vmx.vmcs_region import OpenBusMemory, VmcsRegion

INVALID_POINTER = 0xFFFF_FFFF_FFFF_FFFF
RFLAGS_PF, RFLAGS_AF, RFLAGS_ZF, RFLAGS_SF, RFLAGS_OF = 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11
_ARITH = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF
UD, GP = 6, 13


class VmInstructionError(enum.IntEnum):
    """VM-instruction error numbers (SDM 31.4, Table 31-1)."""

    description: str

    def __new__(cls, value: int, description: str) -> "VmInstructionError":
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    VMCALL_IN_ROOT = (1, "VMCALL executed in VMX root operation")
    VMCLEAR_INVALID_ADDRESS = (2, "VMCLEAR with invalid physical address")
    VMCLEAR_VMXON_POINTER = (3, "VMCLEAR with VMXON pointer")
    VMLAUNCH_NONCLEAR_VMCS = (4, "VMLAUNCH with non-clear VMCS")
    VMRESUME_NONLAUNCHED_VMCS = (5, "VMRESUME with non-launched VMCS")
    VMRESUME_AFTER_VMXOFF = (6, "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)")
    ENTRY_INVALID_CONTROL_FIELD = (7, "VM entry with invalid control field(s)")
    ENTRY_INVALID_HOST_STATE_FIELD = (8, "VM entry with invalid host-state field(s)")
    VMPTRLD_INVALID_ADDRESS = (9, "VMPTRLD with invalid physical address")
    VMPTRLD_VMXON_POINTER = (10, "VMPTRLD with VMXON pointer")
    VMPTRLD_INCORRECT_REVISION_ID = (11, "VMPTRLD with incorrect VMCS revision identifier")
    UNSUPPORTED_VMCS_COMPONENT = (12, "VMREAD/VMWRITE from/to unsupported VMCS component")
    VMWRITE_READ_ONLY_COMPONENT = (13, "VMWRITE to read-only VMCS component")
    VMXON_IN_ROOT = (15, "VMXON executed in VMX root operation")
    ENTRY_INVALID_EXECUTIVE_VMCS_POINTER = (16, "VM entry with invalid executive-VMCS pointer")
    ENTRY_NONLAUNCHED_EXECUTIVE_VMCS = (17, "VM entry with non-launched executive VMCS")
    ENTRY_EXECUTIVE_VMCS_NOT_VMXON = (18, "VM entry with executive-VMCS pointer not VMXON pointer "
                                          "(when attempting to deactivate the dual-monitor treatment)")
    VMCALL_NONCLEAR_VMCS = (19, "VMCALL with non-clear VMCS (when attempting to activate the dual-monitor "
                                "treatment)")
    VMCALL_INVALID_EXIT_CONTROLS = (20, "VMCALL with invalid VM-exit control fields")
    VMCALL_INCORRECT_MSEG_REVISION = (22, "VMCALL with incorrect MSEG revision identifier")
    VMXOFF_DUAL_MONITOR = (23, "VMXOFF under dual-monitor treatment of SMIs and SMM")
    VMCALL_INVALID_SMM_MONITOR = (24, "VMCALL with invalid SMM-monitor features")
    ENTRY_INVALID_EXECUTIVE_CONTROLS = (25, "VM entry with invalid VM-execution control fields in executive VMCS")
    ENTRY_EVENTS_BLOCKED_BY_MOV_SS = (26, "VM entry with events blocked by MOV SS")
    INVALID_INVEPT_INVVPID_OPERAND = (28, "Invalid operand to INVEPT/INVVPID")


class Result(enum.Enum):
    """How a VMX instruction ends."""

    SUCCEED = "VMsucceed"
    FAIL_INVALID = "VMfailInvalid"
    FAIL_VALID = "VMfailValid"
    EXCEPTION = "exception"            # #UD or #GP(0), nothing else changed
    VM_EXIT = "VM exit"                # executed in VMX non-root operation: exit to the guest hypervisor
    VM_ENTRY = "VM entry"              # VMLAUNCH/VMRESUME passed every check: the guest runs
    ENTRY_FAILURE = "VM-entry failure" # a guest-state or MSR-load check failed: exit with bit 31 set


@dataclass(frozen=True)
class Invalidation:
    """What INVEPT / INVVPID invalidate: ``scope`` is the SDM's type name."""

    instruction: str
    scope: str
    eptp: int | None = None
    vpid: int | None = None
    address: int | None = None


@dataclass(frozen=True)
class VmxOutcome:
    """The effect of one VMX instruction (besides what it changed in :class:`VmxState`
    and in the VMCS region)."""

    result: Result
    why: str = ""                              # the failed check, with its SDM section
    error: VmInstructionError | None = None    # FAIL_VALID
    vector: int | None = None                  # EXCEPTION: 6 (#UD) or 13 (#GP, error code 0)
    exit_reason: int | None = None             # VM_EXIT (basic reason) / ENTRY_FAILURE (full field)
    qualification: int = 0
    value: int | None = None                   # VMREAD / VMPTRST destination
    invalidation: Invalidation | None = None
    verdict: EntryVerdict | None = None        # VMLAUNCH / VMRESUME: every failed entry check

    def rflags(self, rflags: int) -> int:
        """RFLAGS after the instruction (SDM 31.2): VMsucceed clears CF, PF, AF, ZF, SF,
        OF; VMfailInvalid sets CF; VMfailValid sets ZF.  Exceptions, exits and entries
        leave RFLAGS to the event / the state load."""
        if self.result is Result.SUCCEED:
            return rflags & ~_ARITH
        if self.result is Result.FAIL_INVALID:
            return rflags & ~_ARITH | RFLAGS_CF
        if self.result is Result.FAIL_VALID:
            return rflags & ~_ARITH | RFLAGS_ZF
        return rflags

    def describe(self) -> str:
        if self.result is Result.FAIL_VALID and self.error is not None:
            text = f"VMfailValid({int(self.error)}: {self.error.description})"
        elif self.result is Result.EXCEPTION:
            text = "#UD" if self.vector == UD else "#GP(0)"
        elif self.result is Result.VM_EXIT and self.exit_reason is not None:
            text = f"VM exit ({ExitReason(self.exit_reason).description})"
        else:
            text = self.result.value
        return f"{text}: {self.why}" if self.why else text


@dataclass(frozen=True)
class ProcessorMode:
    """What the VMX instructions check of the executing processor (SDM 31.3)."""

    cpl: int = 0
    cr0: int = 0x80000031
    cr4: int = CR4_VMXE | 0x20
    rflags: int = 0x2
    efer: int = 0xD00
    cs_long: bool = True
    blocking_by_mov_ss: bool = False

    @property
    def ia32e(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def code64(self) -> bool:
        return self.ia32e and self.cs_long

    @property
    def operand_mask(self) -> int:
        """VMREAD/VMWRITE operands are 64-bit in 64-bit mode, 32-bit otherwise."""
        return INVALID_POINTER if self.code64 else 0xFFFFFFFF


@dataclass
class VmxState:
    """VMX operation of one vCPU (SDM 24.7, 25.1): in VMX operation or not, root or
    non-root, the VMXON pointer and the current-VMCS pointer."""

    caps: VmxCapabilities = DEFAULT_CAPABILITIES
    feature_control: FeatureControl = field(default_factory=FeatureControl)
    in_vmx_operation: bool = False
    non_root: bool = False
    vmxon_pointer: int | None = None
    current_vmcs: int = INVALID_POINTER

    @property
    def current_valid(self) -> bool:
        return self.current_vmcs != INVALID_POINTER

    def region(self, mem: PhysicalMemory, address: int | None = None) -> VmcsRegion:
        return VmcsRegion(mem, self.current_vmcs if address is None else address)


# -- the conventions (SDM 31.2) ---------------------------------------------------------------

def _succeed(**kwargs) -> VmxOutcome:
    return VmxOutcome(Result.SUCCEED, **kwargs)


def _exception(vector: int, why: str) -> VmxOutcome:
    return VmxOutcome(Result.EXCEPTION, why, vector=vector)


def _fail_invalid(why: str) -> VmxOutcome:
    return VmxOutcome(Result.FAIL_INVALID, why)


def _fail(state: VmxState, mem: PhysicalMemory, error: VmInstructionError, why: str = "") -> VmxOutcome:
    """VMfail(error): VMfailValid with the error in the current VMCS if there is one,
    VMfailInvalid otherwise."""
    if not state.current_valid:
        return _fail_invalid(why or error.description)
    state.region(mem).write("VM_INSTRUCTION_ERROR", int(error))
    return VmxOutcome(Result.FAIL_VALID, why or error.description, error=error)


def _prologue(state: VmxState, mode: ProcessorMode, reason: ExitReason) -> VmxOutcome | None:
    """The checks every VMX instruction but VMXON makes first: #UD outside VMX operation,
    in real / virtual-8086 / compatibility mode; VM exit in non-root; #GP(0) at CPL > 0."""
    if not state.in_vmx_operation:
        return _exception(UD, "not in VMX operation")
    if problem := _mode_problem(mode):
        return _exception(UD, problem)
    if state.non_root:
        return VmxOutcome(Result.VM_EXIT, "executed in VMX non-root operation", exit_reason=int(reason))
    if mode.cpl > 0:
        return _exception(GP, f"CPL {mode.cpl} > 0")
    return None


def _mode_problem(mode: ProcessorMode) -> str | None:
    if not mode.cr0 & CR0_PE:
        return "CR0.PE = 0 (real mode)"
    if mode.rflags & RFLAGS_VM:
        return "RFLAGS.VM = 1 (virtual-8086 mode)"
    if mode.ia32e and not mode.cs_long:
        return "compatibility mode (IA32_EFER.LMA = 1, CS.L = 0)"
    return None


def _pointer_problem(state: VmxState, pointer: int) -> str | None:
    """A VMXON / VMCS pointer must be 4 KiB aligned and fit the physical-address width."""
    if pointer & 0xFFF:
        return f"{pointer:#x} is not 4 KiB aligned"
    if pointer >> state.caps.phys_addr_width:
        return f"{pointer:#x} is beyond the {state.caps.phys_addr_width}-bit physical-address width"
    return None


# -- the instructions --------------------------------------------------------------------------

def checks_before_operand(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory,
                          reason: ExitReason) -> VmxOutcome | None:
    """How the instruction of exit reason ``reason`` ends before its memory operand is read
    (the #UD, VM-exit and #GP checks come first in every SDM 31.3 "Operation"; VMXON in
    VMX root operation fails without reading it), or None: the caller then fetches the
    operand, and a fault doing so is the instruction's outcome."""
    if reason is ExitReason.VMXON:
        return _vmxon_checks(state, mode, mem)
    if reason is ExitReason.VMCALL:
        return None
    return _prologue(state, mode, reason)


def _vmxon_checks(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory) -> VmxOutcome | None:
    if not mode.cr4 & CR4_VMXE:
        return _exception(UD, "CR4.VMXE = 0")
    if problem := _mode_problem(mode):
        return _exception(UD, problem)
    if state.in_vmx_operation:
        if state.non_root:
            return VmxOutcome(Result.VM_EXIT, "executed in VMX non-root operation", exit_reason=int(ExitReason.VMXON))
        if mode.cpl > 0:
            return _exception(GP, f"CPL {mode.cpl} > 0")
        return _fail(state, mem, VmInstructionError.VMXON_IN_ROOT)
    caps = state.caps
    problem = (f"CPL {mode.cpl} > 0" if mode.cpl > 0 else caps.cr0_problem(mode.cr0) or caps.cr4_problem(mode.cr4)
               or state.feature_control.vmxon_problem())
    if problem:
        return _exception(GP, problem)
    return None


def vmxon(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, pointer: int) -> VmxOutcome:
    """VMXON m64: enter VMX root operation with the VMXON region at ``pointer``."""
    if early := _vmxon_checks(state, mode, mem):
        return early
    caps = state.caps
    if problem := _pointer_problem(state, pointer):
        return _fail_invalid(f"VMXON pointer {problem}")
    header = VmcsRegion(mem, pointer).header
    if header != caps.revision_id:
        return _fail_invalid(f"VMXON region revision {header:#x} is not {caps.revision_id:#x}")
    state.in_vmx_operation, state.non_root = True, False
    state.vmxon_pointer, state.current_vmcs = pointer, INVALID_POINTER
    return _succeed()


def vmxoff(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory) -> VmxOutcome:
    """VMXOFF: leave VMX operation (no dual-monitor treatment in hvdbg)."""
    if early := _prologue(state, mode, ExitReason.VMXOFF):
        return early
    state.in_vmx_operation, state.vmxon_pointer, state.current_vmcs = False, None, INVALID_POINTER
    return _succeed()


def _pointer_instruction_checks(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, pointer: int,
                                reason: ExitReason, invalid_address: VmInstructionError,
                                vmxon_pointer: VmInstructionError) -> VmxOutcome | None:
    """The checks VMCLEAR and VMPTRLD share (SDM 31.3): the prologue, then the operand
    (4-KByte aligned, within the physical-address width) and not the VMXON pointer, each
    failure with the instruction's own VM-instruction error number."""
    if early := _prologue(state, mode, reason):
        return early
    if problem := _pointer_problem(state, pointer):
        return _fail(state, mem, invalid_address, f"VMCS pointer {problem}")
    if pointer == state.vmxon_pointer:
        return _fail(state, mem, vmxon_pointer)
    return None


def vmclear(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, pointer: int) -> VmxOutcome:
    """VMCLEAR m64: make the VMCS at ``pointer`` clear (and not current, if it was)."""
    if early := _pointer_instruction_checks(state, mode, mem, pointer, ExitReason.VMCLEAR,
                                            VmInstructionError.VMCLEAR_INVALID_ADDRESS,
                                            VmInstructionError.VMCLEAR_VMXON_POINTER):
        return early
    VmcsRegion(mem, pointer).launch_state = LaunchState.CLEAR
    if pointer == state.current_vmcs:
        state.current_vmcs = INVALID_POINTER
    return _succeed()


def vmptrld(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, pointer: int) -> VmxOutcome:
    """VMPTRLD m64: make the VMCS at ``pointer`` current."""
    if early := _pointer_instruction_checks(state, mode, mem, pointer, ExitReason.VMPTRLD,
                                            VmInstructionError.VMPTRLD_INVALID_ADDRESS,
                                            VmInstructionError.VMPTRLD_VMXON_POINTER):
        return early
    region = VmcsRegion(mem, pointer)
    shadow_ok = state.caps.supports("secondary", "VMCS_SHADOWING")
    if region.revision_id != state.caps.revision_id or (region.shadow and not shadow_ok):
        return _fail(state, mem, VmInstructionError.VMPTRLD_INCORRECT_REVISION_ID,
                     f"VMCS region header {region.header:#x}, expected revision {state.caps.revision_id:#x}")
    state.current_vmcs = pointer
    return _succeed()


def vmptrst(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory) -> VmxOutcome:
    """VMPTRST m64: store the current-VMCS pointer (``value``)."""
    if early := _prologue(state, mode, ExitReason.VMPTRST):
        return early
    return _succeed(value=state.current_vmcs)


def _field_problem(state: VmxState, encoding: int) -> tuple[FieldRef | None, str]:
    """The VMCS component an encoding operand names, or the VMfail error if none."""
    if encoding >> 32 or encoding < 0:
        return None, f"encoding {encoding:#x}: bits 63:32 are not 0"
    try:
        ref = resolve(encoding)
    except UnknownVmcsFieldError:
        return None, f"no VMCS field has encoding {encoding:#x}"
    if not state.caps.vmcs_field_supported(ref.field.name):
        return None, f"{ref.field.name} ({encoding:#x}) is not supported by hvdbg"
    return ref, ""


def _current_field(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, encoding: int,
                   reason: ExitReason) -> tuple[object, VmxOutcome | None]:
    """The checks VMREAD and VMWRITE share (SDM 31.3): the prologue, a current VMCS, a
    supported field; (the field, None), or (None, the outcome that ends the instruction)."""
    if early := _prologue(state, mode, reason):
        return None, early
    if not state.current_valid:
        return None, _fail_invalid("no current VMCS")
    ref, problem = _field_problem(state, encoding)
    if ref is None:
        return None, _fail(state, mem, VmInstructionError.UNSUPPORTED_VMCS_COMPONENT, problem)
    return ref, None


def vmread(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, encoding: int) -> VmxOutcome:
    """VMREAD r/m, r: the field named by ``encoding`` (``value``, zero-extended or cut to
    the operand size: 64 bits in 64-bit mode, 32 otherwise)."""
    ref, early = _current_field(state, mode, mem, encoding, ExitReason.VMREAD)
    if early is not None:
        return early
    return _succeed(value=state.region(mem).read(ref) & mode.operand_mask)


def vmwrite(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, encoding: int, value: int) -> VmxOutcome:
    """VMWRITE r, r/m: write ``value`` (the operand: 64 bits in 64-bit mode, 32 otherwise;
    field bits above it are cleared) to the field named by ``encoding``."""
    ref, early = _current_field(state, mode, mem, encoding, ExitReason.VMWRITE)
    if early is not None:
        return early
    if ref.field.type is FieldType.EXIT_INFO and not state.caps.field_writable(ref.field.name):
        return _fail(state, mem, VmInstructionError.VMWRITE_READ_ONLY_COMPONENT,
                     f"{ref.field.name} is a VM-exit information field (IA32_VMX_MISC[29] = 0)")
    state.region(mem).write(ref, value & mode.operand_mask)
    return _succeed()


def vmlaunch(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory) -> VmxOutcome:
    """VMLAUNCH: enter the guest of the current VMCS, which must be clear."""
    return _vm_entry(state, mode, mem, launch=True)


def vmresume(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory) -> VmxOutcome:
    """VMRESUME: re-enter the guest of the current VMCS, which must be launched."""
    return _vm_entry(state, mode, mem, launch=False)


def _vm_entry(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, *, launch: bool) -> VmxOutcome:
    """SDM 31.3 VMLAUNCH/VMRESUME, then SDM 27.1-27.4: VMfailValid(7) for a control check,
    VMfailValid(8) for a host-state check, an entry-failure exit for guest state / MSR load."""
    if early := _prologue(state, mode, ExitReason.VMLAUNCH if launch else ExitReason.VMRESUME):
        return early
    if not state.current_valid:
        return _fail_invalid("no current VMCS")
    if mode.blocking_by_mov_ss:
        return _fail(state, mem, VmInstructionError.ENTRY_EVENTS_BLOCKED_BY_MOV_SS)
    region = state.region(mem)
    launched = region.launch_state is LaunchState.LAUNCHED
    if launch and launched:
        return _fail(state, mem, VmInstructionError.VMLAUNCH_NONCLEAR_VMCS)
    if not launch and not launched:
        return _fail(state, mem, VmInstructionError.VMRESUME_NONLAUNCHED_VMCS)
    verdict = check_vm_entry(region.snapshot(), state.caps, host_ia32e=mode.ia32e, memory=region.mem)
    if verdict.vm_instruction_error is not None:
        failed = _fail(state, mem, VmInstructionError(verdict.vm_instruction_error), verdict.why)
        return replace(failed, verdict=verdict)
    if verdict.exit_reason is not None:
        region.write("VM_EXIT_REASON", verdict.exit_reason)
        region.write("EXIT_QUALIFICATION", verdict.qualification)
        return VmxOutcome(Result.ENTRY_FAILURE, verdict.why, exit_reason=verdict.exit_reason,
                          qualification=verdict.qualification, verdict=verdict)
    if launch:
        region.launch_state = LaunchState.LAUNCHED
    state.non_root = True
    return VmxOutcome(Result.VM_ENTRY, verdict=verdict)


def _descriptor_halves(descriptor: int) -> tuple[int, int]:
    return descriptor & INVALID_POINTER, descriptor >> 64 & INVALID_POINTER


INVEPT_TYPES = {1: "single-context", 2: "all-context"}
INVVPID_TYPES = {0: "individual-address", 1: "single-context", 2: "all-context",
                 3: "single-context-retaining-globals"}


def invept(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, kind: int, descriptor: int) -> VmxOutcome:
    """INVEPT r, m128: invalidate EPT-derived translations; ``kind`` is the register
    operand (1 single-context, 2 all-context), ``descriptor`` the 128-bit memory operand
    (bits 63:0 EPTP, 127:64 reserved)."""
    if early := _prologue(state, mode, ExitReason.INVEPT):
        return early
    bad = VmInstructionError.INVALID_INVEPT_INVVPID_OPERAND
    if not state.caps.invept_type_supported(kind & mode.operand_mask):
        return _fail(state, mem, bad, f"INVEPT type {kind} is not supported (IA32_VMX_EPT_VPID_CAP)")
    eptp, reserved = _descriptor_halves(descriptor)
    if reserved:
        return _fail(state, mem, bad, "INVEPT descriptor bits 127:64 are not 0")
    if kind == 1:
        if problem := eptp_problem(eptp, state.caps):
            return _fail(state, mem, bad, f"INVEPT single-context: {problem}")
        return _succeed(invalidation=Invalidation("INVEPT", INVEPT_TYPES[kind], eptp=eptp & ~0xFFF))
    return _succeed(invalidation=Invalidation("INVEPT", INVEPT_TYPES[kind]))


def invvpid(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory, kind: int, descriptor: int) -> VmxOutcome:
    """INVVPID r, m128: invalidate VPID-tagged translations; ``descriptor`` bits 15:0 VPID,
    63:16 reserved, 127:64 linear address (individual-address type)."""
    if early := _prologue(state, mode, ExitReason.INVVPID):
        return early
    bad = VmInstructionError.INVALID_INVEPT_INVVPID_OPERAND
    if not state.caps.invvpid_type_supported(kind & mode.operand_mask):
        return _fail(state, mem, bad, f"INVVPID type {kind} is not supported (IA32_VMX_EPT_VPID_CAP)")
    low, address = _descriptor_halves(descriptor)
    vpid = low & 0xFFFF
    if low >> 16:
        return _fail(state, mem, bad, "INVVPID descriptor bits 63:16 are not 0")
    if kind != 2 and vpid == 0:
        return _fail(state, mem, bad, f"INVVPID {INVVPID_TYPES[kind]} with VPID 0")
    if kind == 0 and not is_canonical(address, 48):
        return _fail(state, mem, bad, f"INVVPID individual-address: {address:#x} is not canonical")
    return _succeed(invalidation=Invalidation("INVVPID", INVVPID_TYPES[kind], vpid=vpid if kind != 2 else None,
                                              address=address if kind == 0 else None))


def vmcall(state: VmxState, mode: ProcessorMode, mem: PhysicalMemory) -> VmxOutcome:
    """VMCALL: a VM exit in non-root operation; in root operation without the dual-monitor
    treatment of SMM (hvdbg has none) VMfail(1)."""
    if not state.in_vmx_operation:
        return _exception(UD, "not in VMX operation")
    if state.non_root:
        return VmxOutcome(Result.VM_EXIT, "executed in VMX non-root operation", exit_reason=int(ExitReason.VMCALL))
    if mode.rflags & RFLAGS_VM or (mode.ia32e and not mode.cs_long):
        return _exception(UD, _mode_problem(mode) or "")
    if mode.cpl > 0:
        return _exception(GP, f"CPL {mode.cpl} > 0")
    return _fail(state, mem, VmInstructionError.VMCALL_IN_ROOT)


def current_region(state: VmxState, mem: PhysicalMemory) -> VmcsRegion | None:
    """The current VMCS of a vCPU, or None (the debugger's ``vmcs`` of the guest hypervisor)."""
    return state.region(OpenBusMemory(mem)) if state.current_valid else None
