"""Nested VMX: the VMX operation of a guest hypervisor (L1) on a vCPU whose CPUID offers
``vmx`` (``cpu = "hvdbg,+vmx"``, docs/nested.md).

A VMX instruction executed in VMX non-root operation is a VM exit to hvdbg, whatever the
VM-execution controls (SDM 26.1.2), with the displacement of its memory operand as the
exit qualification (SDM 28.2.1) and the VMX-instruction information (SDM 28.2.5, Tables
28-10 .. 28-13).  :func:`intercept` decodes it (the engine reports it as an invalid
opcode) and records the exit; :func:`emulate`, the VMM's handler, performs it for the
guest with :mod:`hvdbg.vmx.instructions` on the vCPU's :class:`VmxState` and the guest's
own memory (its VMXON and VMCS regions): the checks and the VMsucceed / VMfail flags,
VMREAD / VMPTRST results stored to a register or memory, #UD and #GP(0) delivered to the
guest.  IA32_FEATURE_CONTROL and the capability MSRs are read here (:func:`read_msr`),
and MOV to CR0 / CR4 keeps the VMX fixed bits in VMX operation (:func:`cr_problem`, SDM
24.8).  A VM entry that fails a guest-state check loads the host state (SDM 27.8, 28.5).

A VMLAUNCH / VMRESUME that passes every entry check runs the L1's guest (L2) from the
next engine run: hvdbg.hv.nested_guest.
"""

from __future__ import annotations

from dataclasses import dataclass

from capstone import x86 as csx86

from hvdbg.arch.events import GuestFault, hardware_exception
from hvdbg.arch.paging import is_canonical
from hvdbg.arch.regs import AR_L, GPR_NUMBERS, full_gpr
from hvdbg.hv.exit import ExitDecision, ExitInfo
from hvdbg.hv.guest_view import disassembler
from hvdbg.hv import nested_guest
from hvdbg.hv.nested_guest import VMX_INSTRUCTION_EXITS, NestedVmx, load_host_state
from hvdbg.vmx import instructions as vmx
from hvdbg.vmx.capabilities import (FEATURE_CONTROL_LOCK, FEATURE_CONTROL_VMX_OUTSIDE_SMX, IA32_FEATURE_CONTROL,
                                    VMX_MSRS, FeatureControl)
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.fields import UnknownVmcsFieldError, resolve
from hvdbg.vmx.instructions import Result, VmxOutcome, VmxState
from hvdbg.vmx.vmcs_region import OpenBusMemory, VmcsRegion

#: mnemonic -> exit reason (SDM Appendix C); VMCALL stays the VMM's hypercall (hvdbg.hv.vmm)
_REASONS = {"vmxon": ExitReason.VMXON, "vmxoff": ExitReason.VMXOFF, "vmclear": ExitReason.VMCLEAR,
            "vmptrld": ExitReason.VMPTRLD, "vmptrst": ExitReason.VMPTRST, "vmread": ExitReason.VMREAD,
            "vmwrite": ExitReason.VMWRITE, "vmlaunch": ExitReason.VMLAUNCH, "vmresume": ExitReason.VMRESUME,
            "invept": ExitReason.INVEPT, "invvpid": ExitReason.INVVPID}
assert frozenset(_REASONS.values()) == VMX_INSTRUCTION_EXITS
VMX_MSR_INDEXES = frozenset(VMX_MSRS) | {IA32_FEATURE_CONTROL}   # emulated here, never by the engine
_SEGMENT_NUMBERS = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}


@dataclass(frozen=True, slots=True)
class MemoryOperand:
    """A ModRM memory operand: linear = segment base + (base + index * scale + disp) cut
    to the address size."""

    segment: str
    base: str | None
    index: str | None
    scale: int
    disp: int
    address_bits: int
    size: int              # bytes the instruction reads or writes


