"""Every VMCS field and its VMREAD/VMWRITE encoding (Intel SDM Vol. 3D, Appendix B).

A field encoding is a 32-bit value laid out as described in SDM 25.11.2 ("VMREAD,
VMWRITE, and Encodings of VMCS Fields", Table 25-21 "Structure of VMCS Component
Encoding"):

    bit  0      access type (0 = full, 1 = high; only 64-bit fields have a high access)
    bits 9:1    index
    bits 11:10  type  (0 control, 1 VM-exit information (read-only data), 2 guest state, 3 host state)
    bit  12     reserved (0)
    bits 14:13  width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural width)
    bits 31:15  reserved (0)

Names follow Linux/KVM (arch/x86/include/asm/vmx.h) where Linux has one; the few fields
Linux does not name get a name in the same style.  The table is data: one row per field,
in Appendix B order (width, then type, then index).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Iterator, NamedTuple

from hvdbg.errors import HvdbgError


class FieldWidth(IntEnum):
    """Encoding bits 14:13 (SDM Table 25-21)."""

    BIT16 = 0
    BIT64 = 1
    BIT32 = 2
    NATURAL = 3

    @property
    def bits(self) -> int:
        """Number of value bits; natural width is 64 on the Intel 64 processors hvdbg models."""
        return _WIDTH_BITS[self]


_WIDTH_BITS = {FieldWidth.BIT16: 16, FieldWidth.BIT64: 64, FieldWidth.BIT32: 32, FieldWidth.NATURAL: 64}


class FieldType(IntEnum):
    """Encoding bits 11:10 (SDM Table 25-21)."""

    CONTROL = 0
    EXIT_INFO = 1   # "VM-exit information", the read-only data fields
    GUEST = 2
    HOST = 3

    @property
    def group(self) -> str:
        """The group name used by hvdbg ("control", "exit", "guest", "host")."""
        return _TYPE_GROUP[self]


_TYPE_GROUP = {
    FieldType.CONTROL: "control",
    FieldType.EXIT_INFO: "exit",
    FieldType.GUEST: "guest",
    FieldType.HOST: "host",
}

GROUPS: tuple[str, ...] = ("guest", "host", "control", "exit")

ACCESS_HIGH_BIT = 1 << 0
_INDEX_SHIFT, _INDEX_MASK = 1, 0x1FF
_TYPE_SHIFT, _TYPE_MASK = 10, 0x3
_WIDTH_SHIFT, _WIDTH_MASK = 13, 0x3
_RESERVED_BITS = ~((1 << 15) - 1) | (1 << 12)


class UnknownVmcsFieldError(HvdbgError, KeyError):
    """A VMCS field name or encoding that is not in Appendix B (VMREAD/VMWRITE would fail
    with VM-instruction error 12, "VMREAD/VMWRITE from/to unsupported VMCS component")."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else "unknown VMCS field"


class EncodingParts(NamedTuple):
    """The components of a field encoding (SDM Table 25-21)."""

    high: bool
    index: int
    type: FieldType
    width: FieldWidth


def split_encoding(encoding: int) -> EncodingParts:
    """Split an encoding into access type, index, type and width.

    Raises UnknownVmcsFieldError when a reserved bit (12 or 31:15) is set.
    """
    if encoding < 0 or encoding & _RESERVED_BITS:
        raise UnknownVmcsFieldError(f"unknown VMCS field encoding {encoding:#x} (reserved bits set)")
    return EncodingParts(
        high=bool(encoding & ACCESS_HIGH_BIT),
        index=(encoding >> _INDEX_SHIFT) & _INDEX_MASK,
        type=FieldType((encoding >> _TYPE_SHIFT) & _TYPE_MASK),
        width=FieldWidth((encoding >> _WIDTH_SHIFT) & _WIDTH_MASK),
    )


def make_encoding(width: FieldWidth, type_: FieldType, index: int, high: bool = False) -> int:
    """Build an encoding from its components (inverse of :func:`split_encoding`)."""
    if not 0 <= index <= _INDEX_MASK:
        raise ValueError(f"VMCS field index {index} out of range 0..511")
    return (int(width) << _WIDTH_SHIFT) | (int(type_) << _TYPE_SHIFT) | (index << _INDEX_SHIFT) | int(high)


