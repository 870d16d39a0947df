"""Guest paging walks over tables written byte by byte into a RegionMemory."""

from __future__ import annotations

import time

import pytest

from hvdbg.errors import GuestMemoryError
from hvdbg.arch.regs import CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LME, EFER_NXE
from hvdbg.arch.paging import FaultKind, PagingMode, PfError, PteFlag, format_walk, is_canonical, paging_mode, translate, walk
from hvdbg.arch.paging_ranges import PtRange, mapped_ranges
from hvdbg.arch.physmem import RegionMemory, write_u32, write_u64

P, RW, US, PWT, PCD, A, D, PS, G = (1 << i for i in range(9))
XD = 1 << 63
RAM = 0x100_0000  # 16 MiB of guest RAM at GPA 0

CR0 = CR0_PG | CR0_WP | 1
CR4_64 = CR4_PAE
EFER_64 = EFER_LME | EFER_NXE


def new_ram() -> RegionMemory:
    mem = RegionMemory()
    mem.add_region(0, bytearray(RAM))
    return mem


class Tables4:
    """4-level (or 5-level) tables at fixed GPAs: PML5 0x1000, PML4 0x2000, PDPT 0x3000, PD 0x4000, PT 0x5000."""

    PML5, PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000

    def __init__(self, gva: int, la57: bool = False) -> None:
        self.mem = new_ram()
        self.gva = gva
        if la57:
            self.set(self.PML5, 48, self.PML4 | P | RW | US)
        self.set(self.PML4, 39, self.PDPT | P | RW | US)
        self.set(self.PDPT, 30, self.PD | P | RW | US)
        self.set(self.PD, 21, self.PT | P | RW | US)
        self.set(self.PT, 12, 0x0AB_C000 | P | RW | US)
        self.cr3 = self.PML5 if la57 else self.PML4
        self.cr4 = CR4_64 | (CR4_LA57 if la57 else 0)

    def entry_gpa(self, table: int, shift: int) -> int:
        return table + ((self.gva >> shift) & 511) * 8

    def set(self, table: int, shift: int, value: int) -> None:
        write_u64(self.mem, self.entry_gpa(table, shift), value)

    def walk(self, access: str = "read", user: bool = False, *, cr0: int = CR0,
             cr4: int | None = None, efer: int = EFER_64, **kw: object):
        return walk(self.mem.read, cr0, self.cr3, self.cr4 if cr4 is None else cr4, efer,
                    self.gva, access, user, **kw)  # type: ignore[arg-type]


# ---- mode detection ------------------------------------------------------------


@pytest.mark.parametrize("cr0, cr4, efer, mode", [
    (1, CR4_PAE, EFER_LME, PagingMode.NONE),
    (CR0_PG | 1, 0, 0, PagingMode.BITS32),
    (CR0_PG | 1, CR4_PSE, EFER_NXE, PagingMode.BITS32),
    (CR0_PG | 1, CR4_PAE, 0, PagingMode.PAE),
    (CR0_PG | 1, CR4_PAE, EFER_LME, PagingMode.LEVEL4),
    (CR0_PG | 1, CR4_PAE | CR4_LA57, EFER_LME, PagingMode.LEVEL5),
])
def test_paging_mode(cr0: int, cr4: int, efer: int, mode: PagingMode) -> None:
    assert paging_mode(cr0, cr4, efer) is mode


def test_paging_disabled_is_identity() -> None:
    w = walk(new_ram().read, 1, 0, 0, 0, 0x1234_5678, "write")
    assert w.ok and w.gpa == 0x1234_5678 and w.levels == ()
    assert format_walk(w)[-1] == "  => GPA 0x000012345678 (paging off)"


# ---- 4-level ------------------------------------------------------------------------