@dataclass(frozen=True, slots=True)
class VmxInstruction:
    """One decoded VMX instruction (the payload of its VM exit)."""

    reason: ExitReason
    mnemonic: str
    length: int
    reg: str | None = None         # VMREAD/VMWRITE field encoding, INVEPT/INVVPID type (ModRM.reg)
    rm_reg: str | None = None      # VMREAD destination / VMWRITE source in register form
    mem: MemoryOperand | None = None

    def instruction_info(self) -> int:
        """The VMX-instruction information field (SDM 28.2.5, Tables 28-11 .. 28-13)."""
        info = 0
        if self.mem is not None:
            m = self.mem
            info |= {1: 0, 2: 1, 4: 2, 8: 3}[m.scale] | {16: 0, 32: 1, 64: 2}[m.address_bits] << 7
            info |= _SEGMENT_NUMBERS[m.segment] << 15
            info |= GPR_NUMBERS[m.index] << 18 if m.index else 1 << 22
            info |= GPR_NUMBERS[m.base] << 23 if m.base else 1 << 27
        elif self.rm_reg is not None:
            info |= GPR_NUMBERS[self.rm_reg] << 3 | 1 << 10
        if self.reg is not None:
            info |= GPR_NUMBERS[self.reg] << 28
        return info


def _memory_operand(insn, op) -> MemoryOperand:
    """A capstone memory operand: registers by their 64-bit names, a RIP-relative
    displacement made absolute (it counts from the next instruction), the default segment
    (SS through RSP/RBP, else DS)."""
    m = op.mem
    base = full_gpr(insn.reg_name(m.base)) if m.base else None
    index = full_gpr(insn.reg_name(m.index)) if m.index else None
    disp = m.disp
    if base == "rip":
        base, disp = None, disp + insn.address + insn.size
    segment = insn.reg_name(m.segment) if m.segment else ("ss" if base in ("rsp", "rbp") else "ds")
    return MemoryOperand(segment, base, index, m.scale or 1, disp, insn.addr_size * 8, op.size)


def decode(code: bytes, bits: int, address: int = 0) -> VmxInstruction | None:
    """The VMX instruction (other than VMCALL) at the start of ``code`` in ``bits``-bit
    code, or None."""
    insn = next(disassembler(bits).disasm(code, address, 1), None)
    if insn is None or insn.mnemonic not in _REASONS:
        return None
    regs: list[str] = []
    mem = None
    for op in insn.operands:
        if op.type == csx86.X86_OP_REG:
            regs.append(full_gpr(insn.reg_name(op.reg)))
        elif op.type == csx86.X86_OP_MEM:
            mem = _memory_operand(insn, op)
    reason = _REASONS[insn.mnemonic]
    if reason is ExitReason.VMREAD:      # VMREAD r/m, r: the r/m operand is the destination
        reg, rm = (regs[-1], regs[0] if len(regs) == 2 else None)
    elif reason is ExitReason.VMWRITE:   # VMWRITE r, r/m
        reg, rm = (regs[0], regs[1] if len(regs) == 2 else None)
    else:
        reg, rm = (regs[0] if regs else None), None
    return VmxInstruction(reason, insn.mnemonic, insn.size, reg, rm, mem)


def intercept(vcpu, rip: int) -> bool:
    """If the invalid opcode at ``rip`` is a VMX instruction, its VM exit (True)."""
    code = vcpu.read_linear_safe(vcpu.code_base() + rip, 15)
    insn = decode(code, vcpu.code_bits(), rip) if code else None
    if insn is None:
        return False
    vcpu.vmcs.write("VMX_INSTRUCTION_INFO", insn.instruction_info())
    disp = insn.mem.disp & 0xFFFFFFFFFFFFFFFF if insn.mem is not None else 0
    vcpu.vm_exit(ExitInfo(insn.reason, qualification=disp, rip=rip, instruction_length=insn.length, payload=insn))
    return True


def processor_mode(vcpu) -> vmx.ProcessorMode:
    """What the VMX instructions check of the executing vCPU (SDM 31.3)."""
    e = vcpu.engine
    return vmx.ProcessorMode(cpl=e.cpl(), cr0=e.read("cr0"), cr4=e.read("cr4"), rflags=e.read("rflags"),
                             efer=e.read("efer"), cs_long=bool(e.segment("cs").access_rights & AR_L))


def _linear(vcpu, m: MemoryOperand, code64: bool) -> int:
    """The operand's linear address; a non-canonical one in 64-bit mode is #GP(0), or
    #SS(0) through RSP/RBP (SDM Vol. 3A 3.3.7.1)."""
    e = vcpu.engine
    ea = m.disp + (e.read(m.base) if m.base else 0) + (e.read(m.index) * m.scale if m.index else 0)
    ea &= (1 << m.address_bits) - 1
    if not code64 or m.segment in ("fs", "gs"):
        ea += e.segment(m.segment).base
    linear = ea & (0xFFFFFFFFFFFFFFFF if code64 else 0xFFFFFFFF)
    if code64 and not is_canonical(linear, 48):
        vector = 12 if m.segment == "ss" else 13
        raise GuestFault(hardware_exception(vector, 0), f"non-canonical memory operand {linear:#x}")
    return linear