@dataclass(frozen=True)
class VmcsField:
    """One VMCS field: KVM-style name, full-access encoding, width, type, SDM description."""

    name: str
    encoding: int
    width: FieldWidth
    type: FieldType
    description: str

    @property
    def group(self) -> str:
        return self.type.group

    @property
    def bits(self) -> int:
        return self.width.bits

    @property
    def mask(self) -> int:
        return (1 << self.width.bits) - 1

    @property
    def has_high_access(self) -> bool:
        """Only 64-bit fields have a second, odd "high" encoding (SDM 25.11.2)."""
        return self.width is FieldWidth.BIT64

    @property
    def high_encoding(self) -> int | None:
        return self.encoding | ACCESS_HIGH_BIT if self.has_high_access else None


_W16, _W64, _W32, _WN = FieldWidth.BIT16, FieldWidth.BIT64, FieldWidth.BIT32, FieldWidth.NATURAL
_CTL, _EXI, _GST, _HST = FieldType.CONTROL, FieldType.EXIT_INFO, FieldType.GUEST, FieldType.HOST

# (name, encoding, width, type, SDM description) -- SDM Vol. 3D Appendix B, Tables B-1 .. B-14.
_FIELD_ROWS: tuple[tuple[str, int, FieldWidth, FieldType, str], ...] = (
    # Table B-1: 16-bit control fields
    ("VIRTUAL_PROCESSOR_ID", 0x0000, _W16, _CTL, "Virtual-processor identifier (VPID)"),
    ("POSTED_INTR_NV", 0x0002, _W16, _CTL, "Posted-interrupt notification vector"),
    ("EPTP_INDEX", 0x0004, _W16, _CTL, "EPTP index"),
    ("HLAT_PREFIX_SIZE", 0x0006, _W16, _CTL, "HLAT prefix size"),
    ("LAST_PID_POINTER_INDEX", 0x0008, _W16, _CTL, "Last PID-pointer index"),
    # Table B-2: 16-bit guest-state fields
    ("GUEST_ES_SELECTOR", 0x0800, _W16, _GST, "Guest ES selector"),
    ("GUEST_CS_SELECTOR", 0x0802, _W16, _GST, "Guest CS selector"),
    ("GUEST_SS_SELECTOR", 0x0804, _W16, _GST, "Guest SS selector"),
    ("GUEST_DS_SELECTOR", 0x0806, _W16, _GST, "Guest DS selector"),
    ("GUEST_FS_SELECTOR", 0x0808, _W16, _GST, "Guest FS selector"),
    ("GUEST_GS_SELECTOR", 0x080A, _W16, _GST, "Guest GS selector"),
    ("GUEST_LDTR_SELECTOR", 0x080C, _W16, _GST, "Guest LDTR selector"),
    ("GUEST_TR_SELECTOR", 0x080E, _W16, _GST, "Guest TR selector"),
    ("GUEST_INTR_STATUS", 0x0810, _W16, _GST, "Guest interrupt status"),
    ("GUEST_PML_INDEX", 0x0812, _W16, _GST, "PML index"),
    ("GUEST_UINV", 0x0814, _W16, _GST, "Guest UINV"),
    # Table B-3: 16-bit host-state fields
    ("HOST_ES_SELECTOR", 0x0C00, _W16, _HST, "Host ES selector"),
    ("HOST_CS_SELECTOR", 0x0C02, _W16, _HST, "Host CS selector"),
    ("HOST_SS_SELECTOR", 0x0C04, _W16, _HST, "Host SS selector"),
    ("HOST_DS_SELECTOR", 0x0C06, _W16, _HST, "Host DS selector"),
    ("HOST_FS_SELECTOR", 0x0C08, _W16, _HST, "Host FS selector"),
    ("HOST_GS_SELECTOR", 0x0C0A, _W16, _HST, "Host GS selector"),
    ("HOST_TR_SELECTOR", 0x0C0C, _W16, _HST, "Host TR selector"),
    # Table B-4: 64-bit control fields
    ("IO_BITMAP_A", 0x2000, _W64, _CTL, "Address of I/O bitmap A"),
    ("IO_BITMAP_B", 0x2002, _W64, _CTL, "Address of I/O bitmap B"),
    ("MSR_BITMAP", 0x2004, _W64, _CTL, "Address of MSR bitmaps"),
    ("VM_EXIT_MSR_STORE_ADDR", 0x2006, _W64, _CTL, "VM-exit MSR-store address"),
    ("VM_EXIT_MSR_LOAD_ADDR", 0x2008, _W64, _CTL, "VM-exit MSR-load address"),
    ("VM_ENTRY_MSR_LOAD_ADDR", 0x200A, _W64, _CTL, "VM-entry MSR-load address"),
    ("EXECUTIVE_VMCS_POINTER", 0x200C, _W64, _CTL, "Executive-VMCS pointer"),
    ("PML_ADDRESS", 0x200E, _W64, _CTL, "PML address"),
    ("TSC_OFFSET", 0x2010, _W64, _CTL, "TSC offset"),
    ("VIRTUAL_APIC_PAGE_ADDR", 0x2012, _W64, _CTL, "Virtual-APIC address"),
    ("APIC_ACCESS_ADDR", 0x2014, _W64, _CTL, "APIC-access address"),
    ("POSTED_INTR_DESC_ADDR", 0x2016, _W64, _CTL, "Posted-interrupt descriptor address"),
    ("VM_FUNCTION_CONTROL", 0x2018, _W64, _CTL, "VM-function controls"),
    ("EPT_POINTER", 0x201A, _W64, _CTL, "EPT pointer (EPTP)"),
    ("EOI_EXIT_BITMAP0", 0x201C, _W64, _CTL, "EOI-exit bitmap 0"),
    ("EOI_EXIT_BITMAP1", 0x201E, _W64, _CTL, "EOI-exit bitmap 1"),
    ("EOI_EXIT_BITMAP2", 0x2020, _W64, _CTL, "EOI-exit bitmap 2"),
    ("EOI_EXIT_BITMAP3", 0x2022, _W64, _CTL, "EOI-exit bitmap 3"),
    ("EPTP_LIST_ADDRESS", 0x2024, _W64, _CTL, "EPTP-list address"),
    ("VMREAD_BITMAP", 0x2026, _W64, _CTL, "VMREAD-bitmap address"),
    ("VMWRITE_BITMAP", 0x2028, _W64, _CTL, "VMWRITE-bitmap address"),
    ("VE_INFORMATION_ADDRESS", 0x202A, _W64, _CTL, "Virtualization-exception information address"),
    ("XSS_EXIT_BITMAP", 0x202C, _W64, _CTL, "XSS-exiting bitmap"),
    ("ENCLS_EXITING_BITMAP", 0x202E, _W64, _CTL, "ENCLS-exiting bitmap"),
    ("SPPT_POINTER", 0x2030, _W64, _CTL, "Sub-page-permission-table pointer"),
    ("TSC_MULTIPLIER", 0x2032, _W64, _CTL, "TSC multiplier"),
    ("TERTIARY_VM_EXEC_CONTROL", 0x2034, _W64, _CTL, "Tertiary processor-based VM-execution controls"),
    ("ENCLV_EXITING_BITMAP", 0x2036, _W64, _CTL, "ENCLV-exiting bitmap"),
    ("LOW_PASID_DIRECTORY_ADDRESS", 0x2038, _W64, _CTL, "Low PASID directory address"),
    ("HIGH_PASID_DIRECTORY_ADDRESS", 0x203A, _W64, _CTL, "High PASID directory address"),
    ("SHARED_EPT_POINTER", 0x203C, _W64, _CTL, "Shared EPT pointer"),
    ("PCONFIG_EXITING_BITMAP", 0x203E, _W64, _CTL, "PCONFIG-exiting bitmap"),
    ("HLAT_POINTER", 0x2040, _W64, _CTL, "Hypervisor-managed linear-address translation pointer (HLATP)"),
    ("PID_POINTER_TABLE", 0x2042, _W64, _CTL, "PID-pointer table address"),
    ("SECONDARY_VM_EXIT_CONTROLS", 0x2044, _W64, _CTL, "Secondary VM-exit controls"),
    ("IA32_SPEC_CTRL_MASK", 0x204A, _W64, _CTL, "IA32_SPEC_CTRL mask"),
    ("IA32_SPEC_CTRL_SHADOW", 0x204C, _W64, _CTL, "IA32_SPEC_CTRL shadow"),
    ("INJECTED_EVENT_DATA", 0x2052, _W64, _CTL, "Injected-event data"),
    # Table B-5: 64-bit read-only data fields
    ("GUEST_PHYSICAL_ADDRESS", 0x2400, _W64, _EXI, "Guest-physical address"),
    ("ORIGINAL_EVENT_DATA", 0x2404, _W64, _EXI, "Original-event data"),
    # Table B-6: 64-bit guest-state fields
    ("VMCS_LINK_POINTER", 0x2800, _W64, _GST, "VMCS link pointer"),
    ("GUEST_IA32_DEBUGCTL", 0x2802, _W64, _GST, "Guest IA32_DEBUGCTL"),
    ("GUEST_IA32_PAT", 0x2804, _W64, _GST, "Guest IA32_PAT"),
    ("GUEST_IA32_EFER", 0x2806, _W64, _GST, "Guest IA32_EFER"),
    ("GUEST_IA32_PERF_GLOBAL_CTRL", 0x2808, _W64, _GST, "Guest IA32_PERF_GLOBAL_CTRL"),
    ("GUEST_PDPTR0", 0x280A, _W64, _GST, "Guest PDPTE0"),
    ("GUEST_PDPTR1", 0x280C, _W64, _GST, "Guest PDPTE1"),
    ("GUEST_PDPTR2", 0x280E, _W64, _GST, "Guest PDPTE2"),
    ("GUEST_PDPTR3", 0x2810, _W64, _GST, "Guest PDPTE3"),
    ("GUEST_BNDCFGS", 0x2812, _W64, _GST, "Guest IA32_BNDCFGS"),
    ("GUEST_IA32_RTIT_CTL", 0x2814, _W64, _GST, "Guest IA32_RTIT_CTL"),
    ("GUEST_IA32_LBR_CTL", 0x2816, _W64, _GST, "Guest IA32_LBR_CTL"),
    ("GUEST_IA32_PKRS", 0x2818, _W64, _GST, "Guest IA32_PKRS"),
    ("GUEST_IA32_FRED_CONFIG", 0x281A, _W64, _GST, "Guest IA32_FRED_CONFIG"),
    ("GUEST_IA32_FRED_RSP1", 0x281C, _W64, _GST, "Guest IA32_FRED_RSP1"),
    ("GUEST_IA32_FRED_RSP2", 0x281E, _W64, _GST, "Guest IA32_FRED_RSP2"),
    ("GUEST_IA32_FRED_RSP3", 0x2820, _W64, _GST, "Guest IA32_FRED_RSP3"),
    ("GUEST_IA32_FRED_STKLVLS", 0x2822, _W64, _GST, "Guest IA32_FRED_STKLVLS"),
    ("GUEST_IA32_FRED_SSP1", 0x2824, _W64, _GST, "Guest IA32_FRED_SSP1"),
    ("GUEST_IA32_FRED_SSP2", 0x2826, _W64, _GST, "Guest IA32_FRED_SSP2"),
    ("GUEST_IA32_FRED_SSP3", 0x2828, _W64, _GST, "Guest IA32_FRED_SSP3"),
    # Table B-7: 64-bit host-state fields
    ("HOST_IA32_PAT", 0x2C00, _W64, _HST, "Host IA32_PAT"),
    ("HOST_IA32_EFER", 0x2C02, _W64, _HST, "Host IA32_EFER"),
    ("HOST_IA32_PERF_GLOBAL_CTRL", 0x2C04, _W64, _HST, "Host IA32_PERF_GLOBAL_CTRL"),
    ("HOST_IA32_PKRS", 0x2C06, _W64, _HST, "Host IA32_PKRS"),
    ("HOST_IA32_FRED_CONFIG", 0x2C08, _W64, _HST, "Host IA32_FRED_CONFIG"),
    ("HOST_IA32_FRED_RSP1", 0x2C0A, _W64, _HST, "Host IA32_FRED_RSP1"),
    ("HOST_IA32_FRED_RSP2", 0x2C0C, _W64, _HST, "Host IA32_FRED_RSP2"),
    ("HOST_IA32_FRED_RSP3", 0x2C0E, _W64, _HST, "Host IA32_FRED_RSP3"),
    ("HOST_IA32_FRED_STKLVLS", 0x2C10, _W64, _HST, "Host IA32_FRED_STKLVLS"),
    ("HOST_IA32_FRED_SSP1", 0x2C12, _W64, _HST, "Host IA32_FRED_SSP1"),
    ("HOST_IA32_FRED_SSP2", 0x2C14, _W64, _HST, "Host IA32_FRED_SSP2"),
    ("HOST_IA32_FRED_SSP3", 0x2C16, _W64, _HST, "Host IA32_FRED_SSP3"),
    # Table B-8: 32-bit control fields
    ("PIN_BASED_VM_EXEC_CONTROL", 0x4000, _W32, _CTL, "Pin-based VM-execution controls"),
    ("CPU_BASED_VM_EXEC_CONTROL", 0x4002, _W32, _CTL, "Primary processor-based VM-execution controls"),
    ("EXCEPTION_BITMAP", 0x4004, _W32, _CTL, "Exception bitmap"),
    ("PAGE_FAULT_ERROR_CODE_MASK", 0x4006, _W32, _CTL, "Page-fault error-code mask"),
    ("PAGE_FAULT_ERROR_CODE_MATCH", 0x4008, _W32, _CTL, "Page-fault error-code match"),
    ("CR3_TARGET_COUNT", 0x400A, _W32, _CTL, "CR3-target count"),
    ("VM_EXIT_CONTROLS", 0x400C, _W32, _CTL, "Primary VM-exit controls"),
    ("VM_EXIT_MSR_STORE_COUNT", 0x400E, _W32, _CTL, "VM-exit MSR-store count"),
    ("VM_EXIT_MSR_LOAD_COUNT", 0x4010, _W32, _CTL, "VM-exit MSR-load count"),
    ("VM_ENTRY_CONTROLS", 0x4012, _W32, _CTL, "VM-entry controls"),
    ("VM_ENTRY_MSR_LOAD_COUNT", 0x4014, _W32, _CTL, "VM-entry MSR-load count"),
    ("VM_ENTRY_INTR_INFO_FIELD", 0x4016, _W32, _CTL, "VM-entry interruption-information field"),
    ("VM_ENTRY_EXCEPTION_ERROR_CODE", 0x4018, _W32, _CTL, "VM-entry exception error code"),
    ("VM_ENTRY_INSTRUCTION_LEN", 0x401A, _W32, _CTL, "VM-entry instruction length"),
    ("TPR_THRESHOLD", 0x401C, _W32, _CTL, "TPR threshold"),
    ("SECONDARY_VM_EXEC_CONTROL", 0x401E, _W32, _CTL, "Secondary processor-based VM-execution controls"),
    ("PLE_GAP", 0x4020, _W32, _CTL, "PLE_Gap"),
    ("PLE_WINDOW", 0x4022, _W32, _CTL, "PLE_Window"),
    ("NOTIFY_WINDOW", 0x4024, _W32, _CTL, "Instruction-timeout control (notify window)"),
    # Table B-9: 32-bit read-only data fields
    ("VM_INSTRUCTION_ERROR", 0x4400, _W32, _EXI, "VM-instruction error"),
    ("VM_EXIT_REASON", 0x4402, _W32, _EXI, "Exit reason"),
    ("VM_EXIT_INTR_INFO", 0x4404, _W32, _EXI, "VM-exit interruption information"),
    ("VM_EXIT_INTR_ERROR_CODE", 0x4406, _W32, _EXI, "VM-exit interruption error code"),
    ("IDT_VECTORING_INFO_FIELD", 0x4408, _W32, _EXI, "IDT-vectoring information field"),
    ("IDT_VECTORING_ERROR_CODE", 0x440A, _W32, _EXI, "IDT-vectoring error code"),
    ("VM_EXIT_INSTRUCTION_LEN", 0x440C, _W32, _EXI, "VM-exit instruction length"),
    ("VMX_INSTRUCTION_INFO", 0x440E, _W32, _EXI, "VM-exit instruction information"),
    # Table B-10: 32-bit guest-state fields
    ("GUEST_ES_LIMIT", 0x4800, _W32, _GST, "Guest ES limit"),
    ("GUEST_CS_LIMIT", 0x4802, _W32, _GST, "Guest CS limit"),
    ("GUEST_SS_LIMIT", 0x4804, _W32, _GST, "Guest SS limit"),
    ("GUEST_DS_LIMIT", 0x4806, _W32, _GST, "Guest DS limit"),
    ("GUEST_FS_LIMIT", 0x4808, _W32, _GST, "Guest FS limit"),
    ("GUEST_GS_LIMIT", 0x480A, _W32, _GST, "Guest GS limit"),
    ("GUEST_LDTR_LIMIT", 0x480C, _W32, _GST, "Guest LDTR limit"),
    ("GUEST_TR_LIMIT", 0x480E, _W32, _GST, "Guest TR limit"),
    ("GUEST_GDTR_LIMIT", 0x4810, _W32, _GST, "Guest GDTR limit"),
    ("GUEST_IDTR_LIMIT", 0x4812, _W32, _GST, "Guest IDTR limit"),
    ("GUEST_ES_AR_BYTES", 0x4814, _W32, _GST, "Guest ES access rights"),
    ("GUEST_CS_AR_BYTES", 0x4816, _W32, _GST, "Guest CS access rights"),
    ("GUEST_SS_AR_BYTES", 0x4818, _W32, _GST, "Guest SS access rights"),
    ("GUEST_DS_AR_BYTES", 0x481A, _W32, _GST, "Guest DS access rights"),
    ("GUEST_FS_AR_BYTES", 0x481C, _W32, _GST, "Guest FS access rights"),
    ("GUEST_GS_AR_BYTES", 0x481E, _W32, _GST, "Guest GS access rights"),
    ("GUEST_LDTR_AR_BYTES", 0x4820, _W32, _GST, "Guest LDTR access rights"),
    ("GUEST_TR_AR_BYTES", 0x4822, _W32, _GST, "Guest TR access rights"),
    ("GUEST_INTERRUPTIBILITY_INFO", 0x4824, _W32, _GST, "Guest interruptibility state"),
    ("GUEST_ACTIVITY_STATE", 0x4826, _W32, _GST, "Guest activity state"),
    ("GUEST_SMBASE", 0x4828, _W32, _GST, "Guest SMBASE"),
    ("GUEST_SYSENTER_CS", 0x482A, _W32, _GST, "Guest IA32_SYSENTER_CS"),
    ("VMX_PREEMPTION_TIMER_VALUE", 0x482E, _W32, _GST, "VMX-preemption timer value"),
    # Table B-11: 32-bit host-state field
    ("HOST_IA32_SYSENTER_CS", 0x4C00, _W32, _HST, "Host IA32_SYSENTER_CS"),
    # Table B-12: natural-width control fields
    ("CR0_GUEST_HOST_MASK", 0x6000, _WN, _CTL, "CR0 guest/host mask"),
    ("CR4_GUEST_HOST_MASK", 0x6002, _WN, _CTL, "CR4 guest/host mask"),
    ("CR0_READ_SHADOW", 0x6004, _WN, _CTL, "CR0 read shadow"),
    ("CR4_READ_SHADOW", 0x6006, _WN, _CTL, "CR4 read shadow"),
    ("CR3_TARGET_VALUE0", 0x6008, _WN, _CTL, "CR3-target value 0"),
    ("CR3_TARGET_VALUE1", 0x600A, _WN, _CTL, "CR3-target value 1"),
    ("CR3_TARGET_VALUE2", 0x600C, _WN, _CTL, "CR3-target value 2"),
    ("CR3_TARGET_VALUE3", 0x600E, _WN, _CTL, "CR3-target value 3"),
    # Table B-13: natural-width read-only data fields
    ("EXIT_QUALIFICATION", 0x6400, _WN, _EXI, "Exit qualification"),
    ("EXIT_IO_RCX", 0x6402, _WN, _EXI, "I/O RCX"),
    ("EXIT_IO_RSI", 0x6404, _WN, _EXI, "I/O RSI"),
    ("EXIT_IO_RDI", 0x6406, _WN, _EXI, "I/O RDI"),
    ("EXIT_IO_RIP", 0x6408, _WN, _EXI, "I/O RIP"),
    ("GUEST_LINEAR_ADDRESS", 0x640A, _WN, _EXI, "Guest-linear address"),
    # Table B-14: natural-width guest-state fields
    ("GUEST_CR0", 0x6800, _WN, _GST, "Guest CR0"),
    ("GUEST_CR3", 0x6802, _WN, _GST, "Guest CR3"),
    ("GUEST_CR4", 0x6804, _WN, _GST, "Guest CR4"),
    ("GUEST_ES_BASE", 0x6806, _WN, _GST, "Guest ES base"),
    ("GUEST_CS_BASE", 0x6808, _WN, _GST, "Guest CS base"),
    ("GUEST_SS_BASE", 0x680A, _WN, _GST, "Guest SS base"),
    ("GUEST_DS_BASE", 0x680C, _WN, _GST, "Guest DS base"),
    ("GUEST_FS_BASE", 0x680E, _WN, _GST, "Guest FS base"),
    ("GUEST_GS_BASE", 0x6810, _WN, _GST, "Guest GS base"),
    ("GUEST_LDTR_BASE", 0x6812, _WN, _GST, "Guest LDTR base"),
    ("GUEST_TR_BASE", 0x6814, _WN, _GST, "Guest TR base"),
    ("GUEST_GDTR_BASE", 0x6816, _WN, _GST, "Guest GDTR base"),
    ("GUEST_IDTR_BASE", 0x6818, _WN, _GST, "Guest IDTR base"),
    ("GUEST_DR7", 0x681A, _WN, _GST, "Guest DR7"),
    ("GUEST_RSP", 0x681C, _WN, _GST, "Guest RSP"),
    ("GUEST_RIP", 0x681E, _WN, _GST, "Guest RIP"),
    ("GUEST_RFLAGS", 0x6820, _WN, _GST, "Guest RFLAGS"),
    ("GUEST_PENDING_DBG_EXCEPTIONS", 0x6822, _WN, _GST, "Guest pending debug exceptions"),
    ("GUEST_SYSENTER_ESP", 0x6824, _WN, _GST, "Guest IA32_SYSENTER_ESP"),
    ("GUEST_SYSENTER_EIP", 0x6826, _WN, _GST, "Guest IA32_SYSENTER_EIP"),
    ("GUEST_S_CET", 0x6828, _WN, _GST, "Guest IA32_S_CET"),
    ("GUEST_SSP", 0x682A, _WN, _GST, "Guest SSP"),
    ("GUEST_INTR_SSP_TABLE", 0x682C, _WN, _GST, "Guest IA32_INTERRUPT_SSP_TABLE_ADDR"),
    # Table B-15: natural-width host-state fields
    ("HOST_CR0", 0x6C00, _WN, _HST, "Host CR0"),
    ("HOST_CR3", 0x6C02, _WN, _HST, "Host CR3"),
    ("HOST_CR4", 0x6C04, _WN, _HST, "Host CR4"),
    ("HOST_FS_BASE", 0x6C06, _WN, _HST, "Host FS base"),
    ("HOST_GS_BASE", 0x6C08, _WN, _HST, "Host GS base"),
    ("HOST_TR_BASE", 0x6C0A, _WN, _HST, "Host TR base"),
    ("HOST_GDTR_BASE", 0x6C0C, _WN, _HST, "Host GDTR base"),
    ("HOST_IDTR_BASE", 0x6C0E, _WN, _HST, "Host IDTR base"),
    ("HOST_IA32_SYSENTER_ESP", 0x6C10, _WN, _HST, "Host IA32_SYSENTER_ESP"),
    ("HOST_IA32_SYSENTER_EIP", 0x6C12, _WN, _HST, "Host IA32_SYSENTER_EIP"),
    ("HOST_RSP", 0x6C14, _WN, _HST, "Host RSP"),
    ("HOST_RIP", 0x6C16, _WN, _HST, "Host RIP"),
    ("HOST_S_CET", 0x6C18, _WN, _HST, "Host IA32_S_CET"),
    ("HOST_SSP", 0x6C1A, _WN, _HST, "Host SSP"),
    ("HOST_INTR_SSP_TABLE", 0x6C1C, _WN, _HST, "Host IA32_INTERRUPT_SSP_TABLE_ADDR"),
)