def test_4level_4k_page_levels_and_flags() -> None:
    gva = 0x0000_7F12_3456_789A
    t = Tables4(gva)
    t.set(t.PT, 12, 0x0AB_C000 | P | RW | US | A | D | (1 << 7) | G | XD)
    w = t.walk()
    assert w.ok and w.mode is PagingMode.LEVEL4
    assert w.gpa == 0x0AB_C89A and w.page_size == 0x1000
    assert [lv.name for lv in w.levels] == ["PML4E", "PDPTE", "PDE", "PTE"]
    assert [lv.entry_gpa for lv in w.levels] == [
        t.entry_gpa(t.PML4, 39), t.entry_gpa(t.PDPT, 30), t.entry_gpa(t.PD, 21),
        t.entry_gpa(t.PT, 12)]
    assert [lv.index for lv in w.levels] == [0xFE, 0x48, 0x1A2, 0x167]
    assert [lv.next_gpa for lv in w.levels] == [t.PDPT, t.PD, t.PT, 0x0AB_C000]
    pte = w.levels[-1]
    assert pte.flags == PteFlag.P | PteFlag.RW | PteFlag.US | PteFlag.A | PteFlag.D \
        | PteFlag.PAT | PteFlag.G | PteFlag.NX
    assert not pte.flags & PteFlag.PS  # bit 7 of a PTE is PAT
    assert pte.raw == 0x0AB_C000 | P | RW | US | A | D | (1 << 7) | G | XD


def test_4level_2m_page() -> None:
    gva = 0x4060_1234
    t = Tables4(gva)
    t.set(t.PD, 21, 0x0060_0000 | P | RW | PS | (1 << 12))
    w = t.walk("write")
    assert w.ok and w.page_size == 1 << 21
    assert w.gpa == 0x0060_1234
    assert [lv.name for lv in w.levels] == ["PML4E", "PDPTE", "PDE"]
    assert w.levels[-1].flags == PteFlag.P | PteFlag.RW | PteFlag.PS | PteFlag.PAT
    assert w.levels[-1].next_gpa == 0x0060_0000


def test_4level_1g_page() -> None:
    gva = 0xFFFF_8000_4123_4567
    t = Tables4(gva)
    t.set(t.PDPT, 30, 0x1_4000_0000 | P | RW | PS | G)
    w = t.walk()
    assert w.ok and w.page_size == 1 << 30
    assert w.gpa == 0x1_4000_0000 + 0x0123_4567
    assert [lv.name for lv in w.levels] == ["PML4E", "PDPTE"]
    assert w.levels[0].index == 256


@pytest.mark.parametrize("table, shift, name", [
    (Tables4.PML4, 39, "PML4E"), (Tables4.PDPT, 30, "PDPTE"),
    (Tables4.PD, 21, "PDE"), (Tables4.PT, 12, "PTE"),
])
def test_4level_not_present_at_each_level(table: int, shift: int, name: str) -> None:
    t = Tables4(0x7000_1000)
    t.set(table, shift, 0x0AB_C000 | RW | US)  # everything but P
    w = t.walk("write", user=True)
    assert not w.ok and w.gpa is None
    assert w.fault is not None and w.fault.kind is FaultKind.PAGE_FAULT
    assert w.reason == f"{name} not present" and w.stopped_at == name
    assert w.error_code == PfError.W | PfError.U
    assert w.levels[-1].name == name and w.levels[-1].next_gpa is None
    assert translate(t.mem.read, CR0, t.cr3, t.cr4, EFER_64, t.gva) is None


def test_non_canonical_address_is_gp() -> None:
    t = Tables4(0x0000_8000_0000_0000)
    w = t.walk()
    assert w.fault is not None and w.fault.kind is FaultKind.GENERAL_PROTECTION
    assert "non-canonical" in w.reason and w.levels == ()
    assert format_walk(w)[-1].startswith("  => #GP(0): non-canonical")


def test_is_canonical() -> None:
    assert is_canonical(0x0000_7FFF_FFFF_FFFF, 48)
    assert is_canonical(0xFFFF_8000_0000_0000, 48)
    assert not is_canonical(0x0000_8000_0000_0000, 48)
    assert not is_canonical(0xFFFF_0000_0000_0000, 48)
    assert is_canonical(0x00FF_FFFF_FFFF_FFFF, 57)
    assert not is_canonical(0x0100_0000_0000_0000, 57)


