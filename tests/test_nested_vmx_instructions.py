"""The VMX instructions (SDM ch. 31) and the VM-entry checks (SDM ch. 27) on synthetic
state: a guest hypervisor's memory as a RegionMemory, its VMCS region in it."""

from __future__ import annotations

import random

import pytest

from hvdbg.arch.physmem import RegionMemory
from hvdbg.vmx import instructions as vi
from hvdbg.vmx.capabilities import DEFAULT_CAPABILITIES as CAPS, FEATURE_CONTROL_LOCK, FEATURE_CONTROL_VMX_OUTSIDE_SMX
from hvdbg.vmx.capabilities import SUPPORTED_FIELDS
from hvdbg.vmx.entry_checks import BY_NAME as CHECKS, check_vm_entry
from hvdbg.vmx.fields import BY_NAME as FIELDS
from hvdbg.vmx.instructions import ProcessorMode, Result, VmInstructionError as E, VmxState
from hvdbg.vmx.vmcs import LaunchState
from hvdbg.vmx.vmcs_region import VmcsRegion

VMXON, VMCS = 0x1000, 0x2000
MODE = ProcessorMode()


def baseline() -> dict[str, int]:
    """A 64-bit guest and host that pass every VM-entry check."""
    seg = {"CS": 0xA09B, "SS": 0xC093, "DS": 0xC093, "ES": 0xC093, "FS": 0xC093, "GS": 0xC093,
           "TR": 0x8B, "LDTR": 0x10000}
    v = {name: 0 for name in FIELDS}
    for s, ar in seg.items():
        v[f"GUEST_{s}_AR_BYTES"] = ar
        v[f"GUEST_{s}_LIMIT"] = 0xFFFFFFFF if s not in ("TR", "LDTR") else 0x67
    v.update(GUEST_CS_SELECTOR=8, GUEST_SS_SELECTOR=0x10, GUEST_TR_SELECTOR=0x18,
             PIN_BASED_VM_EXEC_CONTROL=CAPS.control("pin").must_be_1,
             CPU_BASED_VM_EXEC_CONTROL=CAPS.control("primary").must_be_1 | 1 << 31 | 1 << 7,
             SECONDARY_VM_EXEC_CONTROL=0x2, EPT_POINTER=0x5000 | 0x1E,
             VM_EXIT_CONTROLS=CAPS.control("exit").must_be_1 | 1 << 9,
             VM_ENTRY_CONTROLS=CAPS.control("entry").must_be_1 | 1 << 9,
             HOST_CR0=0x80000031, HOST_CR4=0x2020, HOST_CR3=0x3000, HOST_CS_SELECTOR=8, HOST_SS_SELECTOR=0x10,
             HOST_TR_SELECTOR=0x18, HOST_RIP=0x100000,
             GUEST_CR0=0x80000031, GUEST_CR4=0x2020, GUEST_CR3=0x4000, GUEST_RFLAGS=2, GUEST_RIP=0x200000,
             VMCS_LINK_POINTER=0xFFFF_FFFF_FFFF_FFFF)
    return v


def machine() -> tuple[VmxState, RegionMemory]:
    mem = RegionMemory()
    mem.add_region(0, bytearray(0x10000))
    state = VmxState()
    state.feature_control.write(FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX)
    VmcsRegion(mem, VMXON).initialize(CAPS.revision_id)
    VmcsRegion(mem, VMCS).initialize(CAPS.revision_id)
    return state, mem


def loaded(fields: dict[str, int] | None = None) -> tuple[VmxState, RegionMemory]:
    state, mem = machine()
    assert vi.vmxon(state, MODE, mem, VMXON).result is Result.SUCCEED
    assert vi.vmclear(state, MODE, mem, VMCS).result is Result.SUCCEED
    assert vi.vmptrld(state, MODE, mem, VMCS).result is Result.SUCCEED
    region = VmcsRegion(mem, VMCS)
    for name, value in (baseline() if fields is None else fields).items():
        region.write(name, value)
    return state, mem