def _field_text(encoding: int) -> str:
    try:
        return f"{resolve(encoding).field.name} ({encoding:#x})"
    except UnknownVmcsFieldError:
        return f"{encoding:#x}"


def operand_linear(vcpu, insn, op) -> int:
    """The linear address of capstone memory operand ``op`` of ``insn`` in the vCPU's
    current mode (GuestFault if it is not canonical)."""
    return _linear(vcpu, _memory_operand(insn, op), vcpu.code_bits() == 64)


def linear_of_memory_operand(vcpu, insn) -> int:
    """The linear address of a capstone instruction's memory operand (INVLPG's), 0 if none."""
    for op in insn.operands:
        if op.type == csx86.X86_OP_MEM:
            try:
                return operand_linear(vcpu, insn, op)
            except GuestFault:
                return 0
    return 0


def _perform(vcpu, insn: VmxInstruction, state: VmxState, mode: vmx.ProcessorMode,
             mem) -> tuple[VmxOutcome, str]:
    """Fetch the operands and run the instruction: (outcome, its operands as text for the
    exit trace).  GuestFault if the memory operand faults."""
    early = vmx.checks_before_operand(state, mode, mem, insn.reason)
    if early is not None:
        return early, ""
    e, r = vcpu.engine, insn.reason
    linear = _linear(vcpu, insn.mem, mode.code64) if insn.mem is not None else None

    def operand(size: int) -> int:
        return int.from_bytes(vcpu.read_linear(linear, size), "little")

    if r in (ExitReason.VMXON, ExitReason.VMCLEAR, ExitReason.VMPTRLD):
        pointer = operand(8)
        return {ExitReason.VMXON: vmx.vmxon, ExitReason.VMCLEAR: vmx.vmclear,
                ExitReason.VMPTRLD: vmx.vmptrld}[r](state, mode, mem, pointer), f"{pointer:#x}"
    if r is ExitReason.VMXOFF:
        return vmx.vmxoff(state, mode, mem), ""
    if r is ExitReason.VMPTRST:
        return vmx.vmptrst(state, mode, mem), ""
    if r in (ExitReason.VMLAUNCH, ExitReason.VMRESUME):
        return (vmx.vmlaunch if r is ExitReason.VMLAUNCH else vmx.vmresume)(state, mode, mem), ""
    if r in (ExitReason.VMREAD, ExitReason.VMWRITE):
        encoding = e.read(insn.reg) & mode.operand_mask
        if r is ExitReason.VMREAD:
            return vmx.vmread(state, mode, mem, encoding), _field_text(encoding)
        value = e.read(insn.rm_reg) if insn.rm_reg else operand(8 if mode.code64 else 4)
        return vmx.vmwrite(state, mode, mem, encoding, value), f"{_field_text(encoding)} <- {value:#x}"
    kind = e.read(insn.reg) & mode.operand_mask
    descriptor = operand(16)
    run = vmx.invept if r is ExitReason.INVEPT else vmx.invvpid
    return run(state, mode, mem, kind, descriptor), f"type {kind}, descriptor {descriptor:#034x}"


