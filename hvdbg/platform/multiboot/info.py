"""Building and decoding the boot information structure handed over in EBX.

Multiboot 1: MB1 3.3 "Boot information format" (a fixed structure with a
flags word and pointers).  Multiboot 2: MB2 "Boot information format"
(total_size, reserved, then 8-byte aligned tags ending with type 0).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hvdbg.errors import GuestMemoryError
from hvdbg.platform.multiboot import spec
from hvdbg.platform.multiboot.memmap import MEM_LOWER_KIB, MemoryRegion, mem_upper_kib
from hvdbg.arch.physmem import PhysicalMemory

MAX_STRING = 4096           # longest string parse_info reads from guest memory
MAX_ENTRIES = 1024          # most modules / mmap entries / tags parse_info decodes


@dataclass(frozen=True)
class LoadedModule:
    start: int
    end: int                # exclusive, like GRUB's mod_end
    string: str


@dataclass(frozen=True)
class InfoContent:
    """Everything the information structure reports, independent of version."""

    cmdline: str
    bootloader_name: str
    modules: Sequence[LoadedModule]
    memory_map: Sequence[MemoryRegion]


def _c_string(text: str) -> bytes:
    data = text.encode("utf-8")
    if b"\0" in data:
        raise ValueError(f"string {text!r} contains a NUL character")
    return data + b"\0"


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class _Blob:
    """A structure under construction at guest-physical address ``base``."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.data = bytearray()

    def add(self, payload: bytes, align: int = 4) -> int:
        self.data += bytes(_align(len(self.data), align) - len(self.data))
        address = self.base + len(self.data)
        self.data += payload
        return address


def build_mb1_info(base: int, content: InfoContent) -> bytes:
    """The multiboot 1 information structure and what it points to, for ``base``."""
    blob = _Blob(base)
    blob.add(bytes(spec.MB1_INFO_SIZE))
    cmdline = blob.add(_c_string(content.cmdline), 1)
    name = blob.add(_c_string(content.bootloader_name), 1)
    strings = [blob.add(_c_string(m.string), 1) for m in content.modules]
    mods = blob.add(b"".join(struct.pack("<4I", m.start, m.end, s, 0)
                             for m, s in zip(content.modules, strings)))
    mmap_bytes = b"".join(struct.pack("<IQQI", spec.MB1_MMAP_ENTRY_SIZE - 4,
                                      r.base, r.length, r.type)
                          for r in content.memory_map)
    mmap = blob.add(mmap_bytes)
    fields = {
        "flags": (spec.MB1_INFO_MEM | spec.MB1_INFO_CMDLINE | spec.MB1_INFO_MODS
                  | spec.MB1_INFO_MMAP | spec.MB1_INFO_BOOT_LOADER_NAME),
        "mem_lower": MEM_LOWER_KIB,
        "mem_upper": mem_upper_kib(content.memory_map),
        "cmdline": cmdline,
        "mods_count": len(content.modules),
        "mods_addr": mods,
        "mmap_length": len(mmap_bytes),
        "mmap_addr": mmap,
        "boot_loader_name": name,
    }
    for field_name, value in fields.items():
        struct.pack_into("<I", blob.data, spec.MB1_INFO_OFFSETS[field_name], value)
    return bytes(blob.data)


def _mb2_tag(tag_type: int, payload: bytes) -> bytes:
    return struct.pack("<II", tag_type, 8 + len(payload)) + payload


def build_mb2_info(base: int, content: InfoContent) -> bytes:
    """The multiboot 2 information structure (fixed part and tags) for ``base``."""
    if base % spec.MB2_TAG_ALIGN:
        raise ValueError(f"multiboot 2 information must be 8-byte aligned, not {base:#x}")
    tags = [
        _mb2_tag(spec.MB2_INFO_CMDLINE, _c_string(content.cmdline)),
        _mb2_tag(spec.MB2_INFO_BOOT_LOADER_NAME, _c_string(content.bootloader_name)),
        *(_mb2_tag(spec.MB2_INFO_MODULE, struct.pack("<II", m.start, m.end)
                   + _c_string(m.string)) for m in content.modules),
        _mb2_tag(spec.MB2_INFO_BASIC_MEMINFO,
                 struct.pack("<II", MEM_LOWER_KIB, mem_upper_kib(content.memory_map))),
        _mb2_tag(spec.MB2_INFO_MMAP,
                 struct.pack("<II", spec.MB2_MMAP_ENTRY_SIZE, spec.MB2_MMAP_ENTRY_VERSION)
                 + b"".join(struct.pack("<QQII", r.base, r.length, r.type, 0)
                            for r in content.memory_map)),
        _mb2_tag(0, b""),
    ]
    blob = _Blob(base)
    blob.add(bytes(8))
    for tag in tags:
        blob.add(tag, spec.MB2_TAG_ALIGN)
    struct.pack_into("<II", blob.data, 0, len(blob.data), 0)
    return bytes(blob.data)


