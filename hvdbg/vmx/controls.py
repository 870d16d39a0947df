"""VMX control bits and the small bit-packed VMCS fields, as data (Intel SDM Vol. 3C).

* VM-execution controls: pin-based (SDM 25.6.1, Table 25-5), primary / secondary /
  tertiary processor-based (25.6.2, Tables 25-6, 25-7, 25-8), exception bitmap (25.6.3).
* VM-exit controls, primary and secondary (25.7.1, Tables 25-13, 25-14).
* VM-entry controls (25.8.1, Table 25-15).
* Interruption information: VM-entry (25.8.3, Table 25-17), VM-exit and IDT-vectoring
  (27.2.2 / 27.2.4, Tables 27-15, 27-16).
* Guest activity and interruptibility state (25.4.2, Tables 25-3, 25-4).
* Segment access rights (25.4.1, Table 25-2).

``decode(control, value)`` lists every defined bit of a control field with its name and
whether it is set; set bits that the SDM leaves reserved are listed as "reserved bit N".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, Callable, ClassVar, NamedTuple, TypeVar, dataclass_transform


# --------------------------------------------------------------------------------------
# Control fields
# --------------------------------------------------------------------------------------

class ControlBit(NamedTuple):
    """One control bit: position, identifier-style key, SDM name."""

    bit: int
    key: str
    name: str


class DecodedBit(NamedTuple):
    bit: int
    name: str
    set: bool


@dataclass(frozen=True)
class ControlSet:
    """The bits of one VMCS control field."""

    name: str           # short name used by decode(): "pin", "primary", ...
    field: str          # VMCS field name holding these controls
    title: str          # SDM title
    width: int          # 32 or 64 bits
    bits: tuple[ControlBit, ...]

    def bit_of(self, key_or_name: str) -> int:
        """Bit position of a control, by key ("HLT_EXITING") or SDM name ("HLT exiting")."""
        wanted = key_or_name.strip().lower()
        for entry in self.bits:
            if wanted in (entry.key.lower(), entry.name.lower()):
                return entry.bit
        raise KeyError(f"{self.title} has no control named {key_or_name!r}")

    def mask(self, *keys_or_names: str) -> int:
        """OR of the masks of the given controls."""
        value = 0
        for key in keys_or_names:
            value |= 1 << self.bit_of(key)
        return value

    def is_set(self, value: int, key_or_name: str) -> bool:
        return bool(value >> self.bit_of(key_or_name) & 1)

    def decode(self, value: int) -> list[DecodedBit]:
        """Every defined bit (set or not) plus any set reserved bit, ordered by bit number."""
        named = {entry.bit: entry.name for entry in self.bits}
        rows = [DecodedBit(bit, name, bool(value >> bit & 1)) for bit, name in named.items()]
        rows += [DecodedBit(bit, f"reserved bit {bit}", True)
                 for bit in range(self.width) if value >> bit & 1 and bit not in named]
        return sorted(rows)

    def names_set(self, value: int) -> list[str]:
        return [row.name for row in self.decode(value) if row.set]


def _bits(*rows: tuple[int, str, str]) -> tuple[ControlBit, ...]:
    return tuple(ControlBit(*row) for row in rows)


PIN_BASED = ControlSet("pin", "PIN_BASED_VM_EXEC_CONTROL", "Pin-based VM-execution controls", 32, _bits(
    (0, "EXTERNAL_INTERRUPT_EXITING", "external-interrupt exiting"),
    (3, "NMI_EXITING", "NMI exiting"),
    (5, "VIRTUAL_NMIS", "virtual NMIs"),
    (6, "PREEMPTION_TIMER", "activate VMX-preemption timer"),
    (7, "POSTED_INTERRUPTS", "process posted interrupts"),
))

PRIMARY_PROCESSOR_BASED = ControlSet(
    "primary", "CPU_BASED_VM_EXEC_CONTROL", "Primary processor-based VM-execution controls", 32, _bits(
        (2, "INTERRUPT_WINDOW_EXITING", "interrupt-window exiting"),
        (3, "USE_TSC_OFFSETTING", "use TSC offsetting"),
        (7, "HLT_EXITING", "HLT exiting"),
        (9, "INVLPG_EXITING", "INVLPG exiting"),
        (10, "MWAIT_EXITING", "MWAIT exiting"),
        (11, "RDPMC_EXITING", "RDPMC exiting"),
        (12, "RDTSC_EXITING", "RDTSC exiting"),
        (15, "CR3_LOAD_EXITING", "CR3-load exiting"),
        (16, "CR3_STORE_EXITING", "CR3-store exiting"),
        (17, "ACTIVATE_TERTIARY_CONTROLS", "activate tertiary controls"),
        (19, "CR8_LOAD_EXITING", "CR8-load exiting"),
        (20, "CR8_STORE_EXITING", "CR8-store exiting"),
        (21, "USE_TPR_SHADOW", "use TPR shadow"),
        (22, "NMI_WINDOW_EXITING", "NMI-window exiting"),
        (23, "MOV_DR_EXITING", "MOV-DR exiting"),
        (24, "UNCONDITIONAL_IO_EXITING", "unconditional I/O exiting"),
        (25, "USE_IO_BITMAPS", "use I/O bitmaps"),
        (27, "MONITOR_TRAP_FLAG", "monitor trap flag"),
        (28, "USE_MSR_BITMAPS", "use MSR bitmaps"),
        (29, "MONITOR_EXITING", "MONITOR exiting"),
        (30, "PAUSE_EXITING", "PAUSE exiting"),
        (31, "ACTIVATE_SECONDARY_CONTROLS", "activate secondary controls"),
    ))

SECONDARY_PROCESSOR_BASED = ControlSet(
    "secondary", "SECONDARY_VM_EXEC_CONTROL", "Secondary processor-based VM-execution controls", 32, _bits(
        (0, "VIRTUALIZE_APIC_ACCESSES", "virtualize APIC accesses"),
        (1, "ENABLE_EPT", "enable EPT"),
        (2, "DESCRIPTOR_TABLE_EXITING", "descriptor-table exiting"),
        (3, "ENABLE_RDTSCP", "enable RDTSCP"),
        (4, "VIRTUALIZE_X2APIC_MODE", "virtualize x2APIC mode"),
        (5, "ENABLE_VPID", "enable VPID"),
        (6, "WBINVD_EXITING", "WBINVD exiting"),
        (7, "UNRESTRICTED_GUEST", "unrestricted guest"),
        (8, "APIC_REGISTER_VIRTUALIZATION", "APIC-register virtualization"),
        (9, "VIRTUAL_INTERRUPT_DELIVERY", "virtual-interrupt delivery"),
        (10, "PAUSE_LOOP_EXITING", "PAUSE-loop exiting"),
        (11, "RDRAND_EXITING", "RDRAND exiting"),
        (12, "ENABLE_INVPCID", "enable INVPCID"),
        (13, "ENABLE_VM_FUNCTIONS", "enable VM functions"),
        (14, "VMCS_SHADOWING", "VMCS shadowing"),
        (15, "ENCLS_EXITING", "enable ENCLS exiting"),
        (16, "RDSEED_EXITING", "RDSEED exiting"),
        (17, "ENABLE_PML", "enable PML"),
        (18, "EPT_VIOLATION_VE", "EPT-violation #VE"),
        (19, "CONCEAL_VMX_FROM_PT", "conceal VMX from PT"),
        (20, "ENABLE_XSAVES_XRSTORS", "enable XSAVES/XRSTORS"),
        (21, "PASID_TRANSLATION", "PASID translation"),
        (22, "MODE_BASED_EPT_EXECUTE", "mode-based execute control for EPT"),
        (23, "EPT_SUB_PAGE_WRITE", "sub-page write permissions for EPT"),
        (24, "PT_USES_GUEST_PHYSICAL", "Intel PT uses guest physical addresses"),
        (25, "USE_TSC_SCALING", "use TSC scaling"),
        (26, "ENABLE_USER_WAIT_PAUSE", "enable user wait and pause"),
        (27, "ENABLE_PCONFIG", "enable PCONFIG"),
        (28, "ENCLV_EXITING", "enable ENCLV exiting"),
        (30, "VMM_BUS_LOCK_DETECTION", "VMM bus-lock detection"),
        (31, "INSTRUCTION_TIMEOUT", "instruction timeout"),
    ))

TERTIARY_PROCESSOR_BASED = ControlSet(
    "tertiary", "TERTIARY_VM_EXEC_CONTROL", "Tertiary processor-based VM-execution controls", 64, _bits(
        (0, "LOADIWKEY_EXITING", "LOADIWKEY exiting"),
        (1, "ENABLE_HLAT", "enable HLAT"),
        (2, "EPT_PAGING_WRITE", "EPT paging-write control"),
        (3, "GUEST_PAGING_VERIFICATION", "guest-paging verification"),
        (4, "IPI_VIRTUALIZATION", "IPI virtualization"),
        (7, "VIRTUALIZE_SPEC_CTRL", "virtualize IA32_SPEC_CTRL"),
    ))

VM_EXIT = ControlSet("exit", "VM_EXIT_CONTROLS", "Primary VM-exit controls", 32, _bits(
    (2, "SAVE_DEBUG_CONTROLS", "save debug controls"),
    (9, "HOST_ADDRESS_SPACE_SIZE", "host address-space size"),
    (12, "LOAD_PERF_GLOBAL_CTRL", "load IA32_PERF_GLOBAL_CTRL"),
    (15, "ACK_INTERRUPT_ON_EXIT", "acknowledge interrupt on exit"),
    (18, "SAVE_PAT", "save IA32_PAT"),
    (19, "LOAD_PAT", "load IA32_PAT"),
    (20, "SAVE_EFER", "save IA32_EFER"),
    (21, "LOAD_EFER", "load IA32_EFER"),
    (22, "SAVE_PREEMPTION_TIMER", "save VMX-preemption timer value"),
    (23, "CLEAR_BNDCFGS", "clear IA32_BNDCFGS"),
    (24, "CONCEAL_VMX_FROM_PT", "conceal VMX from PT"),
    (25, "CLEAR_RTIT_CTL", "clear IA32_RTIT_CTL"),
    (26, "CLEAR_LBR_CTL", "clear IA32_LBR_CTL"),
    (27, "CLEAR_UINV", "clear UINV"),
    (28, "LOAD_CET_STATE", "load CET state"),
    (29, "LOAD_PKRS", "load PKRS"),
    (30, "SAVE_PERF_GLOBAL_CTRL", "save IA32_PERF_GLOBAL_CTRL"),
    (31, "ACTIVATE_SECONDARY_CONTROLS", "activate secondary controls"),
))

SECONDARY_VM_EXIT = ControlSet("secondary_exit", "SECONDARY_VM_EXIT_CONTROLS", "Secondary VM-exit controls", 64,
                               _bits(
                                   (0, "SAVE_FRED", "save FRED"),
                                   (1, "LOAD_FRED", "load FRED"),
                               ))

VM_ENTRY = ControlSet("entry", "VM_ENTRY_CONTROLS", "VM-entry controls", 32, _bits(
    (2, "LOAD_DEBUG_CONTROLS", "load debug controls"),
    (9, "IA32E_MODE_GUEST", "IA-32e mode guest"),
    (10, "ENTRY_TO_SMM", "entry to SMM"),
    (11, "DEACTIVATE_DUAL_MONITOR", "deactivate dual-monitor treatment"),
    (13, "LOAD_PERF_GLOBAL_CTRL", "load IA32_PERF_GLOBAL_CTRL"),
    (14, "LOAD_PAT", "load IA32_PAT"),
    (15, "LOAD_EFER", "load IA32_EFER"),
    (16, "LOAD_BNDCFGS", "load IA32_BNDCFGS"),
    (17, "CONCEAL_VMX_FROM_PT", "conceal VMX from PT"),
    (18, "LOAD_RTIT_CTL", "load IA32_RTIT_CTL"),
    (19, "LOAD_UINV", "load UINV"),
    (20, "LOAD_CET_STATE", "load CET state"),
    (21, "LOAD_LBR_CTL", "load guest IA32_LBR_CTL"),
    (22, "LOAD_PKRS", "load PKRS"),
    (23, "LOAD_FRED", "load FRED"),
))


class ExceptionVector(NamedTuple):
    vector: int
    mnemonic: str
    name: str


# SDM Vol. 3A Table 6-1 "Protected-Mode Exceptions and Interrupts".
EXCEPTION_VECTORS: tuple[ExceptionVector, ...] = tuple(ExceptionVector(*row) for row in (
    (0, "#DE", "divide error"),
    (1, "#DB", "debug"),
    (2, "NMI", "non-maskable interrupt"),
    (3, "#BP", "breakpoint"),
    (4, "#OF", "overflow"),
    (5, "#BR", "BOUND range exceeded"),
    (6, "#UD", "invalid opcode"),
    (7, "#NM", "device not available"),
    (8, "#DF", "double fault"),
    (10, "#TS", "invalid TSS"),
    (11, "#NP", "segment not present"),
    (12, "#SS", "stack-segment fault"),
    (13, "#GP", "general protection"),
    (14, "#PF", "page fault"),
    (16, "#MF", "x87 floating-point error"),
    (17, "#AC", "alignment check"),
    (18, "#MC", "machine check"),
    (19, "#XM", "SIMD floating-point exception"),
    (20, "#VE", "virtualization exception"),
    (21, "#CP", "control protection"),
))
_VECTOR_BY_NUMBER = {v.vector: v for v in EXCEPTION_VECTORS}

# NMIs are governed by the "NMI exiting" control, not by bit 2 of the exception bitmap (SDM 25.6.3).
EXCEPTION_BITMAP = ControlSet("exception_bitmap", "EXCEPTION_BITMAP", "Exception bitmap", 32, tuple(
    ControlBit(v.vector, v.mnemonic.lstrip("#"), v.mnemonic) for v in EXCEPTION_VECTORS if v.vector != 2))


def exception_label(vector: int) -> str:
    """'#PF (page fault)' for an architectural exception vector, 'vector 0x30' otherwise."""
    known = _VECTOR_BY_NUMBER.get(vector)
    return f"{known.mnemonic} ({known.name})" if known else f"vector {vector:#x}"


CONTROL_SETS: tuple[ControlSet, ...] = (
    PIN_BASED, PRIMARY_PROCESSOR_BASED, SECONDARY_PROCESSOR_BASED, TERTIARY_PROCESSOR_BASED,
    VM_EXIT, SECONDARY_VM_EXIT, VM_ENTRY, EXCEPTION_BITMAP,
)
_CONTROL_ALIASES = {"proc": "primary", "procbased": "primary", "proc2": "secondary", "proc3": "tertiary",
                    "pinbased": "pin", "vmexit": "exit", "vmentry": "entry", "exceptions": "exception_bitmap"}


def control_set(control_name: str) -> ControlSet:
    """A control set by short name ("pin", "primary", "secondary", "tertiary", "exit",
    "secondary_exit", "entry", "exception_bitmap") or by its VMCS field name."""
    key = control_name.strip()
    key = _CONTROL_ALIASES.get(key.lower(), key)
    for candidate in CONTROL_SETS:
        if key.lower() == candidate.name or key.upper() == candidate.field:
            return candidate
    known = ", ".join(c.name for c in CONTROL_SETS)
    raise KeyError(f"unknown VMX control field {control_name!r}; known: {known}")


def decode(control_name: str, value: int) -> list[DecodedBit]:
    """Decode a control-field value into (bit, name, set) rows, ordered by bit."""
    return control_set(control_name).decode(value)


# --------------------------------------------------------------------------------------
# Bit-packed records
# --------------------------------------------------------------------------------------

class BitField(NamedTuple):
    """One member of a packed field: attribute name, lowest bit, width, and the converter
    applied to the raw bits when decoding (bool, int, an IntEnum, or any callable)."""

    name: str
    lsb: int
    width: int = 1
    kind: Callable[[int], Any] = bool


R = TypeVar("R", bound="BitRecord")


class BitRecord:
    """Base for frozen dataclasses packed into an integer according to ``LAYOUT``."""

    LAYOUT: ClassVar[tuple[BitField, ...]] = ()

    def encode(self) -> int:
        """Pack into an integer; raises ValueError when a member does not fit its bits."""
        value = 0
        for member in self.LAYOUT:
            raw = int(getattr(self, member.name))
            if not 0 <= raw < 1 << member.width:
                raise ValueError(f"{type(self).__name__}.{member.name}={raw:#x} does not fit in {member.width} bits")
            value |= raw << member.lsb
        return value

    @classmethod
    def decode(cls: type[R], value: int) -> R:
        """Unpack an integer (bits outside LAYOUT are ignored)."""
        kwargs: dict[str, Any] = {}
        for member in cls.LAYOUT:
            kwargs[member.name] = member.kind((value >> member.lsb) & ((1 << member.width) - 1))
        return cls(**kwargs)

    def __int__(self) -> int:
        return self.encode()


T = TypeVar("T", bound=type)


@dataclass_transform(frozen_default=True)
def bit_record(cls: T) -> T:
    """Class decorator for BitRecord subclasses: makes a frozen dataclass and checks that
    every dataclass field is in LAYOUT and vice versa."""
    cls = dataclass(frozen=True)(cls)
    declared = {f.name for f in fields(cls)}
    laid_out = {m.name for m in cls.LAYOUT}
    if declared != laid_out:
        raise TypeError(f"{cls.__name__}: LAYOUT {sorted(laid_out)} does not match fields {sorted(declared)}")
    return cls


class InterruptionType(IntEnum):
    """Bits 10:8 of the interruption-information fields (SDM Tables 25-17, 27-15)."""

    EXTERNAL_INTERRUPT = 0
    RESERVED = 1
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6
    OTHER_EVENT = 7

    @property
    def label(self) -> str:
        return _INTERRUPTION_TYPE_LABELS[self]


_INTERRUPTION_TYPE_LABELS = {
    InterruptionType.EXTERNAL_INTERRUPT: "external interrupt",
    InterruptionType.RESERVED: "reserved type 1",
    InterruptionType.NMI: "NMI",
    InterruptionType.HARDWARE_EXCEPTION: "hardware exception",
    InterruptionType.SOFTWARE_INTERRUPT: "software interrupt",
    InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION: "privileged software exception",
    InterruptionType.SOFTWARE_EXCEPTION: "software exception",
    InterruptionType.OTHER_EVENT: "other event",
}

_EXCEPTION_TYPES = (InterruptionType.HARDWARE_EXCEPTION, InterruptionType.SOFTWARE_EXCEPTION,
                    InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION, InterruptionType.NMI)


@bit_record
class InterruptionInfo(BitRecord):
    """VM-entry / VM-exit / IDT-vectoring interruption information (SDM 25.8.3, 27.2.2, 27.2.4).

    ``nmi_unblocking`` (bit 12) is "NMI unblocking due to IRET" in the VM-exit field only.
    """

    vector: int = 0
    type: InterruptionType = InterruptionType.EXTERNAL_INTERRUPT
    error_code_valid: bool = False
    nmi_unblocking: bool = False
    valid: bool = True

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("vector", 0, 8, int),
        BitField("type", 8, 3, InterruptionType),
        BitField("error_code_valid", 11),
        BitField("nmi_unblocking", 12),
        BitField("valid", 31),
    )

    @property
    def is_exception(self) -> bool:
        return self.type in _EXCEPTION_TYPES

    def describe(self) -> str:
        """E.g. 'hardware exception #PF (page fault), error code valid' or 'invalid'."""
        if not self.valid:
            return "invalid"
        if self.type is InterruptionType.NMI:
            text = "NMI"
        elif self.is_exception:
            text = f"{self.type.label} {exception_label(self.vector)}"
        else:
            text = f"{self.type.label} vector {self.vector:#x}"
        if self.error_code_valid:
            text += ", error code valid"
        if self.nmi_unblocking:
            text += ", NMI unblocking due to IRET"
        return text


class ActivityState(IntEnum):
    """Guest activity state (SDM 25.4.2, Table 25-3)."""

    ACTIVE = 0
    HLT = 1
    SHUTDOWN = 2
    WAIT_FOR_SIPI = 3

    @property
    def label(self) -> str:
        """What a vCPU in this state is doing, in words (vCPU lists, ``--json`` state)."""
        return _ACTIVITY_STATUS[self]

    @property
    def sdm_name(self) -> str:
        """The SDM's name of the state (Table 25-3; VMCS displays)."""
        return _ACTIVITY_SDM_NAMES[self]


