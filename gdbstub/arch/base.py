"""Architecture descriptions: register layout and GDB target description XML.

The register layout is the order of registers in the ``g``/``G`` packets and the
numbering used by ``p``/``P``; it is the order of ``<reg>`` elements in the target
description (GDB manual, "Target Descriptions" -> "Target Description Format").
Values are exchanged with targets as ``{name: int | bytes}``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal, Mapping, Union
from xml.sax.saxutils import quoteattr

RegisterValue = Union[int, bytes]

#: The file GDB asks for first with ``qXfer:features:read:target.xml``.
TARGET_XML = "target.xml"


class RegisterFormatError(ValueError):
    """A register value sent by GDB is not valid hex of the right size."""


# ------------------------------------------------------------------ type definitions


@dataclass(frozen=True)
class FlagField:
    name: str
    start: int
    end: int


@dataclass(frozen=True)
class FlagsType:
    """``<flags>``: a register type whose bit fields GDB prints by name."""

    id: str
    size: int  # bytes
    fields: tuple[FlagField, ...]

    def to_xml(self) -> str:
        lines = [f"  <flags id={quoteattr(self.id)} size=\"{self.size}\">"]
        lines += [
            f"    <field name={quoteattr(f.name)} start=\"{f.start}\" end=\"{f.end}\"/>"
            for f in self.fields
        ]
        lines.append("  </flags>")
        return "\n".join(lines)


@dataclass(frozen=True)
class VectorType:
    id: str
    element_type: str
    count: int

    def to_xml(self) -> str:
        return (
            f"  <vector id={quoteattr(self.id)} type={quoteattr(self.element_type)}"
            f" count=\"{self.count}\"/>"
        )


@dataclass(frozen=True)
class UnionType:
    id: str
    fields: tuple[tuple[str, str], ...]  # (field name, type id)

    def to_xml(self) -> str:
        lines = [f"  <union id={quoteattr(self.id)}>"]
        lines += [
            f"    <field name={quoteattr(name)} type={quoteattr(type_)}/>"
            for name, type_ in self.fields
        ]
        lines.append("  </union>")
        return "\n".join(lines)


TypeDef = Union[FlagsType, VectorType, UnionType]


# ------------------------------------------------------------------ registers / features


@dataclass(frozen=True)
class RegisterDef:
    """One register of the layout.

    ``kind`` says how values are exchanged with the target: ``"int"`` (an unsigned
    integer of ``bitsize`` bits) or ``"bytes"`` (raw little/big-endian bytes, used
    for x87 80-bit and vector registers).
    """

    name: str
    bitsize: int
    type: str = "int"
    group: str | None = None
    kind: Literal["int", "bytes"] = "int"

    @property
    def size(self) -> int:
        return (self.bitsize + 7) // 8

    def to_xml(self, regnum: int | None = None) -> str:
        attrs = [
            f"name={quoteattr(self.name)}",
            f"bitsize=\"{self.bitsize}\"",
            f"type={quoteattr(self.type)}",
        ]
        if regnum is not None:
            attrs.append(f"regnum=\"{regnum}\"")
        if self.group is not None:
            attrs.append(f"group={quoteattr(self.group)}")
        return f"  <reg {' '.join(attrs)}/>"


@dataclass(frozen=True)
class Feature:
    """A ``<feature>`` document, served as its own ``qXfer:features`` annex."""

    name: str
    filename: str
    registers: tuple[RegisterDef, ...]
    types: tuple[TypeDef, ...] = ()

    def to_xml(self, first_regnum: int) -> str:
        lines = [
            '<?xml version="1.0"?>',
            '<!DOCTYPE feature SYSTEM "gdb-target.dtd">',
            f"<feature name={quoteattr(self.name)}>",
        ]
        lines += [t.to_xml() for t in self.types]
        lines += [
            reg.to_xml(first_regnum if i == 0 else None) for i, reg in enumerate(self.registers)
        ]
        lines.append("</feature>")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Arch:
    """A complete register layout plus the target description that announces it."""

    architecture: str  # GDB's BFD architecture name, e.g. "i386:x86-64"
    features: tuple[Feature, ...]
    pc_register: str
    byteorder: Literal["little", "big"] = "little"
    #: registers every ``T`` stop reply carries ("expedited", as gdbserver does: the pc and
    #: the frame and stack pointers), so gdb can show where it stopped without a ``g``
    expedite: tuple[str, ...] = ()
    registers: tuple[RegisterDef, ...] = field(init=False)
    _index: Mapping[str, int] = field(init=False, repr=False)
    #: (name, size, value mask) per register, in order: the ``g`` reply's encoding plan
    _plan: tuple[tuple[str, int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        regs = tuple(r for f in self.features for r in f.registers)
        object.__setattr__(self, "registers", regs)
        index = {r.name: i for i, r in enumerate(regs)}
        if len(index) != len(regs):
            raise ValueError("duplicate register names in layout")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_plan", tuple((r.name, r.size, (1 << (8 * r.size)) - 1) for r in regs))

    # ---- layout queries

    def regnum(self, name: str) -> int:
        return self._index[name]

    def register(self, regnum: int) -> RegisterDef:
        return self.registers[regnum]

    @functools.cached_property
    def hex_spans(self) -> Mapping[str, tuple[int, int]]:
        """Each register's ``[start, end)`` in the hex digits of a full ``g`` reply."""
        spans: dict[str, tuple[int, int]] = {}
        at = 0
        for r in self.registers:
            spans[r.name] = (at, at + 2 * r.size)
            at += 2 * r.size
        return spans

    @functools.cached_property
    def g_packet_size(self) -> int:
        """Bytes of register data in a full ``g`` reply."""
        return sum(r.size for r in self.registers)

    # ---- value encoding (target byte order, two hex digits per byte)

    def encode_value(self, reg: RegisterDef, value: RegisterValue | None) -> bytes:
        """Hex for one register; ``None`` gives ``xx..`` (GDB: "unavailable")."""
        if value is None:
            return b"xx" * reg.size
        if isinstance(value, (bytes, bytearray)):
            raw = bytes(value)
            if len(raw) != reg.size:
                raise ValueError(f"{reg.name}: expected {reg.size} bytes, got {len(raw)}")
        else:
            raw = (int(value) & ((1 << (reg.size * 8)) - 1)).to_bytes(reg.size, self.byteorder)
        return raw.hex().encode()

    def decode_value(self, reg: RegisterDef, text: bytes) -> RegisterValue:
        if len(text) != 2 * reg.size:
            raise RegisterFormatError(f"{reg.name}: expected {2 * reg.size} hex digits")
        try:
            raw = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RegisterFormatError(f"{reg.name}: not hex") from exc
        if reg.kind == "bytes":
            return raw
        return int.from_bytes(raw, self.byteorder)

    def encode_registers(self, values: Mapping[str, RegisterValue]) -> bytes:
        """A full ``g`` reply; registers missing from ``values`` read as unavailable.

        The raw bytes are gathered first and hexed once (gdb asks for ``g`` after every
        stop and step: this is on the stepi round trip)."""
        parts: list[bytes] = []
        raw = bytearray()
        order = self.byteorder
        for name, size, mask in self._plan:
            value = values.get(name)
            if value is None:
                parts += [raw.hex().encode(), b"xx" * size]
                raw = bytearray()
            elif isinstance(value, (bytes, bytearray)):
                if len(value) != size:
                    raise ValueError(f"{name}: expected {size} bytes, got {len(value)}")
                raw += value
            else:
                raw += (int(value) & mask).to_bytes(size, order)
        parts.append(raw.hex().encode())
        return b"".join(parts)

    def decode_registers(self, text: bytes) -> dict[str, RegisterValue]:
        """Parse a ``G`` payload; a shorter payload sets only the leading registers."""
        values: dict[str, RegisterValue] = {}
        pos = 0
        for reg in self.registers:
            width = 2 * reg.size
            if pos >= len(text):
                break
            chunk = text[pos : pos + width]
            pos += width
            if chunk == b"x" * width:
                continue  # unavailable: leave unchanged
            values[reg.name] = self.decode_value(reg, chunk)
        if pos < len(text):
            raise RegisterFormatError("G packet longer than the register layout")
        return values

    # ---- target description

    def xml_files(self) -> dict[str, str]:
        """Every annex served by ``qXfer:features:read``, keyed by file name."""
        files = {TARGET_XML: self._target_xml()}
        regnum = 0
        for feature in self.features:
            files[feature.filename] = feature.to_xml(regnum)
            regnum += len(feature.registers)
        return files

    def _target_xml(self) -> str:
        lines = [
            '<?xml version="1.0"?>',
            '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
            '<target version="1.0">',
            f"  <architecture>{self.architecture}</architecture>",
        ]
        lines += [f'  <xi:include href="{f.filename}"/>' for f in self.features]
        lines.append("</target>")
        return "\n".join(lines) + "\n"
