"""Which changes of the control state a CPU can make: the #GP rules of MOV to CR0/CR3/CR4,
WRMSR to IA32_EFER and a jump, used to refuse a debugger's register write that no guest
could perform (SDM Vol. 3A 2.5 "Control Registers", 2.2.1 "Extended Feature Enable
Register"; Vol. 2B MOV (control registers), WRMSR)."""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.arch.paging import DEFAULT_MAXPHYADDR
from hvdbg.arch.regs import (CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_LA57, CR4_PAE, CR4_PCIDE, CR4_RESERVED, EFER_DEFINED,
                             EFER_LMA, EFER_LME)


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
        return bool(self.efer & EFER_LMA) and self.cs_long


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
        if new.cr0 & CR0_PG and not new.cr0 & CR0_PE:
            return f"CR0 {new.cr0:#x}: PG without PE"
        if new.cr0 & CR0_NW and not new.cr0 & CR0_CD:
            return f"CR0 {new.cr0:#x}: NW without CD"
        if old.code64 and not new.cr0 & CR0_PG:
            return "CR0.PG cannot be cleared in 64-bit code"
    if new.cr4 != old.cr4:
        if new.cr4 & CR4_RESERVED:
            return f"CR4 {new.cr4:#x}: reserved bits set"
        if old.efer & EFER_LMA and not new.cr4 & CR4_PAE:
            return "CR4.PAE cannot be cleared in IA-32e mode"
    lma = bool(new.efer & EFER_LME and new.cr0 & CR0_PG)
    if (cr0_changed or efer_changed) and lma and not new.cr4 & CR4_PAE:
        return "paging with EFER.LME needs CR4.PAE"
    if efer_changed:
        if new.efer & ~EFER_DEFINED:
            return f"EFER {new.efer:#x}: reserved bits set"
        if (new.efer ^ old.efer) & EFER_LME and old.cr0 & new.cr0 & CR0_PG:
            return "EFER.LME cannot change while paging is on"
        if bool(new.efer & EFER_LMA) != lma:
            return f"EFER {new.efer:#x}: LMA is read-only (it is LME and CR0.PG: {int(lma)})"
    if new.cr3 != old.cr3 and new.cr3 >> (DEFAULT_MAXPHYADDR if lma else 32):
        return f"CR3 {new.cr3:#x} is wider than {DEFAULT_MAXPHYADDR if lma else 32} bits"
    if new.rip != old.rip:
        code64 = lma and new.cs_long
        width = (57 if new.cr4 & CR4_LA57 else 48) if code64 else 32
        top = new.rip >> (width - 1) if code64 else new.rip >> 32
        if top not in ((0, (1 << (65 - width)) - 1) if code64 else (0,)):
            return f"RIP {new.rip:#x} does not fit {'64-bit (canonical)' if code64 else '16/32-bit'} code"
    return None


#: CR4 bits that exist only with a CPUID feature (SDM Vol. 3A 2.5 "Control Registers"; Vol. 2A
#: CPUID): setting one the vCPU's CPUID does not report raises #GP(0), as on hardware.
#: Feature names as in hvdbg.arch.cpuid; a name the CPUID model never offers keeps the bit
#: reserved.
CR4_FEATURES: tuple[tuple[int, str], ...] = (
    (0, "vme"), (1, "vme"), (2, "tsc"), (3, "de"), (4, "pse"), (5, "pae"), (6, "mce"), (7, "pge"),
    (9, "fxsr"), (10, "sse"), (11, "umip"), (12, "la57"), (13, "vmx"), (14, "smx"), (16, "fsgsbase"),
    (17, "pcid"), (18, "xsave"), (19, "kl"), (20, "smep"), (21, "smap"), (22, "pku"), (23, "cet"),
    (24, "pks"), (25, "uintr"),
)


def cr4_write_problem(old: ControlState, new_cr4: int, features: frozenset[str]) -> str | None:
    """Why MOV to CR4 of ``new_cr4`` raises #GP(0) beyond :func:`control_state_problem`:
    a bit of a feature CPUID hides, LA57 changed in IA-32e mode, PCIDE set outside IA-32e
    mode or with CR3[11:0] != 0 (SDM Vol. 2B MOV (control registers), Vol. 3A 4.10.1)."""
    for bit, feature in CR4_FEATURES:
        if new_cr4 >> bit & 1 and not old.cr4 >> bit & 1 and feature not in features:
            return f"CR4 {new_cr4:#x}: bit {bit} needs CPUID feature {feature}, which this vCPU does not offer"
    lma = bool(old.efer & EFER_LMA)
    if lma and (old.cr4 ^ new_cr4) & CR4_LA57:
        return "CR4.LA57 cannot change in IA-32e mode"
    if new_cr4 & CR4_PCIDE and not old.cr4 & CR4_PCIDE and (not lma or old.cr3 & 0xFFF):
        return "CR4.PCIDE needs IA-32e mode and CR3[11:0] = 0"
    return None
