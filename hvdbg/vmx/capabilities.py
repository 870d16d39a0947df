"""The VMX capability MSRs hvdbg reports to a guest hypervisor (SDM Vol. 3D Appendix A
"VMX Capability Reporting Facility"), IA32_FEATURE_CONTROL (SDM 24.7 "Enabling and
Entering VMX Operation") and the CR0/CR4 fixed bits of VMX operation (SDM 24.8, A.7, A.8).

What is reported is derived from what hvdbg emulates for a nested hypervisor: the
controls it can honour are named in :data:`EMULATED` (keys of :mod:`hvdbg.vmx.controls`),
the default1 classes of SDM A.2-A.5 are data, and every MSR value is computed from those
by :class:`VmxCapabilities` -- nothing is a magic number copied from some processor.

A control-field MSR reports allowed-0 settings in bits 31:0 (a 1 there: the control must
be 1) and allowed-1 settings in bits 63:32 (a 0 there: the control must be 0), SDM A.3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from hvdbg.arch.regs import CR0_NE, CR0_PE, CR0_PG, CR4_RESERVED, CR4_VMXE
from hvdbg.vmx.controls import (PIN_BASED, PRIMARY_PROCESSOR_BASED, SECONDARY_PROCESSOR_BASED, VM_ENTRY, VM_EXIT,
                                ControlSet)
from hvdbg.vmx.ept import MemType
from hvdbg.vmx.fields import BY_NAME, FIELDS, FieldType, split_encoding

# -- MSR indexes (SDM Vol. 4 Table 2-2) ---------------------------------------------------
IA32_FEATURE_CONTROL = 0x3A
IA32_VMX_BASIC = 0x480
IA32_VMX_PINBASED_CTLS = 0x481
IA32_VMX_PROCBASED_CTLS = 0x482
IA32_VMX_EXIT_CTLS = 0x483
IA32_VMX_ENTRY_CTLS = 0x484
IA32_VMX_MISC = 0x485
IA32_VMX_CR0_FIXED0 = 0x486
IA32_VMX_CR0_FIXED1 = 0x487
IA32_VMX_CR4_FIXED0 = 0x488
IA32_VMX_CR4_FIXED1 = 0x489
IA32_VMX_VMCS_ENUM = 0x48A
IA32_VMX_PROCBASED_CTLS2 = 0x48B
IA32_VMX_EPT_VPID_CAP = 0x48C
IA32_VMX_TRUE_PINBASED_CTLS = 0x48D
IA32_VMX_TRUE_PROCBASED_CTLS = 0x48E
IA32_VMX_TRUE_EXIT_CTLS = 0x48F
IA32_VMX_TRUE_ENTRY_CTLS = 0x490

MSR_NAMES: dict[int, str] = {
    IA32_FEATURE_CONTROL: "IA32_FEATURE_CONTROL",
    IA32_VMX_BASIC: "IA32_VMX_BASIC", IA32_VMX_PINBASED_CTLS: "IA32_VMX_PINBASED_CTLS",
    IA32_VMX_PROCBASED_CTLS: "IA32_VMX_PROCBASED_CTLS", IA32_VMX_EXIT_CTLS: "IA32_VMX_EXIT_CTLS",
    IA32_VMX_ENTRY_CTLS: "IA32_VMX_ENTRY_CTLS", IA32_VMX_MISC: "IA32_VMX_MISC",
    IA32_VMX_CR0_FIXED0: "IA32_VMX_CR0_FIXED0", IA32_VMX_CR0_FIXED1: "IA32_VMX_CR0_FIXED1",
    IA32_VMX_CR4_FIXED0: "IA32_VMX_CR4_FIXED0", IA32_VMX_CR4_FIXED1: "IA32_VMX_CR4_FIXED1",
    IA32_VMX_VMCS_ENUM: "IA32_VMX_VMCS_ENUM", IA32_VMX_PROCBASED_CTLS2: "IA32_VMX_PROCBASED_CTLS2",
    IA32_VMX_EPT_VPID_CAP: "IA32_VMX_EPT_VPID_CAP", IA32_VMX_TRUE_PINBASED_CTLS: "IA32_VMX_TRUE_PINBASED_CTLS",
    IA32_VMX_TRUE_PROCBASED_CTLS: "IA32_VMX_TRUE_PROCBASED_CTLS",
    IA32_VMX_TRUE_EXIT_CTLS: "IA32_VMX_TRUE_EXIT_CTLS", IA32_VMX_TRUE_ENTRY_CTLS: "IA32_VMX_TRUE_ENTRY_CTLS",
}
VMX_MSRS = range(IA32_VMX_BASIC, IA32_VMX_TRUE_ENTRY_CTLS + 1)   # all read-only (SDM A.1)

#: MAXPHYADDR as hvdbg's CPUID.80000008H:EAX[7:0] reports it (hvdbg.arch.cpuid)
PHYS_ADDR_WIDTH = 40
#: hvdbg's VMCS revision identifier (IA32_VMX_BASIC[30:0], SDM 25.2)
REVISION_ID = 0x00000001
VMCS_REGION_SIZE = 4096

# -- default1 classes (SDM A.2 pin-based, A.3.2 primary, A.4 exit, A.5 entry) ------------
PIN_DEFAULT1 = 0x00000016        # bits 1, 2, 4
PROC_DEFAULT1 = 0x0401E172       # bits 1, 4-6, 8, 13-16, 26
EXIT_DEFAULT1 = 0x00036DFF       # bits 0-8, 10, 11, 13, 14, 16, 17
ENTRY_DEFAULT1 = 0x000011FF      # bits 0-8, 12
#: default1 controls that the TRUE_ MSRs let software clear (SDM A.3.1, A.4.1, A.5.1)
TRUE_MAY_CLEAR: dict[str, int] = {
    "pin": 0,
    "primary": PRIMARY_PROCESSOR_BASED.mask("CR3_LOAD_EXITING", "CR3_STORE_EXITING"),
    "exit": VM_EXIT.mask("SAVE_DEBUG_CONTROLS"),
    "entry": VM_ENTRY.mask("LOAD_DEBUG_CONTROLS"),
}

#: The controls hvdbg honours for a guest hypervisor's guest, by control set (SDM 25.6-25.8):
#: what the capability MSRs allow to be 1 (hvdbg.hv.nested_guest does each).  Guest
#: hypervisors read these MSRs and leave out what is not offered, as kvm-unit-tests' vmx
#: tests skip a feature whose control is allowed-0.
EMULATED: dict[str, tuple[str, ...]] = {
    "pin": ("EXTERNAL_INTERRUPT_EXITING", "NMI_EXITING", "VIRTUAL_NMIS"),
    "primary": ("INTERRUPT_WINDOW_EXITING", "USE_TSC_OFFSETTING", "HLT_EXITING", "INVLPG_EXITING", "RDTSC_EXITING",
                "CR3_LOAD_EXITING", "CR3_STORE_EXITING", "CR8_LOAD_EXITING", "CR8_STORE_EXITING", "NMI_WINDOW_EXITING",
                "UNCONDITIONAL_IO_EXITING", "USE_IO_BITMAPS", "USE_MSR_BITMAPS", "ACTIVATE_SECONDARY_CONTROLS"),
    "secondary": ("VIRTUALIZE_APIC_ACCESSES", "ENABLE_EPT", "ENABLE_RDTSCP", "ENABLE_VPID", "UNRESTRICTED_GUEST"),
    "exit": ("SAVE_DEBUG_CONTROLS", "HOST_ADDRESS_SPACE_SIZE", "ACK_INTERRUPT_ON_EXIT", "SAVE_PAT", "LOAD_PAT",
             "SAVE_EFER", "LOAD_EFER"),
    "entry": ("LOAD_DEBUG_CONTROLS", "IA32E_MODE_GUEST", "LOAD_PAT", "LOAD_EFER"),
}
_SETS: dict[str, ControlSet] = {"pin": PIN_BASED, "primary": PRIMARY_PROCESSOR_BASED,
                                "secondary": SECONDARY_PROCESSOR_BASED, "exit": VM_EXIT, "entry": VM_ENTRY}
_DEFAULT1: dict[str, int] = {"pin": PIN_DEFAULT1, "primary": PROC_DEFAULT1, "secondary": 0,
                             "exit": EXIT_DEFAULT1, "entry": ENTRY_DEFAULT1}

#: VMCS fields of features hvdbg does not emulate: VMREAD/VMWRITE of them fail with
#: VM-instruction error 12 (SDM 31.4), and IA32_VMX_VMCS_ENUM does not count them.
UNSUPPORTED_FIELD_PREFIXES: tuple[str, ...] = (
    "POSTED_INTR", "EPTP_INDEX", "HLAT", "LAST_PID", "PID_POINTER", "GUEST_INTR_STATUS", "GUEST_PML_INDEX",
    "GUEST_UINV", "EXECUTIVE_VMCS", "PML_ADDRESS", "VIRTUAL_APIC_PAGE", "VM_FUNCTION", "EOI_EXIT",
    "EPTP_LIST", "VMREAD_BITMAP", "VMWRITE_BITMAP", "VE_INFORMATION", "XSS_EXIT", "ENCLS", "ENCLV", "SPPT",
    "TSC_MULTIPLIER", "TERTIARY", "LOW_PASID", "HIGH_PASID", "SHARED_EPT", "PCONFIG", "SECONDARY_VM_EXIT",
    "IA32_SPEC_CTRL", "INJECTED_EVENT", "ORIGINAL_EVENT", "GUEST_BNDCFGS", "GUEST_IA32_RTIT", "GUEST_IA32_LBR",
    "GUEST_IA32_PKRS", "HOST_IA32_PKRS", "GUEST_IA32_FRED", "HOST_IA32_FRED", "GUEST_IA32_PERF_GLOBAL",
    "HOST_IA32_PERF_GLOBAL", "GUEST_S_CET", "HOST_S_CET", "GUEST_SSP", "HOST_SSP", "GUEST_INTR_SSP",
    "HOST_INTR_SSP", "TPR_THRESHOLD", "PLE_", "NOTIFY_WINDOW", "GUEST_SMBASE",
)
SUPPORTED_FIELDS: frozenset[str] = frozenset(
    f.name for f in FIELDS if not f.name.startswith(UNSUPPORTED_FIELD_PREFIXES))

# -- IA32_VMX_EPT_VPID_CAP bits (SDM A.10) ------------------------------------------------
EPT_EXECUTE_ONLY = 1 << 0
EPT_WALK_LENGTH_4 = 1 << 6
EPT_MEMTYPE_UC = 1 << 8
EPT_MEMTYPE_WB = 1 << 14
EPT_2MB_PAGES = 1 << 16
EPT_1GB_PAGES = 1 << 17
INVEPT_SUPPORTED = 1 << 20
EPT_ACCESSED_DIRTY = 1 << 21
INVEPT_TYPE_SHIFT = 24            # bit 24 + type: 1 single-context (bit 25), 2 all-context (bit 26)
INVVPID_SUPPORTED = 1 << 32
INVVPID_TYPE_SHIFT = 40           # bit 40 + type: 0 individual address .. 3 single context retaining globals


def _bit(n: int) -> int:
    return 1 << n


@dataclass(frozen=True)
class ControlCapability:
    """The allowed settings of one control field (SDM A.3): ``must_be_1`` are the
    allowed-0 bits (reported in MSR bits 31:0), ``may_be_1`` the allowed-1 bits (63:32)."""

    must_be_1: int
    may_be_1: int

    @property
    def msr_value(self) -> int:
        return self.must_be_1 | self.may_be_1 << 32

    @classmethod
    def from_msr(cls, value: int) -> "ControlCapability":
        return cls(value & 0xFFFFFFFF, value >> 32 & 0xFFFFFFFF)

    def problem(self, value: int, title: str) -> str | None:
        """Why ``value`` is not a valid setting of the controls, or None (SDM 27.2.1)."""
        clear = self.must_be_1 & ~value
        if clear:
            return f"{title}: bit(s) {_bit_list(clear)} must be 1"
        extra = value & ~self.may_be_1 & 0xFFFFFFFF
        if extra or value >> 32:
            return f"{title}: bit(s) {_bit_list(extra | (value >> 32 << 32))} must be 0"
        return None


def _bit_list(mask: int) -> str:
    return ", ".join(str(n) for n in range(mask.bit_length()) if mask >> n & 1)


@dataclass(frozen=True)
class VmxCapabilities:
    """What hvdbg's VMX implementation supports for a guest hypervisor, and the capability
    MSRs that describe it.  ``emulated`` maps a control set to the controls it allows."""

    emulated: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(EMULATED))
    revision_id: int = REVISION_ID
    phys_addr_width: int = PHYS_ADDR_WIDTH
    preemption_timer_rate: int = 5         # the timer counts down when TSC bit 5 changes (SDM 26.5.1)
    cr3_target_count: int = 4
    vmwrite_any_field: bool = False        # IA32_VMX_MISC[29]: exit-information fields writable
    zero_length_injection: bool = True     # IA32_VMX_MISC[30]

    # -- control fields (SDM A.2-A.5) -------------------------------------------------

    def control(self, name: str, *, true_ctls: bool = True) -> ControlCapability:
        """Allowed settings of a control set ("pin", "primary", "secondary", "exit",
        "entry"); ``true_ctls`` gives the TRUE_ MSR's view (default1 bits may be 0)."""
        default1 = _DEFAULT1[name]
        may_be_1 = default1 | _SETS[name].mask(*self.emulated.get(name, ()))
        must_be_1 = default1 & ~TRUE_MAY_CLEAR.get(name, 0) if true_ctls else default1
        return ControlCapability(must_be_1, may_be_1)

    def supports(self, name: str, key: str) -> bool:
        return key in self.emulated.get(name, ())

    # -- the other MSRs ---------------------------------------------------------------

    @property
    def basic(self) -> int:
        """IA32_VMX_BASIC (SDM A.1): revision id, region size 4 KiB, write-back VMCS
        memory type, INS/OUTS instruction information (bit 54), TRUE_ controls (bit 55)."""
        return (self.revision_id | VMCS_REGION_SIZE << 32 | int(MemType.WB) << 50
                | _bit(54) | _bit(55))

    @property
    def misc(self) -> int:
        """IA32_VMX_MISC (SDM A.6): timer rate, EFER.LMA stored in the IA-32e mode guest
        control on exit (bit 5), HLT / shutdown / wait-for-SIPI activity states (bits 8:6),
        the CR3-target count (24:16), 512 MSR-list entries (27:25 = 0)."""
        return (self.preemption_timer_rate | _bit(5) | _bit(6) | _bit(7) | _bit(8)
                | self.cr3_target_count << 16 | int(self.vmwrite_any_field) << 29
                | int(self.zero_length_injection) << 30)

    @property
    def max_msr_list(self) -> int:
        """Recommended maximum of MSR-list entries: 512 * (IA32_VMX_MISC[27:25] + 1)."""
        return 512 * ((self.misc >> 25 & 7) + 1)

    @property
    def activity_states(self) -> frozenset[int]:
        """Activity states VM entry accepts: active always, the others per MISC bits 8:6."""
        return frozenset({0} | {n for n in (1, 2, 3) if self.misc >> (5 + n) & 1})

    @property
    def vmcs_enum(self) -> int:
        """IA32_VMX_VMCS_ENUM (SDM A.9): bits 9:1 the highest index of a supported field."""
        return max(split_encoding(f.encoding).index for f in FIELDS if f.name in SUPPORTED_FIELDS) << 1

    @property
    def ept_vpid_cap(self) -> int:
        """IA32_VMX_EPT_VPID_CAP (SDM A.10): 4-level walks, UC and WB paging-structure
        types, 2 MiB and 1 GiB pages, execute-only, INVEPT single/all-context, INVVPID of
        every type (if VPID is emulated)."""
        value = 0
        if self.supports("secondary", "ENABLE_EPT"):
            value |= (EPT_EXECUTE_ONLY | EPT_WALK_LENGTH_4 | EPT_MEMTYPE_UC | EPT_MEMTYPE_WB | EPT_2MB_PAGES
                      | EPT_1GB_PAGES | INVEPT_SUPPORTED | _bit(INVEPT_TYPE_SHIFT + 1) | _bit(INVEPT_TYPE_SHIFT + 2))
        if self.supports("secondary", "ENABLE_VPID"):
            value |= INVVPID_SUPPORTED | sum(_bit(INVVPID_TYPE_SHIFT + t) for t in range(4))
        return value

    def invept_type_supported(self, kind: int) -> bool:
        return 0 <= kind < 8 and bool(self.ept_vpid_cap & INVEPT_SUPPORTED
                                      and self.ept_vpid_cap >> (INVEPT_TYPE_SHIFT + kind) & 1)

    def invvpid_type_supported(self, kind: int) -> bool:
        return 0 <= kind < 8 and bool(self.ept_vpid_cap & INVVPID_SUPPORTED
                                      and self.ept_vpid_cap >> (INVVPID_TYPE_SHIFT + kind) & 1)

    @property
    def cr0_fixed0(self) -> int:
        """CR0 bits fixed to 1 in VMX operation: PE, NE, PG (SDM A.7)."""
        return CR0_PE | CR0_NE | CR0_PG

    @property
    def cr0_fixed1(self) -> int:
        return 0xFFFFFFFF

    @property
    def cr4_fixed0(self) -> int:
        """CR4 bits fixed to 1 in VMX operation: VMXE (SDM A.8)."""
        return CR4_VMXE

    @property
    def cr4_fixed1(self) -> int:
        """CR4 bits that may be 1: the ones hvdbg's CPU implements (hvdbg.arch.regs)."""
        return ~CR4_RESERVED & 0xFFFFFFFFFFFFFFFF

    def msrs(self) -> dict[int, int]:
        """Every VMX capability MSR, index -> value (RDMSR of 0x480-0x490)."""
        ctl = self.control
        return {
            IA32_VMX_BASIC: self.basic,
            IA32_VMX_PINBASED_CTLS: ctl("pin", true_ctls=False).msr_value,
            IA32_VMX_PROCBASED_CTLS: ctl("primary", true_ctls=False).msr_value,
            IA32_VMX_EXIT_CTLS: ctl("exit", true_ctls=False).msr_value,
            IA32_VMX_ENTRY_CTLS: ctl("entry", true_ctls=False).msr_value,
            IA32_VMX_MISC: self.misc,
            IA32_VMX_CR0_FIXED0: self.cr0_fixed0, IA32_VMX_CR0_FIXED1: self.cr0_fixed1,
            IA32_VMX_CR4_FIXED0: self.cr4_fixed0, IA32_VMX_CR4_FIXED1: self.cr4_fixed1,
            IA32_VMX_VMCS_ENUM: self.vmcs_enum,
            IA32_VMX_PROCBASED_CTLS2: ctl("secondary").msr_value,
            IA32_VMX_EPT_VPID_CAP: self.ept_vpid_cap,
            IA32_VMX_TRUE_PINBASED_CTLS: ctl("pin").msr_value,
            IA32_VMX_TRUE_PROCBASED_CTLS: ctl("primary").msr_value,
            IA32_VMX_TRUE_EXIT_CTLS: ctl("exit").msr_value,
            IA32_VMX_TRUE_ENTRY_CTLS: ctl("entry").msr_value,
        }

    # -- fixed bits (SDM 24.8) ----------------------------------------------------------

    def cr0_problem(self, cr0: int, *, unrestricted_guest: bool = False) -> str | None:
        """Why CR0 is not allowed in VMX operation (VMXON #GP, VM-entry checks), or None.
        With "unrestricted guest", PE and PG may be 0 in the guest's CR0 (SDM 27.3.1.1)."""
        fixed0 = self.cr0_fixed0 & ~((CR0_PE | CR0_PG) if unrestricted_guest else 0)
        return _fixed_problem("CR0", cr0, fixed0, self.cr0_fixed1, _CR0_NAMES, "A.7")

    def cr4_problem(self, cr4: int) -> str | None:
        """Why CR4 is not allowed in VMX operation, or None."""
        return _fixed_problem("CR4", cr4, self.cr4_fixed0, self.cr4_fixed1, _CR4_NAMES, "A.8")

    def vmcs_field_supported(self, name: str) -> bool:
        return name in SUPPORTED_FIELDS

    def field_writable(self, name: str) -> bool:
        """VMWRITE may write the field (read-only exit-information fields need MISC[29])."""
        return self.vmwrite_any_field or BY_NAME[name].type is not FieldType.EXIT_INFO


