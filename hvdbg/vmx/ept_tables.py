"""The EPT paging structures a VMM builds and edits in its own memory (SDM 29.3.2):
:class:`Ept` maps, protects and unmaps guest-physical ranges, reusing table pages, and
lists what is mapped as :class:`EptRange` runs.  Entry formats, walks and checks are in
hvdbg.vmx.ept."""

from __future__ import annotations

import struct
from dataclasses import KW_ONLY, dataclass, field
from typing import Callable, Iterator, NamedTuple

from hvdbg.arch.physmem import PhysicalMemory, read_u64, write_u64
from hvdbg.vmx.ept import (ACCESSED, ADDR_MASK, Access, DEFAULT_CAPS, DIRTY, ENTRIES_PER_TABLE, EptCaps, EptPerm, EptPointer, EptWalk, GPA_WIDTH, IGNORE_PAT, LARGE_PAGE, MEMTYPE_MASK, MEMTYPE_SHIFT, MemType, PAGE_4K, RESERVED_MEMTYPES, RWX_MASK, SW_MAPPED, _LEVEL_BY_NUMBER, _is_large_capable, _is_leaf, walk_ept)


class EptRange(NamedTuple):
    """A run of guest-physical pages mapped contiguously with one attribute set."""

    gpa_start: int
    gpa_end: int  # exclusive
    hpa_start: int
    perms: EptPerm
    memtype: int


class _Op:
    """How a range operation treats one entry; see :meth:`Ept._apply`."""

    creates_tables = False  # allocate tables under empty entries (map only)
    reclaims_tables = False  # free tables that became empty (unmap only)

    def whole(self, entry_gpa: int, level: int, raw: int) -> int | None:
        """New raw value for an entry whose whole span is covered, or None to descend."""
        raise NotImplementedError


@dataclass
class _MapOp(_Op):
    gpa: int
    hpa: int
    leaf_bits: int  # permissions, memory type, ignore-PAT, SW_MAPPED
    large_levels: frozenset[int]
    creates_tables = True

    def whole(self, entry_gpa: int, level: int, raw: int) -> int | None:
        hpa = self.hpa + (entry_gpa - self.gpa)
        if level == 1:
            return hpa | self.leaf_bits
        if level in self.large_levels and hpa % _LEVEL_BY_NUMBER[level].span == 0:
            return hpa | self.leaf_bits | LARGE_PAGE
        return None


@dataclass
class _ProtectOp(_Op):
    perms: EptPerm

    def whole(self, entry_gpa: int, level: int, raw: int) -> int | None:
        if _is_mapped_leaf(raw, level):
            return (raw & ~RWX_MASK) | int(self.perms) | SW_MAPPED
        if _is_table_pointer(raw, level):
            return None
        return raw  # hole: nothing to protect


class _UnmapOp(_Op):
    reclaims_tables = True

    def whole(self, entry_gpa: int, level: int, raw: int) -> int | None:
        return 0


def _is_table_pointer(raw: int, level: int) -> bool:
    return level > 1 and not raw & LARGE_PAGE and bool(raw & RWX_MASK)


def _is_mapped_leaf(raw: int, level: int) -> bool:
    return _is_leaf(raw, level) and bool(raw & (RWX_MASK | SW_MAPPED))


_ZERO_TABLE = bytes(PAGE_4K)


_TABLE_FORMAT = struct.Struct(f"<{ENTRIES_PER_TABLE}Q")


