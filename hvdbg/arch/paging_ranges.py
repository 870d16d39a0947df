"""The mapped ranges of a guest page-table hierarchy (SDM Vol. 3A chapter 4): every
run of linear addresses mapped contiguously with one flag set, for "pt map" and the
debuggers' memory maps.  Single walks are hvdbg.arch.paging."""

from __future__ import annotations

from dataclasses import dataclass
import struct
from typing import Iterator, NamedTuple

from hvdbg.arch.regs import CR4_PSE, EFER_NXE
from hvdbg.arch.paging import (CANONICAL_BITS, DEFAULT_MAXPHYADDR, FORMATS, PagingMode, PteFlag, ReadPhys, _Format, _LEAF_CACHE_BITS, _RIGHTS_ALL, _XD, _frame, _reserved_mask, _sign_extend, _top_table, paging_mode)


class PtRange(NamedTuple):
    """A run of linear pages mapped contiguously with one set of effective flags."""

    gva_start: int
    gva_end: int  # exclusive
    gpa_start: int
    flags: PteFlag


def mapped_ranges(read_phys: ReadPhys, cr0: int, cr3: int, cr4: int, efer: int,
                  limit: int | None = 4096, *,
                  maxphyaddr: int = DEFAULT_MAXPHYADDR) -> list[PtRange]:
    """Merged runs of mapped linear pages, in address order (end exclusive).

    ``flags`` hold P, RW and US when set at every level, NX when set at any
    level, and the leaf's G/PWT/PCD/PAT (A and D are left out so that they do
    not split runs).  Entries with reserved bits and tables that cannot be
    read are skipped.  At most ``limit`` runs are returned.
    """
    mode = paging_mode(cr0, cr4, efer)
    if mode is PagingMode.NONE:
        return [PtRange(0, 1 << 32, 0, PteFlag.P | PteFlag.RW | PteFlag.US)]
    walker = _RangeWalker(mode, cr4, efer, maxphyaddr)
    runs: list[PtRange] = []
    run: list[int] | None = None  # [gva_start, gva_end, gpa_start, flags]
    leaves = walker.leaves(read_phys, _top_table(mode, cr3, maxphyaddr), 0, 0,
                           _RIGHTS_ALL, 0)
    for gva, size, gpa, flags in leaves:
        if run is not None and run[1] == gva and run[3] == flags \
                and run[2] + (gva - run[0]) == gpa:
            run[1] = gva + size
            continue
        if run is not None:
            runs.append(walker.finish(run))
            if limit is not None and len(runs) >= limit:
                return runs
        run = [gva, gva + size, gpa, flags]
    if run is not None and (limit is None or len(runs) < limit):
        runs.append(walker.finish(run))
    return runs


@dataclass(frozen=True)
class _ScanLevel:
    """Per-level constants precomputed once for a mapped_ranges scan."""

    fmt: _Format
    unpack: struct.Struct
    table_bytes: int
    has_large: bool
    reserved_table: int  # reserved mask of an entry pointing to a table (or of a PTE)
    reserved_large: int  # reserved mask of an entry mapping a large page
    pat_bit: int  # raw bit holding PAT in a leaf of this level


class _RangeWalker:
    """Depth-first scan of every present translation, on plain integers for speed."""

    def __init__(self, mode: PagingMode, cr4: int, efer: int, maxphyaddr: int) -> None:
        self.mode = mode
        self.nx_enabled = mode is not PagingMode.BITS32 and bool(efer & EFER_NXE)
        self.maxphyaddr = maxphyaddr
        self.canonical = CANONICAL_BITS.get(mode)
        pse = mode is not PagingMode.BITS32 or bool(cr4 & CR4_PSE)
        self.levels = [
            _ScanLevel(
                fmt,
                struct.Struct("<" + ("I" if fmt.entry_size == 4 else "Q") * fmt.entries),
                fmt.entry_size * fmt.entries,
                fmt.large_page and pse,
                _reserved_mask(mode, fmt, False, maxphyaddr, self.nx_enabled),
                _reserved_mask(mode, fmt, True, maxphyaddr, self.nx_enabled),
                1 << 7 if fmt.is_pte else 1 << 12,
            )
            for fmt in FORMATS[mode]
        ]

    def leaves(self, read_phys: ReadPhys, table: int, depth: int, base: int, rights: int,
               nx: int) -> Iterator[tuple[int, int, int, int]]:
        """(gva, size, gpa, raw-style flags) of every valid leaf below ``table``."""
        lv = self.levels[depth]
        fmt = lv.fmt
        try:
            raws = lv.unpack.unpack(read_phys(table, lv.table_bytes))
        except Exception:  # noqa: BLE001 - unreadable table: nothing mapped below it
            return
        span = fmt.span
        for index, raw in enumerate(raws):
            if not raw & 1:
                continue
            large = lv.has_large and bool(raw & PteFlag.PS)
            if raw & (lv.reserved_large if large else lv.reserved_table):
                continue
            sub_rights, sub_nx = rights, nx
            if fmt.has_rights:
                sub_rights &= raw
                if self.nx_enabled and raw & _XD:
                    sub_nx = int(PteFlag.NX)
            frame = _frame(self.mode, fmt, raw, large, self.maxphyaddr)
            gva = base + index * span
            if depth == 0 and self.canonical:
                gva = _sign_extend(gva, self.canonical)
            if fmt.is_pte or large:
                flags = 1 | sub_rights | sub_nx | (raw & _LEAF_CACHE_BITS)
                if raw & lv.pat_bit:
                    flags |= PteFlag.PAT
                yield gva, span, frame, int(flags)
            else:
                yield from self.leaves(read_phys, frame, depth + 1, gva, sub_rights, sub_nx)

    @staticmethod
    def finish(run: list[int]) -> PtRange:
        start, end, gpa, flags = run
        return PtRange(start, end, gpa, PteFlag(flags))
