"""Tests for exit reasons, exit-qualification builders/decoders and exit sentences.

Numbers are typed by hand from the Intel SDM: Appendix C Table C-1 (basic exit reasons),
25.9.1 (exit-reason field) and 28.2.1 Tables 28-2 .. 28-7 (exit qualifications).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvdbg.vmx.exits import ApicAccessQualification, ApicAccessType, CrAccessQualification, CrAccessType, DrAccessQualification, DrDirection, EptViolationQualification, ExitReason, ExitReasonField, IoDirection, IoOperand, IoQualification, IoSize, TaskSwitchQualification, TaskSwitchSource, apic_register_name

from hvdbg.vmx.exit_text import describe_exception, describe_exit
from hvdbg.vmx.controls import InterruptionInfo, InterruptionType

SDM_EXIT_REASONS = {
    "EXCEPTION_NMI": 0, "EXTERNAL_INTERRUPT": 1, "TRIPLE_FAULT": 2, "INIT_SIGNAL": 3, "SIPI": 4,
    "IO_SMI": 5, "OTHER_SMI": 6, "INTERRUPT_WINDOW": 7, "NMI_WINDOW": 8, "TASK_SWITCH": 9,
    "CPUID": 10, "GETSEC": 11, "HLT": 12, "INVD": 13, "INVLPG": 14, "RDPMC": 15, "RDTSC": 16,
    "RSM": 17, "VMCALL": 18, "VMCLEAR": 19, "VMLAUNCH": 20, "VMPTRLD": 21, "VMPTRST": 22,
    "VMREAD": 23, "VMRESUME": 24, "VMWRITE": 25, "VMXOFF": 26, "VMXON": 27, "CR_ACCESS": 28,
    "DR_ACCESS": 29, "IO_INSTRUCTION": 30, "MSR_READ": 31, "MSR_WRITE": 32, "INVALID_STATE": 33,
    "MSR_LOAD_FAIL": 34, "MWAIT_INSTRUCTION": 36, "MONITOR_TRAP_FLAG": 37, "MONITOR_INSTRUCTION": 39,
    "PAUSE_INSTRUCTION": 40, "MCE_DURING_VMENTRY": 41, "TPR_BELOW_THRESHOLD": 43, "APIC_ACCESS": 44,
    "EOI_INDUCED": 45, "GDTR_IDTR": 46, "LDTR_TR": 47, "EPT_VIOLATION": 48, "EPT_MISCONFIG": 49,
    "INVEPT": 50, "RDTSCP": 51, "PREEMPTION_TIMER": 52, "INVVPID": 53, "WBINVD": 54, "XSETBV": 55,
    "APIC_WRITE": 56, "RDRAND": 57, "INVPCID": 58, "VMFUNC": 59, "ENCLS": 60, "RDSEED": 61,
    "PML_FULL": 62, "XSAVES": 63, "XRSTORS": 64, "PCONFIG": 65, "SPP": 66, "UMWAIT": 67, "TPAUSE": 68,
    "LOADIWKEY": 69, "ENCLV": 70, "BUS_LOCK": 74, "NOTIFY": 75,
}


@pytest.mark.parametrize("name,number", sorted(SDM_EXIT_REASONS.items(), key=lambda item: item[1]))
def test_exit_reason_numbers_match_appendix_c(name: str, number: int) -> None:
    assert ExitReason[name] == number


def test_exit_reasons_are_unique_and_described() -> None:
    assert len(ExitReason.__members__) == len(list(ExitReason)), "an alias means a duplicated number"
    assert all(reason.description for reason in ExitReason)
    assert ExitReason(12).description == "HLT"
    assert ExitReason.EPT_VIOLATION.description == "EPT violation"
    assert 35 not in {int(r) for r in ExitReason}  # unused by the SDM


def test_exit_reason_field() -> None:
    field = ExitReasonField.decode(0x80000021)
    assert (field.basic, field.entry_failure, field.reason) == (33, True, ExitReason.INVALID_STATE)
    assert ExitReasonField(basic=48).encode() == 48
    assert ExitReasonField(basic=1, from_vmx_root=True).encode() == 0x20000001
    assert ExitReasonField.decode(35).reason is None


# --------------------------------------------------------------------------------------
# Builders produce the SDM bit layout
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("record,value", [
    # EPT violation (Table 28-7): bit1 write, bit7 GLA valid, bit8 translated access
    (EptViolationQualification(write=True, gla_valid=True, gla_translated=True), 0x182),
    (EptViolationQualification(read=True, readable=True, executable=True), 0x29),
    (EptViolationQualification(fetch=True, readable=True, writable=True, user_executable=True), 0x5C),
    (EptViolationQualification(read=True, gla_valid=True, nmi_unblocking=True), 0x1081),
    # I/O (Table 28-5): size-1 in 2:0, bit3 IN, bit4 string, bit5 REP, bit6 immediate, port in 31:16
    (IoQualification(port=0x3F8), 0x03F80000),
    (IoQualification(port=0x60, size=IoSize.WORD, direction=IoDirection.IN, operand=IoOperand.IMMEDIATE),
     0x00600049),
    (IoQualification(port=0x1F0, size=IoSize.DWORD, direction=IoDirection.IN, string=True, rep=True),
     0x01F0003B),
    # CR access (Table 28-3): CR in 3:0, type in 5:4, LMSW operand bit 6, GPR in 11:8, LMSW data 31:16
    (CrAccessQualification(cr=3, gpr=0), 0x3),
    (CrAccessQualification(cr=3, access_type=CrAccessType.MOV_FROM_CR, gpr=3), 0x313),
    (CrAccessQualification(cr=8, gpr=15), 0xF08),
    (CrAccessQualification(access_type=CrAccessType.CLTS), 0x20),
    (CrAccessQualification(access_type=CrAccessType.LMSW, lmsw_memory_operand=True, lmsw_source=0x1), 0x10070),
    # MOV DR (Table 28-4): DR in 2:0, bit4 direction, GPR in 11:8
    (DrAccessQualification(dr=7, gpr=0), 0x7),
    (DrAccessQualification(dr=6, direction=DrDirection.MOV_FROM_DR, gpr=2), 0x216),
    # APIC access (Table 28-6): offset 11:0, access type 15:12
    (ApicAccessQualification(offset=0x300, access_type=ApicAccessType.LINEAR_WRITE), 0x1300),
    (ApicAccessQualification(offset=0xB0, access_type=ApicAccessType.LINEAR_READ), 0xB0),
    (ApicAccessQualification(access_type=ApicAccessType.PHYSICAL_INSTRUCTION), 0xF000),
    # Task switch (Table 28-2): selector 15:0, source 31:30
    (TaskSwitchQualification(selector=0x28, source=TaskSwitchSource.IRET), 0x40000028),
    (TaskSwitchQualification(selector=0x30, source=TaskSwitchSource.IDT_TASK_GATE), 0xC0000030),
])
def test_builders_match_sdm_layout(record, value: int) -> None:
    assert record.encode() == value
    assert type(record).decode(value) == record


def test_io_size_helpers() -> None:
    assert [IoSize.of(n).bytes for n in (1, 2, 4)] == [1, 2, 4]
    with pytest.raises(ValueError):
        IoSize.of(3)


def test_builders_reject_out_of_range_members() -> None:
    with pytest.raises(ValueError):
        IoQualification(port=0x10000).encode()
    with pytest.raises(ValueError):
        CrAccessQualification(cr=16).encode()


# --------------------------------------------------------------------------------------
# Round trips (hypothesis)
# --------------------------------------------------------------------------------------

@given(st.builds(EptViolationQualification, *[st.booleans()] * 10))
def test_ept_violation_round_trip(record: EptViolationQualification) -> None:
    assert EptViolationQualification.decode(record.encode()) == record


@given(st.builds(IoQualification, port=st.integers(0, 0xFFFF), size=st.sampled_from(IoSize),
                 direction=st.sampled_from(IoDirection), string=st.booleans(), rep=st.booleans(),
                 operand=st.sampled_from(IoOperand)))
def test_io_round_trip(record: IoQualification) -> None:
    assert IoQualification.decode(record.encode()) == record


@given(st.builds(CrAccessQualification, cr=st.integers(0, 15), access_type=st.sampled_from(CrAccessType),
                 lmsw_memory_operand=st.booleans(), gpr=st.integers(0, 15), lmsw_source=st.integers(0, 0xFFFF)))
def test_cr_access_round_trip(record: CrAccessQualification) -> None:
    assert CrAccessQualification.decode(record.encode()) == record


@given(st.builds(ApicAccessQualification, offset=st.integers(0, 0xFFF), access_type=st.sampled_from(ApicAccessType),
                 asynchronous=st.booleans()))
def test_apic_access_round_trip(record: ApicAccessQualification) -> None:
    assert ApicAccessQualification.decode(record.encode()) == record


@given(st.integers(0, 0xFFFF_FFFF))
def test_decode_encode_keeps_exactly_the_defined_bits(value: int) -> None:
    ept_defined = 0x1FF | 1 << 12
    assert EptViolationQualification.decode(value).encode() == value & ept_defined
    cr = CrAccessQualification.decode(value)
    assert cr.encode() == value & (0xF | 0x3 << 4 | 1 << 6 | 0xF << 8 | 0xFFFF << 16)
    apic = ApicAccessQualification.decode(value)
    assert apic.encode() == value & 0x1FFFF  # reserved access types survive as plain integers
    assert TaskSwitchQualification.decode(value).encode() == value & 0xC000FFFF


# --------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------

def test_ept_violation_sentence_from_the_brief() -> None:
    qual = EptViolationQualification(write=True, gla_valid=True, gla_translated=True).encode()
    text = describe_exit(ExitReason.EPT_VIOLATION, qual, gpa=0x1000000, gla=0xFFFFFF8001000000)
    assert text == "EPT violation: write to GPA 0x1000000, page not present, GLA 0xffffff8001000000 valid"


@pytest.mark.parametrize("record,gpa,gla,text", [
    (EptViolationQualification(read=True, readable=False, writable=False, executable=True),
     0x2000, None, "EPT violation: read from GPA 0x2000, page permissions --x, no GLA"),
    (EptViolationQualification(fetch=True, readable=True, gla_valid=True, gla_translated=True),
     0xB8000, 0xFFFFFFFF800B8000,
     "EPT violation: instruction fetch from GPA 0xb8000, page permissions r--, GLA 0xffffffff800b8000 valid"),
    (EptViolationQualification(read=True, write=True, readable=True, executable=True, gla_valid=True),
     0x5000, 0x7000,
     "EPT violation: read/write to GPA 0x5000, page permissions r-x, GLA 0x7000 valid (guest paging-structure access)"),
    (EptViolationQualification(write=True, readable=True, nmi_unblocking=True), None, None,
     "EPT violation: write to GPA unknown, page permissions r--, no GLA, NMI unblocking due to IRET"),
])
def test_ept_violation_sentences(record: EptViolationQualification, gpa, gla, text: str) -> None:
    assert record.describe(gpa, gla) == text


@pytest.mark.parametrize("reason,qual,extra,text", [
    (30, 0x03F80000, {}, "I/O instruction: OUT 1 byte to port 0x3f8 (port in DX)"),
    (30, 0x00600049, {}, "I/O instruction: IN 2 bytes from port 0x60 (immediate port)"),
    (30, 0x01F0003B, {}, "I/O instruction: REP INS 4 bytes from port 0x1f0 (port in DX)"),
    (28, 0x3, {}, "Control-register access: MOV to CR3 from RAX"),
    (28, 0x313, {}, "Control-register access: MOV from CR3 to RBX"),
    (28, 0xF08, {}, "Control-register access: MOV to CR8 from R15"),
    (28, 0x20, {}, "Control-register access: CLTS"),
    (28, 0x10070, {}, "Control-register access: LMSW with source data 0x1 (memory operand)"),
    (29, 0x216, {}, "Debug-register access: MOV from DR6 to RDX"),
    (44, 0x1300, {}, "APIC access: linear write at offset 0x300 (ICR_LOW)"),
    (44, 0x0B0, {}, "APIC access: linear read at offset 0xb0 (EOI)"),
    (44, 0x0124, {}, "APIC access: linear read at offset 0x124 (ISR2)"),
    (44, 0xA000, {}, "APIC access: guest-physical access during event delivery"),
    (9, 0x40000028, {}, "Task switch: IRET to TSS selector 0x28"),
    (4, 0x9A, {}, "Start-up IPI (SIPI) with vector 0x9a (start at 0x9a000)"),
    (0, 0x7F001000, {"intr_info": 0x80000B0E, "error_code": 0x6},
     "Exception: hardware exception #PF (page fault), error code 0x6, CR2 0x7f001000"),
    (0, 0, {"intr_info": 0x80000202}, "NMI"),
    (0, 0, {"intr_info": 0x80000603}, "Exception: software exception #BP (breakpoint)"),
    (1, 0, {"intr_info": 0x800000EF}, "External interrupt vector 0xef"),
    (1, 0, {"intr_info": 0}, "External interrupt (not acknowledged)"),
    (31, 0, {"msr": 0x1B}, "RDMSR of MSR 0x1b"),
    (32, 0, {"msr": 0xC0000080}, "WRMSR of MSR 0xc0000080"),
    (49, 0, {"gpa": 0xFEE00000}, "EPT misconfiguration at GPA 0xfee00000"),
    (12, 0, {}, "HLT (exit reason 12)"),
    (10, 0, {}, "CPUID (exit reason 10)"),
    (52, 0, {}, "VMX-preemption timer expired (exit reason 52)"),
    (37, 0, {}, "Monitor trap flag (exit reason 37)"),
    (55, 0x7, {}, "XSETBV (exit reason 55), exit qualification 0x7"),
    (35, 0, {}, "Unknown exit reason 35"),
    (0x80000021, 0, {}, "VM-entry failure due to invalid guest state (exit reason 33)"),
    (0x80000022, 0x3, {}, "VM-entry failure due to MSR loading (exit reason 34), exit qualification 0x3"),
    (0x8000000C, 0, {}, "VM-entry failure: HLT (exit reason 12)"),
])
def test_describe_exit_sentences(reason: int, qual: int, extra: dict, text: str) -> None:
    assert describe_exit(reason, qual, **extra) == text


def test_describe_exit_rejects_unknown_extras() -> None:
    with pytest.raises(TypeError, match="gpaa"):
        describe_exit(48, 0, gpaa=0x1000)


def test_describe_exception_variants() -> None:
    gp = InterruptionInfo(13, InterruptionType.HARDWARE_EXCEPTION, error_code_valid=True)
    assert describe_exception(gp) == "Exception: hardware exception #GP (general protection), error code valid"
    assert describe_exception(gp.encode(), 0, 0x18) == (
        "Exception: hardware exception #GP (general protection), error code 0x18")
    db = InterruptionInfo(1, InterruptionType.HARDWARE_EXCEPTION)
    assert describe_exception(db, 0x4001) == "Exception: hardware exception #DB (debug), debug qualification 0x4001"
    assert describe_exception(0) == "Exception or NMI with invalid interruption information"


def test_apic_register_names() -> None:
    assert apic_register_name(0x20) == "ID"
    assert apic_register_name(0x310) == "ICR_HIGH"
    assert apic_register_name(0x27C) == "IRR7"
    assert apic_register_name(0x180) == "TMR0"
    assert apic_register_name(0x40) is None
