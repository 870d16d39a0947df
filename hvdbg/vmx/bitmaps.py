"""The VMX I/O bitmaps and MSR bitmap (SDM 25.6.4 "I/O-Bitmap Addresses", 25.6.9 "MSR-Bitmap
Address"), as real 4 KiB pages in hypervisor-owned host memory.  A set bit makes the
access exit; a clear bit lets the guest reach the "hardware" directly (in hvdbg: the
device bus, or Unicorn's own MSR emulation) without a VM exit."""

from __future__ import annotations

from typing import Callable, Iterable

from hvdbg.arch.physmem import PhysicalMemory

PAGE = 0x1000


class IoBitmaps:
    """Bitmap A covers ports 0x0000-0x7FFF, bitmap B 0x8000-0xFFFF; one bit per port."""

    def __init__(self, mem: PhysicalMemory, a: int, b: int) -> None:
        """The bitmaps at host-physical ``a`` and ``b`` (the VMCS's IO_BITMAP_A/B)."""
        self.mem = mem
        self.a = a
        self.b = b

    @classmethod
    def allocate(cls, mem: PhysicalMemory, alloc_page: Callable[[], int], exit_all: bool = True) -> "IoBitmaps":
        """Two new pages, every port exiting unless ``exit_all`` is False."""
        bitmaps = cls(mem, alloc_page(), alloc_page())
        if exit_all:
            for page in (bitmaps.a, bitmaps.b):
                mem.write(page, b"\xff" * PAGE)
        return bitmaps

    def _where(self, port: int) -> tuple[int, int]:
        page = self.a if port < 0x8000 else self.b
        bit = port & 0x7FFF
        return page + bit // 8, bit % 8

    def set(self, ports: Iterable[int], exiting: bool) -> None:
        for port in ports:
            addr, bit = self._where(port)
            byte = self.mem.read(addr, 1)[0]
            byte = byte | (1 << bit) if exiting else byte & ~(1 << bit)
            self.mem.write(addr, bytes((byte,)))

    def exits(self, port: int, size: int) -> bool:
        """An access of ``size`` bytes exits if any of its ports' bits is set (SDM 26.1.3)."""
        for p in range(port, port + size):
            if p > 0xFFFF:
                return True  # wraps around the I/O space: exits
            addr, bit = self._where(p)
            if self.mem.read(addr, 1)[0] >> bit & 1:
                return True
        return False


class MsrBitmap:
    """Read-low 0x000, read-high 0x400, write-low 0x800, write-high 0xC00 (SDM 25.6.9):
    low MSRs 0x00000000-0x00001FFF, high MSRs 0xC0000000-0xC0001FFF; others always exit."""

    def __init__(self, mem: PhysicalMemory, page: int) -> None:
        """The bitmap at host-physical ``page`` (the VMCS's MSR_BITMAP)."""
        self.mem = mem
        self.page = page

    @classmethod
    def allocate(cls, mem: PhysicalMemory, alloc_page: Callable[[], int]) -> "MsrBitmap":
        """A new page: no MSR exits until :meth:`set` says so."""
        return cls(mem, alloc_page())

    def _where(self, msr: int, write: bool) -> tuple[int, int] | None:
        if msr <= 0x1FFF:
            base = 0x000
        elif 0xC0000000 <= msr <= 0xC0001FFF:
            base = 0x400
            msr -= 0xC0000000
        else:
            return None
        if write:
            base += 0x800
        return self.page + base + msr // 8, msr % 8

    def set(self, msrs: Iterable[int], exiting: bool, read: bool = True, write: bool = True) -> None:
        for msr in msrs:
            for w in ([False] if read else []) + ([True] if write else []):
                where = self._where(msr, w)
                if where is None:
                    continue
                addr, bit = where
                byte = self.mem.read(addr, 1)[0]
                byte = byte | (1 << bit) if exiting else byte & ~(1 << bit)
                self.mem.write(addr, bytes((byte,)))

    def exits(self, msr: int, write: bool) -> bool:
        where = self._where(msr, write)
        if where is None:
            return True
        addr, bit = where
        return bool(self.mem.read(addr, 1)[0] >> bit & 1)


class NoIoExits:
    """Neither unconditional I/O exiting nor I/O bitmaps (SDM 25.6.2): no port exits."""

    def exits(self, port: int, size: int) -> bool:
        return False