# ---- access rights ----------------------------------------------------------------


def test_supervisor_write_to_read_only_page_honours_wp() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PDPT, 30, t.PD | P | US)  # R/W = 0 at the PDPTE only
    w = t.walk("write")
    assert w.reason == "write to read-only page with CR0.WP=1"
    assert w.error_code == PfError.P | PfError.W
    assert w.stopped_at == "PTE"
    assert t.walk("write", cr0=CR0 & ~CR0_WP).ok
    assert t.walk("read").ok


def test_user_write_to_read_only_page_faults_even_without_wp() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PT, 12, 0x0AB_C000 | P | US)
    w = t.walk("write", user=True, cr0=CR0 & ~CR0_WP)
    assert w.reason == "user-mode write to read-only page"
    assert w.error_code == PfError.P | PfError.W | PfError.U


def test_user_access_to_supervisor_page() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PML4, 39, t.PDPT | P | RW)  # U/S = 0 at the top
    w = t.walk("read", user=True)
    assert w.reason == "user-mode read from supervisor page"
    assert w.error_code == PfError.P | PfError.U
    assert t.walk("read").ok


def test_nx_fetch_with_nxe() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PD, 21, t.PT | P | RW | US | XD)
    w = t.walk("fetch")
    assert w.reason.startswith("NX fetch")
    assert w.error_code == PfError.P | PfError.ID
    assert t.walk("read").ok


def test_xd_without_nxe_is_a_reserved_bit() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PT, 12, 0x0AB_C000 | P | RW | XD)
    w = t.walk("read", efer=EFER_LME)
    assert w.error_code == PfError.P | PfError.RSVD
    assert w.reason == f"reserved bits {XD:#x} set in PTE"
    assert w.levels[-1].reserved == XD
    fetch = t.walk("fetch", efer=EFER_LME)
    assert fetch.error_code == PfError.P | PfError.RSVD  # no I/D: neither NXE nor SMEP


def test_smep_and_smap() -> None:
    t = Tables4(0x1000_0000)  # every level has U/S = 1: a user-mode address
    smep = t.walk("fetch", cr4=CR4_64 | CR4_SMEP, efer=EFER_LME)
    assert smep.reason == "supervisor fetch from user page with CR4.SMEP=1"
    assert smep.error_code == PfError.P | PfError.ID
    smap = t.walk("write", cr4=CR4_64 | CR4_SMAP)
    assert "SMAP" in smap.reason and smap.error_code == PfError.P | PfError.W
    assert t.walk("write", cr4=CR4_64 | CR4_SMAP, rflags_ac=True).ok
    assert t.walk("read", user=True, cr4=CR4_64 | CR4_SMAP | CR4_SMEP).ok


def test_not_present_fetch_sets_id_only_with_nxe() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PT, 12, 0)
    assert t.walk("fetch").error_code == PfError.ID
    assert t.walk("fetch", efer=EFER_LME).error_code == 0


@pytest.mark.parametrize("table, shift, value, bits", [
    (Tables4.PML4, 39, Tables4.PDPT | P | RW | US | PS, PS),
    (Tables4.PDPT, 30, 0x4000_0000 | P | RW | PS | (1 << 20), 1 << 20),
    (Tables4.PD, 21, 0x0020_0000 | P | RW | PS | (1 << 13), 1 << 13),
    (Tables4.PT, 12, 0x0AB_C000 | P | (1 << 46), 1 << 46),
])
def test_reserved_bits_per_level(table: int, shift: int, value: int, bits: int) -> None:
    t = Tables4(0x1000_0000)
    t.set(table, shift, value)
    w = t.walk("write")
    assert w.error_code == PfError.P | PfError.W | PfError.RSVD
    assert w.levels[-1].reserved == bits


