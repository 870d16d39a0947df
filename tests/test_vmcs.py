"""Tests for the VMCS field table, the software VMCS and the VMX control definitions.

Reference values are typed by hand from the Intel SDM (Vol. 3D Appendix B for encodings,
Vol. 3C 25.4 / 25.6 / 25.7 / 25.8 for control bits and packed fields).
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvdbg.errors import HvdbgError
from hvdbg.vmx.vmcs import GROUP_TITLES, LaunchState, Vmcs
from hvdbg.vmx.fields import (
    BY_NAME,
    FIELDS,
    FieldType,
    FieldWidth,
    UnknownVmcsFieldError,
    fields_in_group,
    make_encoding,
    resolve,
    split_encoding,
)
from hvdbg.vmx.controls import (
    CONTROL_SETS,
    ActivityState,
    InterruptionInfo,
    InterruptionType,
    Interruptibility,
    SegmentAccessRights,
    control_set,
    decode,
    describe_activity_state,
)

# --------------------------------------------------------------------------------------
# Field table
# --------------------------------------------------------------------------------------

# SDM Vol. 3D Appendix B, typed from Tables B-1 .. B-15.
SDM_ENCODINGS = {
    "VIRTUAL_PROCESSOR_ID": 0x0000,
    "POSTED_INTR_NV": 0x0002,
    "GUEST_ES_SELECTOR": 0x0800,
    "GUEST_CS_SELECTOR": 0x0802,
    "GUEST_TR_SELECTOR": 0x080E,
    "GUEST_INTR_STATUS": 0x0810,
    "HOST_CS_SELECTOR": 0x0C02,
    "HOST_TR_SELECTOR": 0x0C0C,
    "IO_BITMAP_A": 0x2000,
    "IO_BITMAP_B": 0x2002,
    "MSR_BITMAP": 0x2004,
    "TSC_OFFSET": 0x2010,
    "VIRTUAL_APIC_PAGE_ADDR": 0x2012,
    "APIC_ACCESS_ADDR": 0x2014,
    "EPT_POINTER": 0x201A,
    "XSS_EXIT_BITMAP": 0x202C,
    "TSC_MULTIPLIER": 0x2032,
    "GUEST_PHYSICAL_ADDRESS": 0x2400,
    "VMCS_LINK_POINTER": 0x2800,
    "GUEST_IA32_EFER": 0x2806,
    "GUEST_PDPTR0": 0x280A,
    "HOST_IA32_EFER": 0x2C02,
    "PIN_BASED_VM_EXEC_CONTROL": 0x4000,
    "CPU_BASED_VM_EXEC_CONTROL": 0x4002,
    "EXCEPTION_BITMAP": 0x4004,
    "VM_EXIT_CONTROLS": 0x400C,
    "VM_ENTRY_CONTROLS": 0x4012,
    "VM_ENTRY_INTR_INFO_FIELD": 0x4016,
    "SECONDARY_VM_EXEC_CONTROL": 0x401E,
    "VM_INSTRUCTION_ERROR": 0x4400,
    "VM_EXIT_REASON": 0x4402,
    "VM_EXIT_INTR_INFO": 0x4404,
    "IDT_VECTORING_INFO_FIELD": 0x4408,
    "VM_EXIT_INSTRUCTION_LEN": 0x440C,
    "VMX_INSTRUCTION_INFO": 0x440E,
    "GUEST_CS_LIMIT": 0x4802,
    "GUEST_CS_AR_BYTES": 0x4816,
    "GUEST_INTERRUPTIBILITY_INFO": 0x4824,
    "GUEST_ACTIVITY_STATE": 0x4826,
    "GUEST_SYSENTER_CS": 0x482A,
    "VMX_PREEMPTION_TIMER_VALUE": 0x482E,
    "HOST_IA32_SYSENTER_CS": 0x4C00,
    "CR0_GUEST_HOST_MASK": 0x6000,
    "CR4_READ_SHADOW": 0x6006,
    "EXIT_QUALIFICATION": 0x6400,
    "GUEST_LINEAR_ADDRESS": 0x640A,
    "GUEST_CR0": 0x6800,
    "GUEST_CR3": 0x6802,
    "GUEST_CS_BASE": 0x6808,
    "GUEST_GDTR_BASE": 0x6816,
    "GUEST_RSP": 0x681C,
    "GUEST_RIP": 0x681E,
    "GUEST_RFLAGS": 0x6820,
    "HOST_CR3": 0x6C02,
    "HOST_RSP": 0x6C14,
    "HOST_RIP": 0x6C16,
}

TYPE_TO_GROUP = {0: "control", 1: "exit", 2: "guest", 3: "host"}


@pytest.mark.parametrize("name,encoding", sorted(SDM_ENCODINGS.items()))
def test_well_known_encodings_match_the_sdm(name: str, encoding: int) -> None:
    assert BY_NAME[name].encoding == encoding


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_encoding_is_consistent_with_its_entry(field) -> None:
    enc = field.encoding
    assert enc & 1 == 0, "table entries are full-access encodings"
    assert enc & (1 << 12) == 0 and enc >> 15 == 0, "reserved encoding bits must be 0"
    assert (enc >> 13) & 3 == int(field.width)
    assert (enc >> 10) & 3 == int(field.type)
    assert TYPE_TO_GROUP[(enc >> 10) & 3] == field.group
    assert field.bits == {0: 16, 1: 64, 2: 32, 3: 64}[(enc >> 13) & 3]
    parts = split_encoding(enc)
    assert make_encoding(parts.width, parts.type, parts.index) == enc


def test_names_and_encodings_are_unique() -> None:
    names = [f.name for f in FIELDS]
    encodings = [f.encoding for f in FIELDS]
    assert len(names) == len(set(names))
    assert len(encodings) == len(set(encodings))
    high = {f.high_encoding for f in FIELDS if f.high_encoding is not None}
    assert not high & set(encodings)


def test_only_64_bit_fields_have_high_access() -> None:
    for field in FIELDS:
        assert field.has_high_access == (field.width is FieldWidth.BIT64)
        if field.has_high_access:
            assert field.high_encoding == field.encoding + 1


def test_table_covers_all_four_widths_and_types() -> None:
    combos = {(f.width, f.type) for f in FIELDS}
    # SDM: every width has fields of every type (16-bit read-only data fields do not exist).
    expected = {(w, t) for w in FieldWidth for t in FieldType} - {(FieldWidth.BIT16, FieldType.EXIT_INFO)}
    assert combos == expected


def test_fields_in_group() -> None:
    guest = list(fields_in_group("guest"))
    assert BY_NAME["GUEST_RIP"] in guest and BY_NAME["HOST_RIP"] not in guest
    assert sum(1 for g in ("guest", "host", "control", "exit") for _ in fields_in_group(g)) == len(FIELDS)
    with pytest.raises(ValueError):
        list(fields_in_group("bogus"))


def test_split_encoding_rejects_reserved_bits() -> None:
    with pytest.raises(UnknownVmcsFieldError):
        split_encoding(0x681E | 1 << 12)
    with pytest.raises(UnknownVmcsFieldError):
        split_encoding(0x10000)


def test_resolve_accepts_names_high_names_and_encodings() -> None:
    assert resolve("guest_rip").field.encoding == 0x681E
    assert resolve("EPT_POINTER_HIGH") == (BY_NAME["EPT_POINTER"], True)
    assert resolve(0x201B) == (BY_NAME["EPT_POINTER"], True)
    assert resolve(0x201A) == (BY_NAME["EPT_POINTER"], False)


# --------------------------------------------------------------------------------------
# Vmcs
# --------------------------------------------------------------------------------------

def test_read_write_by_name_and_encoding() -> None:
    vmcs = Vmcs()
    vmcs.write("GUEST_RIP", 0xFFFFFFFF81000000)
    assert vmcs.read(0x681E) == 0xFFFFFFFF81000000
    vmcs.write(0x802, 0x10)
    assert vmcs.read("GUEST_CS_SELECTOR") == 0x10
    assert vmcs["guest_cs_selector"] == 0x10
    vmcs["VM_EXIT_REASON"] = 48
    assert vmcs.read(0x4402) == 48
    assert Vmcs().read("GUEST_RIP") == 0  # unwritten fields read as zero


@pytest.mark.parametrize("name,value,expected", [
    ("GUEST_CS_SELECTOR", 0x12345, 0x2345),                 # 16-bit
    ("GUEST_CS_LIMIT", 0x1_FFFF_FFFF, 0xFFFF_FFFF),         # 32-bit
    ("EPT_POINTER", 0x1_0000_0000_0000_1000, 0x1000),       # 64-bit
    ("GUEST_RIP", -1, 0xFFFF_FFFF_FFFF_FFFF),               # natural width, two's complement
])
def test_values_are_masked_to_width(name: str, value: int, expected: int) -> None:
    vmcs = Vmcs()
    vmcs.write(name, value)
    assert vmcs.read(name) == expected


def test_high_access_reads_and_writes_bits_63_32() -> None:
    vmcs = Vmcs()
    vmcs.write("EPT_POINTER", 0x1122334455667788)
    assert vmcs.read("EPT_POINTER_HIGH") == 0x11223344
    assert vmcs.read(0x201B) == 0x11223344
    vmcs.write(0x201B, 0xAABBCCDD_EE)  # masked to 32 bits
    assert vmcs.read("EPT_POINTER") == 0xBBCCDDEE_55667788
    vmcs.write("EPT_POINTER", 0x1000)  # full access replaces all 64 bits
    assert vmcs.read("EPT_POINTER_HIGH") == 0


@pytest.mark.parametrize("bad", ["GUEST_FOO", "GUEST_RIP_HIGH", "GUEST_CS_LIMIT_HIGH", 0x681F, 0x4403, 0x7FFE, 0x2402])
def test_unknown_fields_raise_a_clear_error(bad) -> None:
    vmcs = Vmcs()
    with pytest.raises(UnknownVmcsFieldError) as info:
        vmcs.read(bad)
    assert str(info.value).startswith("unknown VMCS field")
    assert isinstance(info.value, HvdbgError) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownVmcsFieldError):
        vmcs.write(bad, 1)


@pytest.mark.parametrize("bad", [1.5, None, True, b"GUEST_RIP"])
def test_non_name_non_encoding_is_rejected(bad) -> None:
    with pytest.raises(UnknownVmcsFieldError):
        Vmcs().read(bad)


def test_revision_id_and_header() -> None:
    assert Vmcs(0x12).revision_id == 0x12
    assert Vmcs(0x12).header == 0x12
    assert Vmcs(0x12, shadow=True).header == 0x80000012
    with pytest.raises(ValueError):
        Vmcs(0x80000000)


def test_launch_state_follows_vmlaunch_and_vmclear() -> None:
    vmcs = Vmcs()
    assert vmcs.launch_state is LaunchState.CLEAR and not vmcs.launched
    vmcs.write("GUEST_RIP", 0x1000)
    vmcs.mark_launched()
    assert vmcs.launch_state is LaunchState.LAUNCHED and vmcs.launched
    vmcs.clear()
    assert vmcs.launch_state is LaunchState.CLEAR
    assert vmcs.read("GUEST_RIP") == 0x1000


def test_fields_iteration_and_snapshot() -> None:
    vmcs = Vmcs()
    vmcs.update({"GUEST_RIP": 0x1234, "HOST_RIP": 0x5678})
    all_fields = list(vmcs.fields())
    assert [f for f, _ in all_fields] == list(FIELDS)
    assert dict((f.name, v) for f, v in all_fields)["GUEST_RIP"] == 0x1234
    host = dict((f.name, v) for f, v in vmcs.fields("host"))
    assert host["HOST_RIP"] == 0x5678 and "GUEST_RIP" not in host
    assert vmcs.snapshot()["HOST_RIP"] == 0x5678
    with pytest.raises(ValueError):
        list(vmcs.fields("bogus"))


def _populated() -> Vmcs:
    vmcs = Vmcs()
    vmcs.update({
        "GUEST_CS_SELECTOR": 0x10, "GUEST_CS_AR_BYTES": 0xA09B, "GUEST_CS_LIMIT": 0xFFFFFFFF,
        "GUEST_CS_BASE": 0, "GUEST_TR_SELECTOR": 0x28, "GUEST_TR_AR_BYTES": 0x8B,
        "GUEST_GDTR_BASE": 0x9000, "GUEST_GDTR_LIMIT": 0x37, "GUEST_RIP": 0x100000,
        "HOST_FS_SELECTOR": 0x18, "HOST_FS_BASE": 0x7F0000, "HOST_RIP": 0xFFFF800000001000,
        "CPU_BASED_VM_EXEC_CONTROL": 1 << 7 | 1 << 25 | 1 << 31,
        "GUEST_ACTIVITY_STATE": 1,
        "VM_EXIT_REASON": 30, "EXIT_QUALIFICATION": 0x03F80000,
    })
    return vmcs


def test_dump_groups_like_kvm_with_segment_rows() -> None:
    sections = _populated().dump()
    assert [s.title for s in sections] == ["Guest State", "Host State", "Control State", "Exit Information"]
    guest, host, control, exit_info = sections
    cs = next(s for s in guest.segments if s.name == "CS")
    assert (cs.selector, cs.access_rights, cs.limit, cs.base) == (0x10, 0xA09B, 0xFFFFFFFF, 0)
    assert cs.note == "code execute/read accessed, DPL=0 P L G"
    gdtr = next(s for s in guest.segments if s.name == "GDTR")
    assert (gdtr.selector, gdtr.access_rights, gdtr.limit, gdtr.base) == (None, None, 0x37, 0x9000)
    assert [s.name for s in guest.segments] == ["CS", "DS", "SS", "ES", "FS", "GS", "GDTR", "LDTR", "IDTR", "TR"]
    host_fs = next(s for s in host.segments if s.name == "FS")
    assert (host_fs.selector, host_fs.access_rights, host_fs.limit, host_fs.base) == (0x18, None, None, 0x7F0000)
    host_cs = next(s for s in host.segments if s.name == "CS")
    assert host_cs.base is None
    assert "LDTR" not in [s.name for s in host.segments]
    controls = {r.name: r for r in control.fields}
    assert controls["CPU_BASED_VM_EXEC_CONTROL"].note == "HLT exiting, use I/O bitmaps, activate secondary controls"
    exits = {r.name: r for r in exit_info.fields}
    assert exits["VM_EXIT_REASON"].note == "I/O instruction: OUT 1 byte to port 0x3f8 (port in DX)"
    assert {r.name: r for r in guest.fields}["GUEST_ACTIVITY_STATE"].note == "HLT"


def test_dump_shows_every_field_exactly_once() -> None:
    vmcs = Vmcs()
    for index, field in enumerate(FIELDS):
        vmcs.write(field.name, index + 1)  # distinct non-zero values
    seen: list[int] = []
    for section in vmcs.dump():
        seen += [row.value for row in section.fields]
        for seg in section.segments:
            seen += [v for v in (seg.selector, seg.access_rights, seg.limit, seg.base) if v is not None]
    assert sorted(seen) == list(range(1, len(FIELDS) + 1))


def test_dump_group_filter_and_skip_zero() -> None:
    vmcs = _populated()
    assert [s.group for s in vmcs.dump(["exit", "guest"])] == ["guest", "exit"]
    exit_rows = vmcs.dump(["exit"], skip_zero=True)[0].fields
    assert [r.name for r in exit_rows] == ["VM_EXIT_REASON", "EXIT_QUALIFICATION"]
    guest_segments = vmcs.dump(["guest"], skip_zero=True)[0].segments
    assert [s.name for s in guest_segments] == ["CS", "GDTR", "TR"]
    with pytest.raises(ValueError):
        vmcs.dump(["nonsense"])


def test_no_exit_note_before_any_exit() -> None:
    rows = {r.name: r for r in Vmcs().dump(["exit"])[0].fields}
    assert rows["VM_EXIT_REASON"].note == ""


def test_format_dump_text() -> None:
    text = _populated().format_dump()
    lines = text.splitlines()
    assert lines[0] == "*** Guest State ***"
    for title in GROUP_TITLES.values():
        assert f"*** {title} ***" in lines
    assert "CS    0x0010   0x0a09b  0xffffffff 0x0000000000000000  code execute/read accessed, DPL=0 P L G" in lines
    assert "GUEST_RIP                      = 0x0000000000100000" in lines
    assert "GUEST_CS_SELECTOR" not in text  # segment components appear only as segment rows
    assert "VM_EXIT_REASON                 = 0x0000001e  I/O instruction: OUT 1 byte to port 0x3f8 (port in DX)" in lines


def test_concurrent_reads_see_whole_values() -> None:
    vmcs = Vmcs()
    stop = threading.Event()
    torn: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            value = vmcs.read("EPT_POINTER")
            if value >> 32 != value & 0xFFFFFFFF:
                torn.append(value)

    thread = threading.Thread(target=reader)
    thread.start()
    for k in range(20000):
        vmcs.write("EPT_POINTER", k << 32 | k)
    stop.set()
    thread.join()
    assert torn == []


# --------------------------------------------------------------------------------------
# VMX controls
# --------------------------------------------------------------------------------------

# (control set, SDM name, bit) typed from SDM Tables 25-5 .. 25-15 and 25.6.3.
SDM_CONTROL_BITS = [
    ("pin", "external-interrupt exiting", 0),
    ("pin", "NMI exiting", 3),
    ("pin", "virtual NMIs", 5),
    ("pin", "activate VMX-preemption timer", 6),
    ("pin", "process posted interrupts", 7),
    ("primary", "interrupt-window exiting", 2),
    ("primary", "HLT exiting", 7),
    ("primary", "CR3-load exiting", 15),
    ("primary", "use TPR shadow", 21),
    ("primary", "NMI-window exiting", 22),
    ("primary", "unconditional I/O exiting", 24),
    ("primary", "use I/O bitmaps", 25),
    ("primary", "monitor trap flag", 27),
    ("primary", "use MSR bitmaps", 28),
    ("primary", "activate secondary controls", 31),
    ("secondary", "virtualize APIC accesses", 0),
    ("secondary", "enable EPT", 1),
    ("secondary", "virtualize x2APIC mode", 4),
    ("secondary", "enable VPID", 5),
    ("secondary", "unrestricted guest", 7),
    ("secondary", "virtual-interrupt delivery", 9),
    ("secondary", "enable PML", 17),
    ("exit", "save debug controls", 2),
    ("exit", "host address-space size", 9),
    ("exit", "acknowledge interrupt on exit", 15),
    ("exit", "load IA32_EFER", 21),
    ("exit", "save VMX-preemption timer value", 22),
    ("entry", "load debug controls", 2),
    ("entry", "IA-32e mode guest", 9),
    ("entry", "load IA32_EFER", 15),
    ("exception_bitmap", "#DE", 0),
    ("exception_bitmap", "#UD", 6),
    ("exception_bitmap", "#DF", 8),
    ("exception_bitmap", "#GP", 13),
    ("exception_bitmap", "#PF", 14),
    ("exception_bitmap", "#AC", 17),
    ("exception_bitmap", "#CP", 21),
]


@pytest.mark.parametrize("control,name,bit", SDM_CONTROL_BITS)
def test_control_bits_match_the_sdm(control: str, name: str, bit: int) -> None:
    cs = control_set(control)
    assert cs.bit_of(name) == bit
    assert cs.mask(name) == 1 << bit
    rows = decode(control, 1 << bit)
    assert [r.name for r in rows if r.set] == [name]


def test_control_tables_are_well_formed() -> None:
    for cs in CONTROL_SETS:
        bits = [b.bit for b in cs.bits]
        assert len(bits) == len(set(bits)), cs.name
        assert len({b.key for b in cs.bits}) == len(bits), cs.name
        assert all(0 <= b < cs.width for b in bits), cs.name
        assert BY_NAME[cs.field].bits >= cs.width, cs.name


def test_decode_lists_every_defined_bit_and_set_reserved_bits() -> None:
    value = 1 << 7 | 1 << 25 | 1 << 1  # bit 1 is reserved (default1) in the primary controls
    rows = decode("CPU_BASED_VM_EXEC_CONTROL", value)
    assert [r.bit for r in rows] == sorted(r.bit for r in rows)
    assert (1, "reserved bit 1", True) in rows
    assert (7, "HLT exiting", True) in rows
    assert (28, "use MSR bitmaps", False) in rows
    defined = {b.bit for b in control_set("primary").bits}
    assert {r.bit for r in rows} == defined | {1}


def test_mask_by_key_and_lookup_errors() -> None:
    primary = control_set("primary")
    assert primary.mask("HLT_EXITING", "USE_MSR_BITMAPS") == 0x10000080
    assert primary.is_set(0x80, "HLT exiting") and not primary.is_set(0x80, "use I/O bitmaps")
    assert control_set("SECONDARY_VM_EXEC_CONTROL") is control_set("secondary")
    with pytest.raises(KeyError):
        primary.bit_of("warp drive")
    with pytest.raises(KeyError):
        control_set("quaternary")


@pytest.mark.parametrize("value,vector,type_,error_valid", [
    (0x80000020, 0x20, InterruptionType.EXTERNAL_INTERRUPT, False),
    (0x80000202, 2, InterruptionType.NMI, False),
    (0x80000B0E, 14, InterruptionType.HARDWARE_EXCEPTION, True),
    (0x80000B0D, 13, InterruptionType.HARDWARE_EXCEPTION, True),
    (0x80000603, 3, InterruptionType.SOFTWARE_EXCEPTION, False),
    (0x80000480, 0x80, InterruptionType.SOFTWARE_INTERRUPT, False),
])
def test_interruption_info_decode_and_encode(value: int, vector: int, type_: InterruptionType,
                                             error_valid: bool) -> None:
    info = InterruptionInfo.decode(value)
    assert (info.vector, info.type, info.error_code_valid, info.valid) == (vector, type_, error_valid, True)
    assert InterruptionInfo(vector, type_, error_valid).encode() == value


@given(st.integers(0, 0xFFFFFFFF))
def test_interruption_info_round_trip(value: int) -> None:
    defined = 0xFF | 0x7 << 8 | 1 << 11 | 1 << 12 | 1 << 31
    assert InterruptionInfo.decode(value).encode() == value & defined


def test_interruption_info_describe_and_range_check() -> None:
    assert InterruptionInfo.decode(0x80000B0E).describe() == "hardware exception #PF (page fault), error code valid"
    assert InterruptionInfo.decode(0x80000202).describe() == "NMI"
    assert InterruptionInfo.decode(0x80000030).describe() == "external interrupt vector 0x30"
    assert InterruptionInfo.decode(0).describe() == "invalid"
    with pytest.raises(ValueError):
        InterruptionInfo(vector=256).encode()


def test_activity_and_interruptibility_states() -> None:
    assert [int(s) for s in ActivityState] == [0, 1, 2, 3]
    assert describe_activity_state(3) == "wait-for-SIPI"
    assert describe_activity_state(7) == "reserved activity state 7"
    state = Interruptibility.decode(0x9)
    assert state.blocking_by_sti and state.blocking_by_nmi and not state.blocking_by_mov_ss
    assert state.describe() == "blocking by STI, blocking by NMI"
    assert Interruptibility(blocking_by_mov_ss=True).encode() == 0x2
    assert Interruptibility().describe() == "no blocking"


@pytest.mark.parametrize("value,text", [
    (0xA09B, "code execute/read accessed, DPL=0 P L G"),
    (0xC093, "data read/write accessed, DPL=0 P D/B G"),
    (0x00F3, "data read/write accessed, DPL=3 P"),
    (0x008B, "32/64-bit TSS (busy), DPL=0 P"),
    (0x0082, "LDT, DPL=0 P"),
    (0x10000, "unusable"),
])
def test_segment_access_rights(value: int, text: str) -> None:
    ar = SegmentAccessRights.decode(value)
    assert ar.describe() == text
    assert ar.encode() == value


def test_segment_access_rights_fields() -> None:
    ar = SegmentAccessRights.decode(0xA09B)
    assert (ar.type, ar.s, ar.dpl, ar.present, ar.avl, ar.long_mode, ar.db, ar.granularity, ar.unusable) == (
        0xB, True, 0, True, False, True, False, True, False)
