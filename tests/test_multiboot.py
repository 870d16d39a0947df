"""Tests for the multiboot 1/2 loader.

Kernels are assembled at run time with GNU as / ld (32- and 64-bit), or
crafted byte by byte with struct for the cases a linker would not produce.
Expected values come from the specifications and from reading the produced
ELF files independently with pyelftools.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from hvdbg.errors import GuestLoadError, GuestMemoryError
from hvdbg.platform.multiboot import (
    MB1_BOOTLOADER_MAGIC, MB1_HEADER_MAGIC, MB2_BOOTLOADER_MAGIC, MB2_HEADER_MAGIC,
    describe_magic, find_header, find_headers, format_boot_info, format_header,
    format_info, load, memory_map, parse_info)
from hvdbg.arch.physmem import RegionMemory, read_u32, write_u32

MiB = 1 << 20
RAM_SIZE = 64 * MiB
FILL = 0xCC          # RAM is pre-filled so zeroed bss is visible

needs_binutils = pytest.mark.skipif(
    shutil.which("as") is None or shutil.which("ld") is None, reason="GNU binutils missing")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

@pytest.fixture
def ram() -> RegionMemory:
    mem = RegionMemory()
    mem.add_region(0, bytearray([FILL]) * RAM_SIZE)
    return mem


def build(tmp_path: Path, source: str, script: str, bits: int = 32) -> bytes:
    """Assemble and link a tiny kernel, return the ELF file bytes."""
    (tmp_path / "k.S").write_text(source)
    (tmp_path / "k.ld").write_text(script)
    emulation = "elf_i386" if bits == 32 else "elf_x86_64"
    subprocess.run(["as", f"--{bits}", "-o", "k.o", "k.S"], cwd=tmp_path, check=True)
    subprocess.run(["ld", "-m", emulation, "-z", "max-page-size=0x1000",
                    "--no-warn-rwx-segments", "-T", "k.ld", "-o", "k.elf", "k.o"],
                   cwd=tmp_path, check=True)
    return (tmp_path / "k.elf").read_bytes()


def symbol(image: bytes, name: str) -> int:
    elf = ELFFile(io.BytesIO(image))
    [sym] = elf.get_section_by_name(".symtab").get_symbol_by_name(name)
    return sym["st_value"]


def load_segments(image: bytes) -> list[tuple[int, bytes, int]]:
    """(p_paddr, file bytes, p_memsz) of every PT_LOAD, read independently."""
    elf = ELFFile(io.BytesIO(image))
    return [(ph["p_paddr"], ph.data(), ph["p_memsz"]) for ph in elf.iter_segments()
            if ph["p_type"] == "PT_LOAD"]


def mb1_header(flags: int, *address: int, checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = -(MB1_HEADER_MAGIC + flags) & 0xFFFFFFFF
    return struct.pack(f"<3I{len(address)}I", MB1_HEADER_MAGIC, flags, checksum, *address)


def mb2_tag(tag_type: int, payload: bytes = b"", optional: bool = False) -> bytes:
    tag = struct.pack("<HHI", tag_type, int(optional), 8 + len(payload)) + payload
    return tag + bytes(-len(tag) % 8)


def mb2_header(*tags: bytes, arch: int = 0, bad_checksum: bool = False) -> bytes:
    body = b"".join(tags) + mb2_tag(0)
    length = 16 + len(body)
    checksum = -(MB2_HEADER_MAGIC + arch + length) & 0xFFFFFFFF
    return struct.pack("<4I", MB2_HEADER_MAGIC, arch, length,
                       checksum ^ bad_checksum) + body


MB1_ELF32_SOURCE = """
.set MAGIC, 0x1BADB002
.set FLAGS, 0x3
.section .multiboot, "a"
.align 4
.long MAGIC, FLAGS, -(MAGIC + FLAGS)
.text
.globl _start
_start:
    mov $stack_top, %esp
    cli
1:  hlt
    jmp 1b
