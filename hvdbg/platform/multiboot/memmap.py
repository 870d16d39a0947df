"""The guest's physical memory map as a PC BIOS would report it.

Conventional memory ends at 0x9FC00 where the extended BIOS data area starts;
0xA0000-0xEFFFF is the VGA / option ROM hole (not listed, like real e820
maps); 0xF0000-0xFFFFF is the BIOS ROM; RAM resumes at 1 MiB.  Ranges the
hypervisor keeps for itself (``reserved``) are carved out of the available
RAM and listed as reserved.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hvdbg.platform.multiboot import spec

LOW_MEMORY_END = 0x9FC00
HIGH_MEMORY_START = 0x100000
MEM_LOWER_KIB = 640                      # what QEMU and most BIOSes report
FIRMWARE_RESERVED: tuple[tuple[int, int], ...] = ((0x9FC00, 0xA0000), (0xF0000, 0x100000))
# No kernel byte may land in the BIOS area between conventional and high memory.
LEGACY_BIOS_AREA = (LOW_MEMORY_END, HIGH_MEMORY_START)

Interval = tuple[int, int]               # [start, end)


@dataclass(frozen=True)
class MemoryRegion:
    """One memory map entry (MB1 3.3 mmap, MB2 memory map tag)."""

    base: int
    length: int
    type: int

    @property
    def end(self) -> int:
        return self.base + self.length

    @property
    def type_name(self) -> str:
        return spec.MMAP_TYPE_NAMES.get(self.type, "reserved")


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted union of half-open intervals; touching intervals are joined."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def subtract(intervals: Iterable[Interval], cuts: Sequence[Interval]) -> list[Interval]:
    """``intervals`` minus every interval of ``cuts`` (both half-open)."""
    pieces = list(intervals)
    for cut_start, cut_end in cuts:
        remaining = []
        for start, end in pieces:
            if cut_end <= start or end <= cut_start:
                remaining.append((start, end))
                continue
            if start < cut_start:
                remaining.append((start, cut_start))
            if cut_end < end:
                remaining.append((cut_end, end))
        pieces = remaining
    return sorted(pieces)


def check_ranges(reserved: Iterable[Interval]) -> list[Interval]:
    """Validate ``(start, end)`` pairs given by the caller."""
    ranges = list(reserved)
    for start, end in ranges:
        if not 0 <= start < end:
            raise ValueError(f"reserved range ({start:#x}, {end:#x}) must be"
                             " (start, end) with 0 <= start < end")
    return ranges


def reserved_intervals(ram_size: int, reserved: Iterable[Interval]) -> list[Interval]:
    """Firmware areas plus the caller's reserved ranges clipped to RAM, merged."""
    clipped = [(start, min(end, ram_size)) for start, end in reserved if start < ram_size]
    return merge([*FIRMWARE_RESERVED, *clipped])


def memory_map(ram_size: int, reserved: Iterable[Interval] = ()) -> list[MemoryRegion]:
    """Non-overlapping entries sorted by base: available RAM and reserved ranges."""
    holes = reserved_intervals(ram_size, check_ranges(reserved))
    usable = subtract([(0, LOW_MEMORY_END), (HIGH_MEMORY_START, ram_size)], holes)
    regions = [MemoryRegion(s, e - s, spec.MMAP_AVAILABLE) for s, e in usable if s < e]
    regions += [MemoryRegion(s, e - s, spec.MMAP_RESERVED) for s, e in holes]
    return sorted(regions, key=lambda r: r.base)


def mem_upper_kib(regions: Sequence[MemoryRegion]) -> int:
    """KiB of available memory from 1 MiB up to the first hole (MB1 3.3 mem_upper)."""
    for region in regions:
        if region.type == spec.MMAP_AVAILABLE and region.base == HIGH_MEMORY_START:
            return min(region.length // 1024, 0xFFFFFFFF)
    return 0
