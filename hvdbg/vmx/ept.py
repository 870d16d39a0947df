"""Extended Page Tables: real 4-level EPT paging structures in host-physical memory.

Intel SDM Vol. 3C, "The Extended Page Table Mechanism (EPT)": the EPTP format,
the formats of EPT paging-structure entries, "EPT Misconfigurations",
"EPT Violations", "Accessed and Dirty Flags for EPT", and the table
"Exit Qualification for EPT Violations" in "Exit Qualification for VM Exits".

:class:`Ept` builds and edits the tables inside a :class:`PhysicalMemory`
(host-physical memory owned by the hypervisor); :func:`walk_ept` walks any
EPT hierarchy exactly as the processor would and reports every entry it used.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import KW_ONLY, dataclass, field
from typing import Callable, Iterator, Literal, NamedTuple

from hvdbg.arch.physmem import PhysicalMemory, read_u64, write_u64

Access = Literal["read", "write", "fetch"]

PAGE_4K = 1 << 12
PAGE_2M = 1 << 21
PAGE_1G = 1 << 30
ENTRIES_PER_TABLE = 512
GPA_WIDTH = 48  # a 4-level EPT walk translates 48-bit guest-physical addresses


class EptPerm(enum.IntFlag):
    """Bits 2:0 of an EPT paging-structure entry."""

    NONE = 0
    R = 1
    W = 2
    X = 4
    RW = R | W
    RX = R | X
    RWX = R | W | X


class MemType(enum.IntEnum):
    """EPT memory types (bits 5:3 of a leaf entry, bits 2:0 of the EPTP)."""

    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6


RESERVED_MEMTYPES = frozenset({2, 3, 7})

# Bits of EPT paging-structure entries (SDM "Format of an EPT ... Entry" tables).
RWX_MASK = 0x7
MEMTYPE_SHIFT = 3
MEMTYPE_MASK = 0x7 << MEMTYPE_SHIFT
IGNORE_PAT = 1 << 6
LARGE_PAGE = 1 << 7
ACCESSED = 1 << 8
DIRTY = 1 << 9
USER_EXECUTE = 1 << 10
#: Bit 11 is ignored by the processor in every EPT entry.  hvdbg sets it in the
#: leaves it creates so that a mapping whose permissions were all removed
#: (bits 2:0 = 0, "not present" to the processor) keeps its page frame and can
#: be re-protected later.
SW_MAPPED = 1 << 11
SUPPRESS_VE = 1 << 63
ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_4K - 1)  # bits 51:12


def _bits(hi: int, lo: int) -> int:
    """Mask with bits hi:lo set (empty when hi < lo)."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


@dataclass(frozen=True)
class EptCaps:
    """The IA32_VMX_EPT_VPID_CAP features that change how entries are interpreted."""

    execute_only: bool = True  # bit 0: execute-only translations
    page_2m: bool = True  # bit 16: EPT PDE may map a 2-MByte page
    page_1g: bool = True  # bit 17: EPT PDPTE may map a 1-GByte page
    ad_flags: bool = True  # bit 21: accessed and dirty flags for EPT
    maxphyaddr: int = 46  # CPUID.80000008H:EAX[7:0]


DEFAULT_CAPS = EptCaps()


@dataclass(frozen=True)
class _Level:
    name: str
    level: int
    shift: int  # bit position of this level's index in the GPA

    @property
    def span(self) -> int:
        """Bytes of guest-physical space one entry of this level controls."""
        return 1 << self.shift


LEVELS: tuple[_Level, ...] = (
    _Level("PML4E", 4, 39),
    _Level("PDPTE", 3, 30),
    _Level("PDE", 2, 21),
    _Level("PTE", 1, 12),
)
_LEVEL_BY_NUMBER = {lv.level: lv for lv in LEVELS}
TABLE_NAMES = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}


def _is_large_capable(level: int, caps: EptCaps) -> bool:
    return (level == 3 and caps.page_1g) or (level == 2 and caps.page_2m)


