"""MOV to CR0/CR4/CR8, CLTS, LMSW and MOV from CR8 as the processor performs them in VMX
non-root operation (CR8 is the local APIC's TPR[7:4], SDM Vol. 3A 10.8.6.1).

The engine hands every such write over before executing it (hvdbg.engine.intercepts),
with RIP at the instruction.  The vCPU then does what the CPU does: the #GP(0) checks
of SDM Vol. 2B "MOV - Move to/from Control Registers" and Vol. 3A 2.5 (reserved bits,
PG without PE, features CPUID hides, ...); the VMX view, a control-register-access VM exit
(reason 28) when a bit the CR0/CR4 guest/host mask owns would differ from its read shadow
(SDM 26.1.3, qualification Table 28-3); else the write itself, and RIP past it.  In
the VMX operation of a guest hypervisor the VMX fixed bits of CR0 / CR4 hold too
(hvdbg.hv.nested, SDM 24.8).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import capstone

from hvdbg.arch.control_rules import ControlState, control_state_problem, cr4_write_problem
from hvdbg.arch.events import hardware_exception
from hvdbg.arch.apic import Reg
from hvdbg.arch.regs import AR_L, full_gpr
from hvdbg.hv import nested, nested_guest
from hvdbg.hv.exit import ExitInfo
from hvdbg.hv.guest_view import disassembler
from hvdbg.vmx.exits import ExitReason

GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_LEGACY_PREFIXES = frozenset((0x66, 0x67, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65))
CR0_TS = 1 << 3

# Access types of the exit qualification (SDM Table 28-3, bits 5:4)
MOV_TO_CR, MOV_FROM_CR, CLTS, LMSW = 0, 1, 2, 3
CR8_LOAD_EXITING, CR8_STORE_EXITING = 1 << 19, 1 << 20     # primary processor-based controls


@dataclass(frozen=True)
class CrWrite:
    """One decoded write to a control register."""

    cr: int
    access: int            # MOV_TO_CR, CLTS or LMSW
    length: int
    gpr: int | None = None  # MOV to CR / register-form LMSW: the source register
    lmsw_memory: bool = False


def decode_cr_write(code: bytes, bits: int) -> CrWrite | None:
    """Decode MOV to CRn (0F 22 /r), MOV from CRn (0F 20 /r), CLTS (0F 06) or LMSW
    (0F 01 /6) at the start of ``code`` for ``bits``-bit code; None if it is none of them."""
    i, rex = 0, 0
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        i += 1
    if bits == 64 and i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    if len(code) < i + 2 or code[i] != 0x0F:
        return None
    op = code[i + 1]
    if op == 0x06:
        return CrWrite(0, CLTS, i + 2)
    if len(code) < i + 3:
        return None
    modrm = code[i + 2]
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if op in (0x20, 0x22):   # MOV r, CRn / MOV CRn, r: the mod bits are ignored (always a register)
        return CrWrite(reg | (8 if rex & 4 else 0), MOV_TO_CR if op == 0x22 else MOV_FROM_CR, i + 3,
                       gpr=rm | (8 if rex & 1 else 0))
    if op == 0x01 and reg == 6:
        if mod == 3:
            return CrWrite(0, LMSW, i + 3, gpr=rm | (8 if rex & 1 else 0))
        return CrWrite(0, LMSW, 0, lmsw_memory=True)   # length and operand: from capstone
    return None


def _decode(vcpu, linear: int, bits: int):
    """The instruction at ``linear`` with operand details (capstone), or None."""
    return next(disassembler(bits).disasm(vcpu.read_linear(linear, 15), linear), None)


def _lmsw_memory_operand(vcpu, linear: int, bits: int) -> tuple[int, int]:
    """(source value, instruction length) of a memory-form LMSW."""
    insn = _decode(vcpu, linear, bits)
    if insn is None or not insn.operands:
        raise RuntimeError(f"cannot decode LMSW at {linear:#x}")
    return int.from_bytes(vcpu.read_linear(nested.operand_linear(vcpu, insn, insn.operands[0]), 2), "little"), insn.size


def mov_to_cr(vcpu, cr: int) -> None:
    """Perform the intercepted write to control register ``cr`` on ``vcpu`` (a
    hvdbg.hv.vcpu.Vcpu inside its engine callback)."""
    e = vcpu.engine
    rip = e.rip()
    bits = vcpu.code_bits()
    linear = vcpu.code_base() + rip
    code = vcpu.read_linear_safe(linear, 15) or b""
    w = decode_cr_write(code, bits)
    if w is None or w.cr != cr or w.access == MOV_FROM_CR:
        raise RuntimeError(f"CR{cr} write intercepted at RIP {rip:#x}, but the bytes {code[:6].hex()} "
                           "are not MOV to CR / CLTS / LMSW")
    if cr == 8:
        _mov_to_cr8(vcpu, w, rip)
        return
    if cr == 3:
        _mov_to_cr3(vcpu, w, rip, bits)
        return
    old = e.read(f"cr{cr}")
    length, source = w.length, 0
    if w.access == MOV_TO_CR:
        source = e.read(GPR64[w.gpr])
        new = source if bits == 64 else source & 0xFFFFFFFF
    elif w.access == CLTS:
        new = old & ~CR0_TS
    else:
        if w.lmsw_memory:
            source, length = _lmsw_memory_operand(vcpu, linear, bits)
        else:
            source = e.read(GPR64[w.gpr]) & 0xFFFF
        new = (old & ~0xF) | (source & 0xF) | (old & 1)   # LMSW cannot clear PE
    # the exit comes first: only privilege checks (done by the engine) have priority over it;
    # a reserved bit in a value the VMM intercepts is the VMM's to judge (SDM 26.1.1)
    mask, shadow = nested_guest.cr_guard(vcpu, cr) or (vcpu.vmcs.read(f"CR{cr}_GUEST_HOST_MASK"),
                                                        vcpu.vmcs.read(f"CR{cr}_READ_SHADOW"))
    if (new ^ shadow) & mask:
        qual = cr | w.access << 4 | (w.lmsw_memory << 6) | ((w.gpr or 0) << 8 if w.access == MOV_TO_CR else 0)
        if w.access == LMSW:
            qual |= (source & 0xFFFF) << 16
        vcpu.vm_exit(ExitInfo(ExitReason.CR_ACCESS, qualification=qual, rip=rip, instruction_length=length,
                              data=new, detail=f"mov cr{cr} <- {new:#x}"))
        vcpu.request_leave()
        return
    new = (new & ~mask) | (old & mask)     # bits the mask owns keep their value (SDM 26.3)
    state = _control_state(vcpu, e)
    if cr == 0:
        problem = control_state_problem(state, replace(state, cr0=new))
    else:
        problem = control_state_problem(state, replace(state, cr4=new)) or \
            cr4_write_problem(state, new, frozenset(vcpu.cpuid.features))
    problem = problem or nested.cr_problem(vcpu, cr, new)
    if problem is not None:
        vcpu.cr_faults.append((cr, new, rip, problem))
        del vcpu.cr_faults[:-16]
        vcpu.raise_exception(hardware_exception(13, 0), rip)
        return
    e.write(f"cr{cr}", new)
    e.set_rip(rip + length)


def _mov_to_cr3(vcpu, w: CrWrite, rip: int, bits: int) -> None:
    """MOV to CR3, intercepted only in a guest hypervisor's guest with CR3-load exiting: a
    VM exit unless the value is one of its CR3-target values (SDM 25.6.7, 26.1.3); else
    the write, with the width check of SDM Vol. 2B MOV CR."""
    e = vcpu.engine
    value = e.read(GPR64[w.gpr]) if bits == 64 else e.read(GPR64[w.gpr]) & 0xFFFFFFFF
    if nested_guest.cr3_load_exits(vcpu, value):
        vcpu.vm_exit(ExitInfo(ExitReason.CR_ACCESS, qualification=3 | MOV_TO_CR << 4 | w.gpr << 8, rip=rip,
                              instruction_length=w.length, data=value, detail=f"mov cr3 <- {value:#x}"))
        vcpu.request_leave()
        return
    state = _control_state(vcpu, e)
    problem = control_state_problem(state, replace(state, cr3=value & ~(1 << 63)))
    if problem is not None:
        vcpu.cr_faults.append((3, value, rip, problem))
        del vcpu.cr_faults[:-16]
        vcpu.raise_exception(hardware_exception(13, 0), rip)
        return
    e.write("cr3", value & ~(1 << 63))
    e.set_rip(rip + w.length)


def _cr8_exit(vcpu, w: CrWrite, rip: int, control: int, value: int) -> bool:
    """A CR8 access the VMM asked to see: CR8-load / CR8-store exiting (SDM 26.1.3)."""
    primary = nested_guest.l1_primary_controls(vcpu)     # in L2: the guest hypervisor's controls
    if not (vcpu.vmcs.read("CPU_BASED_VM_EXEC_CONTROL") if primary is None else primary) & control:
        return False
    arrow = "<-" if w.access == MOV_TO_CR else "->"
    vcpu.vm_exit(ExitInfo(ExitReason.CR_ACCESS, qualification=8 | w.access << 4 | w.gpr << 8, rip=rip,
                          instruction_length=w.length, data=value, detail=f"mov cr8 {arrow} {value:#x}"))
    vcpu.request_leave()
    return True


def _mov_to_cr8(vcpu, w: CrWrite, rip: int) -> None:
    """TPR[7:4] = the source's bits 3:0; bits 63:4 set are #GP(0) (SDM Vol. 2B MOV CR).
    Lowering the TPR lets a held-back interrupt in (the APIC kicks the vCPU)."""
    value = vcpu.engine.read(GPR64[w.gpr])
    if value >> 4:
        vcpu.cr_faults.append((8, value, rip, "CR8 bits 63:4 are reserved"))
        del vcpu.cr_faults[:-16]
        vcpu.raise_exception(hardware_exception(13, 0), rip)
        return
    if _cr8_exit(vcpu, w, rip, CR8_LOAD_EXITING, value):
        return
    vcpu.apic.write(Reg.TPR, value << 4)
    vcpu.engine.set_rip(rip + w.length)


def mov_from_cr(vcpu, cr: int) -> None:
    """Perform the intercepted MOV from CR8 (the destination gets TPR[7:4]), or in a guest
    hypervisor's guest a MOV from CR0/CR4 or SMSW: the bits its guest/host mask owns read
    from its read shadow, the others from the register (SDM 25.6.6)."""
    e = vcpu.engine
    rip = e.rip()
    linear = vcpu.code_base() + rip
    code = vcpu.read_linear_safe(linear, 15) or b""
    bits = vcpu.code_bits()
    w = decode_cr_write(code, bits)
    if cr == 3 and w is not None and w.access == MOV_FROM_CR and w.cr == 3:   # CR3-store exiting (L2)
        value = e.read("cr3")
        if nested_guest.in_l2(vcpu):
            vcpu.vm_exit(ExitInfo(ExitReason.CR_ACCESS, qualification=3 | MOV_FROM_CR << 4 | w.gpr << 8, rip=rip,
                                  instruction_length=w.length, detail="mov cr3 -> register"))
            vcpu.request_leave()
            return
        e.write(GPR64[w.gpr], value if bits == 64 else value & 0xFFFFFFFF)
        e.set_rip(rip + w.length)
        return
    if cr in (0, 4):
        guard = nested_guest.cr_guard(vcpu, cr) or (0, 0)
        value = (e.read(f"cr{cr}") & ~guard[0]) | (guard[1] & guard[0])
        if w is not None and w.access == MOV_FROM_CR and w.cr == cr:
            e.write(GPR64[w.gpr], value if bits == 64 else value & 0xFFFFFFFF)
            e.set_rip(rip + w.length)
        else:
            _smsw(vcpu, linear, bits, value, rip)
        return
    if w is None or w.cr != cr or w.access != MOV_FROM_CR:
        raise RuntimeError(f"CR{cr} read intercepted at RIP {rip:#x}, but the bytes {code[:6].hex()} "
                           "are not MOV from CR")
    value = vcpu.apic.read(Reg.TPR) >> 4 & 0xF
    if _cr8_exit(vcpu, w, rip, CR8_STORE_EXITING, value):
        return
    e.write(GPR64[w.gpr], value)
    e.set_rip(rip + w.length)


def _smsw(vcpu, linear: int, bits: int, cr0: int, rip: int) -> None:
    """SMSW r/m (0F 01 /4, the CR0 read QEMU intercepts with MOV from CR0): a register
    gets CR0 (its low 16 bits with a 16-bit operand), memory its low 16 bits (SDM Vol. 2B)."""
    insn = _decode(vcpu, linear, bits)
    if insn is None or insn.mnemonic != "smsw" or not insn.operands:
        raise RuntimeError(f"CR0 read intercepted at RIP {rip:#x}, but the instruction is not MOV from CR0 or SMSW")
    op = insn.operands[0]
    if op.type == capstone.x86.X86_OP_REG:
        full = full_gpr(insn.reg_name(op.reg))
        value = cr0 & 0xFFFF if op.size == 2 else cr0 & (0xFFFFFFFF if op.size == 4 else (1 << 64) - 1)
        if op.size == 2:
            value |= vcpu.engine.read(full) & ~0xFFFF
        vcpu.engine.write(full, value)
    else:
        vcpu.write_linear(nested.operand_linear(vcpu, insn, op), (cr0 & 0xFFFF).to_bytes(2, "little"))
    vcpu.engine.set_rip(rip + insn.size)


def _control_state(vcpu, e) -> ControlState:
    cs = e.segments()["cs"]
    return ControlState(cr0=e.read("cr0"), cr3=e.read("cr3"), cr4=e.read("cr4"), efer=e.read("efer"),
                        rip=e.rip(), cs_long=bool(cs.access_rights & AR_L))