FIELDS: tuple[VmcsField, ...] = tuple(VmcsField(*row) for row in _FIELD_ROWS)
BY_NAME: dict[str, VmcsField] = {f.name: f for f in FIELDS}
BY_ENCODING: dict[int, VmcsField] = {f.encoding: f for f in FIELDS}

HIGH_SUFFIX = "_HIGH"


class FieldRef(NamedTuple):
    """A resolved field reference: the field, and whether the high (bits 63:32) access is meant."""

    field: VmcsField
    high: bool


_FULL_REFS: dict[str, FieldRef] = {f.name: FieldRef(f, False) for f in FIELDS}


def resolve(name_or_encoding: str | int) -> FieldRef:
    """Resolve a field name (case-insensitive; "X_HIGH" for the high half of a 64-bit
    field) or an encoding (even = full access, odd = high access of a 64-bit field).

    Raises UnknownVmcsFieldError for anything that is not a VMCS component.
    """
    if isinstance(name_or_encoding, str):
        exact = _FULL_REFS.get(name_or_encoding)  # fast path for the exact upper-case name
        return exact if exact is not None else _resolve_name(name_or_encoding)
    if isinstance(name_or_encoding, int) and not isinstance(name_or_encoding, bool):
        return _resolve_encoding(name_or_encoding)
    raise UnknownVmcsFieldError(f"unknown VMCS field {name_or_encoding!r} (expected a name or an encoding)")


