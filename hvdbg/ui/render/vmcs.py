"""The VMCS as text: KVM dump_vmcs-like sections with encodings, one field with its
decoding, the EPT pointer, and the last VM exit as a sentence (SDM 25, 28.2, Appendix C).
The one VMCS renderer: :meth:`hvdbg.vmx.vmcs.Vmcs.dump` gives the rows, this draws them."""

from __future__ import annotations

from hvdbg.hv.exit import MsrAccess
from hvdbg.hv.vcpu import Vcpu
from hvdbg.ui.render.text import table
from hvdbg.vmx import ept as ept_mod
from hvdbg.vmx.controls import CONTROL_SETS, SegmentAccessRights
from hvdbg.vmx.exit_text import describe_exit
from hvdbg.vmx.fields import FieldRef, FieldWidth
from hvdbg.vmx.vmcs import Vmcs

_CONTROL_FIELDS = {cs.field: cs for cs in CONTROL_SETS}
_WIDTH_TEXT = {FieldWidth.BIT16: "16-bit", FieldWidth.BIT32: "32-bit", FieldWidth.BIT64: "64-bit",
               FieldWidth.NATURAL: "natural-width"}
_GROUP_TEXT = {"guest": "guest-state", "host": "host-state", "control": "control",
               "exit": "VM-exit information"}



def _opt_hex(value: int | None, digits: int) -> str:
    return "-" if value is None else f"{value:#0{digits + 2}x}"


def format_vmcs_sections(vmcs: Vmcs, groups: list[str], show_all: bool, vcpu: int,
                         command: str = "vmcs") -> list[str]:
    """KVM dump_vmcs-like rendering with encodings; control fields bit by bit
    (``command``: the shell command the "zero fields hidden" hint names)."""
    lines: list[str] = []
    for section in vmcs.dump(groups):
        lines.append(f"*** {section.title} ***")
        segs = [s for s in section.segments
                if show_all or any((s.selector, s.access_rights, s.limit, s.base))]
        if segs:
            lines += table([(s.name, _opt_hex(s.selector, 4), _opt_hex(s.access_rights, 5),
                              _opt_hex(s.limit, 8), _opt_hex(s.base, 16), s.note) for s in segs],
                            ("seg", "selector", "AR", "limit", "base", ""))
        hidden = 0
        for row in section.fields:
            controls = _CONTROL_FIELDS.get(row.name)
            if row.value == 0 and not show_all and controls is None:
                hidden += 1
                continue
            value = f"{row.value:#0{row.bits // 4 + 2}x}"
            note = "" if controls else row.note
            lines.append(f"{row.name:<32} {row.encoding:#06x} = {value}" + (f"  {note}" if note else ""))
            if controls is not None:
                bits = [b for b in controls.decode(row.value) if b.set]
                lines += [f"    bit {b.bit:2d}  {b.name}" for b in bits] or ["    (no control set)"]
        if hidden:
            lines.append(f"    ({hidden} zero fields hidden; '{command} {vcpu} {section.group} all' lists them)")
    return lines


def format_vmcs_field(vmcs: Vmcs, ref: FieldRef) -> list[str]:
    f = ref.field
    encoding = f.high_encoding if ref.high else f.encoding
    value = vmcs.read(encoding)
    bits = 32 if ref.high else f.bits
    name = f.name + ("_HIGH" if ref.high else "")
    lines = [f"{name} (encoding {encoding:#06x}, {_WIDTH_TEXT[f.width]} {_GROUP_TEXT[f.group]} field): "
             f"{f.description}",
             f"  = {value:#0{bits // 4 + 2}x}"]
    controls = _CONTROL_FIELDS.get(f.name)
    if controls is not None and not ref.high:
        lines += [f"  [{'x' if b.set else ' '}] bit {b.bit:2d}  {b.name}" for b in controls.decode(value)]
        return lines
    if f.name.endswith("_AR_BYTES"):
        lines.append("  " + SegmentAccessRights.decode(value).describe())
        return lines
    for section in vmcs.dump([f.group]):
        for row in section.fields:
            if row.name == f.name and row.note and not ref.high:
                lines.append(f"  {row.note}")
    return lines


def eptp_line(ept) -> str:
    p = ept_mod.EptPointer.from_raw(ept.eptp)
    try:
        mt = ept_mod.MemType(p.memtype).name
    except ValueError:
        mt = str(p.memtype)
    problems = ept_mod.eptp_problems(ept.eptp)
    return (f"EPTP {ept.eptp:#x}: PML4 at HPA {p.pml4_hpa:#x}, {p.walk_length}-level walk, "
            f"paging-structure memory type {mt}, accessed/dirty flags {'on' if p.ad_enabled else 'off'}"
            + (f"; INVALID: {'; '.join(problems)}" if problems else ""))


def exit_sentence(v: Vcpu) -> str:
    info = v.last_exit
    if info is None:
        return "no VM exit yet"
    extra: dict[str, int] = {}
    for key, value in (("gpa", info.guest_physical), ("gla", info.guest_linear),
                       ("intr_info", info.interruption_info or None), ("error_code", info.interruption_error),
                       ("msr", info.payload.msr if isinstance(info.payload, MsrAccess) else None)):
        if value is not None:
            extra[key] = value
    return describe_exit(int(info.reason), info.qualification, **extra)