# -- VMXON / VMXOFF -------------------------------------------------------------------------

def test_vmxon_succeeds_and_sets_no_current_vmcs():
    state, mem = machine()
    out = vi.vmxon(state, MODE, mem, VMXON)
    assert out.result is Result.SUCCEED and out.rflags(0x8D7) == 2
    assert state.in_vmx_operation and state.vmxon_pointer == VMXON and not state.current_valid


@pytest.mark.parametrize("mode,vector", [
    (ProcessorMode(cr4=0x20), vi.UD), (ProcessorMode(cr0=0x30), vi.UD), (ProcessorMode(rflags=0x20002), vi.UD),
    (ProcessorMode(cs_long=False), vi.UD), (ProcessorMode(cpl=3), vi.GP),
    (ProcessorMode(cr0=0x80000011), vi.GP)])
def test_vmxon_exceptions(mode, vector):
    state, mem = machine()
    out = vi.vmxon(state, mode, mem, VMXON)
    assert out.result is Result.EXCEPTION and out.vector == vector and not state.in_vmx_operation


def test_vmxon_needs_locked_feature_control():
    state, mem = machine()
    state.feature_control.value = 0
    assert vi.vmxon(state, MODE, mem, VMXON).vector == vi.GP


@pytest.mark.parametrize("pointer", [VMXON + 8, 1 << 45, VMCS + 0x100000])
def test_vmxon_bad_pointer_or_revision_fails_invalid(pointer):
    state, mem = machine()
    out = vi.vmxon(state, MODE, mem, pointer)
    assert out.result is Result.FAIL_INVALID and out.rflags(2) == 3


def test_vmxon_in_root_is_vmfail_15_and_in_non_root_exits():
    state, mem = loaded()
    out = vi.vmxon(state, MODE, mem, VMXON)
    assert out.error is E.VMXON_IN_ROOT and out.rflags(2) == 0x42
    assert VmcsRegion(mem, VMCS).read("VM_INSTRUCTION_ERROR") == 15
    state.non_root = True
    assert vi.vmxon(state, MODE, mem, VMXON).exit_reason == 27


def test_vmxoff_leaves_vmx_operation_then_ud():
    state, mem = loaded()
    assert vi.vmxoff(state, MODE, mem).result is Result.SUCCEED and not state.in_vmx_operation
    assert vi.vmxoff(state, MODE, mem).vector == vi.UD
    assert vi.vmptrld(state, MODE, mem, VMCS).vector == vi.UD


# -- VMCLEAR / VMPTRLD / VMPTRST -------------------------------------------------------------

def test_vmclear_and_vmptrld_failures():
    state, mem = machine()
    vi.vmxon(state, MODE, mem, VMXON)
    assert vi.vmclear(state, MODE, mem, VMCS + 4).result is Result.FAIL_INVALID    # no current VMCS yet
    assert vi.vmptrld(state, MODE, mem, VMCS).result is Result.SUCCEED
    assert vi.vmclear(state, MODE, mem, VMCS + 4).error is E.VMCLEAR_INVALID_ADDRESS
    assert vi.vmclear(state, MODE, mem, VMXON).error is E.VMCLEAR_VMXON_POINTER
    assert vi.vmptrld(state, MODE, mem, 1 << 41).error is E.VMPTRLD_INVALID_ADDRESS
    assert vi.vmptrld(state, MODE, mem, VMXON).error is E.VMPTRLD_VMXON_POINTER
    assert vi.vmptrld(state, MODE, mem, 0x8000).error is E.VMPTRLD_INCORRECT_REVISION_ID
    VmcsRegion(mem, 0x9000).initialize(CAPS.revision_id, shadow=True)
    assert vi.vmptrld(state, MODE, mem, 0x9000).error is E.VMPTRLD_INCORRECT_REVISION_ID
    assert vi.vmptrld(state, MODE, mem, 0x100000).error is E.VMPTRLD_INCORRECT_REVISION_ID   # unbacked
    assert state.current_vmcs == VMCS