def emulate(vcpu, exit: ExitInfo) -> tuple[ExitDecision, VmxOutcome | None]:
    """Perform the guest hypervisor's VMX instruction of ``exit`` (the VMM's handler for
    exit reasons 19-27, 50 and 53): RFLAGS, the destination and RIP for VMsucceed / VMfail,
    an exception for #UD / #GP / a faulting memory operand, the host state for a VM-entry
    failure.  A VM entry that passed every check is returned to the VMM as LEAVE with its
    outcome; the VMM schedules the entry (hvdbg.hv.nested_guest)."""
    insn: VmxInstruction = exit.payload
    state: VmxState | None = vcpu.vmx
    rip = exit.rip
    if state is None:    # CPUID does not offer VMX: the instruction is invalid
        vcpu.raise_exception(hardware_exception(6), rip)
        exit.detail = f"{insn.mnemonic}: #UD (CPUID.1:ECX.VMX = 0)"
        return ExitDecision.FAULT, None
    mode = processor_mode(vcpu)
    mem = OpenBusMemory(vcpu.memory)
    try:
        outcome, operands = _perform(vcpu, insn, state, mode, mem)
        if outcome.value is not None and outcome.result is Result.SUCCEED:
            _store(vcpu, insn, outcome.value, mode)
            operands = f"{operands} -> {outcome.value:#x}".strip()
    except GuestFault as fault:
        vcpu.raise_exception(fault.event, rip)
        exit.detail = f"{insn.mnemonic}: {fault.event.describe()} on the memory operand ({fault.why})"
        return ExitDecision.FAULT, None
    exit.detail = f"{insn.mnemonic} {operands}: {outcome.describe()}" if operands else \
        f"{insn.mnemonic}: {outcome.describe()}"
    if outcome.result is Result.EXCEPTION:
        vcpu.raise_exception(hardware_exception(outcome.vector, 0 if outcome.vector == vmx.GP else None), rip)
        return ExitDecision.FAULT, outcome
    if outcome.result is Result.VM_ENTRY:
        return ExitDecision.LEAVE, outcome
    if outcome.result is Result.ENTRY_FAILURE:
        load_host_state(vcpu, VmcsRegion(mem, state.current_vmcs))
        return ExitDecision.LEAVE, outcome
    if outcome.result is Result.VM_EXIT:   # L2's VMX instructions are reflected before they get here
        raise RuntimeError(f"{insn.mnemonic} in the guest hypervisor's VMX non-root operation reached hvdbg")
    e = vcpu.engine
    e.write("rflags", outcome.rflags(mode.rflags))
    e.set_rip(rip + insn.length)
    return ExitDecision.RESUME, outcome


def _store(vcpu, insn: VmxInstruction, value: int, mode: vmx.ProcessorMode) -> None:
    """VMREAD's / VMPTRST's result to its register or memory destination."""
    if insn.rm_reg is not None:
        vcpu.engine.write(insn.rm_reg, value)   # 32-bit destinations zero bits 63:32 as any write does
        return
    size = 8 if insn.reason is ExitReason.VMPTRST or mode.code64 else 4
    vcpu.write_linear(_linear(vcpu, insn.mem, mode.code64), (value & ((1 << size * 8) - 1)).to_bytes(size, "little"))


def read_msr(vcpu, msr: int) -> int | None:
    """RDMSR of IA32_FEATURE_CONTROL or a VMX capability MSR, or None if ``msr`` is not one."""
    state: VmxState | None = vcpu.vmx
    if state is None:
        return None
    if msr == IA32_FEATURE_CONTROL:
        return state.feature_control.value
    if msr in VMX_MSRS:
        return state.caps.msrs().get(msr, 0)
    return None


def write_msr_problem(vcpu, msr: int, value: int) -> str | None:
    """WRMSR to IA32_FEATURE_CONTROL or a capability MSR: why it raises #GP(0), or None
    once written; ``msr`` must be one (:func:`owns_msr`)."""
    state: VmxState = vcpu.vmx
    if msr == IA32_FEATURE_CONTROL:
        return state.feature_control.write(value)
    return f"MSR {msr:#x} is a read-only VMX capability MSR"


def owns_msr(vcpu, msr: int) -> bool:
    return vcpu.vmx is not None and msr in VMX_MSR_INDEXES


def cr_problem(vcpu, cr: int, value: int) -> str | None:
    """Why MOV to CR0 / CR4 of ``value`` raises #GP(0) in VMX operation: a bit fixed by
    IA32_VMX_CR0/CR4_FIXED0/1 (SDM 24.8; CR4.VMXE stays 1 until VMXOFF), or None."""
    state: VmxState | None = vcpu.vmx
    if state is None or not state.in_vmx_operation:
        return None
    if cr == 0:    # in the guest hypervisor's guest, "unrestricted guest" lets PE and PG be 0 (SDM 24.8)
        return state.caps.cr0_problem(value, unrestricted_guest=state.non_root and nested_guest.unrestricted(vcpu))
    return state.caps.cr4_problem(value) if cr == 4 else None


def new_vmx_state() -> NestedVmx:
    """A vCPU's VMX state at reset: outside VMX operation, IA32_FEATURE_CONTROL locked with
    VMX outside SMX enabled, as firmware leaves it (SeaBIOS on QEMU/KVM; hvdbg's loader
    plays the firmware)."""
    return NestedVmx(feature_control=FeatureControl(FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX))
