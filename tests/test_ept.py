"""EPT tables built in RegionMemory: walks, editing, misconfigurations, qualifications."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvdbg.vmx.exits import EptViolationQualification, ept_violation_qualification
from hvdbg.vmx.ept import ACCESSED, DIRTY, GPA_WIDTH, LARGE_PAGE, PAGE_1G, PAGE_2M, PAGE_4K, SW_MAPPED, EptCaps, EptPerm, EptPointer, EptStatus, MemType, eptp_problems, format_ranges, format_walk, walk_ept
from hvdbg.vmx.ept_tables import Ept, EptRange
from hvdbg.arch.physmem import RegionMemory, read_u64, write_u64

TABLE_BASE = 0x10_0000
TABLE_POOL = 0x40_0000  # room for 1024 paging-structure pages


class PagePool:
    """Host-physical page allocator over a RegionMemory region, counting allocations."""

    def __init__(self, mem: RegionMemory, base: int = TABLE_BASE, size: int = TABLE_POOL) -> None:
        mem.add_region(base, bytearray(size))
        self.next = base
        self.end = base + size
        self.allocated = 0

    def __call__(self) -> int:
        assert self.next < self.end, "test page pool exhausted"
        page = self.next
        self.next += PAGE_4K
        self.allocated += 1
        return page


def make_ept(**kwargs: object) -> tuple[Ept, RegionMemory, PagePool]:
    mem = RegionMemory()
    pool = PagePool(mem)
    return Ept(mem, pool, **kwargs), mem, pool  # type: ignore[arg-type]


def idx(gpa: int, shift: int) -> int:
    return (gpa >> shift) & 511


# ---- EPTP -------------------------------------------------------------------


def test_eptp_encodes_wb_walk_length_and_pml4() -> None:
    ept, _, _ = make_ept()
    assert ept.pml4_hpa == TABLE_BASE
    assert ept.eptp == TABLE_BASE | 6 | (3 << 3)
    assert eptp_problems(ept.eptp) == []


def test_eptp_ad_bit_and_round_trip() -> None:
    ept, _, _ = make_ept(ad_enabled=True)
    assert ept.eptp & (1 << 6)
    decoded = EptPointer.from_raw(ept.eptp)
    assert decoded == EptPointer(TABLE_BASE, MemType.WB, 4, True)


def test_eptp_problems_reports_each_invalid_field() -> None:
    bad = 0x1000 | 2 | (2 << 3) | (1 << 8) | (1 << 50)
    problems = eptp_problems(bad, EptCaps(maxphyaddr=39))
    assert len(problems) == 3
    assert "memory type 2" in problems[0]
    assert "page-walk length 3" in problems[1]
    assert f"{(1 << 8) | (1 << 50):#x}" in problems[2]


def test_ad_enable_requires_capability() -> None:
    with pytest.raises(ValueError):
        make_ept(ad_enabled=True, caps=EptCaps(ad_flags=False))


# ---- mapping and walking ------------------------------------------------------


def test_map_1g_page_walk_details() -> None:
    ept, mem, _ = make_ept()
    ept.map(PAGE_1G, 0x40_0000_0000, PAGE_1G, EptPerm.RWX)
    gpa = PAGE_1G + 0x1234_5678
    w = ept.walk(gpa)
    assert w.ok and w.status is EptStatus.OK
    assert [lv.name for lv in w.levels] == ["PML4E", "PDPTE"]
    pml4e, pdpte = w.levels
    assert pml4e.table_hpa == TABLE_BASE and pml4e.entry_hpa == TABLE_BASE
    assert pml4e.raw == read_u64(mem, TABLE_BASE) == pml4e.next_hpa | 7
    assert pdpte.entry_hpa == pml4e.next_hpa + 1 * 8
    assert pdpte.leaf and pdpte.large and pdpte.page_size == PAGE_1G
    assert pdpte.raw == 0x40_0000_0000 | LARGE_PAGE | (6 << 3) | 7 | SW_MAPPED
    assert pdpte.memtype == MemType.WB and pdpte.ignore_pat is False
    assert w.hpa == 0x40_0000_0000 + 0x1234_5678
    assert w.page_size == PAGE_1G
    assert w.effective_perms == EptPerm.RWX


def test_map_2m_page() -> None:
    ept, _, _ = make_ept()
    ept.map(0x60_0000, 0x8020_0000, PAGE_2M, EptPerm.RX, MemType.UC, ignore_pat=True)
    w = ept.walk(0x7F_FFFF)
    assert [lv.name for lv in w.levels] == ["PML4E", "PDPTE", "PDE"]
    pde = w.levels[-1]
    assert pde.index == 3 and pde.large and pde.page_size == PAGE_2M
    assert pde.memtype == MemType.UC and pde.ignore_pat
    assert pde.next_hpa == 0x8020_0000
    assert w.hpa == 0x803F_FFFF
    assert w.effective_perms == EptPerm.RX


def test_unaligned_hpa_forces_4k_pages() -> None:
    ept, _, _ = make_ept()
    ept.map(0x20_0000, 0x1234_5000, PAGE_2M, EptPerm.RW)
    w = ept.walk(0x20_0000 + 0x1_2345)
    assert [lv.name for lv in w.levels] == ["PML4E", "PDPTE", "PDE", "PTE"]
    assert w.levels[-1].index == 0x12
    assert w.hpa == 0x1234_5000 + 0x1_2345
    assert w.page_size == PAGE_4K


def test_allow_large_false_uses_4k_pages() -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0, 2 * PAGE_2M, EptPerm.RWX, allow_large=False)
    assert ept.walk(PAGE_2M + 5).page_size == PAGE_4K
    assert ept.translate(PAGE_2M + 5) == PAGE_2M + 5


def test_page_size_capabilities_limit_large_pages() -> None:
    ept, _, _ = make_ept(caps=EptCaps(page_1g=False))
    ept.map(0, 0, PAGE_1G, EptPerm.RWX)
    assert ept.walk(0x1000).page_size == PAGE_2M


def test_mixed_alignment_range_uses_largest_pages_possible() -> None:
    ept, _, _ = make_ept()
    gpa = PAGE_2M - 0x1000
    size = 0x1000 + PAGE_2M + 0x3000
    ept.map(gpa, gpa + 0x8000_0000, size, EptPerm.RWX)
    assert ept.walk(gpa).page_size == PAGE_4K
    assert ept.walk(PAGE_2M).page_size == PAGE_2M
    assert ept.walk(2 * PAGE_2M + 0x2000).page_size == PAGE_4K
    assert ept.translate(2 * PAGE_2M + 0x3000) is None
    for probe in (gpa, PAGE_2M + 0x7_7777, 2 * PAGE_2M + 0x2FFF):
        assert ept.translate(probe) == probe + 0x8000_0000


def test_remap_over_large_page_splits_it() -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0x4000_0000, PAGE_2M, EptPerm.RWX)
    ept.map(0x5000, 0x9999_9000, PAGE_4K, EptPerm.R, MemType.UC)
    assert ept.translate(0x5123) == 0x9999_9123
    assert ept.walk(0x5000).memtype == MemType.UC
    assert ept.translate(0x4123) == 0x4000_4123
    assert ept.translate(0x6000) == 0x4000_6000
    assert ept.walk(0x6000).effective_perms == EptPerm.RWX


def test_map_large_over_small_tables_frees_them() -> None:
    ept, _, pool = make_ept()
    ept.map(0, 0, PAGE_2M, EptPerm.RWX, allow_large=False)
    assert len(ept.table_pages()) == 4
    ept.map(0, 0x20_0000, PAGE_2M, EptPerm.RX)
    assert ept.walk(0x1000).page_size == PAGE_2M
    assert len(ept.table_pages()) == 3
    ept.map(0x40_0000, 0, PAGE_4K, EptPerm.R)  # reuses the freed page table
    assert pool.allocated == 4


@pytest.mark.parametrize("kwargs", [
    dict(gpa=0x800, hpa=0, size=PAGE_4K, perms=EptPerm.R),
    dict(gpa=0, hpa=0x800, size=PAGE_4K, perms=EptPerm.R),
    dict(gpa=0, hpa=0, size=0, perms=EptPerm.R),
    dict(gpa=0, hpa=0, size=PAGE_4K, perms=EptPerm.W),
    dict(gpa=0, hpa=0, size=PAGE_4K, perms=EptPerm.W | EptPerm.X),
    dict(gpa=(1 << GPA_WIDTH) - PAGE_4K, hpa=0, size=2 * PAGE_4K, perms=EptPerm.R),
    dict(gpa=0, hpa=1 << 46, size=PAGE_4K, perms=EptPerm.R),
])
def test_map_rejects_invalid_requests(kwargs: dict[str, int]) -> None:
    ept, _, _ = make_ept()
    with pytest.raises(ValueError):
        ept.map(**kwargs)  # type: ignore[arg-type]


def test_map_rejects_reserved_memtype_and_unsupported_execute_only() -> None:
    ept, _, _ = make_ept(caps=EptCaps(execute_only=False))
    with pytest.raises(ValueError):
        ept.map(0, 0, PAGE_4K, EptPerm.R, memtype=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ept.map(0, 0, PAGE_4K, EptPerm.X)


def test_execute_only_mapping_when_supported() -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0x5000, PAGE_4K, EptPerm.X)
    w = ept.walk(0x10)
    assert w.ok and w.effective_perms == EptPerm.X
    assert w.is_violation("read") and not w.is_violation("fetch")


# ---- not present at each level -------------------------------------------------


def test_not_present_pml4e() -> None:
    ept, _, _ = make_ept()
    w = ept.walk(0x1000)
    assert w.is_not_present and [lv.name for lv in w.levels] == ["PML4E"]
    assert w.stopped_at is w.levels[0] and w.levels[0].next_hpa is None
    assert w.reason.startswith("PML4E not present")
    assert w.hpa is None and ept.translate(0x1000) is None


@pytest.mark.parametrize("probe, stop", [
    (1 << 39, "PML4E"),
    (PAGE_1G, "PDPTE"),
    (PAGE_2M, "PDE"),
    (PAGE_4K, "PTE"),
])
def test_not_present_at_each_level(probe: int, stop: str) -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0, PAGE_4K, EptPerm.RWX)
    w = ept.walk(probe)
    assert w.is_not_present
    assert w.levels[-1].name == stop
    assert w.levels[-1].raw == 0
    assert w.effective_perms == EptPerm.NONE
    for access in ("read", "write", "fetch"):
        assert w.is_violation(access)  # type: ignore[arg-type]


# ---- misconfigurations -----------------------------------------------------------


def _leaf_entry_hpa(ept: Ept, gpa: int) -> int:
    return ept.walk(gpa).levels[-1].entry_hpa


@pytest.mark.parametrize("bits, reason", [
    (0b010, "write access without read"),
    (0b110, "write access without read"),
])
def test_misconfig_write_without_read(bits: int, reason: str) -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0x7000, PAGE_4K, EptPerm.RWX, allow_large=False)
    at = _leaf_entry_hpa(ept, 0)
    write_u64(mem, at, (read_u64(mem, at) & ~7) | bits)
    w = ept.walk(0)
    assert w.is_misconfig and w.status is EptStatus.MISCONFIGURED
    assert reason in w.reason and w.reason.startswith("PTE")
    assert not w.is_violation("write")
    assert ept.translate(0) is None


def test_misconfig_execute_only_unsupported() -> None:
    mem = RegionMemory()
    pool = PagePool(mem)
    ept = Ept(mem, pool)
    ept.map(0, 0x7000, PAGE_4K, EptPerm.X)
    assert ept.walk(0).ok
    w = walk_ept(mem, ept.pml4_hpa, 0, EptCaps(execute_only=False))
    assert w.is_misconfig and "execute-only" in w.reason


@pytest.mark.parametrize("memtype", [2, 3, 7])
def test_misconfig_reserved_memtype(memtype: int) -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0, PAGE_2M, EptPerm.RWX)
    at = _leaf_entry_hpa(ept, 0)
    write_u64(mem, at, (read_u64(mem, at) & ~(7 << 3)) | memtype << 3)
    w = ept.walk(0x1000)
    assert w.is_misconfig and w.levels[-1].name == "PDE"
    assert f"memory type {memtype}" in w.reason


@pytest.mark.parametrize("level_name, bit", [
    ("PML4E", 3), ("PML4E", 7),  # bits 7:3 of a PML4E
    ("PDPTE", 5),  # bits 6:3 of a non-leaf PDPTE
    ("PDE", 6),  # bits 6:3 of a non-leaf PDE
    ("PTE", 47),  # beyond MAXPHYADDR = 46
])
def test_misconfig_reserved_bits_at_each_level(level_name: str, bit: int) -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0, PAGE_4K, EptPerm.RWX)
    entry = next(lv for lv in ept.walk(0).levels if lv.name == level_name)
    write_u64(mem, entry.entry_hpa, entry.raw | (1 << bit))
    w = ept.walk(0)
    assert w.is_misconfig and w.levels[-1].name == level_name
    assert f"reserved bits set ({1 << bit:#x})" in w.reason


@pytest.mark.parametrize("size, bit", [(PAGE_2M, 12), (PAGE_2M, 20), (PAGE_1G, 29), (PAGE_1G, 13)])
def test_misconfig_reserved_bits_in_large_pages(size: int, bit: int) -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0, size, EptPerm.RWX)
    at = _leaf_entry_hpa(ept, 0)
    write_u64(mem, at, read_u64(mem, at) | (1 << bit))
    assert ept.walk(0).is_misconfig


def test_misconfig_1g_page_without_capability() -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0, PAGE_1G, EptPerm.RWX)
    assert ept.walk(0).ok
    w = walk_ept(mem, ept.pml4_hpa, 0, EptCaps(page_1g=False))
    assert w.is_misconfig and "1-GByte pages are not supported" in w.reason


def test_not_present_entry_is_never_misconfigured() -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0, PAGE_4K, EptPerm.RWX)
    at = _leaf_entry_hpa(ept, 0)
    write_u64(mem, at, (1 << 50) | (7 << 3))  # reserved bits and memtype, but bits 2:0 = 0
    assert ept.walk(0).is_not_present


# ---- protect / unmap ------------------------------------------------------------


def test_protect_splits_1g_page_down_to_4k() -> None:
    ept, _, _ = make_ept()
    hpa = 0x1_0000_0000
    ept.map(0, hpa, PAGE_1G, EptPerm.RWX)
    target = 0x1234_5000
    ept.protect(target, PAGE_4K, EptPerm.R)

    w = ept.walk(target + 0x10)
    assert w.page_size == PAGE_4K and w.effective_perms == EptPerm.R
    assert w.hpa == hpa + target + 0x10
    neighbour = ept.walk(target + PAGE_4K)
    assert neighbour.page_size == PAGE_4K and neighbour.effective_perms == EptPerm.RWX
    far = ept.walk(0x3000_0000)
    assert far.page_size == PAGE_2M and far.effective_perms == EptPerm.RWX
    assert far.hpa == hpa + 0x3000_0000
    assert far.memtype == MemType.WB

    assert ept.mapped_ranges() == [
        EptRange(0, target, hpa, EptPerm.RWX, MemType.WB),
        EptRange(target, target + PAGE_4K, hpa + target, EptPerm.R, MemType.WB),
        EptRange(target + PAGE_4K, PAGE_1G, hpa + target + PAGE_4K, EptPerm.RWX, MemType.WB),
    ]


def test_protect_whole_large_page_keeps_it_large() -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0, 2 * PAGE_2M, EptPerm.RWX)
    pages_before = len(ept.table_pages())
    ept.protect(PAGE_2M, PAGE_2M, EptPerm.RX)
    assert len(ept.table_pages()) == pages_before
    assert ept.walk(PAGE_2M).page_size == PAGE_2M
    assert ept.walk(PAGE_2M).effective_perms == EptPerm.RX
    assert ept.walk(0).effective_perms == EptPerm.RWX


def test_protect_leaves_holes_unmapped() -> None:
    ept, _, _ = make_ept()
    ept.map(0x3000, 0x3000, PAGE_4K, EptPerm.RWX)
    ept.protect(0, 0x10000, EptPerm.R)
    assert ept.mapped_ranges() == [EptRange(0x3000, 0x4000, 0x3000, EptPerm.R, MemType.WB)]


def test_protect_none_then_restore_keeps_frame() -> None:
    ept, _, _ = make_ept()
    ept.map(PAGE_2M, 0x7700_0000, PAGE_2M, EptPerm.RWX, MemType.WT)
    ept.protect(PAGE_2M + 0x1000, PAGE_4K, EptPerm.NONE)
    w = ept.walk(PAGE_2M + 0x1000)
    assert w.is_not_present and w.levels[-1].name == "PTE"
    assert w.is_violation("read")
    assert ept.mapped_ranges()[1] == EptRange(PAGE_2M + 0x1000, PAGE_2M + 0x2000,
                                              0x7700_1000, EptPerm.NONE, MemType.WT)
    ept.protect(PAGE_2M + 0x1000, PAGE_4K, EptPerm.RW)
    assert ept.translate(PAGE_2M + 0x1008) == 0x7700_1008
    assert ept.walk(PAGE_2M + 0x1000).memtype == MemType.WT


def test_unmap_part_of_large_page() -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0x100_0000, PAGE_2M, EptPerm.RWX)
    ept.unmap(0x10_0000, 0x2000)
    assert ept.translate(0x10_0000) is None
    assert ept.translate(0x10_1FFF) is None
    assert ept.translate(0x10_2000) == 0x110_2000
    assert ept.translate(0xF_FFFF) == 0x10F_FFFF
    assert [(r.gpa_start, r.gpa_end) for r in ept.mapped_ranges()] == [
        (0, 0x10_0000), (0x10_2000, PAGE_2M)]


def test_unmap_everything_reclaims_tables_and_reuses_them() -> None:
    ept, _, pool = make_ept()
    ept.map(0x1000, 0, 0x3000, EptPerm.RWX)
    ept.map(PAGE_1G * 3, 0, PAGE_2M, EptPerm.RWX)
    assert len(ept.table_pages()) == 5
    ept.unmap(0, 4 * PAGE_1G)
    assert ept.table_pages() == [ept.pml4_hpa]
    assert ept.mapped_ranges() == []
    allocated = pool.allocated
    ept.map(0x1000, 0, PAGE_4K, EptPerm.R)
    assert pool.allocated == allocated  # three tables came from the free list
    assert ept.translate(0x1000) == 0


# ---- effective permissions and exit qualification --------------------------------


def _restrict_pdpte(ept: Ept, mem: RegionMemory, gpa: int, perms: int) -> None:
    pdpte = ept.walk(gpa).levels[1]
    write_u64(mem, pdpte.entry_hpa, (pdpte.raw & ~7) | perms)


def test_effective_perms_are_and_over_levels() -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0, PAGE_4K, EptPerm.RWX)
    _restrict_pdpte(ept, mem, 0, EptPerm.RX)
    w = ept.walk(0)
    assert w.ok and w.levels[-1].perms == EptPerm.RWX
    assert w.effective_perms == EptPerm.RX
    assert w.is_violation("write") and not w.is_violation("read")
    qual = ept_violation_qualification("write", w, gla_valid=True, translated_access=True).encode()
    decoded = EptViolationQualification.decode(qual)
    assert decoded == EptViolationQualification(write=True, readable=True, executable=True,
                                                gla_valid=True, gla_translated=True)
    assert decoded.describe(0, 0x1000).startswith("EPT violation: write to GPA 0x0, page permissions r-x")


@pytest.mark.parametrize("perms, access, expected", [
    (EptPerm.R, "write", 0b10 | 0b1000),
    (EptPerm.RW, "fetch", 0b100 | 0b11000),
    (EptPerm.X, "read", 0b1 | 0b100000),
    (EptPerm.RX, "write", 0b10 | 0b101000),
])
def test_violation_qualification_access_and_permission_bits(
        perms: EptPerm, access: str, expected: int) -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0, PAGE_4K, perms)
    w = ept.walk(0)
    assert w.is_violation(access)  # type: ignore[arg-type]
    qual = ept_violation_qualification(access, w, gla_valid=True).encode()  # type: ignore[arg-type]
    assert qual == expected | (1 << 7) | (1 << 8)


def test_violation_qualification_not_present_has_no_permission_bits() -> None:
    ept, _, _ = make_ept()
    w = ept.walk(0x5000)
    assert ept_violation_qualification("read", w, gla_valid=False, translated_access=False).encode() == 0b1
    assert ept_violation_qualification("fetch", w, gla_valid=True, translated_access=False).encode() \
        == 0b100 | (1 << 7)


def test_violation_qualification_bit8_only_with_valid_gla() -> None:
    ept, _, _ = make_ept()
    w = ept.walk(0)
    assert ept_violation_qualification("write", w, gla_valid=False, translated_access=True).encode() == 0b10
    assert ept_violation_qualification("write", w, gla_valid=True, translated_access=True,
                                   nmi_unblocking=True).encode() == 0b10 | (1 << 7) | (1 << 8) | (1 << 12)


def test_invalid_access_name_is_rejected() -> None:
    ept, _, _ = make_ept()
    with pytest.raises(ValueError):
        ept.walk(0).is_violation("exec")  # type: ignore[arg-type]


# ---- accessed / dirty ----------------------------------------------------------


def test_record_access_sets_accessed_and_dirty_when_enabled() -> None:
    ept, _, _ = make_ept(ad_enabled=True)
    ept.map(0, 0, PAGE_4K, EptPerm.RW)
    ept.record_access(ept.walk(0), "read")
    w = ept.walk(0)
    assert all(lv.accessed for lv in w.levels) and not w.levels[-1].dirty
    ept.record_access(w, "write")
    assert ept.walk(0).levels[-1].dirty
    assert ept.walk(0).levels[-1].raw & (ACCESSED | DIRTY) == ACCESSED | DIRTY


def test_record_access_is_a_no_op_without_ad() -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0, PAGE_4K, EptPerm.RW)
    ept.record_access(ept.walk(0), "write")
    assert not any(lv.accessed for lv in ept.walk(0).levels)


def test_record_access_no_dirty_on_refused_write() -> None:
    ept, _, _ = make_ept(ad_enabled=True)
    ept.map(0, 0, PAGE_4K, EptPerm.R)
    ept.record_access(ept.walk(0), "write")
    leaf = ept.walk(0).levels[-1]
    assert leaf.accessed and not leaf.dirty


# ---- mapped_ranges ----------------------------------------------------------------


def test_mapped_ranges_merges_contiguous_runs_only() -> None:
    ept, _, _ = make_ept()
    ept.map(0, 0x10_0000, 0x3000, EptPerm.RWX)
    ept.map(0x3000, 0x10_3000, PAGE_2M - 0x3000, EptPerm.RWX)  # hpa contiguous: merges
    ept.map(PAGE_2M, 0x90_0000, PAGE_2M, EptPerm.RWX)  # hpa jump: new run
    ept.map(2 * PAGE_2M, 0x90_0000 + PAGE_2M, PAGE_4K, EptPerm.RWX, MemType.UC)  # memtype
    ept.map(2 * PAGE_2M + PAGE_4K, 0x90_0000 + PAGE_2M + PAGE_4K, PAGE_4K, EptPerm.R)  # perms
    assert ept.mapped_ranges() == [
        EptRange(0, PAGE_2M, 0x10_0000, EptPerm.RWX, MemType.WB),
        EptRange(PAGE_2M, 2 * PAGE_2M, 0x90_0000, EptPerm.RWX, MemType.WB),
        EptRange(2 * PAGE_2M, 2 * PAGE_2M + PAGE_4K, 0xB0_0000, EptPerm.RWX, MemType.UC),
        EptRange(2 * PAGE_2M + PAGE_4K, 2 * PAGE_2M + 2 * PAGE_4K, 0xB0_1000, EptPerm.R,
                 MemType.WB),
    ]
    lines = format_ranges(ept.mapped_ranges())
    assert lines[0] == "0x000000000000-0x0000001fffff -> 0x000000100000 RWX WB  2M"
    assert "R-- WB" in lines[3]


def test_mapped_ranges_spanning_pml4_entries() -> None:
    ept, _, _ = make_ept()
    start = (1 << 39) - PAGE_1G
    ept.map(start, 0x1_0000_0000, 2 * PAGE_1G, EptPerm.RWX)
    assert ept.mapped_ranges() == [
        EptRange(start, start + 2 * PAGE_1G, 0x1_0000_0000, EptPerm.RWX, MemType.WB)]
    assert ept.walk(1 << 39).levels[0].index == 1


# ---- formatter -------------------------------------------------------------------


def test_format_walk_success_and_failures() -> None:
    ept, mem, _ = make_ept()
    ept.map(0, 0xABC_D000, PAGE_4K, EptPerm.RX)
    lines = format_walk(ept.walk(0x10))
    assert lines[0].startswith("EPT walk of GPA 0x000000000010")
    assert lines[1].startswith("  PML4E[  0] @HPA ")
    assert "R-X WB -> 4K page 0xabcd000" in lines[4]
    assert lines[-1] == "  => HPA 0x00000abcd010  R-X WB 4K page"
    assert format_walk(ept.walk(PAGE_1G))[-1] == \
        "  => EPT violation: PDPTE not present (bits 2:0 = 000b)"
    at = _leaf_entry_hpa(ept, 0)
    write_u64(mem, at, read_u64(mem, at) & ~7 | 2)
    assert format_walk(ept.walk(0))[-1].startswith("  => EPT misconfiguration: PTE: write")


# ---- model-based check ------------------------------------------------------------

PAGES = 3 * 512  # a 6 MiB window: three 2 MiB regions
_page_ranges = st.tuples(st.integers(0, PAGES - 1), st.integers(1, 700)).map(
    lambda t: (t[0], min(t[1], PAGES - t[0])))
_perms = st.sampled_from([EptPerm.NONE, EptPerm.R, EptPerm.RW, EptPerm.RX, EptPerm.RWX,
                          EptPerm.X])
_ops = st.one_of(
    st.tuples(st.just("map"), _page_ranges, _perms,
              st.sampled_from([0, 512, 1000]), st.sampled_from([MemType.WB, MemType.UC])),
    st.tuples(st.just("protect"), _page_ranges, _perms),
    st.tuples(st.just("unmap"), _page_ranges),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ops, min_size=1, max_size=8))
def test_tables_match_a_page_model(ops: list[tuple]) -> None:
    ept, _, _ = make_ept()
    model: dict[int, tuple[int, EptPerm, int]] = {}  # page -> (hpa page, perms, memtype)
    for op in ops:
        kind, (first, count) = op[0], op[1]
        pages = range(first, first + count)
        if kind == "map":
            perms, hpa_shift, memtype = op[2], op[3], op[4]
            ept.map(first * PAGE_4K, (first + hpa_shift) * PAGE_4K, count * PAGE_4K, perms,
                    memtype)
            model.update({p: (p + hpa_shift, perms, memtype) for p in pages})
        elif kind == "protect":
            ept.protect(first * PAGE_4K, count * PAGE_4K, op[2])
            model.update({p: (model[p][0], op[2], model[p][2]) for p in pages if p in model})
        else:
            ept.unmap(first * PAGE_4K, count * PAGE_4K)
            for p in pages:
                model.pop(p, None)

    expected: list[EptRange] = []
    for page in sorted(model):
        hpa_page, perms, memtype = model[page]
        gpa, hpa = page * PAGE_4K, hpa_page * PAGE_4K
        if expected and expected[-1].gpa_end == gpa and expected[-1].perms == perms \
                and expected[-1].memtype == memtype \
                and expected[-1].hpa_start + (gpa - expected[-1].gpa_start) == hpa:
            expected[-1] = expected[-1]._replace(gpa_end=gpa + PAGE_4K)
        else:
            expected.append(EptRange(gpa, gpa + PAGE_4K, hpa, perms, memtype))
    assert ept.mapped_ranges() == expected

    for page in range(0, PAGES, 37):
        w = ept.walk(page * PAGE_4K + 8)
        if page in model and model[page][1] != EptPerm.NONE:
            assert w.ok and w.hpa == model[page][0] * PAGE_4K + 8
            assert w.effective_perms == model[page][1]
        else:
            assert w.is_not_present
    if not model:
        assert ept.table_pages() == [ept.pml4_hpa]