def build_info(version: int, base: int, content: InfoContent) -> bytes:
    return build_mb1_info(base, content) if version == 1 else build_mb2_info(base, content)


# --------------------------------------------------------------------------
# Decoding what the guest received
# --------------------------------------------------------------------------

class _Reader:
    """Reads guest memory for parse_info, turning bad pointers into problems."""

    def __init__(self, mem: PhysicalMemory) -> None:
        self.mem = mem
        self.problems: list[str] = []

    def words(self, fmt: str, addr: int, what: str) -> tuple[int, ...] | None:
        try:
            return struct.unpack(fmt, self.mem.read(addr, struct.calcsize(fmt)))
        except GuestMemoryError:
            self.problems.append(f"{what} at {addr:#x} is not in guest memory")
            return None

    def string(self, addr: int, what: str) -> str | None:
        data = bytearray()
        while len(data) < MAX_STRING:
            try:
                byte = self.mem.read(addr + len(data), 1)
            except GuestMemoryError:
                self.problems.append(f"{what} at {addr:#x} runs out of guest memory")
                return None
            if byte == b"\0":
                return data.decode("utf-8", "replace")
            data += byte
        self.problems.append(f"{what} at {addr:#x} has no NUL in {MAX_STRING} bytes")
        return data.decode("utf-8", "replace")


def parse_info(mem: PhysicalMemory, addr: int, version: int) -> dict[str, Any]:
    """Decode the boot information at ``addr`` as the guest sees it now.

    Raises GuestMemoryError only if the fixed part itself is unreadable; bad
    pointers inside are listed under ``"problems"``.
    """
    if version == 1:
        return _parse_mb1(mem, addr)
    if version == 2:
        return _parse_mb2(mem, addr)
    raise ValueError(f"multiboot version must be 1 or 2, not {version}")


def _parse_mb1(mem: PhysicalMemory, addr: int) -> dict[str, Any]:
    raw = mem.read(addr, spec.MB1_INFO_SIZE)
    # Every field before vbe_mode is a u32; the VBE and framebuffer parts are
    # decoded separately below.
    field_at = {name: struct.unpack_from("<I", raw, off)[0]
                for name, off in spec.MB1_INFO_OFFSETS.items()
                if off < spec.MB1_INFO_OFFSETS["vbe_mode"]}
    flags = field_at["flags"]
    reader = _Reader(mem)
    info: dict[str, Any] = {"version": 1, "address": addr, "flags": flags,
                            "flag_names": spec.bit_names(flags, spec.MB1_INFO_FLAG_NAMES)}
    if flags & 1 << 0:
        info["mem_lower"], info["mem_upper"] = field_at["mem_lower"], field_at["mem_upper"]
    if flags & 1 << 1:
        info["boot_device"] = field_at["boot_device"]
    if flags & 1 << 2:
        info["cmdline"] = reader.string(field_at["cmdline"], "cmdline")
    if flags & 1 << 3:
        info["modules"] = _mb1_modules(reader, field_at["mods_addr"], field_at["mods_count"])
    if flags & 1 << 4 or flags & 1 << 5:
        info["syms"] = struct.unpack_from("<4I", raw, spec.MB1_INFO_OFFSETS["syms"])
    if flags & 1 << 6:
        info["mmap_addr"], info["mmap_length"] = field_at["mmap_addr"], field_at["mmap_length"]
        info["mmap"] = _mb1_mmap(reader, field_at["mmap_addr"], field_at["mmap_length"])
    if flags & 1 << 7:
        info["drives_addr"] = field_at["drives_addr"]
        info["drives_length"] = field_at["drives_length"]
    if flags & 1 << 8:
        info["config_table"] = field_at["config_table"]
    if flags & 1 << 9:
        info["boot_loader_name"] = reader.string(field_at["boot_loader_name"],
                                                 "boot_loader_name")
    if flags & 1 << 10:
        info["apm_table"] = field_at["apm_table"]
    if flags & 1 << 11:
        info["vbe"] = dict(zip(("control_info", "mode_info", "mode", "interface_seg",
                                "interface_off", "interface_len"),
                               struct.unpack_from("<IIHHHH", raw, 72)))
    if flags & 1 << 12:
        info["framebuffer"] = dict(zip(("addr", "pitch", "width", "height", "bpp", "type"),
                                       struct.unpack_from("<QIIIBB", raw, 88)))
    info["problems"] = reader.problems
    return info


