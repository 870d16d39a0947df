"""The VM-entry checks (SDM Vol. 3C chapter 27): 27.2.1 VMX controls, 27.2.2-27.2.4 host
state, 27.3.1 guest state, as a table of named checks over a VMCS view (name -> value).

A failing control check makes VMLAUNCH/VMRESUME VMfailValid(7), a failing host-state check
VMfailValid(8); a failing guest-state check is a VM-entry failure: exit reason 33 with
bit 31 set (SDM 27.8).  Every failing check of the first failing kind is reported by name
and SDM section.  Not yet checked: the virtual-APIC page, posted interrupts, VM functions,
shadow VMCS, PDPTEs loaded from memory, and the MSR-load list contents (SDM 27.4).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Mapping

from hvdbg.arch.paging import is_canonical
from hvdbg.arch.physmem import PhysicalMemory
from hvdbg.arch.regs import CR0_PE, CR0_PG, CR4_PAE, CR4_PCIDE, EFER_LMA, EFER_LME, RFLAGS_IF, RFLAGS_VM
from hvdbg.vmx.capabilities import EPT_ACCESSED_DIRTY, EPT_MEMTYPE_UC, EPT_MEMTYPE_WB, VmxCapabilities
from hvdbg.vmx.controls import PIN_BASED, PRIMARY_PROCESSOR_BASED as PRIMARY, SECONDARY_PROCESSOR_BASED as SECONDARY
from hvdbg.vmx.controls import VM_ENTRY, VM_EXIT

EXIT_INVALID_GUEST_STATE = 33 | 1 << 31
QUAL_VMCS_LINK_POINTER = 4


class CheckKind(enum.Enum):
    CONTROL = "control"
    HOST = "host"
    GUEST = "guest"


def eptp_problem(eptp: int, caps: VmxCapabilities) -> str | None:
    """Why an EPT pointer is invalid (SDM 27.2.1.1, 25.6.11), or None."""
    cap = caps.ept_vpid_cap
    memtype = eptp & 7
    if not ((memtype == 0 and cap & EPT_MEMTYPE_UC) or (memtype == 6 and cap & EPT_MEMTYPE_WB)):
        return f"EPTP memory type {memtype} is not supported"
    if eptp >> 3 & 7 != 3:
        return f"EPTP page-walk length {(eptp >> 3 & 7) + 1} is not 4"
    if eptp & 1 << 6 and not cap & EPT_ACCESSED_DIRTY:
        return "EPTP enables accessed/dirty flags, which are not supported"
    if eptp & 0xF80 or eptp >> caps.phys_addr_width:
        return f"EPTP {eptp:#x} sets reserved bits"
    return None


class Ctx:
    """A VMCS view with the decoded controls the predicates ask about."""

    def __init__(self, v: Mapping[str, int], caps: VmxCapabilities, host_ia32e: bool,
                 memory: PhysicalMemory | None) -> None:
        self.v, self.caps, self.host_ia32e, self.memory = v, caps, host_ia32e, memory
        self.pin = v["PIN_BASED_VM_EXEC_CONTROL"]
        self.proc = v["CPU_BASED_VM_EXEC_CONTROL"]
        self.proc2 = v["SECONDARY_VM_EXEC_CONTROL"] if self.proc & PRIMARY.mask("ACTIVATE_SECONDARY_CONTROLS") else 0
        self.exit, self.entry = v["VM_EXIT_CONTROLS"], v["VM_ENTRY_CONTROLS"]
        self.ia32e_guest = bool(self.entry & VM_ENTRY.mask("IA32E_MODE_GUEST"))
        self.host64 = bool(self.exit & VM_EXIT.mask("HOST_ADDRESS_SPACE_SIZE"))
        self.unrestricted = bool(self.proc2 & SECONDARY.mask("UNRESTRICTED_GUEST"))

    def __getitem__(self, name: str) -> int:
        return self.v[name]

    def bad_address(self, name: str, align: int = 0x1000) -> bool:
        value = self.v[name]
        return bool(value & (align - 1) or value >> self.caps.phys_addr_width)

    def ar(self, seg: str) -> int:
        return self.v[f"GUEST_{seg}_AR_BYTES"]

    def usable(self, seg: str) -> bool:
        return not self.ar(seg) & 1 << 16


Pred = Callable[[Ctx], bool]


@dataclass(frozen=True)
class EntryCheck:
    """One VM-entry check: ``failed`` is true when the VMCS breaks it."""

    name: str
    kind: CheckKind
    section: str
    text: str
    failed: Pred
    qualification: int = 0

    @property
    def message(self) -> str:
        return f"{self.text}, SDM {self.section}"


def _ctl(name: str, field: str, title: str) -> Pred:
    def failed(c: Ctx) -> bool:
        return c.caps.control(name).problem(c[field], title) is not None
    return failed


_HOST_SEGMENTS = ("CS", "SS", "DS", "ES", "FS", "GS", "TR")


def _canon(name: str) -> Pred:
    return lambda c: not is_canonical(c[name], 48)


_C, _H, _G = CheckKind.CONTROL, CheckKind.HOST, CheckKind.GUEST
_SEL_RPL_TI = 7
_PAT_TYPES = {0, 1, 4, 5, 6, 7}


def _bad_pat(value: int) -> bool:
    return any(value >> (8 * i) & 0xFF not in _PAT_TYPES for i in range(8))


def _g_rule(limit: int, ar: int) -> bool:
    """Limit and G bit disagree (SDM 27.3.1.2)."""
    g = bool(ar & 1 << 15)
    return (limit & 0xFFF != 0xFFF and g) or (limit >> 20 != 0 and not g)


def _rows() -> list[EntryCheck]:
    rows = [
        # 27.2.1.1 VM-execution control fields
        EntryCheck("pin_reserved", _C, "27.2.1.1", "pin-based controls must follow IA32_VMX_TRUE_PINBASED_CTLS",
                   _ctl("pin", "PIN_BASED_VM_EXEC_CONTROL", "pin")),
        EntryCheck("primary_reserved", _C, "27.2.1.1",
                   "primary processor-based controls must follow IA32_VMX_TRUE_PROCBASED_CTLS",
                   _ctl("primary", "CPU_BASED_VM_EXEC_CONTROL", "primary")),
        EntryCheck("secondary_reserved", _C, "27.2.1.1",
                   "secondary processor-based controls must follow IA32_VMX_PROCBASED_CTLS2",
                   lambda c: c.caps.control("secondary").problem(c.proc2, "secondary") is not None),
        EntryCheck("cr3_target_count", _C, "27.2.1.1", "CR3-target count must not exceed IA32_VMX_MISC[24:16]",
                   lambda c: c["CR3_TARGET_COUNT"] > c.caps.cr3_target_count),
        EntryCheck("io_bitmap_a", _C, "27.2.1.1", "I/O bitmap A must be 4 KiB aligned within the physical-address "
                   "width", lambda c: bool(c.proc & PRIMARY.mask("USE_IO_BITMAPS")) and c.bad_address("IO_BITMAP_A")),
        EntryCheck("io_bitmap_b", _C, "27.2.1.1", "I/O bitmap B must be 4 KiB aligned within the physical-address "
                   "width", lambda c: bool(c.proc & PRIMARY.mask("USE_IO_BITMAPS")) and c.bad_address("IO_BITMAP_B")),
        EntryCheck("msr_bitmap", _C, "27.2.1.1", "the MSR bitmap must be 4 KiB aligned within the physical-address "
                   "width", lambda c: bool(c.proc & PRIMARY.mask("USE_MSR_BITMAPS")) and c.bad_address("MSR_BITMAP")),
        EntryCheck("virtual_nmis_need_nmi_exiting", _C, "27.2.1.1", "virtual NMIs require NMI exiting",
                   lambda c: c.pin & PIN_BASED.mask("VIRTUAL_NMIS", "NMI_EXITING") == PIN_BASED.mask("VIRTUAL_NMIS")),
        EntryCheck("nmi_window_needs_virtual_nmis", _C, "27.2.1.1", "NMI-window exiting requires virtual NMIs",
                   lambda c: bool(c.proc & PRIMARY.mask("NMI_WINDOW_EXITING")
                                  and not c.pin & PIN_BASED.mask("VIRTUAL_NMIS"))),
        EntryCheck("apic_access_address", _C, "27.2.1.1", "the APIC-access address must be 4 KiB aligned within the "
                   "physical-address width", lambda c: bool(c.proc2 & SECONDARY.mask("VIRTUALIZE_APIC_ACCESSES"))
                   and c.bad_address("APIC_ACCESS_ADDR")),
        EntryCheck("vpid_nonzero", _C, "27.2.1.1", "enable VPID requires a VPID other than 0",
                   lambda c: bool(c.proc2 & SECONDARY.mask("ENABLE_VPID")) and c["VIRTUAL_PROCESSOR_ID"] == 0),
        EntryCheck("eptp_valid", _C, "27.2.1.1", "enable EPT requires a valid EPT pointer",
                   lambda c: bool(c.proc2 & SECONDARY.mask("ENABLE_EPT"))
                   and eptp_problem(c["EPT_POINTER"], c.caps) is not None),
        EntryCheck("unrestricted_needs_ept", _C, "27.2.1.1", "unrestricted guest requires enable EPT",
                   lambda c: c.unrestricted and not c.proc2 & SECONDARY.mask("ENABLE_EPT")),
        # 27.2.1.2 VM-exit control fields
        EntryCheck("exit_reserved", _C, "27.2.1.2", "VM-exit controls must follow IA32_VMX_TRUE_EXIT_CTLS",
                   _ctl("exit", "VM_EXIT_CONTROLS", "exit")),
        EntryCheck("save_timer_needs_timer", _C, "27.2.1.2",
                   "save VMX-preemption timer value requires activate VMX-preemption timer",
                   lambda c: bool(c.exit & VM_EXIT.mask("SAVE_PREEMPTION_TIMER")
                                  and not c.pin & PIN_BASED.mask("PREEMPTION_TIMER"))),
        EntryCheck("exit_msr_store_address", _C, "27.2.1.2", "the VM-exit MSR-store address must be 16-byte "
                   "aligned within the physical-address width",
                   lambda c: c["VM_EXIT_MSR_STORE_COUNT"] > 0 and c.bad_address("VM_EXIT_MSR_STORE_ADDR", 16)),
        EntryCheck("exit_msr_load_address", _C, "27.2.1.2", "the VM-exit MSR-load address must be 16-byte "
                   "aligned within the physical-address width",
                   lambda c: c["VM_EXIT_MSR_LOAD_COUNT"] > 0 and c.bad_address("VM_EXIT_MSR_LOAD_ADDR", 16)),
        # 27.2.1.3 VM-entry control fields
        EntryCheck("entry_reserved", _C, "27.2.1.3", "VM-entry controls must follow IA32_VMX_TRUE_ENTRY_CTLS",
                   _ctl("entry", "VM_ENTRY_CONTROLS", "entry")),
        EntryCheck("injection_reserved_bits", _C, "27.2.1.3", "VM-entry interruption information bits 30:12 must be 0",
                   lambda c: bool(c["VM_ENTRY_INTR_INFO_FIELD"] >> 31 and c["VM_ENTRY_INTR_INFO_FIELD"] & 0x7FFFF000)),
        EntryCheck("injection_type", _C, "27.2.1.3", "an injected event must not have type 1 or 7",
                   lambda c: bool(c["VM_ENTRY_INTR_INFO_FIELD"] >> 31)
                   and c["VM_ENTRY_INTR_INFO_FIELD"] >> 8 & 7 in (1, 7)),
        EntryCheck("injection_nmi_vector", _C, "27.2.1.3", "an injected NMI must have vector 2",
                   lambda c: _inj(c, 2) and c["VM_ENTRY_INTR_INFO_FIELD"] & 0xFF != 2),
        EntryCheck("injection_exception_vector", _C, "27.2.1.3", "an injected hardware exception must have a vector "
                   "of at most 31", lambda c: _inj(c, 3) and c["VM_ENTRY_INTR_INFO_FIELD"] & 0xFF > 31),
        EntryCheck("injection_error_code", _C, "27.2.1.3", "deliver error code must be 1 exactly for a hardware "
                   "exception that has one (#DF, #TS, #NP, #SS, #GP, #PF, #AC) in protected mode",
                   lambda c: bool(c["VM_ENTRY_INTR_INFO_FIELD"] >> 31)
                   and bool(c["VM_ENTRY_INTR_INFO_FIELD"] & 1 << 11) != _needs_error_code(c)),
        EntryCheck("injection_instruction_length", _C, "27.2.1.3", "a software event's VM-entry instruction length "
                   "must be at most 15", lambda c: bool(c["VM_ENTRY_INTR_INFO_FIELD"] >> 31)
                   and c["VM_ENTRY_INTR_INFO_FIELD"] >> 8 & 7 in (4, 5, 6) and c["VM_ENTRY_INSTRUCTION_LEN"] > 15),
        EntryCheck("injection_error_code_reserved", _C, "27.2.1.3", "an injected error code's bits 31:16 must be 0",
                   lambda c: bool(c["VM_ENTRY_INTR_INFO_FIELD"] >> 31 and c["VM_ENTRY_INTR_INFO_FIELD"] & 1 << 11)
                   and bool(c["VM_ENTRY_EXCEPTION_ERROR_CODE"] >> 16)),
        EntryCheck("entry_msr_load_address", _C, "27.2.1.3", "the VM-entry MSR-load address must be 16-byte "
                   "aligned within the physical-address width",
                   lambda c: c["VM_ENTRY_MSR_LOAD_COUNT"] > 0 and c.bad_address("VM_ENTRY_MSR_LOAD_ADDR", 16)),
        # 27.2.2 host control registers and MSRs
        EntryCheck("host_cr0_fixed", _H, "27.2.2", "host CR0 must follow IA32_VMX_CR0_FIXED0/1",
                   lambda c: c.caps.cr0_problem(c["HOST_CR0"]) is not None),
        EntryCheck("host_cr4_fixed", _H, "27.2.2", "host CR4 must follow IA32_VMX_CR4_FIXED0/1",
                   lambda c: c.caps.cr4_problem(c["HOST_CR4"]) is not None),
        EntryCheck("host_cr3_width", _H, "27.2.2", "host CR3 must fit the physical-address width",
                   lambda c: bool(c["HOST_CR3"] >> c.caps.phys_addr_width)),
        EntryCheck("host_sysenter_esp", _H, "27.2.2", "host IA32_SYSENTER_ESP must be canonical",
                   _canon("HOST_IA32_SYSENTER_ESP")),
        EntryCheck("host_sysenter_eip", _H, "27.2.2", "host IA32_SYSENTER_EIP must be canonical",
                   _canon("HOST_IA32_SYSENTER_EIP")),
        EntryCheck("host_pat", _H, "27.2.2", "load IA32_PAT requires a valid host PAT",
                   lambda c: bool(c.exit & VM_EXIT.mask("LOAD_PAT")) and _bad_pat(c["HOST_IA32_PAT"])),
        EntryCheck("host_efer", _H, "27.2.2", "load IA32_EFER requires host EFER.LMA = EFER.LME = host address-space "
                   "size", lambda c: bool(c.exit & VM_EXIT.mask("LOAD_EFER")) and (
                       bool(c["HOST_IA32_EFER"] & ~0xD01)
                       or bool(c["HOST_IA32_EFER"] & EFER_LMA) != c.host64
                       or bool(c["HOST_IA32_EFER"] & EFER_LME) != c.host64)),
        # 27.2.3 host segment and descriptor-table registers
        EntryCheck("host_cs_nonzero", _H, "27.2.3", "host CS selector must not be 0",
                   lambda c: c["HOST_CS_SELECTOR"] == 0),
        EntryCheck("host_tr_nonzero", _H, "27.2.3", "host TR selector must not be 0",
                   lambda c: c["HOST_TR_SELECTOR"] == 0),
        EntryCheck("host_ss_nonzero", _H, "27.2.3", "host SS selector must not be 0 outside 64-bit host",
                   lambda c: not c.host64 and c["HOST_SS_SELECTOR"] == 0),
        EntryCheck("host_selector_rpl_ti", _H, "27.2.3", "host CS, SS, DS, ES, FS, GS and TR selectors must have "
                   "RPL = 0 and TI = 0", lambda c: any(c[f"HOST_{s}_SELECTOR"] & 7 for s in _HOST_SEGMENTS)),
        *[EntryCheck(f"host_{base.lower()}_base", _H, "27.2.3", f"host {base} base must be canonical (64-bit "
                     "host)", lambda c, base=base: c.host64 and not is_canonical(c[f"HOST_{base}_BASE"], 48))
          for base in ("FS", "GS", "GDTR", "IDTR", "TR")],
        # 27.2.4 address-space size
        EntryCheck("host_size_matches_cpu", _H, "27.2.4", "host address-space size must be 1 exactly when the "
                   "processor is in IA-32e mode", lambda c: c.host64 != c.host_ia32e),
        EntryCheck("host_size_0_no_ia32e_guest", _H, "27.2.4", "IA-32e mode guest requires host address-space size",
                   lambda c: not c.host64 and c.ia32e_guest),
        EntryCheck("host_64_needs_pae", _H, "27.2.4", "host address-space size requires host CR4.PAE = 1",
                   lambda c: c.host64 and not c["HOST_CR4"] & CR4_PAE),
        EntryCheck("host_rip", _H, "27.2.4", "host RIP must be canonical (64-bit host) or fit 32 bits",
                   lambda c: not is_canonical(c["HOST_RIP"], 48) if c.host64 else bool(c["HOST_RIP"] >> 32)),
        # 27.3.1.1 guest control registers, debug registers and MSRs
        EntryCheck("guest_cr0_fixed", _G, "27.3.1.1", "guest CR0 must follow IA32_VMX_CR0_FIXED0/1",
                   lambda c: c.caps.cr0_problem(c["GUEST_CR0"], unrestricted_guest=c.unrestricted) is not None),
        EntryCheck("guest_cr0_pg_needs_pe", _G, "27.3.1.1", "guest CR0.PG=1 requires CR0.PE=1",
                   lambda c: c["GUEST_CR0"] & (CR0_PG | CR0_PE) == CR0_PG),
        EntryCheck("guest_cr4_fixed", _G, "27.3.1.1", "guest CR4 must follow IA32_VMX_CR4_FIXED0/1",
                   lambda c: c.caps.cr4_problem(c["GUEST_CR4"]) is not None),
        EntryCheck("guest_ia32e_needs_paging", _G, "27.3.1.1", "IA-32e mode guest requires guest CR0.PG=1 and "
                   "CR4.PAE=1", lambda c: c.ia32e_guest and (not c["GUEST_CR0"] & CR0_PG
                                                              or not c["GUEST_CR4"] & CR4_PAE)),
        EntryCheck("guest_pcide_needs_ia32e", _G, "27.3.1.1", "guest CR4.PCIDE=1 requires IA-32e mode guest",
                   lambda c: not c.ia32e_guest and bool(c["GUEST_CR4"] & CR4_PCIDE)),
        EntryCheck("guest_cr3_width", _G, "27.3.1.1", "guest CR3 must fit the physical-address width",
                   lambda c: bool(c["GUEST_CR3"] >> c.caps.phys_addr_width)),
        EntryCheck("guest_dr7", _G, "27.3.1.1", "load debug controls requires guest DR7 bits 63:32 = 0",
                   lambda c: bool(c.entry & VM_ENTRY.mask("LOAD_DEBUG_CONTROLS") and c["GUEST_DR7"] >> 32)),
        EntryCheck("guest_sysenter_esp", _G, "27.3.1.1", "guest IA32_SYSENTER_ESP must be canonical",
                   _canon("GUEST_SYSENTER_ESP")),
        EntryCheck("guest_sysenter_eip", _G, "27.3.1.1", "guest IA32_SYSENTER_EIP must be canonical",
                   _canon("GUEST_SYSENTER_EIP")),
        EntryCheck("guest_pat", _G, "27.3.1.1", "load IA32_PAT requires a valid guest PAT",
                   lambda c: bool(c.entry & VM_ENTRY.mask("LOAD_PAT")) and _bad_pat(c["GUEST_IA32_PAT"])),
        EntryCheck("guest_efer", _G, "27.3.1.1", "load IA32_EFER requires guest EFER.LMA = IA-32e mode guest "
                   "(and = LME when CR0.PG=1)", lambda c: bool(c.entry & VM_ENTRY.mask("LOAD_EFER")) and (
                       bool(c["GUEST_IA32_EFER"] & ~0xD01) or bool(c["GUEST_IA32_EFER"] & EFER_LMA) != c.ia32e_guest
                       or (bool(c["GUEST_CR0"] & CR0_PG)
                           and bool(c["GUEST_IA32_EFER"] & EFER_LME) != c.ia32e_guest))),
        # 27.3.1.2 segment registers (outside virtual-8086 mode)
        EntryCheck("guest_tr_ti", _G, "27.3.1.2", "guest TR selector TI flag must be 0",
                   lambda c: bool(c["GUEST_TR_SELECTOR"] & 4)),
        EntryCheck("guest_cs_type", _G, "27.3.1.2", "guest CS type must be accessed code (9, 11, 13, 15), or 3 with "
                   "unrestricted guest", lambda c: not _v86(c) and c.ar("CS") & 0xF not in
                   ((3, 9, 11, 13, 15) if c.unrestricted else (9, 11, 13, 15))),
        EntryCheck("guest_cs_present", _G, "27.3.1.2", "guest CS must be present with S=1",
                   lambda c: not _v86(c) and c.ar("CS") & 0x90 != 0x90),
        EntryCheck("guest_ss_rpl", _G, "27.3.1.2", "guest SS.RPL must equal CS.RPL (no unrestricted guest)",
                   lambda c: not _v86(c) and not c.unrestricted
                   and c["GUEST_SS_SELECTOR"] & 3 != c["GUEST_CS_SELECTOR"] & 3),
        EntryCheck("guest_ss_type", _G, "27.3.1.2", "a usable guest SS must be a writable data segment (3 or 7)",
                   lambda c: not _v86(c) and c.usable("SS") and c.ar("SS") & 0xF not in (3, 7)),
        EntryCheck("guest_cs_db_in_64bit", _G, "27.3.1.2", "a 64-bit guest CS (L=1) must have D/B=0",
                   lambda c: c.ia32e_guest and c.ar("CS") & 0x6000 == 0x6000),
        EntryCheck("guest_tr_type", _G, "27.3.1.2", "guest TR must be a busy TSS (11, or 3 outside IA-32e mode), "
                   "present, S=0, usable", lambda c: c.ar("TR") & 0xF not in ((11,) if c.ia32e_guest else (3, 11))
                   or c.ar("TR") & 0x10090 != 0x80),
        EntryCheck("guest_ldtr_type", _G, "27.3.1.2", "a usable guest LDTR must be a present LDT (type 2, S=0)",
                   lambda c: c.usable("LDTR") and c.ar("LDTR") & 0x9F != 0x82),
        EntryCheck("guest_tr_base", _G, "27.3.1.2", "guest TR base must be canonical", _canon("GUEST_TR_BASE")),
        EntryCheck("guest_fs_base", _G, "27.3.1.2", "guest FS base must be canonical", _canon("GUEST_FS_BASE")),
        EntryCheck("guest_gs_base", _G, "27.3.1.2", "guest GS base must be canonical", _canon("GUEST_GS_BASE")),
        EntryCheck("guest_cs_base", _G, "27.3.1.2", "guest CS base bits 63:32 must be 0",
                   lambda c: bool(c["GUEST_CS_BASE"] >> 32)),
        EntryCheck("guest_ldtr_ti", _G, "27.3.1.2", "a usable guest LDTR selector must have TI = 0",
                   lambda c: c.usable("LDTR") and bool(c["GUEST_LDTR_SELECTOR"] & 4)),
        EntryCheck("guest_ldtr_base", _G, "27.3.1.2", "a usable guest LDTR base must be canonical",
                   lambda c: c.usable("LDTR") and not is_canonical(c["GUEST_LDTR_BASE"], 48)),
    ]
    rows += [EntryCheck(f"guest_{seg.lower()}_base", _G, "27.3.1.2", f"a usable guest {seg} base must have bits "
                        "63:32 = 0", lambda c, seg=seg: c.usable(seg) and bool(c[f"GUEST_{seg}_BASE"] >> 32))
             for seg in ("SS", "DS", "ES")]
    rows += [EntryCheck(f"guest_{seg.lower()}_granularity", _G, "27.3.1.2", f"guest {seg} limit and G bit must agree",
                        lambda c, seg=seg: not _v86(c) and (seg in ("CS", "TR") or c.usable(seg))
                        and _g_rule(c[f"GUEST_{seg}_LIMIT"], c.ar(seg)))
             for seg in ("CS", "SS", "DS", "ES", "FS", "GS", "TR")]
    rows += [EntryCheck(f"guest_{seg.lower()}_present", _G, "27.3.1.2", f"a usable guest {seg} must be present "
                        "with S=1 and accessed", lambda c, seg=seg: not _v86(c) and c.usable(seg)
                        and c.ar(seg) & 0x91 != 0x91) for seg in ("DS", "ES", "FS", "GS")]
    rows += [
        # 27.3.1.3 descriptor-table registers
        EntryCheck("guest_gdtr_base", _G, "27.3.1.3", "guest GDTR base must be canonical", _canon("GUEST_GDTR_BASE")),
        EntryCheck("guest_idtr_base", _G, "27.3.1.3", "guest IDTR base must be canonical", _canon("GUEST_IDTR_BASE")),
        EntryCheck("guest_gdtr_limit", _G, "27.3.1.3", "guest GDTR limit bits 31:16 must be 0",
                   lambda c: bool(c["GUEST_GDTR_LIMIT"] >> 16)),
        EntryCheck("guest_idtr_limit", _G, "27.3.1.3", "guest IDTR limit bits 31:16 must be 0",
                   lambda c: bool(c["GUEST_IDTR_LIMIT"] >> 16)),
        # 27.3.1.4 RIP and RFLAGS
        EntryCheck("guest_rip", _G, "27.3.1.4", "guest RIP must be canonical in 64-bit code, fit 32 bits otherwise",
                   lambda c: not is_canonical(c["GUEST_RIP"], 48) if c.ia32e_guest and c.ar("CS") & 1 << 13
                   else bool(c["GUEST_RIP"] >> 32)),
        EntryCheck("guest_rflags_reserved", _G, "27.3.1.4", "guest RFLAGS bits 63:22, 15, 5, 3 must be 0 and bit 1 "
                   "must be 1", lambda c: bool(c["GUEST_RFLAGS"] & ~0x3F7FD7 | (~c["GUEST_RFLAGS"] & 2))),
        EntryCheck("guest_rflags_vm", _G, "27.3.1.4", "guest RFLAGS.VM must be 0 in IA-32e mode or with CR0.PE=0",
                   lambda c: _v86(c) and (c.ia32e_guest or not c["GUEST_CR0"] & CR0_PE)),
        EntryCheck("guest_rflags_if_for_interrupt", _G, "27.3.1.4",
                   "injecting an external interrupt requires guest RFLAGS.IF=1",
                   lambda c: _inj(c, 0) and not c["GUEST_RFLAGS"] & RFLAGS_IF),
        # 27.3.1.5 non-register state
        EntryCheck("guest_activity_state", _G, "27.3.1.5", "guest activity state must be one IA32_VMX_MISC reports",
                   lambda c: c["GUEST_ACTIVITY_STATE"] not in c.caps.activity_states),
        EntryCheck("guest_hlt_needs_ss_dpl0", _G, "27.3.1.5", "guest activity state HLT requires SS.DPL=0",
                   lambda c: c["GUEST_ACTIVITY_STATE"] == 1 and bool(c.ar("SS") & 0x60)),
        EntryCheck("guest_interruptibility_reserved", _G, "27.3.1.5",
                   "guest interruptibility bits 31:5 and 4 (enclave) must be 0",
                   lambda c: bool(c["GUEST_INTERRUPTIBILITY_INFO"] & ~0xF)),
        EntryCheck("guest_sti_and_mov_ss", _G, "27.3.1.5", "blocking by STI and by MOV SS must not both be set",
                   lambda c: c["GUEST_INTERRUPTIBILITY_INFO"] & 3 == 3),
        EntryCheck("guest_sti_needs_if", _G, "27.3.1.5", "blocking by STI requires guest RFLAGS.IF=1",
                   lambda c: bool(c["GUEST_INTERRUPTIBILITY_INFO"] & 1 and not c["GUEST_RFLAGS"] & RFLAGS_IF)),
        EntryCheck("guest_blocking_needs_active", _G, "27.3.1.5", "blocking by STI or MOV SS requires the active "
                   "state", lambda c: bool(c["GUEST_INTERRUPTIBILITY_INFO"] & 3) and c["GUEST_ACTIVITY_STATE"] != 0),
        EntryCheck("guest_smi_blocking", _G, "27.3.1.5", "blocking by SMI requires entry to SMM",
                   lambda c: bool(c["GUEST_INTERRUPTIBILITY_INFO"] & 4)),
        EntryCheck("guest_interrupt_injection_blocked", _G, "27.3.1.5", "injecting an external interrupt requires "
                   "no blocking by STI or MOV SS", lambda c: _inj(c, 0) and bool(c["GUEST_INTERRUPTIBILITY_INFO"] & 3)),
        EntryCheck("guest_sipi_no_injection", _G, "27.3.1.5", "no event may be injected into wait-for-SIPI",
                   lambda c: c["GUEST_ACTIVITY_STATE"] == 3 and bool(c["VM_ENTRY_INTR_INFO_FIELD"] >> 31)),
        EntryCheck("guest_pending_debug_reserved", _G, "27.3.1.5",
                   "guest pending debug exceptions bits 63:17, 15, 13, 11:4 must be 0",
                   lambda c: bool(c["GUEST_PENDING_DBG_EXCEPTIONS"] & ~0x1500F)),
        EntryCheck("guest_vmcs_link_pointer", _G, "27.3.1.5", "the VMCS link pointer must be FFFFFFFF_FFFFFFFFH "
                   "(hvdbg has no VMCS shadowing)", lambda c: c["VMCS_LINK_POINTER"] != 0xFFFF_FFFF_FFFF_FFFF,
                   QUAL_VMCS_LINK_POINTER),
    ]
    return rows


def _inj(c: Ctx, kind: int) -> bool:
    info = c["VM_ENTRY_INTR_INFO_FIELD"]
    return bool(info >> 31) and info >> 8 & 7 == kind


def _v86(c: Ctx) -> bool:
    return bool(c["GUEST_RFLAGS"] & RFLAGS_VM)


def _needs_error_code(c: Ctx) -> bool:
    protected = not c.unrestricted or bool(c["GUEST_CR0"] & CR0_PE)
    return protected and _inj(c, 3) and c["VM_ENTRY_INTR_INFO_FIELD"] & 0xFF in (8, 10, 11, 12, 13, 14, 17)


ENTRY_CHECKS: tuple[EntryCheck, ...] = tuple(_rows())
BY_NAME: dict[str, EntryCheck] = {check.name: check for check in ENTRY_CHECKS}
assert len(BY_NAME) == len(ENTRY_CHECKS), "entry check names must be unique"


@dataclass(frozen=True)
class EntryVerdict:
    """The result of the VM-entry checks: the failing checks of the first failing kind."""

    failures: tuple[EntryCheck, ...] = ()

    @property
    def kind(self) -> CheckKind | None:
        return self.failures[0].kind if self.failures else None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def vm_instruction_error(self) -> int | None:
        return {CheckKind.CONTROL: 7, CheckKind.HOST: 8}.get(self.kind) if self.kind else None

    @property
    def exit_reason(self) -> int | None:
        return EXIT_INVALID_GUEST_STATE if self.kind is CheckKind.GUEST else None

    @property
    def qualification(self) -> int:
        return self.failures[0].qualification if self.failures else 0

    @property
    def why(self) -> str:
        if not self.failures:
            return ""
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        return f"VM entry failed: {self.failures[0].message}{more}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(check.name for check in self.failures)


def check_vm_entry(vmcs: Mapping[str, int], caps: VmxCapabilities, *, host_ia32e: bool = True,
                   memory: PhysicalMemory | None = None) -> EntryVerdict:
    """Run the SDM 27.2 / 27.3 checks in order: controls, host state, guest state."""
    ctx = Ctx(vmcs, caps, host_ia32e, memory)
    for kind in (CheckKind.CONTROL, CheckKind.HOST, CheckKind.GUEST):
        failed = tuple(check for check in ENTRY_CHECKS if check.kind is kind and check.failed(ctx))
        if failed:
            return EntryVerdict(failed)
    return EntryVerdict()