_CR0_NAMES = {0: "PE", 5: "NE", 31: "PG"}
_CR4_NAMES = {13: "VMXE"}


def _fixed_problem(reg: str, value: int, fixed0: int, fixed1: int, names: dict[int, str],
                   appendix: str) -> str | None:
    clear = fixed0 & ~value
    if clear:
        bit = (clear & -clear).bit_length() - 1
        return f"{reg}.{names.get(bit, bit)} must be 1 in VMX operation (IA32_VMX_{reg}_FIXED0, SDM {appendix})"
    extra = value & ~fixed1
    if extra:
        bit = (extra & -extra).bit_length() - 1
        return f"{reg} bit {bit} must be 0 in VMX operation (IA32_VMX_{reg}_FIXED1, SDM {appendix})"
    return None


# -- IA32_FEATURE_CONTROL (SDM 24.7, Vol. 4 Table 2-2) ---------------------------------------
FEATURE_CONTROL_LOCK = 1 << 0
FEATURE_CONTROL_VMX_INSIDE_SMX = 1 << 1
FEATURE_CONTROL_VMX_OUTSIDE_SMX = 1 << 2
FEATURE_CONTROL_DEFINED = FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_INSIDE_SMX | FEATURE_CONTROL_VMX_OUTSIDE_SMX