def _is_leaf(raw: int, level: int) -> bool:
    """An EPT PTE, or a PDPTE/PDE with bit 7 set, maps a page."""
    return level == 1 or (level in (2, 3) and bool(raw & LARGE_PAGE))


def _reserved_mask(level: int, leaf: bool, caps: EptCaps) -> int:
    """Reserved bits of a present entry (SDM EPT entry format tables)."""
    mask = _bits(51, caps.maxphyaddr)
    if level == 4:
        mask |= _bits(7, 3)
    elif level in (2, 3) and not leaf:
        mask |= _bits(6, 3)
    elif level == 3:
        mask |= _bits(29, 12)
    elif level == 2:
        mask |= _bits(20, 12)
    return mask


def entry_misconfiguration(raw: int, level: int, caps: EptCaps = DEFAULT_CAPS) -> str | None:
    """Why a *present* entry causes an EPT misconfiguration, or None.

    SDM "EPT Misconfigurations": write without read, execute-only without
    support, a reserved bit set, or a reserved memory type in a leaf.
    """
    rwx = raw & RWX_MASK
    if rwx & EptPerm.W and not rwx & EptPerm.R:
        return f"write access without read access (bits 2:0 = {rwx:03b}b)"
    if rwx == EptPerm.X and not caps.execute_only:
        return "execute-only entry but execute-only translations are not supported"
    if level in (2, 3) and raw & LARGE_PAGE and not _is_large_capable(level, caps):
        return f"bit 7 set but {'1-GByte' if level == 3 else '2-MByte'} pages are not supported"
    leaf = _is_leaf(raw, level)
    reserved = raw & _reserved_mask(level, leaf, caps)
    if reserved:
        return f"reserved bits set ({reserved:#x})"
    if leaf:
        memtype = (raw & MEMTYPE_MASK) >> MEMTYPE_SHIFT
        if memtype in RESERVED_MEMTYPES:
            return f"reserved memory type {memtype}"
    return None


def _memtype_name(value: int) -> str:
    try:
        return MemType(value).name
    except ValueError:
        return f"MT{value}?"


def perm_string(perms: int) -> str:
    """'RWX'-style rendering of EPT permission bits."""
    return "".join(ch if perms & bit else "-" for ch, bit in (("R", 1), ("W", 2), ("X", 4)))


@dataclass(frozen=True)
class EptLevel:
    """One EPT paging-structure entry used (or refused) during a walk."""

    name: str  # PML4E, PDPTE, PDE or PTE
    level: int  # 4..1
    index: int
    table_hpa: int
    entry_hpa: int
    raw: int
    leaf: bool  # maps a page (present PTE, or PDPTE/PDE with bit 7 = 1)
    page_size: int | None  # for a leaf
    next_hpa: int | None  # next table, or page frame of a leaf; None if not present

    @property
    def present(self) -> bool:
        return bool(self.raw & RWX_MASK)

    @property
    def perms(self) -> EptPerm:
        return EptPerm(self.raw & RWX_MASK)

    @property
    def readable(self) -> bool:
        return bool(self.raw & EptPerm.R)

    @property
    def writable(self) -> bool:
        return bool(self.raw & EptPerm.W)

    @property
    def executable(self) -> bool:
        return bool(self.raw & EptPerm.X)

    @property
    def user_executable(self) -> bool:
        """Bit 10, meaningful only with mode-based execute control."""
        return bool(self.raw & USER_EXECUTE)

    @property
    def large(self) -> bool:
        return self.level in (2, 3) and bool(self.raw & LARGE_PAGE)

    @property
    def memtype(self) -> int | None:
        return (self.raw & MEMTYPE_MASK) >> MEMTYPE_SHIFT if self.leaf else None

    @property
    def ignore_pat(self) -> bool | None:
        return bool(self.raw & IGNORE_PAT) if self.leaf else None

    @property
    def accessed(self) -> bool:
        return bool(self.raw & ACCESSED)

    @property
    def dirty(self) -> bool | None:
        return bool(self.raw & DIRTY) if self.leaf else None

    @property
    def suppress_ve(self) -> bool:
        return bool(self.raw & SUPPRESS_VE)


