#include "acpi.h"

#include "console.h"

#define EBDA_SEGMENT_PTR 0x40e
#define BIOS_AREA_START  0xe0000
#define BIOS_AREA_END    0x100000
#define MADT_TYPE_LOCAL_APIC 0
#define MADT_LAPIC_ENABLED   (1u << 0)

struct __attribute__((packed)) acpi_rsdp {
    char signature[8];               /* "RSD PTR " */
    uint8_t checksum;                /* over the first 20 bytes */
    char oem_id[6];
    uint8_t revision;
    uint32_t rsdt_address;
    /* revision >= 2 */
    uint32_t length;
    uint64_t xsdt_address;
    uint8_t extended_checksum;
    uint8_t reserved[3];
};

struct __attribute__((packed)) acpi_sdt_header {
    char signature[4];
    uint32_t length;
    uint8_t revision;
    uint8_t checksum;
    char oem_id[6];
    char oem_table_id[8];
    uint32_t oem_revision;
    uint32_t creator_id;
    uint32_t creator_revision;
};

struct __attribute__((packed)) acpi_madt {
    struct acpi_sdt_header header;
    uint32_t local_apic_address;
    uint32_t flags;
    /* interrupt controller structures follow */
};

struct __attribute__((packed)) madt_entry_header {
    uint8_t type;
    uint8_t length;
};

struct __attribute__((packed)) madt_local_apic {
    struct madt_entry_header header;
    uint8_t acpi_processor_uid;
    uint8_t apic_id;
    uint32_t flags;
};

static uint8_t checksum(const void *data, uint64_t len)
{
    const uint8_t *p = data;
    uint8_t sum = 0;
    for (uint64_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return sum;
}

/* Physical ranges we can touch must lie in the boot mappings (first 1 GiB). */
static bool mapped(uint64_t phys, uint64_t len)
{
    return phys < BOOT_MAP_SIZE && len <= BOOT_MAP_SIZE - phys;
}

static const struct acpi_rsdp *rsdp_scan(uint64_t start, uint64_t end)
{
    for (uint64_t addr = start; addr + 20 <= end; addr += 16) {
        const struct acpi_rsdp *rsdp = phys_to_virt(addr);
        if (memcmp(rsdp->signature, "RSD PTR ", 8) == 0 && checksum(rsdp, 20) == 0)
            return rsdp;
    }
    return NULL;
}

static const struct acpi_rsdp *rsdp_find(void)
{
    uint64_t ebda = (uint64_t)(*(const volatile uint16_t *)phys_to_virt(EBDA_SEGMENT_PTR)) << 4;
    if (ebda >= 0x80000 && ebda < 0xa0000) {
        const struct acpi_rsdp *rsdp = rsdp_scan(ebda, ebda + 1024);
        if (rsdp)
            return rsdp;
    }
    return rsdp_scan(BIOS_AREA_START, BIOS_AREA_END);
}

/* Map and validate one system description table; NULL (printed) if bad. */
static const struct acpi_sdt_header *sdt_at(uint64_t phys)
{
    if (!mapped(phys, sizeof(struct acpi_sdt_header))) {
        kprintf("acpi: table at 0x%lx is outside the 1 GiB boot mapping\n", phys);
        return NULL;
    }
    const struct acpi_sdt_header *sdt = phys_to_virt(phys);
    if (!mapped(phys, sdt->length) || sdt->length < sizeof(*sdt)) {
        kprintf("acpi: table at 0x%lx has a bad length %u\n", phys, sdt->length);
        return NULL;
    }
    if (checksum(sdt, sdt->length) != 0) {
        kprintf("acpi: table %c%c%c%c at 0x%lx has a bad checksum\n", sdt->signature[0],
                sdt->signature[1], sdt->signature[2], sdt->signature[3], phys);
        return NULL;
    }
    return sdt;
}

/* Walk the RSDT (4-byte entries) or XSDT (8-byte entries) for `signature`. */
static uint64_t root_table_find(const struct acpi_sdt_header *root, unsigned entry_size,
                                const char *signature)
{
    const uint8_t *entries = (const uint8_t *)(root + 1);
    uint64_t count = (root->length - sizeof(*root)) / entry_size;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t phys = 0;
        memcpy(&phys, entries + i * entry_size, entry_size);
        if (!mapped(phys, sizeof(struct acpi_sdt_header)))
            continue;
        const struct acpi_sdt_header *sdt = phys_to_virt(phys);
        if (memcmp(sdt->signature, signature, 4) == 0)
            return phys;
    }
    return 0;
}

static void madt_collect(const struct acpi_madt *madt, struct cpu_table *out)
{
    const uint8_t *p = (const uint8_t *)(madt + 1);
    const uint8_t *end = (const uint8_t *)madt + madt->header.length;
    out->count = 0;
    while (p + sizeof(struct madt_entry_header) <= end) {
        const struct madt_entry_header *entry = (const void *)p;
        if (entry->length < sizeof(*entry) || p + entry->length > end)
            break;
        if (entry->type == MADT_TYPE_LOCAL_APIC && entry->length >= sizeof(struct madt_local_apic)) {
            const struct madt_local_apic *lapic = (const void *)p;
            if ((lapic->flags & MADT_LAPIC_ENABLED) && out->count < MADT_MAX_CPUS)
                out->apic_id[out->count++] = lapic->apic_id;
        }
        p += entry->length;
    }
}

bool acpi_find_cpus(struct cpu_table *out)
{
    const struct acpi_rsdp *rsdp = rsdp_find();
    if (!rsdp) {
        kprintf("acpi: no RSDP found\n");
        return false;
    }
    bool use_xsdt = rsdp->revision >= 2 && rsdp->xsdt_address != 0;
    uint64_t root_phys = use_xsdt ? rsdp->xsdt_address : rsdp->rsdt_address;
    const struct acpi_sdt_header *root = sdt_at(root_phys);
    if (!root)
        return false;
    uint64_t madt_phys = root_table_find(root, use_xsdt ? 8 : 4, "APIC");
    kprintf("acpi: RSDP at 0x%lx rev %u, %s at 0x%lx, MADT at 0x%lx\n", virt_to_phys(rsdp),
            rsdp->revision, use_xsdt ? "XSDT" : "RSDT", root_phys, madt_phys);
    if (!madt_phys) {
        kprintf("acpi: no MADT\n");
        return false;
    }
    const struct acpi_sdt_header *madt = sdt_at(madt_phys);
    if (!madt)
        return false;
    madt_collect((const struct acpi_madt *)madt, out);
    kprintf("acpi: MADT lists %u enabled CPUs, APIC ids:", out->count);
    for (uint32_t i = 0; i < out->count; i++)
        kprintf(" %u", out->apic_id[i]);
    kprintf("\n");
    return out->count > 0;
}
