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


class RegionMemory:
    """Physical memory made of non-overlapping ``bytearray`` regions.

    Used by the hypervisor for host-physical memory it owns (EPT tables) and by
    tests as a stand-in for guest RAM.
    """

    def __init__(self) -> None:
        self._regions: list[tuple[int, bytearray | memoryview]] = []

    def add_region(self, base: int, backing: bytearray | memoryview) -> None:
        end = base + len(backing)
        for rbase, rbuf in self._regions:
            if base < rbase + len(rbuf) and rbase < end:
                raise ValueError(f"region {base:#x}-{end:#x} overlaps {rbase:#x}")
        self._regions.append((base, backing))
        self._regions.sort(key=lambda r: r[0])

    def _find(self, addr: int, size: int) -> tuple[bytearray | memoryview, int]:
        from hvdbg.errors import GuestMemoryError

        for base, buf in self._regions:
            if base <= addr and addr + size <= base + len(buf):
                return buf, addr - base
        raise GuestMemoryError(f"physical range {addr:#x}+{size:#x} is not backed by memory")

    def read(self, addr: int, size: int) -> bytes:
        buf, off = self._find(addr, size)
        return bytes(buf[off:off + size])

    def write(self, addr: int, data: bytes) -> None:
        buf, off = self._find(addr, len(data))
        buf[off:off + len(data)] = data

    def contains(self, addr: int, size: int = 1) -> bool:
        return any(b <= addr and addr + size <= b + len(m) for b, m in self._regions)
