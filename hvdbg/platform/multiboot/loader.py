"""Loading a multiboot kernel and its modules into guest memory.

Puts the kernel where its header or ELF program headers say, the modules
page-aligned above it, then the boot information structure, and returns the
register values of the machine state at the entry point (MB1 3.2, MB2 3.3):
EAX = bootloader magic, EBX = physical address of the information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hvdbg.errors import GuestLoadError, GuestMemoryError
from hvdbg.platform.multiboot import spec
from hvdbg.platform.multiboot.header import MultibootHeader, find_header, format_header
from hvdbg.platform.multiboot.info import InfoContent, LoadedModule, build_info
from hvdbg.platform.multiboot.kernel import Segment, plan_kernel
from hvdbg.platform.multiboot.memmap import (
    HIGH_MEMORY_START, LEGACY_BIOS_AREA, Interval, MemoryRegion, check_ranges, memory_map)
from hvdbg.arch.physmem import PhysicalMemory

PAGE_SIZE = 0x1000
FOUR_GIB = 1 << 32
ZERO_CHUNK = 1 << 20


@dataclass
class BootInfo:
    """What load() did, and the registers the kernel must be entered with."""

    version: int
    entry: int
    eax: int
    ebx: int
    header: MultibootHeader
    segments: list[tuple[int, int, int]]        # (paddr, filesz, memsz)
    info_range: tuple[int, int]                 # [start, end) of the information
    image_end: int                              # end of the highest kernel segment
    modules: list[tuple[int, int, str]]         # (start, end exclusive, string)
    is_elf: bool
    elf_class: int | None                       # 32, 64 or None
    loaded_by: str                              # address fields/tag or ELF program headers
    memory_map: list[MemoryRegion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Blocked:
    start: int
    end: int
    label: str


def load(image: bytes, mem: PhysicalMemory, ram_size: int, cmdline: str = "",
         modules: Sequence[tuple[bytes, str]] = (), magic: int | None = None,
         reserved: Sequence[Interval] = (), bootloader_name: str = "hvdbg", *,
         version: int | None = None, name: str = "kernel") -> BootInfo:
    """Load a multiboot kernel into guest RAM ``[0, ram_size)`` of ``mem``.

    ``reserved`` holds ``(start, end)`` ranges (end exclusive) the guest must
    not use; they are kept free and reported as reserved in the memory map.
    ``magic`` overrides the EAX value (default: the correct bootloader magic).
    ``version`` forces multiboot 1 or 2 when the image carries both headers;
    ``name`` appears in error messages.  Raises GuestLoadError.
    """
    if ram_size <= HIGH_MEMORY_START:
        raise GuestLoadError(f"guest RAM of {ram_size:#x} bytes is too small: multiboot"
                             " needs memory above 1 MiB for the boot information")
    reserved = check_ranges(reserved)
    header = find_header(image, version)
    if header is None:
        raise GuestLoadError(_no_header_message(name, version))
    if header.problems:
        raise GuestLoadError(f"{name}: " + "; ".join(header.problems))
    layout = plan_kernel(image, header, name)
    blocked = _blocked_ranges(reserved)
    _check_segments(layout.segments, ram_size, blocked, name)
    for segment in layout.segments:
        _write_segment(mem, segment, name)
    image_end = max(s.end for s in layout.segments)

    cursor = max(image_end, HIGH_MEMORY_START)
    loaded: list[LoadedModule] = []
    for index, (data, string) in enumerate(modules):
        what = f"module {index} ({string!r}, {len(data)} bytes)"
        start = _place(cursor, len(data), ram_size, blocked, what)
        _write(mem, start, bytes(data), what)
        loaded.append(LoadedModule(start, start + len(data), string))
        cursor = start + len(data)

    regions = memory_map(ram_size, reserved)
    try:
        content = InfoContent(cmdline, bootloader_name, loaded, regions)
        size = len(build_info(header.version, 0, content))
    except ValueError as exc:
        raise GuestLoadError(f"{name}: cannot build the boot information: {exc}") from None
    base = _place(cursor, size, ram_size, blocked, "boot information")
    blob = build_info(header.version, base, content)
    _write(mem, base, blob, "boot information")

    correct = spec.BOOTLOADER_MAGIC[header.version]
    eax = correct if magic is None else magic & 0xFFFFFFFF
    warnings = header.warnings + layout.warnings + _relocation_warnings(header, layout.segments)
    if eax != correct:
        warnings.append(describe_magic(eax, header.version))
    return BootInfo(
        version=header.version, entry=layout.entry, eax=eax, ebx=base, header=header,
        segments=[(s.paddr, len(s.data), s.memsz) for s in layout.segments],
        info_range=(base, base + len(blob)), image_end=image_end,
        modules=[(m.start, m.end, m.string) for m in loaded],
        is_elf=layout.is_elf, elf_class=layout.elf_class, loaded_by=layout.loaded_by,
        memory_map=regions, warnings=warnings)


def _no_header_message(name: str, version: int | None) -> str:
    if version is None:
        return (f"kernel {name}: no multiboot header in the first {spec.SEARCH_LIMIT[1]} bytes (multiboot 1)"
                f" or {spec.SEARCH_LIMIT[2]} bytes (multiboot 2): not a multiboot kernel")
    return (f"kernel {name}: no multiboot {version} header in the first {spec.SEARCH_LIMIT[version]}"
            f" bytes")


def _blocked_ranges(reserved: Sequence[Interval]) -> list[_Blocked]:
    """Ranges no kernel byte, module or information may touch."""
    start, end = LEGACY_BIOS_AREA
    blocked = [_Blocked(start, end, f"the legacy BIOS area {start:#x}-{end:#x}")]
    blocked += [_Blocked(s, e, f"reserved range {s:#x}-{e:#x}") for s, e in reserved]
    return blocked


def _check_segments(segments: Sequence[Segment], ram_size: int,
                    blocked: Sequence[_Blocked], name: str) -> None:
    """Every segment inside RAM, clear of reserved ranges and of each other."""
    for seg in segments:
        where = f"{name}: {seg.name} at {seg.paddr:#x}-{seg.end:#x}"
        if seg.end > ram_size:
            raise GuestLoadError(f"{where} does not fit in guest RAM 0x0-{ram_size:#x}")
        for b in blocked:
            if seg.paddr < b.end and b.start < seg.end:
                raise GuestLoadError(f"{where} overlaps {b.label}")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for low, high in zip(ordered, ordered[1:]):
        if high.paddr < low.end:
            raise GuestLoadError(f"{name}: {low.name} at {low.paddr:#x}-{low.end:#x}"
                                 f" overlaps {high.name} at {high.paddr:#x}-{high.end:#x}")


def _write(mem: PhysicalMemory, addr: int, data: bytes, what: str) -> None:
    try:
        mem.write(addr, data)
    except GuestMemoryError as exc:
        raise GuestLoadError(f"cannot write {what} at {addr:#x}: {exc}") from None


def _write_segment(mem: PhysicalMemory, seg: Segment, name: str) -> None:
    """Copy the file bytes and zero the rest up to memsz (bss)."""
    what = f"{name} {seg.name}"
    _write(mem, seg.paddr, seg.data, what)
    for addr in range(seg.paddr + len(seg.data), seg.end, ZERO_CHUNK):
        _write(mem, addr, bytes(min(ZERO_CHUNK, seg.end - addr)), what)


def _align_up(value: int, alignment: int = PAGE_SIZE) -> int:
    return (value + alignment - 1) // alignment * alignment


def _place(cursor: int, size: int, ram_size: int, blocked: Sequence[_Blocked],
           what: str) -> int:
    """Lowest page-aligned address >= cursor where ``size`` bytes avoid ``blocked``."""
    start = _align_up(cursor)
    moved = True
    while moved:
        moved = False
        for b in blocked:
            if start < b.end and b.start < start + max(size, 1):
                start, moved = _align_up(b.end), True
    if start + size > min(ram_size, FOUR_GIB):
        limit = "guest RAM" if ram_size <= FOUR_GIB else "the first 4 GiB"
        raise GuestLoadError(f"{what} does not fit in {limit}: it would occupy"
                             f" {start:#x}-{start + size:#x}, RAM ends at"
                             f" {min(ram_size, FOUR_GIB):#x}")
    return start


def _relocation_warnings(header: MultibootHeader, segments: Sequence[Segment]) -> list[str]:
    """hvdbg never relocates; say so if the link address is outside the allowed window."""
    reloc = header.relocatable
    if reloc is None:
        return []
    low, high = min(s.paddr for s in segments), max(s.end for s in segments)
    if reloc.min_addr <= low and high <= reloc.max_addr + 1:
        return []
    return [f"kernel loaded at its link address {low:#x}-{high:#x}, outside the"
            f" relocatable window {reloc.min_addr:#x}-{reloc.max_addr:#x} (hvdbg does"
            " not relocate)"]


def describe_magic(eax: int, version: int) -> str:
    """One sentence about an EAX value at the entry of a multiboot ``version`` kernel."""
    expected = spec.BOOTLOADER_MAGIC[version]
    ref = f"({spec.SPEC_NAME[version]}, {spec.MACHINE_STATE_SECTION[version]})"
    if eax == expected:
        return (f"EAX = {eax:#x} is the multiboot {version} bootloader magic the kernel"
                f" expects {ref}")
    what = "not a multiboot magic value"
    for other in (1, 2):
        if eax == spec.HEADER_MAGIC[other]:
            what = f"the multiboot {other} *header* magic"
        elif eax == spec.BOOTLOADER_MAGIC[other]:
            what = (f"the multiboot {other} bootloader magic, but the kernel was loaded"
                    f" through its multiboot {version} header")
    return f"EAX = {eax:#x} is {what}; the bootloader must pass {expected:#x} {ref}"


def format_boot_info(boot: BootInfo) -> list[str]:
    """Human-readable summary of a load, for the shell and the CLI."""
    elf = f"ELF{boot.elf_class}" if boot.is_elf else "not ELF"
    lines = format_header(boot.header)
    lines.append(f"loaded by {boot.loaded_by} ({elf}); entry {boot.entry:#x},"
                 f" EAX {boot.eax:#x}, EBX {boot.ebx:#x}")
    for paddr, filesz, memsz in boot.segments:
        lines.append(f"  segment {paddr:#x}-{paddr + memsz:#x}"
                     f" (file {filesz:#x} bytes, memory {memsz:#x} bytes)")
    for start, end, string in boot.modules:
        lines.append(f"  module {start:#x}-{end:#x} {string!r}")
    lines.append(f"  boot information {boot.info_range[0]:#x}-{boot.info_range[1]:#x}")
    lines += [f"  warning: {w}" for w in boot.warnings if w not in boot.header.warnings]
    return lines