def test_maxphyaddr_changes_reserved_bits() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PT, 12, (1 << 40) | P)
    assert t.walk(maxphyaddr=46).gpa == 1 << 40
    assert t.walk(maxphyaddr=39).error_code == PfError.P | PfError.RSVD


def test_read_error_on_paging_structure_is_recorded() -> None:
    t = Tables4(0x1000_0000)
    failing_gpa = t.entry_gpa(t.PD, 21)
    boom = GuestMemoryError("GPA not mapped by EPT")

    def read_phys(gpa: int, size: int) -> bytes:
        if gpa == failing_gpa:
            raise boom
        return t.mem.read(gpa, size)

    w = walk(read_phys, CR0, t.cr3, t.cr4, EFER_64, t.gva)
    assert w.fault is not None and w.fault.kind is FaultKind.READ_ERROR
    assert w.fault.entry_gpa == failing_gpa and w.fault.exception is boom
    assert w.stopped_at == "PDE" and w.error_code is None
    assert [lv.name for lv in w.levels] == ["PML4E", "PDPTE"]
    assert f"reading PDE at GPA {failing_gpa:#x} failed" in w.reason


def test_table_outside_ram_is_a_read_error() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PDPT, 30, 0x7000_0000 | P | RW)
    w = t.walk()
    assert w.fault is not None and w.fault.kind is FaultKind.READ_ERROR
    assert isinstance(w.fault.exception, GuestMemoryError)


def test_invalid_access_rejected() -> None:
    with pytest.raises(ValueError):
        Tables4(0).walk("exec")


# ---- 5-level --------------------------------------------------------------------------


def test_5level_walk_and_canonical_check() -> None:
    gva = 0xFF7F_1234_5678_9000  # canonical for 57 bits, not for 48
    t = Tables4(gva, la57=True)
    w = t.walk()
    assert w.ok and w.mode is PagingMode.LEVEL5
    assert [lv.name for lv in w.levels] == ["PML5E", "PML4E", "PDPTE", "PDE", "PTE"]
    assert w.levels[0].index == (gva >> 48) & 511 == 0x17F
    assert w.gpa == 0x0AB_C000
    bad = walk(t.mem.read, CR0, t.cr3, t.cr4, EFER_64, 0x0100_0000_0000_0000)
    assert bad.fault is not None and bad.fault.kind is FaultKind.GENERAL_PROTECTION


def test_5level_pml5e_not_present() -> None:
    t = Tables4(0x1000, la57=True)
    t.set(t.PML5, 48, 0)
    assert t.walk().reason == "PML5E not present"


# ---- PAE --------------------------------------------------------------------------------

PAE_CR0 = CR0
PAE_CR4 = CR4_PAE


def _pae_tables(gva: int) -> tuple[RegionMemory, int]:
    mem = new_ram()
    cr3 = 0x3020  # 32-byte aligned, not page aligned
    write_u64(mem, cr3 + ((gva >> 30) & 3) * 8, 0x4000 | P)
    write_u64(mem, 0x4000 + ((gva >> 21) & 511) * 8, 0x5000 | P | RW | US)
    write_u64(mem, 0x5000 + ((gva >> 12) & 511) * 8, 0x0123_4000 | P | RW | US)
    return mem, cr3


def test_pae_4k_walk_uses_pdpt_from_cr3() -> None:
    gva = 0xC012_3ABC
    mem, cr3 = _pae_tables(gva)
    w = walk(mem.read, PAE_CR0, cr3, PAE_CR4, EFER_NXE, gva, "write")
    assert w.ok and w.mode is PagingMode.PAE and w.gpa == 0x0123_4ABC
    assert [lv.name for lv in w.levels] == ["PDPTE", "PDE", "PTE"]
    assert w.levels[0].entry_gpa == 0x3020 + 3 * 8
    assert w.levels[0].flags == PteFlag.P