@dataclass(eq=False)
class Ept:
    """A 4-level EPT hierarchy built in host-physical memory ``mem``.

    ``alloc_page()`` returns the host-physical address of a zeroed 4-KByte
    page.  Pages of tables that become empty after :meth:`unmap` (or are
    replaced by a large page) are kept on a free list and reused.
    """

    mem: PhysicalMemory
    alloc_page: Callable[[], int]
    _: KW_ONLY
    caps: EptCaps = DEFAULT_CAPS
    ad_enabled: bool = False
    paging_memtype: MemType = MemType.WB
    pml4_hpa: int = -1  # adopt an existing PML4 by passing its address
    _free: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ad_enabled and not self.caps.ad_flags:
            raise ValueError("EPT accessed/dirty flags are not supported by these capabilities")
        if self.pml4_hpa < 0:
            self.pml4_hpa = self._alloc_table()
        elif self.pml4_hpa % PAGE_4K:
            raise ValueError(f"PML4 address {self.pml4_hpa:#x} is not 4-KByte aligned")

    # ---- EPTP -----------------------------------------------------------

    @property
    def eptp(self) -> int:
        """EPTP value: memory type, page-walk length 4, A/D enable, PML4 address."""
        return EptPointer(self.pml4_hpa, self.paging_memtype, 4, self.ad_enabled).raw

    # ---- editing ---------------------------------------------------------

    def map(self, gpa: int, hpa: int, size: int, perms: EptPerm,
            memtype: MemType = MemType.WB, allow_large: bool = True,
            ignore_pat: bool = False) -> None:
        """Map [gpa, gpa+size) to [hpa, hpa+size), replacing earlier mappings.

        Uses 1-GByte and 2-MByte pages where both addresses are aligned and the
        capabilities allow (unless ``allow_large`` is False), otherwise 4-KByte
        pages; a large page partly overwritten is split first.  ``perms`` may
        be NONE: the page is then "not present" to the processor (every access
        is an EPT violation) but keeps its frame for a later :meth:`protect`.
        """
        self._check_range(gpa, size)
        if hpa % PAGE_4K or hpa < 0 or hpa + size > (1 << self.caps.maxphyaddr):
            raise ValueError(f"host-physical range {hpa:#x}+{size:#x} is not aligned or too wide")
        self._check_perms(perms)
        if int(memtype) in RESERVED_MEMTYPES or not 0 <= int(memtype) <= 7:
            raise ValueError(f"invalid EPT memory type {int(memtype)}")
        leaf_bits = int(perms) | (int(memtype) << MEMTYPE_SHIFT) | SW_MAPPED
        if ignore_pat:
            leaf_bits |= IGNORE_PAT
        large = frozenset(lv for lv in (3, 2) if allow_large and _is_large_capable(lv, self.caps))
        self._apply(self.pml4_hpa, 4, 0, gpa, gpa + size, _MapOp(gpa, hpa, leaf_bits, large))

    def unmap(self, gpa: int, size: int) -> None:
        """Remove every mapping in [gpa, gpa+size), splitting large pages at the edges."""
        self._check_range(gpa, size)
        self._apply(self.pml4_hpa, 4, 0, gpa, gpa + size, _UnmapOp())

    def protect(self, gpa: int, size: int, perms: EptPerm) -> None:
        """Set the permissions of the mapped pages in [gpa, gpa+size); holes stay holes.

        Large pages only partly inside the range are split so that the pages
        outside keep their old permissions.
        """
        self._check_range(gpa, size)
        self._check_perms(perms)
        self._apply(self.pml4_hpa, 4, 0, gpa, gpa + size, _ProtectOp(perms))

    # ---- queries ---------------------------------------------------------

    def walk(self, gpa: int) -> EptWalk:
        return walk_ept(self.mem, self.pml4_hpa, gpa, self.caps)

    def translate(self, gpa: int) -> int | None:
        """Host-physical address for ``gpa`` if the walk reaches a present leaf."""
        w = self.walk(gpa)
        return w.hpa if w.ok else None

    def record_access(self, walk: EptWalk, access: Access) -> None:
        """Set EPT accessed flags (and the leaf's dirty flag on a permitted write).

        SDM "Accessed and Dirty Flags for EPT"; does nothing unless A/D is enabled.
        """
        if not self.ad_enabled:
            return
        for lv in walk.levels:
            if not lv.present:
                break
            bits = ACCESSED
            if lv.leaf and access == "write" and walk.ok and not walk.is_violation("write"):
                bits |= DIRTY
            current = read_u64(self.mem, lv.entry_hpa)
            if current & bits != bits:
                write_u64(self.mem, lv.entry_hpa, current | bits)

    def mapped_ranges(self) -> list[EptRange]:
        """Merged runs of mapped pages in GPA order (end exclusive).

        Permissions are the AND over all levels; pages mapped with no
        permission at all are included (perms NONE).
        """
        runs: list[EptRange] = []
        run: list[int] | None = None  # [gpa_start, gpa_end, hpa_start, perms, memtype]
        for gpa, size, hpa, perms, memtype in self._leaves(self.pml4_hpa, 4, 0, RWX_MASK):
            if (run is not None and run[1] == gpa and run[3] == perms and run[4] == memtype
                    and run[2] + (gpa - run[0]) == hpa):
                run[1] = gpa + size
                continue
            if run is not None:
                runs.append(EptRange(run[0], run[1], run[2], EptPerm(run[3]), run[4]))
            run = [gpa, gpa + size, hpa, perms, memtype]
        if run is not None:
            runs.append(EptRange(run[0], run[1], run[2], EptPerm(run[3]), run[4]))
        return runs

    def table_pages(self) -> list[int]:
        """Host-physical addresses of every paging-structure page in use."""
        pages = [self.pml4_hpa]
        stack = [(self.pml4_hpa, 4)]
        while stack:
            table, level = stack.pop()
            for raw in self._read_table(table):
                if _is_table_pointer(raw, level):
                    pages.append(raw & ADDR_MASK)
                    stack.append((raw & ADDR_MASK, level - 1))
        return pages

    # ---- internals -------------------------------------------------------

    def _check_range(self, gpa: int, size: int) -> None:
        if size <= 0 or gpa % PAGE_4K or size % PAGE_4K:
            raise ValueError(f"range {gpa:#x}+{size:#x} must be non-empty and 4-KByte aligned")
        if gpa < 0 or gpa + size > (1 << GPA_WIDTH):
            raise ValueError(f"range {gpa:#x}+{size:#x} exceeds the {GPA_WIDTH}-bit EPT space")

    def _check_perms(self, perms: EptPerm) -> None:
        p = int(perms)
        if p & ~RWX_MASK:
            raise ValueError(f"permissions {p:#x} are not a combination of R, W and X")
        if p & EptPerm.W and not p & EptPerm.R:
            raise ValueError("write permission without read would be an EPT misconfiguration")
        if p == EptPerm.X and not self.caps.execute_only:
            raise ValueError("execute-only translations are not supported")

    def _read_table(self, table: int) -> tuple[int, ...]:
        return _TABLE_FORMAT.unpack(self.mem.read(table, PAGE_4K))

    def _alloc_table(self) -> int:
        page = self._free.pop() if self._free else self.alloc_page()
        if page % PAGE_4K:
            raise ValueError(f"alloc_page returned unaligned address {page:#x}")
        self.mem.write(page, _ZERO_TABLE)
        return page

    def _free_subtree(self, table: int, level: int) -> None:
        for raw in self._read_table(table):
            if _is_table_pointer(raw, level):
                self._free_subtree(raw & ADDR_MASK, level - 1)
        self._free.append(table)

    def _split(self, raw: int, level: int) -> int:
        """Replace a large leaf by a table of 512 smaller leaves with the same attributes."""
        child_level = level - 1
        child_span = _LEVEL_BY_NUMBER[child_level].span
        base = raw & ADDR_MASK & ~(_LEVEL_BY_NUMBER[level].span - 1)
        attrs = raw & ~ADDR_MASK
        if child_level == 1:
            attrs &= ~LARGE_PAGE
        table = self._alloc_table()
        entries = [base + i * child_span | attrs for i in range(ENTRIES_PER_TABLE)]
        self.mem.write(table, _TABLE_FORMAT.pack(*entries))
        return table

    def _apply(self, table: int, level: int, table_gpa: int, start: int, end: int,
               op: _Op) -> None:
        """Apply ``op`` to [start, end) within the table covering GPAs from ``table_gpa``.

        Only this call edits this table's entries, so they are edited in a copy
        and written back with one 4-KByte write.
        """
        span = _LEVEL_BY_NUMBER[level].span
        original = self._read_table(table)
        entries = list(original)
        first = (start - table_gpa) // span
        last = (end - 1 - table_gpa) // span
        for index in range(first, last + 1):
            lo = table_gpa + index * span
            hi = lo + span
            raw = entries[index]
            if start <= lo and hi <= end:
                new = op.whole(lo, level, raw)
                if new is not None:
                    if new != raw and _is_table_pointer(raw, level):
                        self._free_subtree(raw & ADDR_MASK, level - 1)
                    entries[index] = new
                    continue
            if _is_table_pointer(raw, level):
                child = raw & ADDR_MASK
            elif _is_mapped_leaf(raw, level):
                child = self._split(raw, level)
            elif op.creates_tables:
                child = self._alloc_table()
            else:
                continue
            entries[index] = child | RWX_MASK
            self._apply(child, level - 1, lo, max(start, lo), min(end, hi), op)
            if op.reclaims_tables and self.mem.read(child, PAGE_4K) == _ZERO_TABLE:
                entries[index] = 0
                self._free.append(child)
        if tuple(entries) != original:
            self.mem.write(table, _TABLE_FORMAT.pack(*entries))

    def _leaves(self, table: int, level: int, table_gpa: int,
                perms: int) -> Iterator[tuple[int, int, int, int, int]]:
        """(gpa, size, hpa, effective perms, memtype) of every mapped leaf, in order."""
        span = _LEVEL_BY_NUMBER[level].span
        for index, raw in enumerate(self._read_table(table)):
            if not raw:
                continue
            gpa = table_gpa + index * span
            if _is_table_pointer(raw, level):
                yield from self._leaves(raw & ADDR_MASK, level - 1, gpa, perms & raw)
            elif _is_mapped_leaf(raw, level):
                hpa = raw & ADDR_MASK & ~(span - 1)
                memtype = (raw & MEMTYPE_MASK) >> MEMTYPE_SHIFT
                yield gpa, span, hpa, perms & raw & RWX_MASK, memtype
