"""Numbers and names from the Multiboot specifications, kept as data.

References: "Multiboot Specification version 0.6.96" (multiboot 1) and
"Multiboot2 Specification version 1.0" (multiboot 2), both published by the
GNU GRUB project.
"""

from __future__ import annotations

MB1_SPEC = "Multiboot 0.6.96"
MB2_SPEC = "Multiboot2 1.0"

# --- magic values ---------------------------------------------------------
MB1_HEADER_MAGIC = 0x1BADB002          # MB1 3.1.2, in the OS image header
MB1_BOOTLOADER_MAGIC = 0x2BADB002      # MB1 3.2, in EAX at the entry point
MB2_HEADER_MAGIC = 0xE85250D6          # MB2 3.1.3
MB2_BOOTLOADER_MAGIC = 0x36D76289      # MB2 3.3, in EAX at the entry point

HEADER_MAGIC = {1: MB1_HEADER_MAGIC, 2: MB2_HEADER_MAGIC}
BOOTLOADER_MAGIC = {1: MB1_BOOTLOADER_MAGIC, 2: MB2_BOOTLOADER_MAGIC}
SPEC_NAME = {1: MB1_SPEC, 2: MB2_SPEC}
MACHINE_STATE_SECTION = {1: "3.2 'Machine state'", 2: "3.3 'I386 machine state'"}

# The header must lie completely within this many leading bytes of the image,
# at this alignment (MB1 3.1.1, MB2 3.1.1).
SEARCH_LIMIT = {1: 8192, 2: 32768}
SEARCH_ALIGN = {1: 4, 2: 8}

# --- multiboot 1 header (MB1 3.1.1 - 3.1.4) -------------------------------
MB1_FLAG_PAGE_ALIGN = 1 << 0
MB1_FLAG_MEMORY_INFO = 1 << 1
MB1_FLAG_VIDEO_MODE = 1 << 2
MB1_FLAG_AOUT_KLUDGE = 1 << 16
MB1_REQUIRED_FLAG_MASK = 0x0000FFFF    # bits 0-15: the loader must understand them

MB1_HEADER_FLAG_NAMES: dict[int, str] = {
    0: "page-align modules",
    1: "memory information required",
    2: "video mode information required",
    16: "a.out kludge (address fields valid)",
}

MB1_HEADER_SIZE = 12                   # magic, flags, checksum
MB1_HEADER_SIZE_ADDRESS = 32           # ... + header_addr .. entry_addr
MB1_HEADER_SIZE_VIDEO = 48             # ... + mode_type, width, height, depth

# --- multiboot 1 boot information (MB1 3.3) -------------------------------
MB1_INFO_FLAG_NAMES: dict[int, str] = {
    0: "mem_lower/mem_upper",
    1: "boot_device",
    2: "cmdline",
    3: "mods",
    4: "a.out symbols",
    5: "ELF section headers",
    6: "mmap",
    7: "drives",
    8: "config_table",
    9: "boot_loader_name",
    10: "apm_table",
    11: "vbe",
    12: "framebuffer",
}
MB1_INFO_MEM = 1 << 0
MB1_INFO_CMDLINE = 1 << 2
MB1_INFO_MODS = 1 << 3
MB1_INFO_MMAP = 1 << 6
MB1_INFO_BOOT_LOADER_NAME = 1 << 9

# Byte offsets of the fields of the MB1 information structure.
MB1_INFO_OFFSETS: dict[str, int] = {
    "flags": 0, "mem_lower": 4, "mem_upper": 8, "boot_device": 12,
    "cmdline": 16, "mods_count": 20, "mods_addr": 24, "syms": 28,
    "mmap_length": 44, "mmap_addr": 48, "drives_length": 52, "drives_addr": 56,
    "config_table": 60, "boot_loader_name": 64, "apm_table": 68,
    "vbe_control_info": 72, "vbe_mode_info": 76, "vbe_mode": 80,
    "framebuffer_addr": 88, "framebuffer_pitch": 96, "framebuffer_width": 100,
    "framebuffer_height": 104, "framebuffer_bpp": 108, "framebuffer_type": 109,
}
MB1_INFO_SIZE = 116
MB1_MODULE_ENTRY_SIZE = 16             # mod_start, mod_end, string, reserved
MB1_MMAP_ENTRY_SIZE = 24               # size(=20), base_addr, length, type

# --- multiboot 2 header (MB2 3.1.2 - 3.1.13) ------------------------------
MB2_ARCH_NAMES: dict[int, str] = {0: "i386 (32-bit protected mode)", 4: "MIPS32"}
MB2_ARCH_I386 = 0
MB2_HEADER_FIXED_SIZE = 16             # magic, architecture, header_length, checksum
MB2_TAG_OPTIONAL = 1                   # bit 0 of a header tag's flags

MB2_HEADER_TAG_NAMES: dict[int, str] = {
    0: "end",
    1: "information request",
    2: "address",
    3: "entry address",
    4: "console flags",
    5: "framebuffer",
    6: "module alignment",
    7: "EFI boot services",
    8: "EFI i386 entry address",
    9: "EFI amd64 entry address",
    10: "relocatable",
}

MB2_CONSOLE_FLAG_NAMES: dict[int, str] = {0: "console required", 1: "EGA text supported"}
MB2_RELOC_PREFERENCE_NAMES: dict[int, str] = {0: "none", 1: "lowest", 2: "highest"}

# --- multiboot 2 boot information (MB2 "Boot information format") --------
MB2_INFO_TAG_NAMES: dict[int, str] = {
    0: "end",
    1: "boot command line",
    2: "boot loader name",
    3: "module",
    4: "basic memory information",
    5: "BIOS boot device",
    6: "memory map",
    7: "VBE info",
    8: "framebuffer info",
    9: "ELF symbols",
    10: "APM table",
    11: "EFI 32-bit system table pointer",
    12: "EFI 64-bit system table pointer",
    13: "SMBIOS tables",
    14: "ACPI old RSDP",
    15: "ACPI new RSDP",
    16: "networking information",
    17: "EFI memory map",
    18: "EFI boot services not terminated",
    19: "EFI 32-bit image handle pointer",
    20: "EFI 64-bit image handle pointer",
    21: "image load base physical address",
}
MB2_INFO_CMDLINE = 1
MB2_INFO_BOOT_LOADER_NAME = 2
MB2_INFO_MODULE = 3
MB2_INFO_BASIC_MEMINFO = 4
MB2_INFO_MMAP = 6
# Information tags hvdbg puts into every multiboot 2 information structure.
MB2_PROVIDED_INFO_TAGS = frozenset(
    {MB2_INFO_CMDLINE, MB2_INFO_BOOT_LOADER_NAME, MB2_INFO_MODULE,
     MB2_INFO_BASIC_MEMINFO, MB2_INFO_MMAP})
MB2_TAG_ALIGN = 8
MB2_MMAP_ENTRY_SIZE = 24               # base_addr, length, type, reserved
MB2_MMAP_ENTRY_VERSION = 0

# --- memory map types (MB1 3.3 "mmap"; MB2 "Memory map" tag) -------------
MMAP_AVAILABLE = 1
MMAP_RESERVED = 2
MMAP_TYPE_NAMES: dict[int, str] = {
    1: "available",
    2: "reserved",
    3: "ACPI reclaimable",
    4: "ACPI NVS",
    5: "defective RAM",
}


def bit_names(value: int, names: dict[int, str]) -> list[str]:
    """Names of the set bits of ``value``; unnamed bits read as ``bit N``."""
    return [names.get(bit, f"bit {bit}") for bit in range(32) if value >> bit & 1]