def test_pae_2m_page_and_nx() -> None:
    gva = 0x0060_0010
    mem, cr3 = _pae_tables(gva)
    write_u64(mem, 0x4000 + 3 * 8, 0x00A0_0000 | P | RW | PS | XD)
    w = walk(mem.read, PAE_CR0, cr3, PAE_CR4, EFER_NXE, gva)
    assert w.ok and w.page_size == 1 << 21 and w.gpa == 0x00A0_0010
    assert w.levels[-1].flags & PteFlag.NX
    fetch = walk(mem.read, PAE_CR0, cr3, PAE_CR4, EFER_NXE, gva, "fetch")
    assert fetch.error_code == PfError.P | PfError.ID


def test_pae_pdpte_rights_bits_are_reserved() -> None:
    gva = 0x0060_0010
    mem, cr3 = _pae_tables(gva)
    write_u64(mem, cr3, 0x4000 | P | RW)  # bit 1 is reserved in a PAE PDPTE
    w = walk(mem.read, PAE_CR0, cr3, PAE_CR4, 0, gva)
    assert w.fault is not None and w.fault.kind is FaultKind.GENERAL_PROTECTION
    assert w.levels[0].reserved == RW and "PDPTE" in w.reason


def test_pae_pdpte_not_present() -> None:
    mem, cr3 = _pae_tables(0)
    w = walk(mem.read, PAE_CR0, cr3, PAE_CR4, 0, 0x8000_0000)
    assert w.reason == "PDPTE not present" and w.error_code == 0


# ---- 32-bit -------------------------------------------------------------------------------


def _tables32(gva: int) -> RegionMemory:
    mem = new_ram()
    write_u32(mem, 0x2000 + (gva >> 22) * 4, 0x3000 | P | RW | US)
    write_u32(mem, 0x3000 + ((gva >> 12) & 1023) * 4, 0x0077_7000 | P | RW | (1 << 7))
    return mem


def test_32bit_4k_page() -> None:
    gva = 0x8034_5678
    mem = _tables32(gva)
    w = walk(mem.read, CR0, 0x2000, 0, 0, gva)
    assert w.ok and w.mode is PagingMode.BITS32 and w.gpa == 0x0077_7678
    assert [(lv.name, lv.entry_size) for lv in w.levels] == [("PDE", 4), ("PTE", 4)]
    assert w.levels[0].entry_gpa == 0x2000 + 0x200 * 4
    assert w.levels[1].flags == PteFlag.P | PteFlag.RW | PteFlag.PAT
    assert walk(mem.read, CR0, 0x2000, 0, 0, gva, "write", user=True).error_code == 0b111


def test_32bit_4m_pse_page_with_pse36_bits() -> None:
    gva = 0x8034_5678
    mem = new_ram()
    high = 0x12  # physical bits 39:32 live in PDE bits 20:13
    write_u32(mem, 0x2000 + 0x200 * 4, 0x0C00_0000 | (high << 13) | P | RW | PS | (1 << 12))
    w = walk(mem.read, CR0, 0x2000, CR4_PSE, 0, gva)
    assert w.ok and w.page_size == 4 << 20
    assert w.gpa == (high << 32) | 0x0C00_0000 | (gva & 0x3F_FFFF)
    assert w.levels[0].flags == PteFlag.P | PteFlag.RW | PteFlag.PS | PteFlag.PAT
    rsvd = 0x0C00_0000 | (1 << 21) | P | PS
    write_u32(mem, 0x2000 + 0x200 * 4, rsvd)
    assert walk(mem.read, CR0, 0x2000, CR4_PSE, 0, gva).error_code == PfError.P | PfError.RSVD
    write_u32(mem, 0x2000 + 0x200 * 4, 0x0C00_0000 | (0x80 << 13) | P | PS)  # bit 39
    assert walk(mem.read, CR0, 0x2000, CR4_PSE, 0, gva, maxphyaddr=36).levels[0].reserved


