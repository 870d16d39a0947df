"""PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, 3.2.2.3.2): CONFIG_ADDRESS
at 0xCF8 (bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:2) and
CONFIG_DATA at 0xCFC-0xCFF, with one function behind it: a host bridge at 00:00.0 (Intel's
440FX ID, as QEMU's ``pc`` machine has).  Every other function reads all-ones (no device),
which is how an enumerating kernel finds the slot empty.  No BARs, no interrupts, no
bus 1+; writes reach only the host bridge's command and latency registers.
"""

from __future__ import annotations

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
ENABLE = 1 << 31

HOST_BRIDGE = (0, 0, 0)
VENDOR_INTEL, DEVICE_I440FX = 0x8086, 0x1237
CLASS_HOST_BRIDGE = 0x060000
_WRITABLE = {0x04: 0x47, 0x05: 0x01, 0x0D: 0xFF}   # byte -> bits: command register, latency timer


def host_bridge_space() -> bytearray:
    """The configuration header (type 0) of the host bridge (PCI 3.0, 6.1)."""
    space = bytearray(256)
    space[0:4] = (VENDOR_INTEL | DEVICE_I440FX << 16).to_bytes(4, "little")
    space[4:6] = (0x0006).to_bytes(2, "little")          # memory space and bus master on
    space[6:8] = (0x0000).to_bytes(2, "little")          # status
    space[8:12] = (0x02 | CLASS_HOST_BRIDGE << 8).to_bytes(4, "little")   # revision 2, class
    space[0x0E] = 0x00                                   # header type 0, single function
    space[0x2C:0x30] = (0x1100 | 0x1AF4 << 16).to_bytes(4, "little")      # subsystem (QEMU's)
    return space


class PciConfigSpace:
    """The two ports of configuration mechanism #1 and the functions behind them."""

    name = "pci-config"

    def __init__(self) -> None:
        self.address = 0
        self.functions: dict[tuple[int, int, int], bytearray] = {HOST_BRIDGE: host_bridge_space()}

    def _target(self) -> tuple[bytearray | None, int]:
        a = self.address
        if not a & ENABLE:
            return None, 0
        bdf = (a >> 16 & 0xFF, a >> 11 & 0x1F, a >> 8 & 7)
        return self.functions.get(bdf), a & 0xFC

    def io_read(self, port: int, size: int) -> int:
        if port == CONFIG_ADDRESS and size == 4:
            return self.address
        if port < CONFIG_DATA:
            return (1 << (8 * size)) - 1           # byte/word access to 0xCF8: not decoded
        space, reg = self._target()
        if space is None:
            return (1 << (8 * size)) - 1           # no device: master abort reads all-ones
        off = reg + (port - CONFIG_DATA)
        return int.from_bytes(space[off:off + size], "little")

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == CONFIG_ADDRESS and size == 4:
            self.address = value & 0x80FFFFFC
            return
        if port < CONFIG_DATA:
            return
        space, reg = self._target()
        if space is None:
            return
        off = reg + (port - CONFIG_DATA)
        for i, byte in enumerate(value.to_bytes(size, "little")):
            mask = _WRITABLE.get(off + i, 0)
            space[off + i] = (space[off + i] & ~mask) | (byte & mask)