def test_vmptrst_and_vmclear_of_current():
    state, mem = loaded()
    assert vi.vmptrst(state, MODE, mem).value == VMCS
    assert vi.vmclear(state, MODE, mem, VMCS).result is Result.SUCCEED
    assert vi.vmptrst(state, MODE, mem).value == vi.INVALID_POINTER
    assert vi.vmptrst(state, ProcessorMode(cpl=1), mem).vector == vi.GP


# -- VMREAD / VMWRITE -------------------------------------------------------------------------

def test_vmwrite_vmread_round_trip_and_widths():
    state, mem = loaded()
    assert vi.vmwrite(state, MODE, mem, 0x681E, 0x1234_5678_9ABC).result is Result.SUCCEED
    assert vi.vmread(state, MODE, mem, 0x681E).value == 0x1234_5678_9ABC
    assert vi.vmwrite(state, MODE, mem, 0x0802, 0x12345).result is Result.SUCCEED      # 16-bit field
    assert vi.vmread(state, MODE, mem, 0x0802).value == 0x2345
    assert vi.vmwrite(state, MODE, mem, 0x201B, 0xAB).result is Result.SUCCEED         # EPTP high
    assert vi.vmread(state, MODE, mem, 0x201A).value >> 32 == 0xAB
    compat32 = ProcessorMode(efer=0, cs_long=False, cr4=0x2000)
    assert vi.vmread(state, compat32, mem, 0x201A).value == vi.vmread(state, MODE, mem, 0x201A).value & 0xFFFFFFFF


@pytest.mark.parametrize("encoding", [0x1, 0x6C1C, 0x2016, 1 << 32, 0x9999])
def test_vmread_unsupported_component_is_error_12(encoding):
    state, mem = loaded()
    assert vi.vmread(state, MODE, mem, encoding).error is E.UNSUPPORTED_VMCS_COMPONENT
    assert vi.vmwrite(state, MODE, mem, encoding, 0).error is E.UNSUPPORTED_VMCS_COMPONENT


def test_vmwrite_read_only_is_error_13_and_no_current_is_fail_invalid():
    state, mem = loaded()
    assert vi.vmwrite(state, MODE, mem, 0x4402, 1).error is E.VMWRITE_READ_ONLY_COMPONENT
    vi.vmclear(state, MODE, mem, VMCS)
    assert vi.vmread(state, MODE, mem, 0x681E).result is Result.FAIL_INVALID
    assert vi.vmwrite(state, MODE, mem, 0x681E, 0).result is Result.FAIL_INVALID


def test_vmread_in_non_root_exits_with_reason_23():
    state, mem = loaded()
    state.non_root = True
    assert vi.vmread(state, MODE, mem, 0x681E).exit_reason == 23


# -- VMLAUNCH / VMRESUME ---------------------------------------------------------------------

def test_baseline_enters_and_marks_launched():
    state, mem = loaded()
    assert check_vm_entry(baseline(), CAPS).ok
    out = vi.vmlaunch(state, MODE, mem)
    assert out.result is Result.VM_ENTRY and state.non_root
    assert VmcsRegion(mem, VMCS).launch_state is LaunchState.LAUNCHED
    state.non_root = False
    assert vi.vmlaunch(state, MODE, mem).error is E.VMLAUNCH_NONCLEAR_VMCS
    assert vi.vmresume(state, MODE, mem).result is Result.VM_ENTRY


def test_vmresume_of_clear_vmcs_and_mov_ss_blocking():
    state, mem = loaded()
    assert vi.vmresume(state, MODE, mem).error is E.VMRESUME_NONLAUNCHED_VMCS
    assert vi.vmlaunch(state, ProcessorMode(blocking_by_mov_ss=True), mem).error is E.ENTRY_EVENTS_BLOCKED_BY_MOV_SS


