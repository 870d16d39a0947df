"""Physical memory interface shared by the hardware models.

Everything that reads or writes "physical" memory (guest-physical for the
multiboot loader and the guest page-table walker, host-physical for the EPT
paging structures) talks to this small protocol, never to Unicorn directly.
"""

from __future__ import annotations

from typing import Protocol


class PhysicalMemory(Protocol):
    """Byte-addressed physical memory.

    ``read`` and ``write`` raise :class:`hvdbg.errors.GuestMemoryError` when
    any byte of the range is not backed by memory.
    """

    def read(self, addr: int, size: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


def read_u32(mem: PhysicalMemory, addr: int) -> int:
    return int.from_bytes(mem.read(addr, 4), "little")


def read_u64(mem: PhysicalMemory, addr: int) -> int:
    return int.from_bytes(mem.read(addr, 8), "little")


def write_u32(mem: PhysicalMemory, addr: int, value: int) -> None:
    mem.write(addr, (value & 0xFFFFFFFF).to_bytes(4, "little"))


def write_u64(mem: PhysicalMemory, addr: int, value: int) -> None:
    mem.write(addr, (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))
