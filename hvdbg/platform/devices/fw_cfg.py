"""QEMU's firmware configuration device, legacy I/O interface (QEMU docs/specs/fw_cfg.rst,
"x86, x86_64 Register Locations" and "Selector (Control) Register" / "Data Register").

A guest writes a 16-bit key to the selector port 0x510, which resets the data offset to 0,
then reads the item's bytes one at a time from the data port 0x511; reads past the end of an
item, or of a key nothing is stored under, return 0.  Integers are little-endian; the file
directory (key 0x19) is big-endian.  Only the traditional interface is offered: FW_CFG_ID
bit 1 (DMA) is clear and nothing answers at 0x514.  Writes to the data port are ignored, as
in QEMU since 2.4.  Wider than byte reads are refused as QEMU's I/O region refuses them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SELECTOR_PORT = 0x510
DATA_PORT = 0x511

# Selector keys (QEMU docs/specs/fw_cfg.rst, "Firmware Configuration Items").
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_BOOT_MENU = 0x0E
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0x3FFF

SIGNATURE = b"QEMU"
ID_TRADITIONAL = 1            # FW_CFG_ID bit 0: the traditional interface; bit 1 (DMA) clear
FILE_NAME_SIZE = 56           # FWCfgFile.name
E820_RAM = 1                  # "etc/e820" entry type (ACPI address range types)


@dataclass(frozen=True)
class FwCfgFile:
    """One entry of the file directory: a named item under a key from FW_CFG_FILE_FIRST on."""

    name: str
    select: int
    data: bytes


def e820_table(ranges: list[tuple[int, int, int]]) -> bytes:
    """The ``etc/e820`` file: struct e820_entry { u64 address; u64 length; u32 type } each."""
    return b"".join(struct.pack("<QQI", base, length, kind) for base, length, kind in ranges)


class FwCfg:
    """The item store and the selector/data ports."""

    name = "fw_cfg"

    def __init__(self, *, ram_size: int, nb_cpus: int, max_cpus: int | None = None,
                 files: dict[str, bytes] | None = None) -> None:
        self.items: dict[int, bytes] = {
            FW_CFG_SIGNATURE: SIGNATURE,
            FW_CFG_ID: struct.pack("<I", ID_TRADITIONAL),
            FW_CFG_UUID: bytes(16),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NOGRAPHIC: struct.pack("<H", 0),
            FW_CFG_NB_CPUS: struct.pack("<H", nb_cpus),
            FW_CFG_MACHINE_ID: struct.pack("<I", 0),
            FW_CFG_BOOT_MENU: struct.pack("<H", 0),
            FW_CFG_MAX_CPUS: struct.pack("<H", max_cpus if max_cpus is not None else nb_cpus),
        }
        self.files: list[FwCfgFile] = []
        for name, data in sorted((files or {}).items()):
            self.add_file(name, data)
        self.selector = 0
        self.offset = 0

    def add_file(self, name: str, data: bytes) -> FwCfgFile:
        """Store ``data`` under the next free file key and list it in the directory."""
        encoded = name.encode()
        if len(encoded) >= FILE_NAME_SIZE:
            raise ValueError(f"fw_cfg file name {name!r} is longer than {FILE_NAME_SIZE - 1} bytes")
        entry = FwCfgFile(name, FW_CFG_FILE_FIRST + len(self.files), bytes(data))
        self.files.append(entry)
        self.items[entry.select] = entry.data
        self.items[FW_CFG_FILE_DIR] = self.directory()
        return entry

    def directory(self) -> bytes:
        """struct FWCfgFiles { be32 count; struct FWCfgFile { be32 size; be16 select;
        u16 reserved; char name[56]; } f[]; }, sorted by name as QEMU keeps it."""
        out = struct.pack(">I", len(self.files))
        for f in sorted(self.files, key=lambda f: f.name):
            out += struct.pack(">IHH56s", len(f.data), f.select, 0, f.name.encode())
        return out

    def item(self, key: int) -> bytes:
        """What the guest reads after selecting ``key`` (the write-channel bit is ignored;
        arch-local keys have no items here)."""
        if key & FW_CFG_ARCH_LOCAL:
            return b""
        return self.items.get(key & FW_CFG_ENTRY_MASK, b"")

    # -- the ports ---------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if size != 1:
            return (1 << (8 * size)) - 1          # QEMU's fw_cfg_comb_valid: byte reads only
        data = self.item(self.selector)
        value = data[self.offset] if self.offset < len(data) else 0
        if self.offset < len(data):
            self.offset += 1
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == SELECTOR_PORT and size <= 2:
            self.selector = value & 0xFFFF
            self.offset = 0