@dataclass
class FeatureControl:
    """IA32_FEATURE_CONTROL of one vCPU: writable until the lock bit is set; once locked,
    every WRMSR raises #GP(0) until reset.  VMXON outside SMX needs lock = 1 and bit 2 = 1.
    hvdbg has no SMX (CPUID.1:ECX.SMX = 0), so bit 1 is reserved and cannot be set."""

    value: int = 0

    @property
    def locked(self) -> bool:
        return bool(self.value & FEATURE_CONTROL_LOCK)

    def write_problem(self, value: int) -> str | None:
        """Why WRMSR of ``value`` raises #GP(0), or None."""
        if self.locked:
            return "IA32_FEATURE_CONTROL is locked (bit 0) until reset"
        if value & ~(FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX):
            return f"IA32_FEATURE_CONTROL {value:#x}: reserved bits set (no SMX)"
        return None

    def write(self, value: int) -> str | None:
        """WRMSR: the new value, or why it raises #GP(0) (then the value is unchanged)."""
        problem = self.write_problem(value)
        if problem is None:
            self.value = value
        return problem

    def vmxon_problem(self) -> str | None:
        """Why VMXON outside SMX raises #GP(0) (SDM 31.3 VMXON), or None."""
        if not self.locked:
            return "IA32_FEATURE_CONTROL lock bit (0) is clear"
        if not self.value & FEATURE_CONTROL_VMX_OUTSIDE_SMX:
            return "IA32_FEATURE_CONTROL bit 2 (enable VMX outside SMX) is clear"
        return None


DEFAULT_CAPABILITIES = VmxCapabilities()
