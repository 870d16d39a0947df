"""SYSCALL and SYSENTER as the SDM defines them (Vol. 2B "SYSCALL", "SYSENTER"; Vol. 3A
5.8.7, 5.8.8).  Unicorn 2.1.4 executes both as no-ops (its helpers only run hooks and
skip the instruction), so the vCPU performs them from the engine's instruction hook.
SYSRET and SYSEXIT are Unicorn's own QEMU implementation and need nothing here.
"""

from __future__ import annotations

from hvdbg.arch.events import hardware_exception
from hvdbg.arch.regs import AR_L, CR0_PE, EFER_LMA
from hvdbg.arch.segments import Segment

EFER_SCE = 1 << 0
RFLAGS_RF, RFLAGS_IF, RFLAGS_VM = 1 << 16, 1 << 9, 1 << 17
UD, GP = 6, 13

# Access rights (VMCS format, SDM 24.4.1) of the flat segments both instructions load:
_CODE64 = 0xA09B      # type 11, S, DPL 0, P, L, G
_CODE32 = 0xC09B      # type 11, S, DPL 0, P, D, G
_STACK = 0xC093       # type 3, S, DPL 0, P, B, G
_FLAT = 0xFFFFFFFF


def _length(vcpu, rip: int, opcode: int) -> int:
    """Instruction length: prefixes, then 0F ``opcode``."""
    code = vcpu.read_linear_safe(vcpu.code_base() + rip, 15) or b""
    at = code.find(bytes((0x0F, opcode)))
    return at + 2 if at >= 0 else 2


def _fault(vcpu, vector: int, rip: int, length: int) -> None:
    vcpu.engine.land_system_call(rip, length)
    vcpu.raise_exception(hardware_exception(vector, 0), rip)


def syscall(vcpu) -> None:
    """SYSCALL: #UD unless IA32_EFER.SCE = 1 in 64-bit mode; RCX <- next RIP, R11 <- RFLAGS,
    RFLAGS &= ~IA32_FMASK, CS/SS from IA32_STAR[47:32] at CPL 0, RIP <- IA32_LSTAR."""
    e = vcpu.engine
    rip = e.rip()
    length = _length(vcpu, rip, 0x05)
    efer = e.read("efer")
    segs = e.segments()
    if not efer & EFER_SCE or not efer & EFER_LMA or not segs["cs"].access_rights & AR_L:
        _fault(vcpu, UD, rip, length)
        return
    msrs = e.system_call_msrs()
    rflags = e.read("rflags")
    e.write("rcx", rip + length)
    e.write("r11", rflags & ~RFLAGS_RF)
    selector = msrs["star"] >> 32 & 0xFFFF
    e.set_segments({"cs": Segment(selector & 0xFFFC, 0, _FLAT, _CODE64),
                    "ss": Segment((selector + 8) & 0xFFFF, 0, _FLAT, _STACK)})
    e.write("rflags", rflags & ~msrs["fmask"] & ~RFLAGS_RF & 0xFFFFFFFF)
    e.land_system_call(msrs["lstar"], length)


def sysenter(vcpu) -> None:
    """SYSENTER: #GP(0) if CR0.PE = 0 or IA32_SYSENTER_CS[15:2] = 0; RFLAGS.VM/IF/RF
    cleared; CS = SYSENTER_CS, SS = SYSENTER_CS + 8 at CPL 0 (64-bit code in IA-32e mode);
    RSP <- IA32_SYSENTER_ESP, RIP <- IA32_SYSENTER_EIP."""
    e = vcpu.engine
    rip = e.rip()
    length = _length(vcpu, rip, 0x34)
    msrs = e.system_call_msrs()
    cs = msrs["sysenter_cs"] & 0xFFFF
    if not e.read("cr0") & CR0_PE or not cs & 0xFFFC:
        _fault(vcpu, GP, rip, length)
        return
    long_mode = bool(e.read("efer") & EFER_LMA)
    e.set_segments({"cs": Segment(cs & 0xFFFC, 0, _FLAT, _CODE64 if long_mode else _CODE32),
                    "ss": Segment((cs + 8) & 0xFFFC, 0, _FLAT, _STACK)})
    e.write("rflags", e.read("rflags") & ~(RFLAGS_VM | RFLAGS_IF | RFLAGS_RF))
    width = 0xFFFFFFFFFFFFFFFF if long_mode else 0xFFFFFFFF
    e.write("rsp", msrs["sysenter_esp"] & width)
    e.land_system_call(msrs["sysenter_eip"] & width, length)
