"""The I/O-port bus: maps port ranges to device models."""

from __future__ import annotations

import bisect
import threading
from typing import Protocol


class IoDevice(Protocol):
    """A device reachable through IN/OUT.  ``port`` is absolute; ``size`` is 1, 2 or 4."""

    name: str

    def io_read(self, port: int, size: int) -> int: ...

    def io_write(self, port: int, size: int, value: int) -> None: ...


class IoBus:
    """Port-range dispatch; unclaimed ports read as all-ones and ignore writes (as on a
    PC with nothing decoding the address), and are remembered for the diagnosis."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, IoDevice]] = []
        self.unhandled: dict[int, int] = {}
        self._lock = threading.Lock()

    def register(self, start: int, length: int, device: IoDevice) -> None:
        end = start + length
        for s, e, d in self._ranges:
            if start < e and s < end:
                raise ValueError(f"I/O ports {start:#x}-{end - 1:#x} overlap {d.name}")
        i = bisect.bisect(self._starts, start)
        self._starts.insert(i, start)
        self._ranges.insert(i, (start, end, device))

    def find(self, port: int) -> IoDevice | None:
        i = bisect.bisect(self._starts, port) - 1
        if i >= 0:
            s, e, d = self._ranges[i]
            if s <= port < e:
                return d
        return None

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

    def devices(self) -> list[tuple[int, int, str]]:
        return [(s, e - 1, d.name) for s, e, d in self._ranges]