def _mb1_modules(reader: _Reader, addr: int, count: int) -> list[dict[str, Any]]:
    modules = []
    for index in range(min(count, MAX_ENTRIES)):
        entry = reader.words("<4I", addr + index * spec.MB1_MODULE_ENTRY_SIZE,
                             f"module {index} entry")
        if entry is None:
            break
        start, end, string_addr, _ = entry
        modules.append({"start": start, "end": end,
                        "string": reader.string(string_addr, f"module {index} string")})
    return modules


def _mmap_entry(base: int, length: int, mtype: int) -> dict[str, Any]:
    return {"base": base, "length": length, "end": base + length, "type": mtype,
            "type_name": spec.MMAP_TYPE_NAMES.get(mtype, "reserved")}


def _mb1_mmap(reader: _Reader, addr: int, length: int) -> list[dict[str, Any]]:
    """MB1 mmap entries: ``size`` does not count itself; the next entry is at +size+4."""
    entries: list[dict[str, Any]] = []
    pos = addr
    while pos < addr + length and len(entries) < MAX_ENTRIES:
        entry = reader.words("<IQQI", pos, "mmap entry")
        if entry is None:
            break
        size, base, region_length, mtype = entry
        if size < 20:
            reader.problems.append(f"mmap entry at {pos:#x} has size {size} (< 20)")
            break
        entries.append(_mmap_entry(base, region_length, mtype))
        pos += size + 4
    return entries


def _parse_mb2(mem: PhysicalMemory, addr: int) -> dict[str, Any]:
    total_size, reserved = struct.unpack("<II", mem.read(addr, 8))
    reader = _Reader(mem)
    if addr % spec.MB2_TAG_ALIGN:
        reader.problems.append(f"information structure at {addr:#x} is not 8-byte aligned")
    info: dict[str, Any] = {"version": 2, "address": addr, "total_size": total_size,
                            "reserved": reserved, "tags": [], "modules": []}
    pos, end = addr + 8, addr + total_size
    while pos + 8 <= end and len(info["tags"]) < MAX_ENTRIES:
        header = reader.words("<II", pos, "tag")
        if header is None:
            break
        tag_type, size = header
        if size < 8 or pos + size > end:
            reader.problems.append(f"tag {tag_type} at {pos:#x} has impossible size {size}")
            break
        tag = {"type": tag_type, "size": size, "address": pos,
               "name": spec.MB2_INFO_TAG_NAMES.get(tag_type, f"unknown tag {tag_type}")}
        tag.update(_decode_mb2_tag(reader, tag_type, pos, size))
        info["tags"].append(tag)
        _summarise_mb2_tag(info, tag)
        if tag_type == 0:
            break
        pos += _align(size, spec.MB2_TAG_ALIGN)
    else:
        reader.problems.append("no end tag (type 0) within total_size")
    info["problems"] = reader.problems
    return info


# Fixed fields of the multiboot 2 information tags after type and size.
_MB2_TAG_FIELDS: dict[int, tuple[str, tuple[str, ...]]] = {
    4: ("<II", ("mem_lower", "mem_upper")),
    5: ("<III", ("biosdev", "partition", "sub_partition")),
    8: ("<QIIIBB", ("framebuffer_addr", "framebuffer_pitch", "framebuffer_width",
                    "framebuffer_height", "framebuffer_bpp", "framebuffer_type")),
    9: ("<HHH", ("num", "entsize", "shndx")),
    10: ("<HHIHHHHH", ("version", "cseg", "offset", "cseg_16", "dseg", "flags",
                       "cseg_len", "cseg_16_len")),
    11: ("<I", ("pointer",)),
    12: ("<Q", ("pointer",)),
    13: ("<BB", ("major", "minor")),
    17: ("<II", ("descriptor_size", "descriptor_version")),
    19: ("<I", ("pointer",)),
    20: ("<Q", ("pointer",)),
    21: ("<I", ("load_base_addr",)),
}


