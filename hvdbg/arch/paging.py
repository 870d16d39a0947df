"""The guest's own paging: linear-address translation as the processor does it.

Intel SDM Vol. 3A chapter 4 "Paging": paging modes (4.1), 32-bit paging (4.3),
PAE paging (4.4), 4-level and 5-level paging (4.5), access rights (4.6) and
page-fault error codes (4.7).

Paging structures are read through ``read_phys(gpa, size) -> bytes``.  When the
guest runs under EPT that read can fail (the structure's GPA is not mapped);
the walk then stops and keeps the exception so that the hypervisor can turn it
into an EPT violation on a paging-structure access.  Walks never set accessed or
dirty flags.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Callable, Literal

from hvdbg.arch.regs import CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LME, EFER_NXE

ReadPhys = Callable[[int, int], bytes]
Access = Literal["read", "write", "fetch"]

DEFAULT_MAXPHYADDR = 46



class PagingMode(enum.Enum):
    """SDM 4.1.1 "Four Paging Modes" (five with LA57)."""

    NONE = "none"
    BITS32 = "32-bit"
    PAE = "PAE"
    LEVEL4 = "4-level"
    LEVEL5 = "5-level"


def paging_mode(cr0: int, cr4: int, efer: int) -> PagingMode:
    """Paging mode selected by CR0.PG, CR4.PAE, IA32_EFER.LME and CR4.LA57 (SDM Table 4-1)."""
    if not cr0 & CR0_PG:
        return PagingMode.NONE
    if not cr4 & CR4_PAE:
        return PagingMode.BITS32
    if not efer & EFER_LME:
        return PagingMode.PAE
    return PagingMode.LEVEL5 if cr4 & CR4_LA57 else PagingMode.LEVEL4


class PteFlag(enum.IntFlag):
    """Decoded paging-entry flags.

    Bits 8:0 sit where the hardware keeps them; PAT is decoded from bit 7 of a
    PTE or bit 12 of a large-page entry and NX from bit 63, so a value of this
    type is a decoded set, not a raw entry.
    """

    P = 1 << 0
    RW = 1 << 1
    US = 1 << 2
    PWT = 1 << 3
    PCD = 1 << 4
    A = 1 << 5
    D = 1 << 6
    PS = 1 << 7
    G = 1 << 8
    PAT = 1 << 12
    NX = 1 << 63


class PfError(enum.IntFlag):
    """Page-fault error code bits (SDM 4.7 "Page-Fault Exceptions")."""

    P = 1 << 0  # 0: non-present page; 1: protection violation (or reserved bit)
    W = 1 << 1  # write access
    U = 1 << 2  # user-mode access
    RSVD = 1 << 3  # reserved bit set in a paging-structure entry
    ID = 1 << 4  # instruction fetch (only with SMEP, or PAE-style paging with NXE)


class FaultKind(enum.Enum):
    PAGE_FAULT = "#PF"
    GENERAL_PROTECTION = "#GP"
    READ_ERROR = "paging-structure read failed"


@dataclass(frozen=True)
class _Format:
    """Geometry of one level of a paging mode."""

    name: str
    shift: int  # lowest bit of this level's index in the linear address
    index_bits: int
    entry_size: int  # bytes
    large_page: bool  # PS=1 may map a page here (for 32-bit paging only with CR4.PSE)
    has_rights: bool = True  # R/W, U/S and XD take part in access control

    @property
    def is_pte(self) -> bool:
        return self.shift == 12

    @property
    def span(self) -> int:
        return 1 << self.shift

    @property
    def entries(self) -> int:
        return 1 << self.index_bits


_PTE64 = _Format("PTE", 12, 9, 8, False)
_PDE64 = _Format("PDE", 21, 9, 8, True)
_PDPTE64 = _Format("PDPTE", 30, 9, 8, True)
_PML4E = _Format("PML4E", 39, 9, 8, False)

FORMATS: dict[PagingMode, tuple[_Format, ...]] = {
    PagingMode.BITS32: (_Format("PDE", 22, 10, 4, True), _Format("PTE", 12, 10, 4, False)),
    PagingMode.PAE: (_Format("PDPTE", 30, 2, 8, False, has_rights=False), _PDE64, _PTE64),
    PagingMode.LEVEL4: (_PML4E, _PDPTE64, _PDE64, _PTE64),
    PagingMode.LEVEL5: (_Format("PML5E", 48, 9, 8, False), _PML4E, _PDPTE64, _PDE64, _PTE64),
}
TABLE_NAMES = {"PML5E": "PML5", "PML4E": "PML4", "PDPTE": "PDPT", "PDE": "PD", "PTE": "PT"}
#: Width of linear addresses that must be canonical (sign-extended) per mode.
CANONICAL_BITS = {PagingMode.LEVEL4: 48, PagingMode.LEVEL5: 57}
_XD = 1 << 63


def _bits(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


def _pse36_width(maxphyaddr: int) -> int:
    """32-bit paging can reach at most 40 physical-address bits through 4-MByte pages."""
    return min(maxphyaddr, 40)


@functools.lru_cache(maxsize=256)
def _reserved_mask(mode: PagingMode, fmt: _Format, large: bool, maxphyaddr: int,
                   nxe: bool) -> int:
    """Reserved bits of a present entry (SDM Tables 4-4 .. 4-20)."""
    if mode is PagingMode.BITS32:
        return _bits(21, _pse36_width(maxphyaddr) - 19) if large else 0
    if mode is PagingMode.PAE and not fmt.has_rights:  # PAE PDPTE (Table 4-8)
        return _bits(2, 1) | _bits(8, 5) | _bits(63, maxphyaddr)
    mask = _bits(62 if mode is PagingMode.PAE else 51, maxphyaddr)
    if not nxe:
        mask |= _XD
    if not fmt.large_page and not fmt.is_pte:  # PS of a PML4E / PML5E
        mask |= 1 << 7
    if large:
        mask |= _bits(fmt.shift - 1, 13)
    return mask


def _frame(mode: PagingMode, fmt: _Format, raw: int, large: bool, maxphyaddr: int) -> int:
    """Physical address of the next table, or the page frame of a leaf."""
    if mode is PagingMode.BITS32:
        if large:
            return (raw & 0xFFC00000) | (((raw >> 13) & 0xFF) << 32)
        return raw & 0xFFFFF000
    addr = raw & _bits(maxphyaddr - 1, 12)
    return addr & ~(fmt.span - 1) if large else addr


_FLAG_BITS = 0x11FF | _XD   # the entry bits _decode_flags looks at (P..G, PAT, XD)
# the same flags as plain ints for the walk's hot path (IntFlag arithmetic is slow)
_P, _RW, _US, _PS = int(PteFlag.P), int(PteFlag.RW), int(PteFlag.US), int(PteFlag.PS)


def _decode_flags(fmt: _Format, raw: int, leaf: bool, large: bool, wide: bool) -> PteFlag:
    """The entry's flags as :class:`PteFlag` (memoized: a walk decodes up to five entries
    and the Enum arithmetic is most of its cost)."""
    return _decode_flag_bits(fmt, raw & _FLAG_BITS, leaf, large, wide)


@functools.lru_cache(maxsize=1024)
def _decode_flag_bits(fmt: _Format, raw: int, leaf: bool, large: bool, wide: bool) -> PteFlag:
    if not fmt.has_rights:  # PAE PDPTE: only P, PWT and PCD
        return PteFlag(raw & (PteFlag.P | PteFlag.PWT | PteFlag.PCD))
    flags = PteFlag(raw & (PteFlag.P | PteFlag.RW | PteFlag.US | PteFlag.PWT
                           | PteFlag.PCD | PteFlag.A))
    if fmt.large_page and raw & PteFlag.PS:
        flags |= PteFlag.PS
    if leaf:
        flags |= PteFlag(raw & (PteFlag.D | PteFlag.G))
        if raw & (1 << 12 if large else 1 << 7):
            flags |= PteFlag.PAT
    if wide and raw & _XD:
        flags |= PteFlag.NX
    return flags


def _top_table(mode: PagingMode, cr3: int, maxphyaddr: int) -> int:
    if mode is PagingMode.BITS32:
        return cr3 & 0xFFFFF000
    if mode is PagingMode.PAE:
        return cr3 & 0xFFFFFFE0  # 32-byte aligned PDPT (SDM 4.4.1)
    return cr3 & _bits(maxphyaddr - 1, 12)


def is_canonical(addr: int, bits: int) -> bool:
    """True if bits 63:bits-1 of a 64-bit address are all equal."""
    top = addr >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def _sign_extend(addr: int, bits: int) -> int:
    return addr | _bits(63, bits) if addr >> (bits - 1) & 1 else addr


@dataclass(frozen=True)
class PagingLevel:
    """One paging-structure entry used (or refused) during a walk."""

    name: str  # PML5E, PML4E, PDPTE, PDE or PTE
    index: int
    entry_gpa: int
    raw: int
    entry_size: int  # 4 for 32-bit paging, else 8
    flags: PteFlag
    leaf: bool
    page_size: int | None  # for a leaf
    next_gpa: int | None  # next table or page frame; None if not present
    reserved: int = 0  # reserved bits found set


@dataclass(frozen=True)
class PagingFault:
    """Why a walk did not produce a guest-physical address."""

    kind: FaultKind
    reason: str
    level: str | None = None  # entry name where the walk stopped
    error_code: int | None = None  # #PF / #GP error code
    entry_gpa: int | None = None  # for READ_ERROR: GPA of the entry that could not be read
    exception: BaseException | None = None  # for READ_ERROR


@dataclass(frozen=True)
class PageWalk:
    """Result of translating one linear address: entries used, then a GPA or a fault."""

    mode: PagingMode
    gva: int
    access: Access
    user: bool
    levels: tuple[PagingLevel, ...]
    gpa: int | None
    page_size: int | None
    fault: PagingFault | None = None

    @property
    def ok(self) -> bool:
        return self.fault is None

    @property
    def error_code(self) -> int | None:
        return self.fault.error_code if self.fault else None

    @property
    def reason(self) -> str:
        return self.fault.reason if self.fault else ""

    @property
    def stopped_at(self) -> str | None:
        return self.fault.level if self.fault else None


@dataclass(frozen=True)
class _Rights:
    """Access rights accumulated over the entries of a translation (SDM 4.6)."""

    writable: bool = True  # R/W = 1 in every entry
    user: bool = True  # U/S = 1 in every entry
    no_exec: bool = False  # XD = 1 in some entry (with EFER.NXE)

    def add(self, fmt: _Format, raw: int, nxe: bool) -> _Rights:
        if not fmt.has_rights:
            return self
        return _Rights(self.writable and bool(raw & _RW),
                       self.user and bool(raw & _US),
                       self.no_exec or (nxe and bool(raw & _XD)))


def _rights_violation(rights: _Rights, access: Access, user: bool, cr0: int, cr4: int,
                      rflags_ac: bool) -> str | None:
    """Reason an access is refused at the leaf, or None (SDM 4.6.1 "Determination of Access Rights")."""
    write = access == "write"
    if access == "fetch":
        if rights.no_exec:
            return "NX fetch (XD=1 with IA32_EFER.NXE=1)"
        if user and not rights.user:
            return "user-mode fetch from supervisor page"
        if not user and rights.user and cr4 & CR4_SMEP:
            return "supervisor fetch from user page with CR4.SMEP=1"
        return None
    if user:
        if not rights.user:
            return f"user-mode {'write to' if write else 'read from'} supervisor page"
        if write and not rights.writable:
            return "user-mode write to read-only page"
        return None
    if rights.user and cr4 & CR4_SMAP and not rflags_ac:
        return "supervisor data access to user page with CR4.SMAP=1 and RFLAGS.AC=0"
    if write and not rights.writable and cr0 & CR0_WP:
        return "write to read-only page with CR0.WP=1"
    return None


def _error_code(access: Access, user: bool, protection: bool, rsvd: bool, cr4: int,
                efer: int) -> int:
    code = PfError(0)
    if protection:
        code |= PfError.P
    if access == "write":
        code |= PfError.W
    if user:
        code |= PfError.U
    if rsvd:
        code |= PfError.RSVD
    if access == "fetch" and (cr4 & CR4_SMEP or (cr4 & CR4_PAE and efer & EFER_NXE)):
        code |= PfError.ID
    return int(code)


def _check_access(access: str) -> None:
    if access not in ("read", "write", "fetch"):
        raise ValueError(f"access must be 'read', 'write' or 'fetch', not {access!r}")


def walk(read_phys: ReadPhys, cr0: int, cr3: int, cr4: int, efer: int, gva: int,
         access: Access = "read", user: bool = False, *,
         maxphyaddr: int = DEFAULT_MAXPHYADDR, rflags_ac: bool = False) -> PageWalk:
    """Translate linear address ``gva`` the way the processor would.

    ``user`` selects a user-mode (CPL 3) access; ``rflags_ac`` is RFLAGS.AC for
    the SMAP check of supervisor data accesses.  Protection keys, shadow stacks
    and linear-address masking are not modelled.
    """
    _check_access(access)
    mode = paging_mode(cr0, cr4, efer)
    if mode is PagingMode.NONE:
        if not 0 <= gva < (1 << 32):
            raise ValueError(f"linear address {gva:#x} exceeds 32 bits with paging disabled")
        return PageWalk(mode, gva, access, user, (), gva, None)
    if mode in CANONICAL_BITS:
        width = CANONICAL_BITS[mode]
        if not 0 <= gva < (1 << 64):
            raise ValueError(f"linear address {gva:#x} is not a 64-bit value")
        if not is_canonical(gva, width):
            fault = PagingFault(FaultKind.GENERAL_PROTECTION,
                                f"non-canonical address for {mode.value} paging (#GP(0))",
                                error_code=0)
            return PageWalk(mode, gva, access, user, (), None, None, fault)
    elif not 0 <= gva < (1 << 32):
        raise ValueError(f"linear address {gva:#x} exceeds 32 bits in {mode.value} paging")

    nxe = mode is not PagingMode.BITS32 and bool(efer & EFER_NXE)
    wide = mode is not PagingMode.BITS32
    levels: list[PagingLevel] = []
    rights = _Rights()
    table = _top_table(mode, cr3, maxphyaddr)

    def stop(fault: PagingFault) -> PageWalk:
        return PageWalk(mode, gva, access, user, tuple(levels), None, None, fault)

    def page_fault(fmt: _Format, reason: str, protection: bool, rsvd: bool = False) -> PageWalk:
        code = _error_code(access, user, protection, rsvd, cr4, efer)
        return stop(PagingFault(FaultKind.PAGE_FAULT, reason, fmt.name, code))

    for fmt in FORMATS[mode]:
        index = (gva >> fmt.shift) & (fmt.entries - 1)
        entry_gpa = table + index * fmt.entry_size
        try:
            raw = int.from_bytes(read_phys(entry_gpa, fmt.entry_size), "little")
        except Exception as exc:  # noqa: BLE001 - any backing-store failure stops the walk
            return stop(PagingFault(FaultKind.READ_ERROR,
                                    f"reading {fmt.name} at GPA {entry_gpa:#x} failed: {exc}",
                                    fmt.name, entry_gpa=entry_gpa, exception=exc))
        present = bool(raw & _P)
        large = present and fmt.large_page and bool(raw & _PS) \
            and (mode is not PagingMode.BITS32 or bool(cr4 & CR4_PSE))
        leaf = present and (fmt.is_pte or large)
        reserved = raw & _reserved_mask(mode, fmt, large, maxphyaddr, nxe) if present else 0
        next_gpa = _frame(mode, fmt, raw, large, maxphyaddr) if present else None
        levels.append(PagingLevel(fmt.name, index, entry_gpa, raw, fmt.entry_size,
                                  _decode_flags(fmt, raw, leaf, large, wide), leaf,
                                  fmt.span if leaf else None, next_gpa, reserved))
        if not present:
            return page_fault(fmt, f"{fmt.name} not present", protection=False)
        if reserved:
            reason = f"reserved bits {reserved:#x} set in {fmt.name}"
            if not fmt.has_rights:  # the PDPTE registers are loaded by MOV to CR3
                return stop(PagingFault(FaultKind.GENERAL_PROTECTION,
                                        reason + " (loading the PDPTEs would #GP(0))",
                                        fmt.name, error_code=0))
            return page_fault(fmt, reason, protection=True, rsvd=True)
        rights = rights.add(fmt, raw, nxe)
        assert next_gpa is not None
        if leaf:
            violation = _rights_violation(rights, access, user, cr0, cr4, rflags_ac)
            if violation:
                return page_fault(fmt, violation, protection=True)
            gpa = next_gpa | (gva & (fmt.span - 1))
            return PageWalk(mode, gva, access, user, tuple(levels), gpa, fmt.span)
        table = next_gpa
    raise AssertionError("a PTE is always a leaf")


def translate(read_phys: ReadPhys, cr0: int, cr3: int, cr4: int, efer: int, gva: int,
              access: Access = "read", user: bool = False, *,
              maxphyaddr: int = DEFAULT_MAXPHYADDR, rflags_ac: bool = False) -> int | None:
    """Guest-physical address of ``gva``, or None if the access would fault."""
    w = walk(read_phys, cr0, cr3, cr4, efer, gva, access, user,
             maxphyaddr=maxphyaddr, rflags_ac=rflags_ac)
    return w.gpa


_RIGHTS_ALL = int(PteFlag.RW | PteFlag.US)  # R/W and U/S: effective only if set at every level
_LEAF_CACHE_BITS = int(PteFlag.G | PteFlag.PWT | PteFlag.PCD)


_FLAG_ORDER = (PteFlag.P, PteFlag.RW, PteFlag.US, PteFlag.PWT, PteFlag.PCD, PteFlag.A,
               PteFlag.D, PteFlag.PS, PteFlag.G, PteFlag.PAT, PteFlag.NX)


def flag_string(flags: PteFlag) -> str:
    """Names of the set flags, e.g. 'P RW US A NX'."""
    return " ".join(f.name or "" for f in _FLAG_ORDER if flags & f)


def _size_name(size: int) -> str:
    for unit, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size:#x}"


def format_walk(walk: PageWalk) -> list[str]:
    """Human-readable lines describing every entry of a guest page walk and its outcome."""
    who = "user" if walk.user else "supervisor"
    lines = [f"{walk.mode.value} paging walk of GVA {walk.gva:#018x} ({who} {walk.access})"]
    digits = 8 if walk.levels and walk.levels[0].entry_size == 4 else 16
    formats = FORMATS.get(walk.mode, ())
    for depth, lv in enumerate(walk.levels):
        text = f"  {lv.name:<5}[{lv.index:3d}] @GPA {lv.entry_gpa:#014x} = {lv.raw:#0{digits + 2}x}"
        if not lv.flags & PteFlag.P:
            text += "  not present"
        else:
            text += f"  {flag_string(lv.flags)}"
            if lv.reserved:
                text += f"  RSVD {lv.reserved:#x}"
            elif lv.leaf:
                text += f" -> {_size_name(lv.page_size or 0)} page {lv.next_gpa:#x}"
            else:
                text += f" -> {TABLE_NAMES[formats[depth + 1].name]} {lv.next_gpa:#x}"
        lines.append(text)
    if walk.fault is None:
        size = f" ({_size_name(walk.page_size)} page)" if walk.page_size else " (paging off)"
        lines.append(f"  => GPA {walk.gpa:#014x}{size}")
    elif walk.fault.kind is FaultKind.PAGE_FAULT:
        code = walk.fault.error_code or 0
        lines.append(f"  => #PF error code {code:#x} [{_pf_bits(code)}]: {walk.fault.reason}")
    elif walk.fault.kind is FaultKind.GENERAL_PROTECTION:
        lines.append(f"  => #GP(0): {walk.fault.reason}")
    else:
        lines.append(f"  => stopped: {walk.fault.reason}")
    return lines


def _pf_bits(code: int) -> str:
    names = [("P" if code & PfError.P else "NP"), ("W" if code & PfError.W else "R"),
             ("U" if code & PfError.U else "S")]
    if code & PfError.RSVD:
        names.append("RSVD")
    if code & PfError.ID:
        names.append("I/D")
    return " ".join(names)
