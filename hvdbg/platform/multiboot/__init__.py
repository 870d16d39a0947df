"""Multiboot 1 (0.6.96) and Multiboot2 (1.0) kernel loader.

Public API:
  find_header(image) -> MultibootHeader | None
  load(image, mem, ram_size, ...) -> BootInfo
  parse_info(mem, addr, version) -> dict
  describe_magic(eax, version) -> str
  format_header / format_info / format_boot_info -> list[str]
"""

from hvdbg.platform.multiboot.header import (
    AddressFields, HeaderTag, MultibootHeader, RelocatableRequest, VideoRequest,
    find_header, find_headers, format_header)
from hvdbg.platform.multiboot.info import format_info, parse_info
from hvdbg.platform.multiboot.loader import BootInfo, describe_magic, format_boot_info, load
from hvdbg.platform.multiboot.memmap import MemoryRegion, memory_map
from hvdbg.platform.multiboot.spec import (
    MB1_BOOTLOADER_MAGIC, MB1_HEADER_MAGIC, MB2_BOOTLOADER_MAGIC, MB2_HEADER_MAGIC)

__all__ = [
    "AddressFields", "BootInfo", "HeaderTag", "MB1_BOOTLOADER_MAGIC", "MB1_HEADER_MAGIC",
    "MB2_BOOTLOADER_MAGIC", "MB2_HEADER_MAGIC", "MemoryRegion", "MultibootHeader",
    "RelocatableRequest", "VideoRequest", "describe_magic", "find_header", "find_headers",
    "format_boot_info", "format_header", "format_info", "load", "memory_map", "parse_info",
]