_ACTIVITY_STATUS = {
    ActivityState.ACTIVE: "running",
    ActivityState.HLT: "halted",
    ActivityState.SHUTDOWN: "shutdown",
    ActivityState.WAIT_FOR_SIPI: "wait-for-SIPI",
}
_ACTIVITY_SDM_NAMES = {
    ActivityState.ACTIVE: "active",
    ActivityState.HLT: "HLT",
    ActivityState.SHUTDOWN: "shutdown",
    ActivityState.WAIT_FOR_SIPI: "wait-for-SIPI",
}


def describe_activity_state(value: int) -> str:
    try:
        return ActivityState(value).sdm_name
    except ValueError:
        return f"reserved activity state {value}"


@bit_record
class Interruptibility(BitRecord):
    """Guest interruptibility state (SDM 25.4.2, Table 25-4)."""

    blocking_by_sti: bool = False
    blocking_by_mov_ss: bool = False
    blocking_by_smi: bool = False
    blocking_by_nmi: bool = False
    enclave_interruption: bool = False

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("blocking_by_sti", 0),
        BitField("blocking_by_mov_ss", 1),
        BitField("blocking_by_smi", 2),
        BitField("blocking_by_nmi", 3),
        BitField("enclave_interruption", 4),
    )

    def describe(self) -> str:
        labels = {"blocking_by_sti": "blocking by STI", "blocking_by_mov_ss": "blocking by MOV SS",
                  "blocking_by_smi": "blocking by SMI", "blocking_by_nmi": "blocking by NMI",
                  "enclave_interruption": "enclave interruption"}
        active = [text for name, text in labels.items() if getattr(self, name)]
        return ", ".join(active) if active else "no blocking"