def test_control_host_and_guest_failures_are_reported_as_the_hardware_does():
    state, mem = loaded({**baseline(), "VIRTUAL_PROCESSOR_ID": 0, "SECONDARY_VM_EXEC_CONTROL": 0x22})
    out = vi.vmlaunch(state, MODE, mem)
    assert out.error is E.ENTRY_INVALID_CONTROL_FIELD and out.verdict.names == ("vpid_nonzero",)
    state, mem = loaded({**baseline(), "HOST_TR_SELECTOR": 0})
    assert vi.vmlaunch(state, MODE, mem).error is E.ENTRY_INVALID_HOST_STATE_FIELD
    state, mem = loaded({**baseline(), "GUEST_CR0": 0x80000020, "SECONDARY_VM_EXEC_CONTROL": 0x82})
    out = vi.vmlaunch(state, MODE, mem)
    assert out.result is Result.ENTRY_FAILURE and out.exit_reason == 33 | 1 << 31
    assert "guest CR0.PG=1 requires CR0.PE=1, SDM 27.3.1.1" in out.why
    assert VmcsRegion(mem, VMCS).read("VM_EXIT_REASON") == 33 | 1 << 31
    assert VmcsRegion(mem, VMCS).launch_state is LaunchState.CLEAR


# one broken field (or two) per check: each must be reported by name
BREAKS: dict[str, dict[str, int]] = {
    "pin_reserved": {"PIN_BASED_VM_EXEC_CONTROL": 0},
    "primary_reserved": {"CPU_BASED_VM_EXEC_CONTROL": 1 << 31 | 1 << 21 | 0x04006172},
    "secondary_reserved": {"SECONDARY_VM_EXEC_CONTROL": 0x2 | 1 << 14},
    "cr3_target_count": {"CR3_TARGET_COUNT": 5},
    "io_bitmap_a": {"CPU_BASED_VM_EXEC_CONTROL": 0x84006172 | 1 << 25, "IO_BITMAP_A": 0x1001},
    "io_bitmap_b": {"CPU_BASED_VM_EXEC_CONTROL": 0x84006172 | 1 << 25, "IO_BITMAP_B": 1 << 44},
    "msr_bitmap": {"CPU_BASED_VM_EXEC_CONTROL": 0x84006172 | 1 << 28, "MSR_BITMAP": 0x10},
    "virtual_nmis_need_nmi_exiting": {"PIN_BASED_VM_EXEC_CONTROL": 0x16 | 1 << 5},
    "nmi_window_needs_virtual_nmis": {"CPU_BASED_VM_EXEC_CONTROL": 0x84006172 | 1 << 22},
    "apic_access_address": {"SECONDARY_VM_EXEC_CONTROL": 0x3, "APIC_ACCESS_ADDR": 0x123},
    "vpid_nonzero": {"SECONDARY_VM_EXEC_CONTROL": 0x22},
    "eptp_valid": {"EPT_POINTER": 0x5000 | 0x1F},
    "unrestricted_needs_ept": {"SECONDARY_VM_EXEC_CONTROL": 0x80},
    "exit_reserved": {"VM_EXIT_CONTROLS": 1 << 9},
    "save_timer_needs_timer": {"VM_EXIT_CONTROLS": 0x36DFB | 1 << 9 | 1 << 22},
    "exit_msr_store_address": {"VM_EXIT_MSR_STORE_COUNT": 1, "VM_EXIT_MSR_STORE_ADDR": 8},
    "exit_msr_load_address": {"VM_EXIT_MSR_LOAD_COUNT": 1, "VM_EXIT_MSR_LOAD_ADDR": 4},
    "entry_reserved": {"VM_ENTRY_CONTROLS": 0x11FB | 1 << 9 | 1 << 10},
    "injection_reserved_bits": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 1 << 20},
    "injection_type": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 1 << 8},
    "injection_nmi_vector": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 2 << 8 | 3},
    "injection_exception_vector": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 3 << 8 | 40},
    "injection_error_code": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 3 << 8 | 14},
    "injection_instruction_length": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 4 << 8 | 0x80,
                                     "VM_ENTRY_INSTRUCTION_LEN": 16},
    "entry_msr_load_address": {"VM_ENTRY_MSR_LOAD_COUNT": 2, "VM_ENTRY_MSR_LOAD_ADDR": 1 << 50},
    "host_cr0_fixed": {"HOST_CR0": 0x80000011},
    "host_cr4_fixed": {"HOST_CR4": 0x20},
    "host_cr3_width": {"HOST_CR3": 1 << 41},
    "host_sysenter_esp": {"HOST_IA32_SYSENTER_ESP": 1 << 50},
    "host_sysenter_eip": {"HOST_IA32_SYSENTER_EIP": 1 << 47},
    "host_pat": {"VM_EXIT_CONTROLS": 0x36DFB | 1 << 9 | 1 << 19, "HOST_IA32_PAT": 2},
    "host_efer": {"VM_EXIT_CONTROLS": 0x36DFB | 1 << 9 | 1 << 21, "HOST_IA32_EFER": 0x100},
    "host_cs_nonzero": {"HOST_CS_SELECTOR": 0},
    "host_tr_nonzero": {"HOST_TR_SELECTOR": 0},
    "host_selector_rpl_ti": {"HOST_DS_SELECTOR": 0x14},
    "host_fs_base": {"HOST_FS_BASE": 0xAAAA_AAAA_AAAA_AAAA},
    "host_gs_base": {"HOST_GS_BASE": 1 << 60},
    "host_gdtr_base": {"HOST_GDTR_BASE": 1 << 60},
    "host_idtr_base": {"HOST_IDTR_BASE": 1 << 60},
    "host_tr_base": {"HOST_TR_BASE": 1 << 60},
    "guest_sysenter_esp": {"GUEST_SYSENTER_ESP": 1 << 60},
    "guest_sysenter_eip": {"GUEST_SYSENTER_EIP": 1 << 60},
    "guest_ldtr_ti": {"GUEST_LDTR_AR_BYTES": 0x82, "GUEST_LDTR_SELECTOR": 0x4},
    "guest_ldtr_base": {"GUEST_LDTR_AR_BYTES": 0x82, "GUEST_LDTR_SELECTOR": 0x20, "GUEST_LDTR_BASE": 1 << 60},
    "guest_ss_base": {"GUEST_SS_BASE": 1 << 32},
    "guest_ds_base": {"GUEST_DS_BASE": 1 << 40},
    "guest_es_base": {"GUEST_ES_BASE": 1 << 44},
    "injection_error_code_reserved": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 3 << 8 | 1 << 11 | 13,
                                      "VM_ENTRY_EXCEPTION_ERROR_CODE": 1 << 16},
    "host_ss_nonzero": None,   # needs a 32-bit host: tested below
    "host_size_matches_cpu": {"VM_EXIT_CONTROLS": 0x36DFB},
    "host_size_0_no_ia32e_guest": None,
    "host_64_needs_pae": {"HOST_CR4": 0x2000},
    "host_rip": {"HOST_RIP": 1 << 48},
    "guest_cr0_fixed": {"GUEST_CR0": 0x80000011},
    "guest_cr0_pg_needs_pe": {"GUEST_CR0": 0x80000020, "SECONDARY_VM_EXEC_CONTROL": 0x82},
    "guest_cr4_fixed": {"GUEST_CR4": 0x20},
    "guest_ia32e_needs_paging": {"GUEST_CR4": 0x2000},
    "guest_pcide_needs_ia32e": {"VM_ENTRY_CONTROLS": 0x11FB, "GUEST_CR4": 0x2000 | 1 << 17,
                                "GUEST_CS_AR_BYTES": 0xC09B},
    "guest_cr3_width": {"GUEST_CR3": 1 << 40},
    "guest_dr7": {"VM_ENTRY_CONTROLS": 0x11FF | 1 << 9, "GUEST_DR7": 1 << 32},
    "guest_pat": {"VM_ENTRY_CONTROLS": 0x11FB | 1 << 9 | 1 << 14, "GUEST_IA32_PAT": 3},
    "guest_efer": {"VM_ENTRY_CONTROLS": 0x11FB | 1 << 9 | 1 << 15, "GUEST_IA32_EFER": 0},
    "guest_tr_ti": {"GUEST_TR_SELECTOR": 0x1C},
    "guest_cs_type": {"GUEST_CS_AR_BYTES": 0xA093},
    "guest_cs_present": {"GUEST_CS_AR_BYTES": 0xA01B},
    "guest_ss_rpl": {"GUEST_SS_SELECTOR": 0x13},
    "guest_ss_type": {"GUEST_SS_AR_BYTES": 0xC09B},
    "guest_cs_db_in_64bit": {"GUEST_CS_AR_BYTES": 0xE09B},
    "guest_tr_type": {"GUEST_TR_AR_BYTES": 0x89},
    "guest_ldtr_type": {"GUEST_LDTR_AR_BYTES": 0x83},
    "guest_tr_base": {"GUEST_TR_BASE": 1 << 60},
    "guest_fs_base": {"GUEST_FS_BASE": 1 << 60},
    "guest_gs_base": {"GUEST_GS_BASE": 1 << 60},
    "guest_cs_base": {"GUEST_CS_BASE": 1 << 32, "VM_ENTRY_CONTROLS": 0x11FB,
                      "GUEST_CS_AR_BYTES": 0xC09B},
    **{f"guest_{s}_granularity": {f"GUEST_{s.upper()}_LIMIT": 0x12345} for s in ("cs", "ss", "ds", "es", "fs", "gs")},
    "guest_tr_granularity": {"GUEST_TR_LIMIT": 0x100000},
    **{f"guest_{s}_present": {f"GUEST_{s.upper()}_AR_BYTES": 0xC092} for s in ("ds", "es", "fs", "gs")},
    "guest_gdtr_base": {"GUEST_GDTR_BASE": 1 << 48},
    "guest_idtr_base": {"GUEST_IDTR_BASE": 1 << 48},
    "guest_gdtr_limit": {"GUEST_GDTR_LIMIT": 1 << 16},
    "guest_idtr_limit": {"GUEST_IDTR_LIMIT": 1 << 16},
    "guest_rip": {"GUEST_RIP": 1 << 47},
    "guest_rflags_reserved": {"GUEST_RFLAGS": 0},
    "guest_rflags_vm": {"GUEST_RFLAGS": 0x20002},
    "guest_rflags_if_for_interrupt": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 0x20},
    "guest_activity_state": {"GUEST_ACTIVITY_STATE": 4},
    "guest_hlt_needs_ss_dpl0": {"GUEST_ACTIVITY_STATE": 1, "GUEST_SS_AR_BYTES": 0xC0F3,
                                "GUEST_SS_SELECTOR": 0x13, "GUEST_CS_SELECTOR": 0xB},
    "guest_interruptibility_reserved": {"GUEST_INTERRUPTIBILITY_INFO": 1 << 5},
    "guest_sti_and_mov_ss": {"GUEST_INTERRUPTIBILITY_INFO": 3, "GUEST_RFLAGS": 0x202},
    "guest_sti_needs_if": {"GUEST_INTERRUPTIBILITY_INFO": 1},
    "guest_blocking_needs_active": {"GUEST_INTERRUPTIBILITY_INFO": 2, "GUEST_ACTIVITY_STATE": 1},
    "guest_smi_blocking": {"GUEST_INTERRUPTIBILITY_INFO": 4},
    "guest_interrupt_injection_blocked": {"VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 0x20,
                                          "GUEST_INTERRUPTIBILITY_INFO": 2, "GUEST_RFLAGS": 0x202},
    "guest_sipi_no_injection": {"GUEST_ACTIVITY_STATE": 3, "VM_ENTRY_INTR_INFO_FIELD": 1 << 31 | 2 << 8 | 2},
    "guest_pending_debug_reserved": {"GUEST_PENDING_DBG_EXCEPTIONS": 1 << 4},
    "guest_vmcs_link_pointer": {"VMCS_LINK_POINTER": 0},
}