def _decode_mb2_tag(reader: _Reader, tag_type: int, pos: int, size: int) -> dict[str, Any]:
    """The fields of one information tag, by type."""
    if tag_type in (spec.MB2_INFO_CMDLINE, spec.MB2_INFO_BOOT_LOADER_NAME):
        return {"string": reader.string(pos + 8, spec.MB2_INFO_TAG_NAMES[tag_type])}
    if tag_type == spec.MB2_INFO_MODULE:
        bounds = reader.words("<II", pos + 8, "module tag")
        if bounds is None:
            return {}
        return {"start": bounds[0], "end": bounds[1],
                "string": reader.string(pos + 16, "module string")}
    if tag_type == spec.MB2_INFO_MMAP:
        return _mb2_mmap(reader, pos, size)
    layout = _MB2_TAG_FIELDS.get(tag_type)
    if layout is None or 8 + struct.calcsize(layout[0]) > size:
        return {}
    values = reader.words(layout[0], pos + 8, spec.MB2_INFO_TAG_NAMES[tag_type])
    return dict(zip(layout[1], values)) if values else {}


def _mb2_mmap(reader: _Reader, pos: int, size: int) -> dict[str, Any]:
    header = reader.words("<II", pos + 8, "memory map tag")
    if header is None:
        return {}
    entry_size, entry_version = header
    fields: dict[str, Any] = {"entry_size": entry_size, "entry_version": entry_version,
                              "entries": []}
    if entry_size < 24:
        reader.problems.append(f"memory map entry_size {entry_size} is below 24")
        return fields
    for entry_pos in range(pos + 16, pos + size - entry_size + 1, entry_size):
        entry = reader.words("<QQI", entry_pos, "memory map entry")
        if entry is None or len(fields["entries"]) >= MAX_ENTRIES:
            break
        fields["entries"].append(_mmap_entry(*entry))
    return fields


def _summarise_mb2_tag(info: dict[str, Any], tag: dict[str, Any]) -> None:
    """Lift the common tags to the same top-level keys parse_info uses for MB1."""
    kind = tag["type"]
    if kind == spec.MB2_INFO_CMDLINE:
        info["cmdline"] = tag.get("string")
    elif kind == spec.MB2_INFO_BOOT_LOADER_NAME:
        info["boot_loader_name"] = tag.get("string")
    elif kind == spec.MB2_INFO_MODULE and "start" in tag:
        info["modules"].append({k: tag[k] for k in ("start", "end", "string")})
    elif kind == spec.MB2_INFO_BASIC_MEMINFO and "mem_lower" in tag:
        info["mem_lower"], info["mem_upper"] = tag["mem_lower"], tag["mem_upper"]
    elif kind == spec.MB2_INFO_MMAP:
        info["mmap"] = tag.get("entries", [])


def format_info(info: dict[str, Any]) -> list[str]:
    """Human-readable lines for a parse_info result (the shell's ``mb`` command)."""
    lines = [f"multiboot {info['version']} information at {info['address']:#x}"]
    if info["version"] == 1:
        lines.append(f"  flags {info['flags']:#x}: {', '.join(info['flag_names']) or 'none'}")
    else:
        lines.append(f"  total_size {info['total_size']}, tags: "
                     + ", ".join(f"{t['type']} ({t['name']})" for t in info["tags"]))
    if "mem_lower" in info:
        lines.append(f"  mem_lower {info['mem_lower']} KiB, mem_upper {info['mem_upper']} KiB")
    if "cmdline" in info:
        lines.append(f"  cmdline {info['cmdline']!r}")
    if "boot_loader_name" in info:
        lines.append(f"  boot loader {info['boot_loader_name']!r}")
    for index, mod in enumerate(info.get("modules", [])):
        lines.append(f"  module {index}: {mod['start']:#x}-{mod['end']:#x} {mod['string']!r}")
    for entry in info.get("mmap", []):
        lines.append(f"  mmap {entry['base']:#014x}-{entry['end']:#014x}"
                     f" {entry['type_name']} ({entry['type']})")
    lines += [f"  problem: {p}" for p in info["problems"]]
    return lines
