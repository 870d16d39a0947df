/*
 * The guest's EPT (Intel SDM Vol. 3C 29.3 "The Extended Page Table Mechanism"), one for
 * all vCPUs: 4-level, write-back paging structures, RWX.
 *   - guest RAM: GPA [0, EPT_MAPPED_MEM) -> HPA GPA + EPT_OFFSET, 2 MiB pages (4 KiB if the
 *     processor has no 2 MiB EPT pages), memory type WB;
 *   - GPA 0xFEE00000 (4 KiB) -> the APIC-access page, a zeroed page of the hypervisor:
 *     with "virtualize APIC accesses" and APIC_ACCESS_ADDR = its HPA, every guest access
 *     to it is an APIC-access VM exit (SDM 29.4);
 *   - GPA 0xFEC00000 (4 KiB) -> HPA 0xFEC00000, UC: the I/O APIC passed through (the SMP
 *     kernel's PIT/RTC/echo/disk workloads program it).
 * Nothing else is mapped: any other access is an EPT violation (exit reason 48).
 *
 * Entry formats: SDM 29.3.2, Tables 29-1 (EPTP), 29-2 (PML4E), 29-4 (PDPTE -> PD),
 * 29-5 (PDE 2 MiB page), 29-6 (PDE -> PT), 29-7 (PTE).  Non-leaf entries: bits 2:0 RWX and
 * the address, bits 7:3 zero.  Leaves: bits 5:3 the memory type, bit 6 (ignore PAT) 0.
 */
#include "minivisor.h"

#define EPT_RWX         0x7UL
#define EPT_MT_SHIFT    3
#define EPT_MT_UC       0UL
#define EPT_MT_WB       6UL
#define EPT_LARGE       (1UL << 7)
#define EPT_ADDR_MASK   0x000ffffffffff000UL
#define PAGE_4K         0x1000UL
#define PAGE_2M         0x200000UL
/* PML4 + PDPT + PDs + PTs: enough for 4 KiB pages over all of GUEST_MEM, plus the two MMIO PTs. */
#define EPT_POOL_PAGES  (4 + GUEST_MEM / PAGE_2M + GUEST_MEM / 0x40000000UL + 4)

static uint64_t ept_pool[EPT_POOL_PAGES][512] __attribute__((aligned(4096)));
static uint32_t ept_pool_used;
static uint64_t *ept_pml4;

uint64_t ept_pointer;
uint8_t apic_access_page[4096] __attribute__((aligned(4096)));

static uint64_t *ept_table_alloc(void)
{
    if (ept_pool_used >= EPT_POOL_PAGES)
        mv_stop(this_cpu(), "ept: out of table pages (%lu)\n", (uint64_t)EPT_POOL_PAGES);
    uint64_t *t = ept_pool[ept_pool_used++];
    memset(t, 0, 4096);
    return t;
}

/* The next-level table of entry `index` of `table`, created if absent. */
static uint64_t *ept_next(uint64_t *table, unsigned index)
{
    uint64_t e = table[index];
    if (!(e & EPT_RWX)) {
        uint64_t *next = ept_table_alloc();
        table[index] = (uint64_t)next | EPT_RWX;
        return next;
    }
    if (e & EPT_LARGE)
        mv_stop(this_cpu(), "ept: a large page is in the way (entry 0x%lx)\n", e);
    return (uint64_t *)(e & EPT_ADDR_MASK);
}

static void ept_map(uint64_t gpa, uint64_t hpa, uint64_t size, uint64_t memtype)
{
    uint64_t *pdpt = ept_next(ept_pml4, (gpa >> 39) & 511);
    uint64_t *pd = ept_next(pdpt, (gpa >> 30) & 511);
    uint64_t leaf = hpa | EPT_RWX | memtype << EPT_MT_SHIFT;
    if (size == PAGE_2M) {
        pd[(gpa >> 21) & 511] = leaf | EPT_LARGE;
        return;
    }
    uint64_t *pt = ept_next(pd, (gpa >> 21) & 511);
    pt[(gpa >> 12) & 511] = leaf;
}

void ept_build(void)
{
    const struct cpu *bsp = &cpus[0];
    uint64_t cap = bsp->vmx.ept_cap;
    bool wb = !bsp->vmx_ready || (cap & EPT_CAP_MEMTYPE_WB);
    bool large = !bsp->vmx_ready || (cap & EPT_CAP_2MB_PAGES);

    ept_pool_used = 0;
    ept_pml4 = ept_table_alloc();
    uint64_t page = large ? PAGE_2M : PAGE_4K;
    for (uint64_t gpa = 0; gpa < EPT_MAPPED_MEM; gpa += page)
        ept_map(gpa, gpa + EPT_OFFSET, page, EPT_MT_WB);
    memset(apic_access_page, 0, sizeof(apic_access_page));
    ept_map(LAPIC_PHYS, (uint64_t)apic_access_page, PAGE_4K, EPT_MT_UC);
    ept_map(IOAPIC_PHYS, IOAPIC_PHYS, PAGE_4K, EPT_MT_UC);

    /* EPTP (SDM 25.6.11): bits 2:0 memory type of the structures, 5:3 walk length - 1,
     * bit 6 accessed/dirty flags off. */
    ept_pointer = (uint64_t)ept_pml4 | (wb ? EPT_MT_WB : EPT_MT_UC) | (4 - 1) << 3;
    mv_log("ept ready: GPA 0x0-0x%lx -> HPA 0x%lx-0x%lx (%s pages, WB), APIC-access page GPA 0x%lx -> HPA 0x%lx, "
           "I/O APIC 0x%lx 1:1; EPTP 0x%lx, %u table pages\n", EPT_MAPPED_MEM - 1, EPT_OFFSET,
           EPT_OFFSET + EPT_MAPPED_MEM - 1, large ? "2 MiB" : "4 KiB", LAPIC_PHYS, (uint64_t)apic_access_page,
           IOAPIC_PHYS, ept_pointer, ept_pool_used);
#ifdef BUG_EPT16M
    mv_log("ept: BUG_EPT16M build: the guest is told it has %lu MiB, the EPT maps %lu MiB\n", GUEST_MEM / MIB,
           EPT_MAPPED_MEM / MIB);
#endif
}
