"""The MSRs hvdbg's virtual processor implements, as a data table (SDM Vol. 4, "Model-
Specific Registers", Table 2-2 "IA-32 Architectural MSRs").

RDMSR or WRMSR of an index the processor does not implement raises #GP(0) (SDM Vol. 2B
RDMSR/WRMSR), and so does a write to a read-only MSR.  Which MSRs exist follows the CPUID
features the vCPU reports (an MSR of a feature CPUID hides does not exist).  The VMM
emulates some of them itself (hvdbg.hv.vmm.VMM_MSRS, the x2APIC range); the others are
executed by the engine's CPU model.  Unicorn, like QEMU TCG, reads 0 from and ignores
writes to every index it does not know: without this table a guest probing an MSR would
see a register that no CPU has.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.arch.regs import (IA32_APIC_BASE, IA32_EFER, IA32_KERNEL_GS_BASE, IA32_MISC_ENABLE, IA32_PAT,
                             IA32_TSC, IA32_TSC_DEADLINE, X2APIC_MSR_BASE, X2APIC_MSR_END)


@dataclass(frozen=True)
class MsrDef:
    """MSR indexes ``first..last`` of one architectural group."""

    name: str
    first: int
    last: int
    feature: str | None = None     # CPUID feature that makes them exist (None: always)
    read_only: bool = False


MSR_TABLE: tuple[MsrDef, ...] = (
    MsrDef("IA32_TSC", IA32_TSC, IA32_TSC, "tsc"),
    MsrDef("IA32_PLATFORM_ID", 0x17, 0x17, read_only=True),
    MsrDef("IA32_FEATURE_CONTROL", 0x3A, 0x3A, "vmx"),
    MsrDef("IA32_APIC_BASE", IA32_APIC_BASE, IA32_APIC_BASE, "apic"),
    MsrDef("IA32_BIOS_SIGN_ID", 0x8B, 0x8B),
    MsrDef("IA32_MTRRCAP", 0xFE, 0xFE, "mtrr", read_only=True),
    MsrDef("IA32_SYSENTER_CS/ESP/EIP", 0x174, 0x176, "sep"),
    MsrDef("IA32_MCG_CAP", 0x179, 0x179, "mce", read_only=True),
    MsrDef("IA32_DEBUGCTL", 0x1D9, 0x1D9),
    MsrDef("IA32_MCG_STATUS", 0x17A, 0x17A, "mce"),
    MsrDef("IA32_MISC_ENABLE", IA32_MISC_ENABLE, IA32_MISC_ENABLE),
    MsrDef("IA32_MTRR_PHYSBASE/MASK0-7", 0x200, 0x20F, "mtrr"),
    MsrDef("IA32_MTRR_FIX64K_00000", 0x250, 0x250, "mtrr"),
    MsrDef("IA32_MTRR_FIX16K", 0x258, 0x259, "mtrr"),
    MsrDef("IA32_MTRR_FIX4K", 0x268, 0x26F, "mtrr"),
    MsrDef("IA32_PAT", IA32_PAT, IA32_PAT, "pat"),
    # the VMX capability MSRs (SDM Vol. 3D Appendix A; their values: hvdbg.vmx.capabilities)
    MsrDef("IA32_VMX_BASIC .. IA32_VMX_TRUE_ENTRY_CTLS", 0x480, 0x490, "vmx", read_only=True),
    MsrDef("IA32_MTRR_DEF_TYPE", 0x2FF, 0x2FF, "mtrr"),
    MsrDef("IA32_TSC_DEADLINE", IA32_TSC_DEADLINE, IA32_TSC_DEADLINE, "tsc_deadline"),
    MsrDef("x2APIC registers", X2APIC_MSR_BASE, X2APIC_MSR_END, "x2apic"),
    MsrDef("IA32_EFER", IA32_EFER, IA32_EFER),
    MsrDef("IA32_STAR/LSTAR/CSTAR/FMASK", 0xC0000081, 0xC0000084, "syscall"),
    MsrDef("IA32_FS_BASE/GS_BASE/KERNEL_GS_BASE", 0xC0000100, IA32_KERNEL_GS_BASE, "lm"),
    MsrDef("IA32_TSC_AUX", 0xC0000103, 0xC0000103, "rdtscp"),
)


#: MSRs that hold a linear address: WRMSR of a non-canonical one raises #GP(0) (SDM Vol. 2B
#: WRMSR lists FS/GS/KERNEL_GS base, LSTAR and SYSENTER_EIP/ESP; CSTAR is checked as well
#: on Intel and AMD processors, as kvm-unit-tests' msr test and KVM have it)
LINEAR_ADDRESS_MSRS = {0x175: "IA32_SYSENTER_ESP", 0x176: "IA32_SYSENTER_EIP", 0xC0000082: "IA32_LSTAR",
                       0xC0000083: "IA32_CSTAR", 0xC0000100: "IA32_FS_BASE", 0xC0000101: "IA32_GS_BASE",
                       IA32_KERNEL_GS_BASE: "IA32_KERNEL_GS_BASE"}


def write_value_problem(msr: int, value: int, linear_bits: int = 48) -> str | None:
    """Why WRMSR of ``value`` to ``msr`` raises #GP(0) although the MSR exists, or None:
    a non-canonical address for ``linear_bits``-bit linear addresses (CPUID 80000008H
    EAX[15:8])."""
    name = LINEAR_ADDRESS_MSRS.get(msr)
    top = value >> (linear_bits - 1)
    if name is not None and top not in (0, (1 << (65 - linear_bits)) - 1):
        return f"{value:#x} is not a canonical address for {name}"
    return None


class MsrModel:
    """Which MSR indexes exist on a processor with the given CPUID features."""

    def __init__(self, features: frozenset[str] | set[str] | tuple[str, ...]) -> None:
        feats = set(features)
        self._defs = [d for d in MSR_TABLE if d.feature is None or d.feature in feats]
        self._memo: dict[tuple[int, bool], str | None] = {}

    def problem(self, msr: int, write: bool) -> str | None:
        """Why RDMSR/WRMSR of ``msr`` raises #GP(0) on this processor, or None."""
        key = (msr, write)
        if key in self._memo:
            return self._memo[key]
        found = next((d for d in self._defs if d.first <= msr <= d.last), None)
        if found is None:
            why: str | None = f"MSR {msr:#x} is not implemented"
        elif write and found.read_only:
            why = f"{found.name} is read-only"
        else:
            why = None
        if len(self._memo) < 4096:
            self._memo[key] = why
        return why
