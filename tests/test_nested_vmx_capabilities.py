"""The VMX capability MSRs, IA32_FEATURE_CONTROL and the CR0/CR4 fixed bits, against SDM
Vol. 3D Appendix A and SDM 24.7 / 24.8."""

from __future__ import annotations

import pytest

from hvdbg.vmx import capabilities as caps
from hvdbg.vmx.capabilities import DEFAULT_CAPABILITIES as C, ControlCapability, FeatureControl, VmxCapabilities
from hvdbg.vmx.controls import PIN_BASED, PRIMARY_PROCESSOR_BASED, SECONDARY_PROCESSOR_BASED, VM_ENTRY, VM_EXIT
from hvdbg.vmx.fields import BY_NAME, split_encoding


def test_every_capability_msr_is_reported():
    assert set(C.msrs()) == set(caps.VMX_MSRS)
    assert all(index in caps.MSR_NAMES for index in caps.VMX_MSRS)


def test_basic_reports_revision_size_memory_type_and_true_controls():
    basic = C.basic
    assert basic & 0x7FFFFFFF == caps.REVISION_ID and not basic >> 31 & 1      # A.1: bit 31 is 0
    assert basic >> 32 & 0x1FFF == 4096                                         # region size
    assert not basic >> 48 & 1                                                  # no 32-bit address limit
    assert basic >> 50 & 0xF == 6                                               # write-back
    assert basic >> 54 & 1 and basic >> 55 & 1


@pytest.mark.parametrize("name,default1", [("pin", caps.PIN_DEFAULT1), ("primary", caps.PROC_DEFAULT1),
                                           ("exit", caps.EXIT_DEFAULT1), ("entry", caps.ENTRY_DEFAULT1)])
def test_default1_controls_must_be_1_in_the_plain_msrs(name, default1):
    cap = C.control(name, true_ctls=False)
    assert cap.must_be_1 == default1
    assert cap.may_be_1 & default1 == default1          # what must be 1 may be 1


def test_true_msrs_let_the_documented_default1_bits_be_0():
    # SDM A.3.2: CR3-load/store exiting; A.4: save debug controls; A.5: load debug controls
    assert not C.control("primary").must_be_1 & PRIMARY_PROCESSOR_BASED.mask("CR3_LOAD_EXITING")
    assert not C.control("exit").must_be_1 & VM_EXIT.mask("SAVE_DEBUG_CONTROLS")
    assert not C.control("entry").must_be_1 & VM_ENTRY.mask("LOAD_DEBUG_CONTROLS")
    assert C.control("pin").must_be_1 == caps.PIN_DEFAULT1
    # the TRUE_ MSRs' allowed-1 settings equal the plain ones (A.3.1)
    for name in ("pin", "primary", "exit", "entry"):
        assert C.control(name).may_be_1 == C.control(name, true_ctls=False).may_be_1


def test_emulated_controls_are_allowed_and_others_are_not():
    sec = C.control("secondary")
    assert sec.must_be_1 == 0
    assert sec.may_be_1 & SECONDARY_PROCESSOR_BASED.mask("ENABLE_EPT", "UNRESTRICTED_GUEST", "ENABLE_VPID")
    assert not sec.may_be_1 & SECONDARY_PROCESSOR_BASED.mask("VMCS_SHADOWING", "ENABLE_PML")
    assert not C.control("pin").may_be_1 & PIN_BASED.mask("POSTED_INTERRUPTS")
    assert not C.control("primary").may_be_1 & PRIMARY_PROCESSOR_BASED.mask("USE_TPR_SHADOW")


def test_control_capability_problem_names_the_bits():
    cap = ControlCapability.from_msr(C.msrs()[caps.IA32_VMX_TRUE_PINBASED_CTLS])
    assert cap.problem(caps.PIN_DEFAULT1, "pin") is None
    assert cap.problem(0, "pin-based controls") == "pin-based controls: bit(s) 1, 2, 4 must be 1"
    assert cap.problem(caps.PIN_DEFAULT1 | 1 << 7, "pin") == "pin: bit(s) 7 must be 0"
    assert cap.problem(caps.PIN_DEFAULT1 | 1 << 40, "pin") == "pin: bit(s) 40 must be 0"


def test_misc_reports_activity_states_cr3_targets_and_msr_list_size():
    misc = C.misc
    assert misc & 0x1F == 5 and misc >> 5 & 1
    assert misc >> 6 & 7 == 7                             # HLT, shutdown, wait-for-SIPI
    assert misc >> 16 & 0x1FF == 4
    assert C.max_msr_list == 512
    assert C.activity_states == {0, 1, 2, 3}
    assert not misc >> 29 & 1 and misc >> 30 & 1


def test_vmcs_enum_is_the_highest_supported_index():
    index = C.vmcs_enum >> 1 & 0x1FF
    supported = [split_encoding(BY_NAME[n].encoding).index for n in caps.SUPPORTED_FIELDS]
    assert index == max(supported)
    assert C.vmcs_enum & 1 == 0


