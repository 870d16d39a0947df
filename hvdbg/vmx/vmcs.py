"""The software VMCS of one vCPU (Intel SDM Vol. 3C chapter 25 "Virtual Machine Control
Structures").

Fields are addressed exactly as VMREAD/VMWRITE address them: by their Appendix B encoding
(:mod:`hvdbg.vmx.fields`), or by their KVM-style name.  A 64-bit field also answers to its
odd "high" encoding (or ``NAME_HIGH``), which reads and writes bits 63:32 (SDM 25.11.2).
Values are masked to the field width.  The read-only exit-information fields are writable
here because the emulated processor itself records VM exits through :meth:`Vmcs.write`.

Storage is a dict of full encodings; a writer lock keeps 64-bit high/low updates atomic, and
readers (the shell or GDB stub on another thread) never block.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Iterator, Mapping

from hvdbg.vmx.exit_text import describe_exit
from hvdbg.vmx.fields import BY_NAME, FIELDS, GROUPS, VmcsField, resolve
from hvdbg.vmx.controls import (
    CONTROL_SETS,
    InterruptionInfo,
    Interruptibility,
    SegmentAccessRights,
    describe_activity_state,
)

# hvdbg's VMCS revision identifier, as it would be reported in IA32_VMX_BASIC[30:0] (SDM 25.2).
DEFAULT_REVISION_ID = 0x00000001
REVISION_ID_MASK = 0x7FFFFFFF
SHADOW_VMCS_INDICATOR = 1 << 31

FieldSpec = str | int

GROUP_TITLES: dict[str, str] = {
    "guest": "Guest State",
    "host": "Host State",
    "control": "Control State",
    "exit": "Exit Information",
}

# Segment rows in KVM dump_vmcs order; each component exists only if the field does.
SEGMENT_ORDER: tuple[str, ...] = ("CS", "DS", "SS", "ES", "FS", "GS", "GDTR", "LDTR", "IDTR", "TR")
_SEGMENT_COMPONENTS = (("selector", "SELECTOR"), ("access_rights", "AR_BYTES"), ("limit", "LIMIT"), ("base", "BASE"))


class LaunchState(Enum):
    """Launch state of a VMCS (SDM 25.1): VMCLEAR makes it clear, VMLAUNCH launched."""

    CLEAR = "clear"
    LAUNCHED = "launched"


@dataclass(frozen=True)
class FieldRow:
    name: str
    encoding: int
    bits: int
    value: int
    note: str = ""


@dataclass(frozen=True)
class SegmentRow:
    """One segment or descriptor-table register; components the group lacks are None."""

    name: str
    selector: int | None
    access_rights: int | None
    limit: int | None
    base: int | None
    note: str = ""


@dataclass(frozen=True)
class DumpSection:
    group: str
    title: str
    segments: tuple[SegmentRow, ...]
    fields: tuple[FieldRow, ...]


def _segment_fields(group: str, segment: str) -> dict[str, VmcsField]:
    prefix = "GUEST" if group == "guest" else "HOST"
    found = {}
    for component, suffix in _SEGMENT_COMPONENTS:
        field = BY_NAME.get(f"{prefix}_{segment}_{suffix}")
        if field is not None:
            found[component] = field
    return found


_SEGMENT_LAYOUT: dict[str, tuple[tuple[str, dict[str, VmcsField]], ...]] = {
    group: tuple((seg, comps) for seg in SEGMENT_ORDER if (comps := _segment_fields(group, seg)))
    for group in ("guest", "host")
}
_SEGMENT_ENCODINGS: frozenset[int] = frozenset(
    f.encoding for layout in _SEGMENT_LAYOUT.values() for _, comps in layout for f in comps.values())

_CONTROL_NOTES: dict[str, Callable[[int], str]] = {
    cs.field: (lambda value, cs=cs: ", ".join(cs.names_set(value))) for cs in CONTROL_SETS
}
_FIELD_NOTES: dict[str, Callable[[int], str]] = {
    **_CONTROL_NOTES,
    "VM_ENTRY_INTR_INFO_FIELD": lambda v: InterruptionInfo.decode(v).describe(),
    "VM_EXIT_INTR_INFO": lambda v: InterruptionInfo.decode(v).describe(),
    "IDT_VECTORING_INFO_FIELD": lambda v: InterruptionInfo.decode(v).describe(),
    "GUEST_ACTIVITY_STATE": describe_activity_state,
    "GUEST_INTERRUPTIBILITY_INFO": lambda v: Interruptibility.decode(v).describe(),
}


_FAST: dict[str, object] = {}   # field name -> resolved reference (full-width names only)


class Vmcs:
    """A software VMCS: revision identifier, launch state and every Appendix B field."""

    def __init__(self, revision_id: int = DEFAULT_REVISION_ID, *, shadow: bool = False) -> None:
        if not 0 <= revision_id <= REVISION_ID_MASK:
            raise ValueError(f"VMCS revision identifier {revision_id:#x} does not fit in 31 bits")
        self._revision_id = revision_id
        self._shadow = shadow
        self._launch_state = LaunchState.CLEAR
        self._values: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- header and launch state ------------------------------------------------------

    @property
    def revision_id(self) -> int:
        return self._revision_id

    @property
    def shadow(self) -> bool:
        return self._shadow

    @property
    def header(self) -> int:
        """First 32 bits of the VMCS region: revision id, bit 31 = shadow-VMCS indicator (SDM 25.2)."""
        return self._revision_id | (SHADOW_VMCS_INDICATOR if self._shadow else 0)

    @property
    def launch_state(self) -> LaunchState:
        return self._launch_state

    @property
    def launched(self) -> bool:
        return self._launch_state is LaunchState.LAUNCHED

    def clear(self) -> None:
        """VMCLEAR: launch state becomes clear (field contents are kept)."""
        self._launch_state = LaunchState.CLEAR

    def mark_launched(self) -> None:
        """A successful VMLAUNCH makes the launch state "launched"."""
        self._launch_state = LaunchState.LAUNCHED

    # -- field access -----------------------------------------------------------------

    def read(self, field: FieldSpec) -> int:
        """VMREAD by name or encoding; unknown fields raise UnknownVmcsFieldError."""
        ref = resolve(field)
        value = self._values.get(ref.field.encoding, 0)
        return value >> 32 if ref.high else value

    def write(self, field: FieldSpec, value: int) -> None:
        """VMWRITE by name or encoding; the value is masked to the field (or high-half) width."""
        ref = resolve(field)
        encoding = ref.field.encoding
        with self._lock:
            if ref.high:
                low = self._values.get(encoding, 0) & 0xFFFFFFFF
                self._values[encoding] = low | (value & 0xFFFFFFFF) << 32
            else:
                self._values[encoding] = value & ref.field.mask

    def update(self, values: Mapping[FieldSpec, int]) -> None:
        """Write several fields (one lock, resolved names cached): the guest-state save
        at every VM exit goes through here."""
        plan = []
        for field, value in values.items():
            ref = _FAST.get(field) if isinstance(field, str) else None
            if ref is None:
                ref = resolve(field)
                if isinstance(field, str) and not ref.high:
                    _FAST[field] = ref
            plan.append((ref, value))
        with self._lock:
            for ref, value in plan:
                encoding = ref.field.encoding
                if ref.high:
                    low = self._values.get(encoding, 0) & 0xFFFFFFFF
                    self._values[encoding] = low | (value & 0xFFFFFFFF) << 32
                else:
                    self._values[encoding] = value & ref.field.mask

    @staticmethod
    def plan(names: Iterable[str]) -> tuple[tuple[int, int], ...]:
        """Resolve full-width fields once for :meth:`write_planned`: (encoding, mask) pairs."""
        refs = [resolve(name) for name in names]
        if any(ref.high for ref in refs):
            raise ValueError("a write plan takes full-width fields only")
        return tuple((ref.field.encoding, ref.field.mask) for ref in refs)

    def write_planned(self, plan: tuple[tuple[int, int], ...], values: Iterable[int]) -> None:
        """VMWRITE of the planned fields, in order, under one lock: the exit-information
        fields written at every VM exit (SDM 28.2.1) go through here."""
        store = self._values
        with self._lock:
            for (encoding, mask), value in zip(plan, values):
                store[encoding] = value & mask

    __getitem__ = read
    __setitem__ = write

    def fields(self, group: str | None = None) -> Iterator[tuple[VmcsField, int]]:
        """(field, value) for every field (optionally one group), in Appendix B order."""
        _check_groups([group] if group else None)
        values = self._snapshot()
        for field in FIELDS:
            if group is None or field.group == group:
                yield field, values.get(field.encoding, 0)

    def snapshot(self) -> dict[str, int]:
        """Name -> value of every field, a consistent copy."""
        values = self._snapshot()
        return {field.name: values.get(field.encoding, 0) for field in FIELDS}

    def _snapshot(self) -> dict[int, int]:
        with self._lock:
            return dict(self._values)

    # -- dump -------------------------------------------------------------------------

    def dump(self, groups: Iterable[str] | None = None, *, skip_zero: bool = False) -> list[DumpSection]:
        """Structured dump grouped like KVM's dump_vmcs: Guest State, Host State, Control
        State, Exit Information; segments as selector / access rights / limit / base rows."""
        wanted = _check_groups(groups)
        values = self._snapshot()
        return [self._section(group, values, skip_zero) for group in GROUPS if group in wanted]

    def _section(self, group: str, values: dict[int, int], skip_zero: bool) -> DumpSection:
        segments = tuple(_segment_row(name, comps, values) for name, comps in _SEGMENT_LAYOUT.get(group, ()))
        rows = []
        for field in FIELDS:
            if field.group != group or field.encoding in _SEGMENT_ENCODINGS:
                continue
            value = values.get(field.encoding, 0)
            if skip_zero and value == 0:
                continue
            rows.append(FieldRow(field.name, field.encoding, field.bits, value, _field_note(field, value, values)))
        if skip_zero:
            segments = tuple(s for s in segments if any((s.selector, s.access_rights, s.limit, s.base)))
        return DumpSection(group, GROUP_TITLES[group], segments, tuple(rows))

    def format_dump(self, groups: Iterable[str] | None = None, *, skip_zero: bool = False) -> str:
        """Text rendering of :meth:`dump`."""
        lines: list[str] = []
        for section in self.dump(groups, skip_zero=skip_zero):
            lines.append(f"*** {section.title} ***")
            if section.segments:
                lines.append(f"{'Seg':<5} {'Selector':<8} {'AR':<8} {'Limit':<10} Base")
                for seg in section.segments:
                    lines.append(" ".join((
                        f"{seg.name:<5}", _opt_hex(seg.selector, 4, 8), _opt_hex(seg.access_rights, 5, 8),
                        _opt_hex(seg.limit, 8, 10), _opt_hex(seg.base, 16, 18),
                    )).rstrip() + (f"  {seg.note}" if seg.note else ""))
            for row in section.fields:
                text = f"{row.name:<30} = {row.value:#0{row.bits // 4 + 2}x}"
                lines.append(text + (f"  {row.note}" if row.note else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Vmcs(revision_id={self._revision_id:#x}, launch_state={self._launch_state.value})"


def _check_groups(groups: Iterable[str] | None) -> set[str]:
    if groups is None:
        return set(GROUPS)
    wanted = set(groups)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown VMCS group(s) {', '.join(sorted(unknown))}; expected {', '.join(GROUPS)}")
    return wanted


def _segment_row(name: str, comps: dict[str, VmcsField], values: dict[int, int]) -> SegmentRow:
    parts = {component: values.get(field.encoding, 0) for component, field in comps.items()}
    access_rights = parts.get("access_rights")
    note = SegmentAccessRights.decode(access_rights).describe() if access_rights is not None else ""
    return SegmentRow(name, parts.get("selector"), access_rights, parts.get("limit"), parts.get("base"), note)


def _field_note(field: VmcsField, value: int, values: dict[int, int]) -> str:
    if field.name == "VM_EXIT_REASON":
        return _exit_note(values)
    describer = _FIELD_NOTES.get(field.name)
    return describer(value) if describer else ""


def _exit_note(values: dict[int, int]) -> str:
    def get(name: str) -> int:
        return values.get(BY_NAME[name].encoding, 0)

    reason, intr_info = get("VM_EXIT_REASON"), get("VM_EXIT_INTR_INFO")
    if reason == 0 and not InterruptionInfo.decode(intr_info).valid:
        return ""  # no VM exit recorded yet
    return describe_exit(reason, get("EXIT_QUALIFICATION"), gpa=get("GUEST_PHYSICAL_ADDRESS"),
                         gla=get("GUEST_LINEAR_ADDRESS"), intr_info=intr_info,
                         error_code=get("VM_EXIT_INTR_ERROR_CODE"))


def _opt_hex(value: int | None, digits: int, column: int) -> str:
    text = "-" if value is None else f"{value:#0{digits + 2}x}"
    return f"{text:<{column}}"