class EptStatus(enum.Enum):
    OK = "ok"
    NOT_PRESENT = "not present"
    MISCONFIGURED = "misconfigured"


_ACCESS_PERM: dict[str, EptPerm] = {"read": EptPerm.R, "write": EptPerm.W, "fetch": EptPerm.X}


def _access_perm(access: str) -> EptPerm:
    try:
        return _ACCESS_PERM[access]
    except KeyError:
        raise ValueError(f"access must be 'read', 'write' or 'fetch', not {access!r}") from None


@dataclass(frozen=True)
class EptWalk:
    """Result of translating one guest-physical address through EPT."""

    gpa: int
    pml4_hpa: int
    levels: tuple[EptLevel, ...]
    status: EptStatus
    reason: str  # empty when status is OK
    hpa: int | None  # final host-physical address when status is OK

    @property
    def ok(self) -> bool:
        return self.status is EptStatus.OK

    @property
    def is_misconfig(self) -> bool:
        return self.status is EptStatus.MISCONFIGURED

    @property
    def is_not_present(self) -> bool:
        return self.status is EptStatus.NOT_PRESENT

    @property
    def stopped_at(self) -> EptLevel | None:
        """The entry where a failed walk stopped."""
        return None if self.ok else self.levels[-1]

    @property
    def leaf(self) -> EptLevel | None:
        return self.levels[-1] if self.ok else None

    @property
    def page_size(self) -> int | None:
        return self.levels[-1].page_size if self.ok else None

    @property
    def memtype(self) -> int | None:
        return self.levels[-1].memtype if self.ok else None

    @property
    def effective_perms(self) -> EptPerm:
        """Logical AND of bits 2:0 over every entry used (0 if one was not present)."""
        perms = RWX_MASK
        for lv in self.levels:
            perms &= lv.raw
        return EptPerm(perms & RWX_MASK)

    def is_violation(self, access: Access) -> bool:
        """Would this access cause an EPT violation ("EPT Violations")?

        A misconfiguration is a different VM exit and is never a violation.
        """
        required = _access_perm(access)
        if self.is_misconfig:
            return False
        return self.is_not_present or not self.effective_perms & required


def walk_ept(mem: PhysicalMemory, pml4_hpa: int, gpa: int,
             caps: EptCaps = DEFAULT_CAPS) -> EptWalk:
    """Translate ``gpa`` through the EPT hierarchy rooted at ``pml4_hpa``.

    Side-effect free (no accessed/dirty update).  Stops at the first entry that
    is not present (bits 2:0 = 0) or misconfigured.  A table outside ``mem``
    raises the memory's error (:class:`hvdbg.errors.GuestMemoryError`).
    """
    if not 0 <= gpa < (1 << GPA_WIDTH):
        raise ValueError(f"guest-physical address {gpa:#x} exceeds {GPA_WIDTH} bits")
    levels: list[EptLevel] = []
    table = pml4_hpa
    for geo in LEVELS:
        index = (gpa >> geo.shift) & (ENTRIES_PER_TABLE - 1)
        entry_hpa = table + index * 8
        raw = read_u64(mem, entry_hpa)
        present = bool(raw & RWX_MASK)
        leaf = present and _is_leaf(raw, geo.level)
        page_size = geo.span if leaf else None
        next_hpa = (raw & ADDR_MASK & ~(geo.span - 1) if leaf else raw & ADDR_MASK) if present else None
        levels.append(EptLevel(geo.name, geo.level, index, table, entry_hpa, raw, leaf,
                               page_size, next_hpa))
        if not present:
            return EptWalk(gpa, pml4_hpa, tuple(levels), EptStatus.NOT_PRESENT,
                           f"{geo.name} not present (bits 2:0 = 000b)", None)
        problem = entry_misconfiguration(raw, geo.level, caps)
        if problem:
            return EptWalk(gpa, pml4_hpa, tuple(levels), EptStatus.MISCONFIGURED,
                           f"{geo.name}: {problem}", None)
        if leaf:
            assert next_hpa is not None and page_size is not None
            hpa = next_hpa | (gpa & (page_size - 1))
            return EptWalk(gpa, pml4_hpa, tuple(levels), EptStatus.OK, "", hpa)
        assert next_hpa is not None
        table = next_hpa
    raise AssertionError("an EPT PTE is always a leaf")