def _resolve_name(name: str) -> FieldRef:
    key = name.strip().upper()
    field = BY_NAME.get(key)
    if field is not None:
        return FieldRef(field, False)
    if key.endswith(HIGH_SUFFIX):
        field = BY_NAME.get(key[: -len(HIGH_SUFFIX)])
        if field is not None and field.has_high_access:
            return FieldRef(field, True)
    raise UnknownVmcsFieldError(f"unknown VMCS field {name!r}")


def _resolve_encoding(encoding: int) -> FieldRef:
    field = BY_ENCODING.get(encoding & ~ACCESS_HIGH_BIT)
    high = bool(encoding & ACCESS_HIGH_BIT)
    if field is None or (high and not field.has_high_access):
        raise UnknownVmcsFieldError(f"unknown VMCS field encoding {encoding:#x}")
    return FieldRef(field, high)


def lookup(name_or_encoding: str | int) -> VmcsField:
    """The field for a name or encoding (the high access resolves to its 64-bit field)."""
    return resolve(name_or_encoding).field


def fields_in_group(group: str) -> Iterator[VmcsField]:
    """Fields of one group ("guest", "host", "control", "exit"), in Appendix B order."""
    if group not in GROUPS:
        raise ValueError(f"unknown VMCS field group {group!r}; expected one of {', '.join(GROUPS)}")
    return (f for f in FIELDS if f.group == group)