# System-segment and gate types for S=0 (SDM Vol. 3A Table 3-2, IA-32e mode column where it differs).
_SYSTEM_SEGMENT_TYPES = {
    0x1: "16-bit TSS (available)", 0x2: "LDT", 0x3: "16-bit TSS (busy)", 0x4: "16-bit call gate",
    0x5: "task gate", 0x6: "16-bit interrupt gate", 0x7: "16-bit trap gate",
    0x9: "32/64-bit TSS (available)", 0xB: "32/64-bit TSS (busy)", 0xC: "32/64-bit call gate",
    0xE: "32/64-bit interrupt gate", 0xF: "32/64-bit trap gate",
}


@bit_record
class SegmentAccessRights(BitRecord):
    """Guest segment access rights (SDM 25.4.1, Table 25-2)."""

    type: int = 0
    s: bool = False          # descriptor type: 0 system, 1 code or data
    dpl: int = 0
    present: bool = False
    avl: bool = False
    long_mode: bool = False  # L, CS only
    db: bool = False         # D/B
    granularity: bool = False
    unusable: bool = False

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("type", 0, 4, int),
        BitField("s", 4),
        BitField("dpl", 5, 2, int),
        BitField("present", 7),
        BitField("avl", 12),
        BitField("long_mode", 13),
        BitField("db", 14),
        BitField("granularity", 15),
        BitField("unusable", 16),
    )

    def type_text(self) -> str:
        if not self.s:
            return _SYSTEM_SEGMENT_TYPES.get(self.type, f"reserved system type {self.type:#x}")
        if self.type & 0x8:
            kind = "code execute/read" if self.type & 0x2 else "code execute-only"
            extra = " conforming" if self.type & 0x4 else ""
        else:
            kind = "data read/write" if self.type & 0x2 else "data read-only"
            extra = " expand-down" if self.type & 0x4 else ""
        accessed = " accessed" if self.type & 0x1 else ""
        return kind + extra + accessed

    def describe(self) -> str:
        """E.g. 'code execute/read accessed, DPL=0 P L G' or 'unusable'."""
        if self.unusable:
            return "unusable"
        flags = [name for name, on in (("P", self.present), ("AVL", self.avl), ("L", self.long_mode),
                                       ("D/B", self.db), ("G", self.granularity)) if on]
        return f"{self.type_text()}, DPL={self.dpl}" + (" " + " ".join(flags) if flags else "")