@dataclass(frozen=True)
class EptPointer:
    """The EPT pointer VM-execution control field ("Extended-Page-Table Pointer (EPTP)")."""

    pml4_hpa: int
    memtype: int = MemType.WB  # bits 2:0: memory type for accessing the paging structures
    walk_length: int = 4  # bits 5:3 hold this minus 1
    ad_enabled: bool = False  # bit 6

    @property
    def raw(self) -> int:
        return (self.memtype & 7) | (((self.walk_length - 1) & 7) << 3) \
            | (int(self.ad_enabled) << 6) | (self.pml4_hpa & ADDR_MASK)

    @classmethod
    def from_raw(cls, raw: int) -> EptPointer:
        return cls(raw & ADDR_MASK, raw & 7, ((raw >> 3) & 7) + 1, bool(raw & (1 << 6)))


def eptp_problems(raw: int, caps: EptCaps = DEFAULT_CAPS) -> list[str]:
    """VM-entry checks on an EPTP value ("Checks on VMX Controls"); empty if valid."""
    out = []
    if raw & 7 not in (MemType.UC, MemType.WB):
        out.append(f"memory type {raw & 7} not UC(0) or WB(6)")
    if (raw >> 3) & 7 != 3:
        out.append(f"page-walk length {((raw >> 3) & 7) + 1} is not 4")
    if raw & (1 << 6) and not caps.ad_flags:
        out.append("accessed/dirty flags enabled but not supported")
    reserved = raw & (_bits(11, 7) | _bits(63, caps.maxphyaddr))  # bit 7: shadow stacks, unsupported
    if reserved:
        out.append(f"reserved bits set ({reserved:#x})")
    return out


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


def _size_name(size: int) -> str:
    for unit, name in ((PAGE_1G, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"


def _describe_entry(lv: EptLevel) -> str:
    if not lv.present:
        return "not present"
    parts = [perm_string(lv.raw)]
    if lv.leaf:
        assert lv.memtype is not None and lv.page_size is not None
        parts.append(_memtype_name(lv.memtype))
        if lv.ignore_pat:
            parts.append("IPAT")
    if lv.accessed:
        parts.append("A")
    if lv.leaf and lv.dirty:
        parts.append("D")
    if lv.leaf:
        parts.append(f"-> {_size_name(lv.page_size or 0)} page {lv.next_hpa:#x}")
    else:
        parts.append(f"-> {TABLE_NAMES[lv.level - 1]} {lv.next_hpa:#x}")
    return " ".join(parts)


def format_walk(walk: EptWalk) -> list[str]:
    """Human-readable lines describing every entry of an EPT walk and its outcome."""
    lines = [f"EPT walk of GPA {walk.gpa:#014x} (PML4 at HPA {walk.pml4_hpa:#x})"]
    for lv in walk.levels:
        lines.append(f"  {lv.name:<5}[{lv.index:3d}] @HPA {lv.entry_hpa:#014x} = "
                     f"{lv.raw:#018x}  {_describe_entry(lv)}")
    if walk.ok:
        lines.append(f"  => HPA {walk.hpa:#014x}  {perm_string(walk.effective_perms)} "
                     f"{_memtype_name(walk.memtype or 0)} {_size_name(walk.page_size or 0)} page")
    elif walk.is_misconfig:
        lines.append(f"  => EPT misconfiguration: {walk.reason}")
    else:
        lines.append(f"  => EPT violation: {walk.reason}")
    return lines


def format_ranges(ranges: list[EptRange]) -> list[str]:
    """One line per mapped run, for an "ept map" command."""
    return [f"{r.gpa_start:#014x}-{r.gpa_end - 1:#014x} -> {r.hpa_start:#014x} "
            f"{perm_string(r.perms)} {_memtype_name(r.memtype):<3} {_size_name(r.gpa_end - r.gpa_start)}"
            for r in ranges]