def test_every_check_has_a_break_case():
    assert set(BREAKS) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(n for n, b in BREAKS.items() if b is not None))
def test_each_entry_check_is_reported_by_name(name):
    verdict = check_vm_entry({**baseline(), **BREAKS[name]}, CAPS)
    assert name in verdict.names, verdict.why
    assert verdict.kind is CHECKS[name].kind
    assert CHECKS[name].section in verdict.why or name != verdict.names[0]


def test_32_bit_host_checks():
    v = {**baseline(), "VM_EXIT_CONTROLS": 0x36DFB, "HOST_SS_SELECTOR": 0}
    assert "host_ss_nonzero" in check_vm_entry(v, CAPS, host_ia32e=False).names
    assert "host_size_0_no_ia32e_guest" in check_vm_entry(v, CAPS, host_ia32e=False).names


# -- INVEPT / INVVPID / VMCALL ---------------------------------------------------------------

def test_invept_and_invvpid():
    state, mem = loaded()
    ok = vi.invept(state, MODE, mem, 1, 0x501E)
    assert ok.result is Result.SUCCEED and ok.invalidation.eptp == 0x5000
    assert vi.invept(state, MODE, mem, 2, 0).invalidation.scope == "all-context"
    for kind, desc in ((0, 0), (3, 0), (1, 0x501E | 1 << 64), (1, 0x5019)):
        assert vi.invept(state, MODE, mem, kind, desc).error is E.INVALID_INVEPT_INVVPID_OPERAND
    assert vi.invvpid(state, MODE, mem, 0, 1 | 0x1000 << 64).invalidation.address == 0x1000
    assert vi.invvpid(state, MODE, mem, 2, 0).result is Result.SUCCEED
    for kind, desc in ((1, 0), (0, 1 | 1 << 111), (1, 1 | 1 << 20), (4, 1)):
        assert vi.invvpid(state, MODE, mem, kind, desc).error is E.INVALID_INVEPT_INVVPID_OPERAND
    state.non_root = True
    assert vi.invept(state, MODE, mem, 1, 0).exit_reason == 50


