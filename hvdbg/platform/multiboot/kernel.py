"""Turning a kernel image plus its multiboot header into load segments.

Three ways to load (MB1 3.1.3, MB2 3.1.5):
* the address fields / address tag ("a.out kludge"): one contiguous chunk of
  the file, located relative to the header, plus bss;
* otherwise ELF program headers: every PT_LOAD segment at its physical address
  (p_paddr), the part beyond p_filesz zeroed.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

from hvdbg.errors import GuestLoadError
from hvdbg.platform.multiboot.header import AddressFields, MultibootHeader

ELF_MAGIC = b"\x7fELF"
ELF_CLASSES = {1: 32, 2: 64}                       # e_ident[EI_CLASS]
# Machines each multiboot version may load from ELF program headers.
ELF_MACHINES = {1: {(32, "EM_386")}, 2: {(32, "EM_386"), (64, "EM_X86_64")}}
LOAD_ADDR_FROM_FILE_START = 0xFFFFFFFF              # MB2 3.1.5 load_addr == -1


@dataclass(frozen=True)
class Segment:
    """``data`` goes to ``paddr``; bytes up to ``paddr + memsz`` are zeroed."""

    paddr: int
    data: bytes
    memsz: int
    name: str

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass
class KernelLayout:
    segments: list[Segment]
    entry: int
    is_elf: bool
    elf_class: int | None
    loaded_by: str            # "address fields", "address tag" or "ELF program headers"
    warnings: list[str] = field(default_factory=list)


def elf_class(image: bytes) -> int | None:
    """32 or 64 for an ELF file, None for anything else."""
    if image[:4] != ELF_MAGIC or len(image) < 5:
        return None
    return ELF_CLASSES.get(image[4])


def plan_kernel(image: bytes, header: MultibootHeader, name: str = "kernel") -> KernelLayout:
    """Work out what to load where and the entry point; raise GuestLoadError if impossible."""
    klass = elf_class(image)
    if header.address is not None:
        layout = _plan_address(image, header, header.address, name, klass)
    elif header.version == 1 and klass == 64:
        raise GuestLoadError(
            f"{name}: ELF64 kernel without the a.out kludge flag (bit 16): multiboot 1"
            " can only load ELF32")
    elif klass is None:
        what = "flag bit 16" if header.version == 1 else "an address tag"
        raise GuestLoadError(
            f"{name} is not an ELF file and its multiboot {header.version} header has no"
            f" address fields ({what}), so there is no way to know where to load it")
    else:
        layout = _plan_elf(image, header, name, klass)
    if header.version == 2 and header.entry_addr is not None:
        layout.entry = header.entry_addr          # MB2 3.1.6 entry address tag wins
    _check_entry(layout, name)
    return layout


def _plan_address(image: bytes, header: MultibootHeader, a: AddressFields, name: str,
                  klass: int | None) -> KernelLayout:
    """MB1 3.1.3 / MB2 3.1.5: load a file range located relative to the header."""
    where = "address fields" if header.version == 1 else "address tag"
    if header.version == 2 and a.load_addr == LOAD_ADDR_FROM_FILE_START:
        load_offset, load_addr = 0, a.header_addr - header.offset
        if load_addr < 0:
            raise GuestLoadError(f"{name}: multiboot address tag header_addr"
                                 f" {a.header_addr:#x} is below the header's file offset"
                                 f" {header.offset:#x}, so the file cannot start at it")
    else:
        if a.load_addr > a.header_addr:
            raise GuestLoadError(f"{name}: multiboot {where} load_addr {a.load_addr:#x}"
                                 f" is above header_addr {a.header_addr:#x}")
        load_offset = header.offset - (a.header_addr - a.load_addr)
        load_addr = a.load_addr
        if load_offset < 0:
            raise GuestLoadError(
                f"{name}: multiboot {where} put load_addr {a.load_addr:#x} {-load_offset}"
                f" bytes before the start of the file (header_addr {a.header_addr:#x}"
                f" is at file offset {header.offset:#x})")
    if a.load_end_addr == 0:
        size = len(image) - load_offset
    elif a.load_end_addr <= load_addr:
        raise GuestLoadError(f"{name}: multiboot {where} load_end_addr {a.load_end_addr:#x}"
                             f" is not above load_addr {load_addr:#x}")
    else:
        size = a.load_end_addr - load_addr
        if load_offset + size > len(image):
            raise GuestLoadError(
                f"{name}: multiboot {where} ask for {size:#x} bytes from file offset"
                f" {load_offset:#x} (load_addr {load_addr:#x} - load_end_addr"
                f" {a.load_end_addr:#x}) but the file is only {len(image):#x} bytes")
    memsz = size
    if a.bss_end_addr:
        if a.bss_end_addr < load_addr + size:
            raise GuestLoadError(f"{name}: multiboot {where} bss_end_addr"
                                 f" {a.bss_end_addr:#x} is below the end of the loaded"
                                 f" data {load_addr + size:#x}")
        memsz = a.bss_end_addr - load_addr
    data = bytes(image[load_offset:load_offset + size])
    segment = Segment(load_addr, data, memsz, f"image (file offset {load_offset:#x},"
                                              f" from the multiboot {where})")
    if header.entry_addr is None:
        if klass is None:
            raise GuestLoadError(f"{name}: multiboot 2 address tag without an entry"
                                 " address tag, and the file is not ELF")
        entry = _elf_file(image, name).header["e_entry"]
    else:
        entry = header.entry_addr
    return KernelLayout([segment], entry, klass is not None, klass, where)


#: What pyelftools raises for a damaged file: its own errors, its parser's, and Python's for
#: offsets or sizes it cannot seek to or read (e_phoff >= 2^63 is an OverflowError).
ELF_PARSE_ERRORS = (ELFError, ConstructError, OverflowError, ValueError, struct.error, EOFError)


def _elf_file(image: bytes, name: str) -> ELFFile:
    try:
        return ELFFile(io.BytesIO(image))
    except ELF_PARSE_ERRORS as exc:
        raise GuestLoadError(f"{name}: broken ELF file: {exc}") from None


def _plan_elf(image: bytes, header: MultibootHeader, name: str, klass: int) -> KernelLayout:
    """PT_LOAD segments at p_paddr; entry from e_entry (translated like GRUB does)."""
    elf = _elf_file(image, name)
    machine = elf.header["e_machine"]
    if not elf.little_endian or (klass, machine) not in ELF_MACHINES[header.version]:
        allowed = " or ".join(f"ELF{c} {m}" for c, m in sorted(ELF_MACHINES[header.version]))
        raise GuestLoadError(f"{name}: ELF{klass} {machine} file, multiboot"
                             f" {header.version} needs little-endian {allowed}")
    segments: list[Segment] = []
    vaddrs: list[int] = []
    try:
        phdrs = list(elf.iter_segments())
    except ELF_PARSE_ERRORS as exc:
        raise GuestLoadError(f"{name}: broken ELF program headers: {type(exc).__name__}: {exc}") from None
    for index, ph in enumerate(phdrs):
        if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
            continue
        paddr, vaddr = ph["p_paddr"], ph["p_vaddr"]
        offset, filesz, memsz = ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
        label = f"ELF segment {index} (PT_LOAD, file offset {offset:#x}, vaddr {vaddr:#x})"
        if filesz > memsz:
            raise GuestLoadError(f"{name}: {label} has p_filesz {filesz:#x} larger than"
                                 f" p_memsz {memsz:#x}")
        if offset + filesz > len(image):
            raise GuestLoadError(f"{name}: {label} needs file bytes up to"
                                 f" {offset + filesz:#x} but the file is {len(image):#x}")
        segments.append(Segment(paddr, bytes(image[offset:offset + filesz]), memsz, label))
        vaddrs.append(vaddr)
    if not segments:
        raise GuestLoadError(f"{name}: ELF file has no PT_LOAD segment to load")
    layout = KernelLayout(segments, elf.header["e_entry"], True, klass, "ELF program headers")
    _translate_virtual_entry(layout, vaddrs)
    return layout


def _translate_virtual_entry(layout: KernelLayout, vaddrs: list[int]) -> None:
    """If e_entry lies in a segment's virtual range, jump to its physical twin.

    The machine starts with paging off (MB1 3.2), so a higher-half e_entry
    cannot be jumped to; GRUB converts it through the segment that holds it.
    """
    for seg, vaddr in zip(layout.segments, vaddrs):
        if vaddr <= layout.entry < vaddr + seg.memsz:
            physical = layout.entry - vaddr + seg.paddr
            if physical != layout.entry:
                layout.warnings.append(f"ELF entry point {layout.entry:#x} is a virtual"
                                       f" address; jumping to its physical address"
                                       f" {physical:#x} instead")
                layout.entry = physical
            return


def _check_entry(layout: KernelLayout, name: str) -> None:
    if layout.entry > 0xFFFFFFFF:
        raise GuestLoadError(f"{name}: entry point {layout.entry:#x} is above 4 GiB; a"
                             " multiboot kernel starts in 32-bit protected mode")
    if not any(s.paddr <= layout.entry < s.end for s in layout.segments):
        layout.warnings.append(f"entry point {layout.entry:#x} is outside every loaded"
                               " segment")


__all__ = ["KernelLayout", "Segment", "elf_class", "plan_kernel"]
