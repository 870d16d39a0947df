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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hvdbg.arch.physmem import PhysicalMemory, read_u64

if TYPE_CHECKING:
    from hvdbg.vmx.ept_tables import EptRange

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