.data
.globl message
message: .ascii "hello from the data segment"
.bss
.align 16
stack: .skip 0x2000
stack_top:
"""

IDENTITY_SCRIPT = """
ENTRY(_start)
SECTIONS {
  . = 0x100000;
  .text : { *(.multiboot) *(.multiboot2) *(.text*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
}
"""

HIGHER_HALF_SCRIPT = """
ENTRY(_start)
SECTIONS {
  . = 0xC0100000;
  .text : AT(0x100000) { *(.multiboot) *(.text*) }
  .data : AT(ADDR(.data) - 0xC0000000) { *(.data*) }
  .bss : AT(ADDR(.bss) - 0xC0000000) { *(.bss*) }
}
"""

# Like ArceOS: an ELF64 linked in the higher half whose multiboot 1 header
# uses the a.out kludge to give physical load addresses and a 32-bit entry.
MB1_KLUDGE_ELF64_SOURCE = """
.set MAGIC, 0x1BADB002
.set FLAGS, 0x00010002
.set KOFF, 0xffffffff80000000
.section .multiboot, "a"
.align 4
mb_header:
.long MAGIC, FLAGS, -(MAGIC + FLAGS)
.long mb_header - KOFF, _skernel - KOFF, _edata - KOFF, _ebss - KOFF, entry32 - KOFF
.text
.code32
.globl entry32
entry32:
    cli
1:  hlt
    jmp 1b
.code64
.globl entry64
entry64:
    hlt
.data
message: .ascii "64-bit kernel data"
.bss
.skip 0x3000
"""

KLUDGE_ELF64_SCRIPT = """
KOFF = 0xffffffff80000000;
ENTRY(entry64)
SECTIONS {
  . = KOFF + 0x200000;
  _skernel = .;
  .text : AT(ADDR(.text) - KOFF) { *(.multiboot) *(.text*) }
  .data : AT(ADDR(.data) - KOFF) { *(.data*) }
  _edata = .;
  .bss : AT(ADDR(.bss) - KOFF) { *(.bss*) }
  _ebss = .;
}
"""

MB2_SOURCE = """
.section .multiboot2, "a"
.align 8
hdr_start:
.long 0xE85250D6, 0, hdr_end - hdr_start, -(0xE85250D6 + (hdr_end - hdr_start))
.align 8
.short 1, 1                 /* information request, optional */
.long 16
.long 1, 6                  /* command line, memory map */
.align 8
{extra_tags}
.short 0, 0
.long 8
hdr_end:
.text
.globl _start, other_entry
_start:
    hlt
other_entry:
    hlt
.data
payload: .quad 0x1122334455667788
.bss
.skip 0x1800
"""

ENTRY_TAG = """
.short 3, 0
.long 12
.long other_entry
.align 8
"""


def assert_segments_loaded(mem: RegionMemory, image: bytes) -> None:
    """Every PT_LOAD's file bytes at p_paddr and zeros up to p_memsz."""
    for paddr, data, memsz in load_segments(image):
        assert mem.read(paddr, len(data)) == data
        assert mem.read(paddr + len(data), memsz - len(data)) == bytes(memsz - len(data))


# --------------------------------------------------------------------------
# multiboot 1
# --------------------------------------------------------------------------

@needs_binutils
def test_mb1_elf32_kernel_is_loaded_by_program_headers(tmp_path, ram):
    image = build(tmp_path, MB1_ELF32_SOURCE, IDENTITY_SCRIPT)
    boot = load(image, ram, RAM_SIZE, cmdline="root=/dev/null")

    assert boot.version == 1 and boot.is_elf and boot.elf_class == 32
    assert boot.loaded_by == "ELF program headers"
    assert boot.entry == symbol(image, "_start")
    assert boot.eax == MB1_BOOTLOADER_MAGIC == 0x2BADB002
    assert boot.segments == [(p, len(d), m) for p, d, m in load_segments(image)]
    assert_segments_loaded(ram, image)
    assert read_u32(ram, 0x100000) == MB1_HEADER_MAGIC      # .multiboot comes first
    message = symbol(image, "message")
    assert ram.read(message, 27) == b"hello from the data segment"
    assert boot.image_end == max(p + m for p, _, m in load_segments(image))
    start, end = boot.info_range
    assert boot.ebx == start and start % 0x1000 == 0 and start >= boot.image_end
    assert end > start


@needs_binutils
def test_mb1_higher_half_entry_is_translated_to_physical(tmp_path, ram):
    image = build(tmp_path, MB1_ELF32_SOURCE, HIGHER_HALF_SCRIPT)
    virtual_entry = symbol(image, "_start")
    assert virtual_entry >= 0xC0100000
    boot = load(image, ram, RAM_SIZE)
    assert boot.entry == virtual_entry - 0xC0000000
    assert any("virtual address" in w for w in boot.warnings)
    assert read_u32(ram, 0x100000) == MB1_HEADER_MAGIC


@needs_binutils
def test_mb1_kludge_loads_elf64_by_header_address_fields(tmp_path, ram):
    image = build(tmp_path, MB1_KLUDGE_ELF64_SOURCE, KLUDGE_ELF64_SCRIPT, bits=64)
    koff = 0xFFFFFFFF80000000
    header = find_header(image)
    assert header.version == 1 and header.flags == 0x00010002
    assert header.address.load_addr == symbol(image, "_skernel") - koff == 0x200000
    assert header.address.load_end_addr == symbol(image, "_edata") - koff
    assert header.address.bss_end_addr == symbol(image, "_ebss") - koff

    boot = load(image, ram, RAM_SIZE)
    assert boot.is_elf and boot.elf_class == 64
    assert boot.loaded_by == "address fields"
    assert boot.entry == symbol(image, "entry32") - koff      # not the ELF e_entry
    assert boot.eax == MB1_BOOTLOADER_MAGIC
    load_end, bss_end = header.address.load_end_addr, header.address.bss_end_addr
    assert boot.segments == [(0x200000, load_end - 0x200000, bss_end - 0x200000)]
    # Each section's file bytes landed at its physical (virtual - KOFF) address.
    elf = ELFFile(io.BytesIO(image))
    for name in (".text", ".data"):
        section = elf.get_section_by_name(name)
        assert ram.read(section["sh_addr"] - koff, section["sh_size"]) == section.data()
    assert ram.read(load_end, bss_end - load_end) == bytes(bss_end - load_end)
    assert ram.read(bss_end, 1) == bytes([FILL])


@needs_binutils
def test_mb1_refuses_elf64_without_kludge(tmp_path, ram):
    source = MB1_KLUDGE_ELF64_SOURCE.replace("0x00010002", "0x00000002").replace(
        ".long mb_header - KOFF, _skernel - KOFF, _edata - KOFF, _ebss - KOFF,"
        " entry32 - KOFF", "")
    image = build(tmp_path, source, KLUDGE_ELF64_SCRIPT, bits=64)
    with pytest.raises(GuestLoadError, match=r"ELF64 kernel without the a\.out kludge"):
        load(image, ram, RAM_SIZE)


def test_mb1_flat_kludge_image_with_bss(ram):
    """A non-ELF image: the header's address fields alone drive loading."""
    load_addr, header_offset = 0x300000, 0x40
    code = bytes(range(256)) * 4
    header = mb1_header(0x10000, load_addr + header_offset, load_addr,
                        0, load_addr + 0x2000, load_addr + 0x200)   # load_end 0: whole file
    image = bytes(header_offset) + header + code
    boot = load(image, ram, RAM_SIZE)
    assert not boot.is_elf and boot.elf_class is None
    assert boot.entry == load_addr + 0x200
    assert boot.segments == [(load_addr, len(image), 0x2000)]
    assert ram.read(load_addr, len(image)) == image
    assert ram.read(load_addr + len(image), 0x2000 - len(image)) == bytes(0x2000 - len(image))


def test_entry_outside_loaded_image_is_a_warning(ram):
    header = mb1_header(0x10000, 0x200000, 0x200000, 0, 0, 0x900000)
    boot = load(header + bytes(0x100), ram, RAM_SIZE)
    assert boot.entry == 0x900000
    assert "entry point 0x900000 is outside every loaded segment" in boot.warnings


def test_mb1_kludge_load_end_past_end_of_file_is_refused(ram):
    header = mb1_header(0x10000, 0x200000, 0x200000, 0x210000, 0, 0x200000)
    with pytest.raises(GuestLoadError, match="only 0x100 bytes"):
        load(header + bytes(0x100 - len(header)), ram, RAM_SIZE)


def test_mb1_non_elf_without_kludge_is_refused(ram):
    with pytest.raises(GuestLoadError, match="not an ELF file"):
        load(mb1_header(0x3) + bytes(64), ram, RAM_SIZE)


# --------------------------------------------------------------------------
# multiboot 2
# --------------------------------------------------------------------------

@needs_binutils
@pytest.mark.parametrize("bits", [32, 64])
def test_mb2_elf_kernel(tmp_path, ram, bits):
    image = build(tmp_path, MB2_SOURCE.replace("{extra_tags}", ""), IDENTITY_SCRIPT, bits)
    header = find_header(image)
    assert header.version == 2 and header.valid and header.architecture == 0
    assert header.info_requests == [1, 6] and not header.info_requests_required
    boot = load(image, ram, RAM_SIZE, cmdline="mb2 args")
    assert boot.version == 2 and boot.elf_class == bits
    assert boot.entry == symbol(image, "_start")
    assert boot.eax == MB2_BOOTLOADER_MAGIC == 0x36D76289
    assert_segments_loaded(ram, image)
    assert boot.ebx % 8 == 0


@needs_binutils
def test_mb2_entry_address_tag_overrides_elf_entry(tmp_path, ram):
    image = build(tmp_path, MB2_SOURCE.replace("{extra_tags}", ENTRY_TAG), IDENTITY_SCRIPT)
    other = symbol(image, "other_entry")
    assert other != symbol(image, "_start")
    assert find_header(image).entry_addr == other
    assert load(image, ram, RAM_SIZE).entry == other


def test_mb2_address_tag_flat_image(ram):
    load_addr, header_offset = 0x400000, 0x10
    header = mb2_header(
        mb2_tag(2, struct.pack("<4I", load_addr + header_offset, load_addr, 0,
                               load_addr + 0x3000)),
        mb2_tag(3, struct.pack("<I", load_addr + 0x100)),
        mb2_tag(6), mb2_tag(4, struct.pack("<I", 0b10)))
    image = bytes(header_offset) + header + b"\x90" * 300
    found = find_header(image)
    assert found.offset == header_offset and found.module_align and found.console_flags == 2
    boot = load(image, ram, RAM_SIZE)
    assert boot.loaded_by == "address tag" and not boot.is_elf
    assert boot.entry == load_addr + 0x100
    assert boot.segments == [(load_addr, len(image), 0x3000)]
    assert ram.read(load_addr, len(image)) == image
    assert ram.read(load_addr + len(image), 16) == bytes(16)


def test_mb2_load_addr_minus_one_loads_from_file_start(ram):
    header = mb2_header(mb2_tag(2, struct.pack("<4I", 0x500020, 0xFFFFFFFF, 0, 0)),
                        mb2_tag(3, struct.pack("<I", 0x500000)))
    image = b"\xf4" * 0x20 + header
    boot = load(image, ram, RAM_SIZE)
    assert boot.segments == [(0x500000, len(image), len(image))]
    assert ram.read(0x500000, len(image)) == image


def test_mb2_header_tags_are_reported():
    header = mb2_header(
        mb2_tag(5, struct.pack("<3I", 1024, 768, 32), optional=True),
        mb2_tag(8, struct.pack("<I", 0x123456), optional=True),
        mb2_tag(10, struct.pack("<4I", 0x100000, 0x10000000, 0x1000, 1), optional=True))
    found = find_header(bytes(8) + header)
    assert found.valid
    assert (found.video.width, found.video.height, found.video.depth) == (1024, 768, 32)
    assert found.efi_i386_entry == 0x123456
    assert found.relocatable.min_addr == 0x100000 and found.relocatable.preference == 1
    assert [t.type for t in found.tags] == [5, 8, 10]
    lines = format_header(found)
    assert any("relocatable within 0x100000-0x10000000" in line for line in lines)


def test_mb2_required_unknown_tag_is_a_problem_optional_is_ignored():
    required = find_header(mb2_header(mb2_tag(42, bytes(8))))
    assert not required.valid
    assert "requires tag type 42" in required.problems[0]
    optional = find_header(mb2_header(mb2_tag(42, bytes(8), optional=True)))
    assert optional.valid and "42" in optional.warnings[0]


def test_mb2_required_information_hvdbg_cannot_give_is_refused(ram):
    header = mb2_header(mb2_tag(1, struct.pack("<2I", 6, 14)),      # mmap, ACPI old RSDP
                        mb2_tag(2, struct.pack("<4I", 0x200000, 0x200000, 0, 0)),
                        mb2_tag(3, struct.pack("<I", 0x200000)))
    found = find_header(header)
    assert found.info_requests_required
    assert found.problems == ["multiboot 2 header requires boot information tag 14"
                              " (ACPI old RSDP), which hvdbg does not provide"]
    with pytest.raises(GuestLoadError, match="ACPI old RSDP"):
        load(header, ram, RAM_SIZE)


def test_mb2_wrong_architecture_is_a_problem():
    found = find_header(mb2_header(arch=4))
    assert found.checksum_valid and not found.valid
    assert "MIPS32" in found.problems[0]


# --------------------------------------------------------------------------
# header search and checksum
# --------------------------------------------------------------------------

def test_bad_checksum_mb1_is_found_but_refused(ram):
    image = mb1_header(0x10000, 0x200000, 0x200000, 0, 0, 0x200000, checksum=0x1234)
    header = find_header(image)
    assert header.version == 1 and not header.checksum_valid and not header.valid
    assert header.problems[0].startswith("multiboot 1 header checksum is wrong")
    assert f"{-(MB1_HEADER_MAGIC + 0x10000) & 0xFFFFFFFF:#x}" in header.problems[0]
    with pytest.raises(GuestLoadError, match="checksum is wrong"):
        load(image, ram, RAM_SIZE)


def test_bad_checksum_mb2_is_found_but_refused():
    header = find_header(bytes(16) + mb2_header(bad_checksum=True))
    assert header.version == 2 and header.offset == 16 and not header.checksum_valid
    assert "multiboot 2 header checksum is wrong" in header.problems[0]


def test_valid_header_after_a_bad_one_is_preferred():
    bad = mb1_header(0, checksum=7)
    good = mb1_header(0x3)
    header = find_header(bad + good)
    assert header.offset == len(bad) and header.checksum_valid


def test_missing_header(ram):
    assert find_header(bytes(40000)) is None
    with pytest.raises(GuestLoadError, match="no multiboot header in the first 8192 bytes"
                                             r" \(multiboot 1\) or 32768 bytes"):
        load(bytes(40000), ram, RAM_SIZE, name="empty.bin")


def test_header_search_limits_and_alignment():
    header = mb1_header(0x3)
    assert find_header(bytes(8192 - 12) + header).offset == 8192 - 12
    assert find_header(bytes(8192 - 8) + header) is None       # not completely inside
    assert find_header(bytes(2) + header) is None              # not 4-byte aligned
    mb2 = mb2_header()
    assert find_header(bytes(4) + mb2) is None                 # MB2 needs 8-byte alignment
    assert find_header(bytes(32768 - 16) + mb2).offset == 32768 - 16
    assert find_header(bytes(32768) + mb2) is None


def test_unknown_required_mb1_flag_is_a_problem_optional_bits_are_not():
    required = find_header(mb1_header(1 << 5))
    assert not required.valid and "bit(s) 5" in required.problems[0]
    optional = find_header(mb1_header(1 << 20))
    assert optional.valid


def test_mb1_video_fields_are_decoded():
    header = find_header(mb1_header(0x10004, 0x100000, 0x100000, 0, 0, 0x100000,
                                    0, 800, 600, 24))
    assert header.video.mode_type == 0
    assert (header.video.width, header.video.height, header.video.depth) == (800, 600, 24)
    assert any("video" in w for w in header.warnings)


def test_both_headers_prefer_mb1_unless_version_forced():
    image = mb1_header(0x3) + bytes(4) + mb2_header()
    assert [h.version for h in find_headers(image)] == [1, 2]
    assert find_header(image).version == 1
    assert find_header(image, version=2).version == 2
    bad_mb1 = mb1_header(0x3, checksum=1) + bytes(4) + mb2_header()
    assert find_header(bad_mb1).version == 2


# --------------------------------------------------------------------------
# placement checks
# --------------------------------------------------------------------------

def kludge_image(load_addr: int, size: int = 0x1000, bss: int = 0) -> bytes:
    header = mb1_header(0x10000, load_addr, load_addr, 0, load_addr + size + bss, load_addr)
    return header + bytes(size - len(header))


def test_segment_outside_ram_is_refused(ram):
    with pytest.raises(GuestLoadError) as err:
        load(kludge_image(0x3FFF000, bss=0x2000), ram, 0x4000000)
    assert "at 0x3fff000-0x4002000 does not fit in guest RAM 0x0-0x4000000" in str(err.value)


@needs_binutils
def test_elf_segment_outside_ram_names_the_segment(tmp_path, ram):
    image = build(tmp_path, MB1_ELF32_SOURCE, IDENTITY_SCRIPT.replace("0x100000", "0x5000000"))
    with pytest.raises(GuestLoadError, match=r"ELF segment \d \(PT_LOAD.*at 0x5000000-"):
        load(image, ram, RAM_SIZE)


def test_segment_overlapping_reserved_range_is_refused(ram):
    with pytest.raises(GuestLoadError, match="overlaps reserved range 0x201000-0x202000"):
        load(kludge_image(0x200000, 0x2000), ram, RAM_SIZE, reserved=[(0x201000, 0x202000)])


def test_segment_in_bios_area_is_refused(ram):
    with pytest.raises(GuestLoadError, match="legacy BIOS area"):
        load(kludge_image(0xA0000), ram, RAM_SIZE)


def test_ram_too_small(ram):
    with pytest.raises(GuestLoadError, match="too small"):
        load(kludge_image(0x10000), ram, 0x100000)


def test_info_goes_above_1mib_even_for_a_low_kernel(ram):
    boot = load(kludge_image(0x10000), ram, RAM_SIZE)
    assert boot.image_end == 0x11000
    assert boot.info_range[0] == 0x100000


def test_modules_and_info_skip_reserved_ranges(ram):
    boot = load(kludge_image(0x100000), ram, RAM_SIZE, modules=[(b"m" * 10, "mod")],
                reserved=[(0x101000, 0x10F800)])
    assert boot.modules == [(0x110000, 0x11000A, "mod")]
    assert boot.info_range[0] == 0x111000


def test_module_that_does_not_fit(ram):
    with pytest.raises(GuestLoadError, match=r"module 0 \('big'"):
        load(kludge_image(0x100000), ram, 2 * MiB, modules=[(bytes(2 * MiB), "big")])


# --------------------------------------------------------------------------
# boot information content
# --------------------------------------------------------------------------

RESERVED = [(0x3000000, 0x3100000), (0x8000000, 0x9000000)]   # the second lies beyond RAM
EXPECTED_MMAP = [
    (0x0, 0x9FC00, 1),
    (0x9FC00, 0x400, 2),
    (0xF0000, 0x10000, 2),
    (0x100000, 0x3000000 - 0x100000, 1),
    (0x3000000, 0x100000, 2),
    (0x3100000, RAM_SIZE - 0x3100000, 1),
]
MODULES = [(bytes(range(256)) * 20, "initrd.img quiet"), (b"second module", "second")]


def check_common_info(info: dict, boot, ram: RegionMemory) -> None:
    assert info["cmdline"] == "console=ttyS0 debug"
    assert info["boot_loader_name"] == "hvdbg"
    assert info["mem_lower"] == 640
    assert info["mem_upper"] == (0x3000000 - 0x100000) // 1024
    assert [(e["base"], e["length"], e["type"]) for e in info["mmap"]] == EXPECTED_MMAP
    assert info["problems"] == []
    assert [(m["start"], m["end"], m["string"]) for m in info["modules"]] == boot.modules
    previous_end = boot.image_end
    for (data, string), (start, end, got_string) in zip(MODULES, boot.modules):
        assert start % 0x1000 == 0 and start >= previous_end
        assert end == start + len(data) and got_string == string
        assert ram.read(start, len(data)) == data
        previous_end = end
    assert boot.info_range[0] >= previous_end and boot.info_range[0] % 0x1000 == 0


def test_mb1_info_structure_read_back(ram):
    boot = load(kludge_image(0x200000), ram, RAM_SIZE, cmdline="console=ttyS0 debug",
                modules=MODULES, reserved=RESERVED)
    info = parse_info(ram, boot.ebx, 1)
    check_common_info(info, boot, ram)
    assert info["flags"] == read_u32(ram, boot.ebx) == (1 << 0 | 1 << 2 | 1 << 3 | 1 << 6
                                                        | 1 << 9)
    assert info["flag_names"] == ["mem_lower/mem_upper", "cmdline", "mods", "mmap",
                                  "boot_loader_name"]
    assert "boot_device" not in info
    assert info["mmap_length"] == 24 * len(EXPECTED_MMAP)
    start, end = boot.info_range
    for pointer in (info["mmap_addr"], read_u32(ram, boot.ebx + 16),
                    read_u32(ram, boot.ebx + 24), read_u32(ram, boot.ebx + 64)):
        assert start <= pointer < end
    assert [(r.base, r.length, r.type) for r in boot.memory_map] == EXPECTED_MMAP
    text = "\n".join(format_info(info))
    assert "cmdline 'console=ttyS0 debug'" in text and "module 1:" in text


def test_mb2_info_structure_read_back(ram):
    header = mb2_header(mb2_tag(2, struct.pack("<4I", 0x200000, 0x200000, 0, 0)),
                        mb2_tag(3, struct.pack("<I", 0x200000)))
    boot = load(header, ram, RAM_SIZE, cmdline="console=ttyS0 debug", modules=MODULES,
                reserved=RESERVED)
    assert boot.version == 2
    info = parse_info(ram, boot.ebx, 2)
    check_common_info(info, boot, ram)
    assert [t["type"] for t in info["tags"]] == [1, 2, 3, 3, 4, 6, 0]
    assert all(t["address"] % 8 == 0 for t in info["tags"])
    assert info["total_size"] == boot.info_range[1] - boot.info_range[0]
    assert info["reserved"] == 0
    mmap_tag = info["tags"][5]
    assert (mmap_tag["entry_size"], mmap_tag["entry_version"]) == (24, 0)
    assert mmap_tag["size"] == 16 + 24 * len(EXPECTED_MMAP)
    assert info["tags"][-1]["size"] == 8


def test_parse_info_reports_bad_pointers():
    mem = RegionMemory()
    mem.add_region(0x100000, bytearray(0x1000))
    write_u32(mem, 0x100000, 1 << 2 | 1 << 9)
    write_u32(mem, 0x100000 + 16, 0xDEAD0000)          # cmdline outside memory
    write_u32(mem, 0x100000 + 64, 0x100800)            # boot loader name inside
    mem.write(0x100800, b"other loader\0")
    info = parse_info(mem, 0x100000, 1)
    assert info["cmdline"] is None
    assert info["boot_loader_name"] == "other loader"
    assert info["problems"] == ["cmdline at 0xdead0000 runs out of guest memory"]
    with pytest.raises(GuestMemoryError):
        parse_info(mem, 0x200000, 1)


def test_parse_info_mb2_decodes_tags_it_did_not_write():
    mem = RegionMemory()
    mem.add_region(0, bytearray(0x100))
    tags = (struct.pack("<5I", 5, 20, 0x80, 1, 0xFFFFFFFF) + bytes(4)
            + struct.pack("<3I", 21, 12, 0x200000) + bytes(4) + struct.pack("<II", 0, 8))
    mem.write(0, struct.pack("<II", 8 + len(tags), 0) + tags)
    info = parse_info(mem, 0, 2)
    assert info["tags"][0]["name"] == "BIOS boot device"
    assert info["tags"][0]["biosdev"] == 0x80 and info["tags"][0]["partition"] == 1
    assert info["tags"][0]["sub_partition"] == 0xFFFFFFFF
    assert info["tags"][1]["load_base_addr"] == 0x200000
    assert [t["type"] for t in info["tags"]] == [5, 21, 0]
    assert info["problems"] == []


# --------------------------------------------------------------------------
# EAX magic
# --------------------------------------------------------------------------

def test_magic_override_is_passed_and_explained(ram):
    boot = load(kludge_image(0x200000), ram, RAM_SIZE, magic=MB1_HEADER_MAGIC)
    assert boot.eax == 0x1BADB002
    expected = describe_magic(0x1BADB002, 1)
    assert expected in boot.warnings
    assert expected == ("EAX = 0x1badb002 is the multiboot 1 *header* magic; the"
                        " bootloader must pass 0x2badb002 (Multiboot 0.6.96,"
                        " 3.2 'Machine state')")
    assert any("warning: EAX = 0x1badb002" in line for line in format_boot_info(boot))


def test_default_magic_has_no_warning(ram):
    boot = load(kludge_image(0x200000), ram, RAM_SIZE)
    assert boot.eax == MB1_BOOTLOADER_MAGIC
    assert not any("EAX" in w for w in boot.warnings)


@pytest.mark.parametrize("eax, version, phrase", [
    (0x2BADB002, 1, "is the multiboot 1 bootloader magic the kernel expects"),
    (0x36D76289, 2, "is the multiboot 2 bootloader magic the kernel expects"),
    (0xE85250D6, 2, "is the multiboot 2 *header* magic; the bootloader must pass 0x36d76289"
                    " (Multiboot2 1.0, 3.3 'I386 machine state')"),
    (0x36D76289, 1, "multiboot 2 bootloader magic, but the kernel was loaded through its"
                    " multiboot 1 header; the bootloader must pass 0x2badb002"),
    (0, 1, "EAX = 0x0 is not a multiboot magic value"),
])
def test_describe_magic(eax, version, phrase):
    assert phrase in describe_magic(eax, version)


# --------------------------------------------------------------------------
# memory map properties
# --------------------------------------------------------------------------

ranges = st.tuples(st.integers(0, 0x4000000), st.integers(1, 0x800000)).map(
    lambda r: (r[0], r[0] + r[1]))


@settings(max_examples=200, deadline=None)
@given(ram_size=st.integers(0x100001, 0x4000000), reserved=st.lists(ranges, max_size=6))
def test_memory_map_is_sorted_disjoint_and_honours_reserved(ram_size, reserved):
    regions = memory_map(ram_size, reserved)
    for low, high in zip(regions, regions[1:]):
        assert low.end <= high.base
    available = [r for r in regions if r.type == 1]
    for region in available:
        assert region.end <= ram_size
        assert region.end <= 0x9FC00 or region.base >= 0x100000
        for start, end in reserved:
            assert region.end <= start or end <= region.base
    # Every RAM byte that is neither firmware nor reserved is reported available.
    for probe in {0, 0x9FBFF, 0x100000, ram_size - 1, *(e for _, e in reserved)}:
        if probe >= ram_size or 0x9FC00 <= probe < 0x100000:
            continue
        is_reserved = any(s <= probe < e for s, e in reserved)
        is_available = any(r.base <= probe < r.end for r in available)
        assert is_available != is_reserved