def test_32bit_ps_ignored_without_cr4_pse() -> None:
    gva = 0x8034_5678
    mem = _tables32(gva)
    write_u32(mem, 0x2000 + 0x200 * 4, 0x3000 | P | RW | PS)
    w = walk(mem.read, CR0, 0x2000, 0, 0, gva)
    assert w.ok and w.page_size == 0x1000 and [lv.name for lv in w.levels] == ["PDE", "PTE"]


def test_32bit_has_no_nx_and_no_id_bit() -> None:
    gva = 0x8034_5678
    mem = _tables32(gva)
    write_u32(mem, 0x3000 + 0x345 * 4, 0)
    w = walk(mem.read, CR0, 0x2000, 0, EFER_NXE, gva, "fetch")
    assert w.error_code == 0 and w.reason == "PTE not present"


# ---- mapped_ranges ------------------------------------------------------------------------


def _identity_2m(mem: RegionMemory, count: int, flags: int = P | RW) -> None:
    """PML4 0x1000 -> PDPT 0x2000 -> PDs at 0x3000.. mapping GVA = GPA with 2 MiB pages."""
    write_u64(mem, 0x1000, 0x2000 | P | RW | US)
    for i in range(count):
        pd = 0x3000 + (i // 512) * 0x1000
        write_u64(mem, 0x2000 + (i // 512) * 8, pd | P | RW | US)
        write_u64(mem, pd + (i % 512) * 8, (i << 21) | flags | PS)


def test_mapped_ranges_merges_hundreds_of_2m_pages_quickly() -> None:
    mem = new_ram()
    _identity_2m(mem, 700)
    start = time.perf_counter()
    runs = mapped_ranges(mem.read, CR0, 0x1000, CR4_64, EFER_64)
    elapsed = time.perf_counter() - start
    assert runs == [PtRange(0, 700 << 21, 0, PteFlag.P | PteFlag.RW)]
    assert elapsed < 1.0


def test_mapped_ranges_splits_on_flags_and_discontinuity() -> None:
    mem = new_ram()
    _identity_2m(mem, 4)
    write_u64(mem, 0x3000 + 2 * 8, (2 << 21) | P | PS | XD)  # read-only, NX
    write_u64(mem, 0x3000 + 3 * 8, (9 << 21) | P | RW | PS)  # GPA jump
    write_u64(mem, 0x3000 + 5 * 8, (5 << 21) | P | PS | (1 << 14))  # reserved bit: skipped
    runs = mapped_ranges(mem.read, CR0, 0x1000, CR4_64, EFER_64)
    assert runs == [
        PtRange(0, 2 << 21, 0, PteFlag.P | PteFlag.RW),
        PtRange(2 << 21, 3 << 21, 2 << 21, PteFlag.P | PteFlag.NX),
        PtRange(3 << 21, 4 << 21, 9 << 21, PteFlag.P | PteFlag.RW),
    ]
    assert mapped_ranges(mem.read, CR0, 0x1000, CR4_64, EFER_64, limit=2) == runs[:2]


def test_mapped_ranges_effective_flags_and_higher_half() -> None:
    gva = 0xFFFF_FFFF_8000_0000
    t = Tables4(gva)
    t.set(t.PML4, 39, t.PDPT | P | RW)  # supervisor at the top
    t.set(t.PT, 12, 0x0AB_C000 | P | RW | US | G | A | D)
    runs = mapped_ranges(t.mem.read, CR0, t.cr3, t.cr4, EFER_64)
    assert runs == [PtRange(gva, gva + 0x1000, 0x0AB_C000, PteFlag.P | PteFlag.RW | PteFlag.G)]


def test_mapped_ranges_32bit_and_pae() -> None:
    gva = 0x8034_5000
    mem = _tables32(gva)
    write_u32(mem, 0x2000 + 0x300 * 4, 0x0040_0000 | P | PS | US)
    runs = mapped_ranges(mem.read, CR0, 0x2000, CR4_PSE, 0)
    assert runs == [
        PtRange(gva, gva + 0x1000, 0x0077_7000, PteFlag.P | PteFlag.RW | PteFlag.PAT),
        PtRange(0xC000_0000, 0xC040_0000, 0x0040_0000, PteFlag.P | PteFlag.US),
    ]
    pmem, cr3 = _pae_tables(0xC012_3000)
    assert mapped_ranges(pmem.read, CR0, cr3, CR4_PAE, 0) == [
        PtRange(0xC012_3000, 0xC012_4000, 0x0123_4000, PteFlag.P | PteFlag.RW | PteFlag.US)]


def test_mapped_ranges_skip_unreadable_tables() -> None:
    mem = new_ram()
    _identity_2m(mem, 1)
    write_u64(mem, 0x2000 + 8, 0x7000_0000 | P | RW)  # PD outside RAM
    assert mapped_ranges(mem.read, CR0, 0x1000, CR4_64, EFER_64) == [
        PtRange(0, 1 << 21, 0, PteFlag.P | PteFlag.RW)]


# ---- formatter ------------------------------------------------------------------------------


def test_format_walk_lines() -> None:
    t = Tables4(0x1000_0000)
    t.set(t.PT, 12, 0x0AB_C000 | P | US | XD)
    lines = format_walk(t.walk("write", user=True))
    assert lines[0] == "4-level paging walk of GVA 0x0000000010000000 (user write)"
    assert lines[1] == ("  PML4E[  0] @GPA 0x000000002000 = 0x0000000000003007"
                        "  P RW US -> PDPT 0x3000")
    assert lines[4].endswith("P US NX -> 4K page 0xabc000")
    assert lines[-1] == ("  => #PF error code 0x7 [P W U]: user-mode write to read-only page")
    t.set(t.PD, 21, 0)
    assert format_walk(t.walk())[-1] == "  => #PF error code 0x0 [NP R S]: PDE not present"
    t.set(t.PD, 21, 0x0020_0000 | P | PS)
    assert format_walk(t.walk())[-1] == "  => GPA 0x000000200000 (2M page)"


def test_mapped_ranges_do_not_merge_across_the_canonical_hole() -> None:
    mem = new_ram()
    write_u64(mem, 0x1000 + 255 * 8, 0x2000 | P | RW)  # last lower-half PML4E
    write_u64(mem, 0x1000 + 256 * 8, 0x3000 | P | RW)  # first upper-half PML4E
    write_u64(mem, 0x2000 + 511 * 8, 0x4000_0000 | P | RW | PS)
    write_u64(mem, 0x3000, 0x8000_0000 | P | RW | PS)  # GPA-contiguous with the one above
    runs = mapped_ranges(mem.read, CR0, 0x1000, CR4_64, EFER_64)
    assert runs == [
        PtRange(0x7FFF_C000_0000, 0x8000_0000_0000, 0x4000_0000, PteFlag.P | PteFlag.RW),
        PtRange(0xFFFF_8000_0000_0000, 0xFFFF_8000_4000_0000, 0x8000_0000,
                PteFlag.P | PteFlag.RW),
    ]


def test_mapped_ranges_scan_of_a_full_page_table_level_is_fast() -> None:
    mem = new_ram()
    write_u64(mem, 0x1000, 0x2000 | P | RW)
    write_u64(mem, 0x2000, 0x3000 | P | RW)
    for pd_index in range(64):  # 64 page tables of 512 PTEs: 128 MiB in 4 KiB pages
        pt = 0x10_0000 + pd_index * 0x1000
        write_u64(mem, 0x3000 + pd_index * 8, pt | P | RW)
        mem.write(pt, b"".join(((pd_index * 512 + i) << 12 | P | RW).to_bytes(8, "little")
                               for i in range(512)))
    start = time.perf_counter()
    runs = mapped_ranges(mem.read, CR0, 0x1000, CR4_64, EFER_64)
    assert runs == [PtRange(0, 128 << 20, 0, PteFlag.P | PteFlag.RW)]
    assert time.perf_counter() - start < 2.0