def test_supported_fields_exclude_unemulated_features():
    assert "GUEST_RIP" in caps.SUPPORTED_FIELDS and "EPT_POINTER" in caps.SUPPORTED_FIELDS
    assert "VM_INSTRUCTION_ERROR" in caps.SUPPORTED_FIELDS
    for name in ("POSTED_INTR_NV", "PML_ADDRESS", "VMREAD_BITMAP", "GUEST_IA32_FRED_CONFIG", "TSC_MULTIPLIER"):
        assert name not in caps.SUPPORTED_FIELDS


def test_ept_vpid_cap_describes_the_ept_walker_and_invept_types():
    cap = C.ept_vpid_cap
    assert cap & caps.EPT_WALK_LENGTH_4 and cap & caps.EPT_MEMTYPE_WB and cap & caps.EPT_MEMTYPE_UC
    assert not cap & caps.EPT_ACCESSED_DIRTY
    assert [C.invept_type_supported(t) for t in range(4)] == [False, True, True, False]
    assert all(C.invvpid_type_supported(t) for t in range(4)) and not C.invvpid_type_supported(4)
    no_vpid = VmxCapabilities(emulated={**caps.EMULATED, "secondary": ("ENABLE_EPT",)})
    assert not no_vpid.ept_vpid_cap & caps.INVVPID_SUPPORTED
    assert not no_vpid.invvpid_type_supported(1)


def test_cr_fixed_msrs():
    assert C.cr0_fixed0 == 0x80000021 and C.cr0_fixed1 == 0xFFFFFFFF
    assert C.cr4_fixed0 == 0x2000 and C.cr4_fixed1 & 0x2000
    assert not C.cr4_fixed1 & 1 << 15


@pytest.mark.parametrize("cr0,unrestricted,expected", [
    (0x80000031, False, None),
    (0x80000011, False, "CR0.NE must be 1 in VMX operation (IA32_VMX_CR0_FIXED0, SDM A.7)"),
    (0x00000031, False, "CR0.PG must be 1 in VMX operation (IA32_VMX_CR0_FIXED0, SDM A.7)"),
    (0x00000030, True, None),
    (0x00000010, True, "CR0.NE must be 1 in VMX operation (IA32_VMX_CR0_FIXED0, SDM A.7)"),
    (0x1_80000031, False, "CR0 bit 32 must be 0 in VMX operation (IA32_VMX_CR0_FIXED1, SDM A.7)"),
])
def test_cr0_fixed_bits(cr0, unrestricted, expected):
    assert C.cr0_problem(cr0, unrestricted_guest=unrestricted) == expected


def test_cr4_fixed_bits():
    assert C.cr4_problem(0x2020) is None
    assert C.cr4_problem(0x20) == "CR4.VMXE must be 1 in VMX operation (IA32_VMX_CR4_FIXED0, SDM A.8)"
    assert C.cr4_problem(0x2000 | 1 << 15) == "CR4 bit 15 must be 0 in VMX operation (IA32_VMX_CR4_FIXED1, SDM A.8)"


def test_read_only_fields_are_writable_only_with_misc_bit_29():
    assert C.field_writable("GUEST_RIP") and not C.field_writable("VM_EXIT_REASON")
    anyfield = VmxCapabilities(vmwrite_any_field=True)
    assert anyfield.field_writable("VM_EXIT_REASON") and anyfield.misc >> 29 & 1


class TestFeatureControl:
    def test_writable_until_locked_then_gp(self):
        fc = FeatureControl()
        assert fc.vmxon_problem() == "IA32_FEATURE_CONTROL lock bit (0) is clear"
        assert fc.write(caps.FEATURE_CONTROL_VMX_OUTSIDE_SMX) is None
        assert fc.vmxon_problem() == "IA32_FEATURE_CONTROL lock bit (0) is clear"
        assert fc.write(caps.FEATURE_CONTROL_VMX_OUTSIDE_SMX | caps.FEATURE_CONTROL_LOCK) is None
        assert fc.vmxon_problem() is None
        assert fc.write(0) == "IA32_FEATURE_CONTROL is locked (bit 0) until reset"
        assert fc.value == 5

    def test_locked_without_vmx_outside_smx_forbids_vmxon(self):
        fc = FeatureControl()
        fc.write(caps.FEATURE_CONTROL_LOCK)
        assert fc.vmxon_problem() == "IA32_FEATURE_CONTROL bit 2 (enable VMX outside SMX) is clear"

    def test_smx_and_reserved_bits_gp(self):
        fc = FeatureControl()
        assert fc.write(caps.FEATURE_CONTROL_VMX_INSIDE_SMX) is not None
        assert fc.write(1 << 20) is not None and fc.value == 0
