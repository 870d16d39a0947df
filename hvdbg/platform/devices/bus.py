"""The buses that map guest addresses to device models: :class:`IoBus` for I/O ports (the
VMM side of I/O-instruction exits), :class:`MmioBus` for guest-physical MMIO ranges that
the EPT leaves unmapped (the VMM side of EPT violations, as KVM's MMIO emulation)."""

from __future__ import annotations

import bisect
import threading
from typing import Protocol


class IoDevice(Protocol):
    """A device reachable through IN/OUT.  ``port`` is absolute; ``size`` is 1, 2 or 4."""

    name: str

    def io_read(self, port: int, size: int) -> int: ...

    def io_write(self, port: int, size: int, value: int) -> None: ...


class MmioDevice(Protocol):
    """A device in guest-physical memory.  ``offset`` is from the start of its range."""

    name: str

    def mmio_read(self, offset: int, size: int) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


class _RangeMap:
    """Non-overlapping address ranges, each claimed by one device."""

    what = "addresses"

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, object]] = []
        self._lock = threading.Lock()

    def register(self, start: int, length: int, device) -> None:
        end = start + length
        for s, e, d in self._ranges:
            if start < e and s < end:
                raise ValueError(f"{self.what} {start:#x}-{end - 1:#x} overlap {d.name}")
        i = bisect.bisect(self._starts, start)
        self._starts.insert(i, start)
        self._ranges.insert(i, (start, end, device))

    def _claim(self, addr: int) -> tuple[int, object] | None:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0:
            s, e, d = self._ranges[i]
            if s <= addr < e:
                return s, d
        return None

    def devices(self) -> list[tuple[int, int, str]]:
        return [(s, e - 1, d.name) for s, e, d in self._ranges]


class MmioBus(_RangeMap):
    """Guest-physical MMIO dispatch: :meth:`read`/:meth:`write` return False when no
    device claims the address (the EPT violation is then the guest's)."""

    what = "MMIO range"

    def ranges(self) -> list[tuple[int, int]]:
        """(base, length) of every claimed range, for the engines to map."""
        return [(s, e - s) for s, e, _d in self._ranges]

    def read(self, gpa: int, size: int) -> int | None:
        hit = self._claim(gpa)
        if hit is None:
            return None
        base, dev = hit
        with self._lock:
            return dev.mmio_read(gpa - base, size) & ((1 << (8 * size)) - 1)

    def write(self, gpa: int, size: int, value: int) -> bool:
        hit = self._claim(gpa)
        if hit is None:
            return False
        base, dev = hit
        with self._lock:
            dev.mmio_write(gpa - base, size, value & ((1 << (8 * size)) - 1))
        return True


class IoBus(_RangeMap):
    """Port-range dispatch; unclaimed ports read as all-ones and ignore writes (as on a
    PC with nothing decoding the address), and are remembered for the diagnosis."""

    what = "I/O ports"

    def __init__(self) -> None:
        super().__init__()
        self.unhandled: dict[int, int] = {}

    def find(self, port: int) -> IoDevice | None:
        hit = self._claim(port)
        return None if hit is None else hit[1]

    def read(self, port: int, size: int) -> int:
        dev = self.find(port)
        if dev is None:
            self._note(port)
            return (1 << (8 * size)) - 1
        with self._lock:
            return dev.io_read(port, size) & ((1 << (8 * size)) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        dev = self.find(port)
        if dev is None:
            self._note(port)
            return
        with self._lock:
            dev.io_write(port, size, value & ((1 << (8 * size)) - 1))

    def _note(self, port: int) -> None:
        self.unhandled[port] = self.unhandled.get(port, 0) + 1