def test_vmcall():
    state, mem = machine()
    assert vi.vmcall(state, MODE, mem).vector == vi.UD
    state, mem = loaded()
    assert vi.vmcall(state, MODE, mem).error is E.VMCALL_IN_ROOT
    state.non_root = True
    assert vi.vmcall(state, MODE, mem).exit_reason == 18


def test_error_numbers_are_the_sdm_table():
    assert [int(e) for e in E] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 22, 23, 24,
                                   25, 26, 28]


# -- fuzz: random VMWRITEs + VMLAUNCH ---------------------------------------------------------

INTERESTING = (0, 1, 2, 0xFFFF_FFFF, 1 << 31, 1 << 63, 0xFFFF_FFFF_FFFF_FFFF, 0x1000, 0x80000031, 0x2020)


def test_fuzz_vmwrite_then_vmlaunch_never_raises():
    rng = random.Random(18)
    names = sorted(FIELDS)
    outcomes = set()
    for _ in range(400):
        state, mem = loaded()
        for _ in range(rng.randint(1, 6)):
            name = rng.choice(names)
            encoding = FIELDS[name].encoding | (rng.random() < 0.1)
            value = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.getrandbits(64)
            out = vi.vmwrite(state, MODE, mem, encoding, value)
            assert out.result in (Result.SUCCEED, Result.FAIL_VALID)
            assert (out.result is Result.SUCCEED) == (name in SUPPORTED_FIELDS and FIELDS[name].group != "exit"
                                                      and (not encoding & 1 or FIELDS[name].has_high_access))
        out = vi.vmlaunch(state, MODE, mem)
        assert out.result in (Result.FAIL_VALID, Result.ENTRY_FAILURE, Result.VM_ENTRY)
        outcomes.add(out.result)
    assert len(outcomes) == 3
