/*
 * ACPI (ACPI 6.x, 5.2.5 RSDP, 5.2.7 RSDT, 5.2.8 XSDT, 5.2.12 MADT):
 *  - the host's CPUs: the enabled processor local APIC entries of the machine's MADT,
 *    found the way guests/smp/acpi.c finds them (EBDA, then 0xE0000-0xFFFFF);
 *  - the guest's tables: an RSDP (revision 0), an RSDT and a MADT at guest-physical
 *    GUEST_ACPI_GPA, listing one processor per vCPU (the CPUs that joined, with their
 *    APIC IDs and the host's processor UIDs) and the host's other MADT entries (I/O APIC,
 *    interrupt source overrides, NMI entries), since the I/O APIC is passed through.
 */
#include "minivisor.h"

#define EBDA_SEGMENT_PTR    0x40e
#define BIOS_AREA_START     0xe0000
#define BIOS_AREA_END       0x100000
#define MADT_LOCAL_APIC     0
#define MADT_IO_APIC        1
#define MADT_ISO            2
#define MADT_NMI_SOURCE     3
#define MADT_LOCAL_APIC_NMI 4
#define MADT_LAPIC_ENABLED  (1u << 0)
#define MADT_PCAT_COMPAT    (1u << 0)
#define GUEST_ACPI_GPA      0xe0000UL
#define GUEST_RSDT_OFFSET   0x40
#define GUEST_MADT_OFFSET   0x80
#define GUEST_MADT_MAX      0xf00
#define HOST_EXTRA_MAX      1024
#define FOUR_GIB            0x100000000UL

struct __attribute__((packed)) acpi_rsdp {
    char signature[8];
    uint8_t checksum;
    char oem_id[6];
    uint8_t revision;
    uint32_t rsdt_address;
    uint32_t length;            /* revision >= 2 */
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
};

struct __attribute__((packed)) madt_entry {
    uint8_t type;
    uint8_t length;
};

struct __attribute__((packed)) madt_local_apic {
    uint8_t type, length;
    uint8_t uid;
    uint8_t apic_id;
    uint32_t flags;
};

/* What the guest's MADT copies from the host's. */
static uint32_t host_madt_flags = MADT_PCAT_COMPAT;
static uint8_t host_uid_of_apic[256];
static uint8_t host_extra[HOST_EXTRA_MAX];
static uint32_t host_extra_len;

static uint8_t checksum(const void *data, uint64_t len)
{
    const uint8_t *p = data;
    uint8_t sum = 0;
    for (uint64_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return sum;
}

static bool mapped(uint64_t phys, uint64_t len)
{
    return phys < FOUR_GIB && len <= FOUR_GIB - phys;
}

static const struct acpi_rsdp *rsdp_scan(uint64_t start, uint64_t end)
{
    for (uint64_t addr = start; addr + 20 <= end; addr += 16) {
        const struct acpi_rsdp *rsdp = phys_ptr(addr);
        if (memcmp(rsdp->signature, "RSD PTR ", 8) == 0 && checksum(rsdp, 20) == 0)
            return rsdp;
    }
    return NULL;
}

static const struct acpi_rsdp *rsdp_find(void)
{
    uint64_t ebda = (uint64_t)(*(const volatile uint16_t *)phys_ptr(EBDA_SEGMENT_PTR)) << 4;
    if (ebda >= 0x80000 && ebda < 0xa0000) {
        const struct acpi_rsdp *rsdp = rsdp_scan(ebda, ebda + 1024);
        if (rsdp)
            return rsdp;
    }
    return rsdp_scan(BIOS_AREA_START, BIOS_AREA_END);
}

static const struct acpi_sdt_header *sdt_at(uint64_t phys)
{
    if (!phys || !mapped(phys, sizeof(struct acpi_sdt_header)))
        return NULL;
    const struct acpi_sdt_header *sdt = phys_ptr(phys);
    if (sdt->length < sizeof(*sdt) || !mapped(phys, sdt->length) || checksum(sdt, sdt->length) != 0)
        return NULL;
    return sdt;
}

static const struct acpi_madt *madt_find(void)
{
    const struct acpi_rsdp *rsdp = rsdp_find();
    if (!rsdp) {
        mv_log("acpi: no RSDP\n");
        return NULL;
    }
    bool use_xsdt = rsdp->revision >= 2 && rsdp->xsdt_address != 0;
    const struct acpi_sdt_header *root = sdt_at(use_xsdt ? rsdp->xsdt_address : rsdp->rsdt_address);
    if (!root) {
        mv_log("acpi: no valid %s\n", use_xsdt ? "XSDT" : "RSDT");
        return NULL;
    }
    unsigned entry_size = use_xsdt ? 8 : 4;
    uint64_t count = (root->length - sizeof(*root)) / entry_size;
    const uint8_t *entries = (const uint8_t *)(root + 1);
    for (uint64_t i = 0; i < count; i++) {
        uint64_t phys = 0;
        memcpy(&phys, entries + i * entry_size, entry_size);
        const struct acpi_sdt_header *sdt = sdt_at(phys);
        if (sdt && memcmp(sdt->signature, "APIC", 4) == 0 && sdt->length >= sizeof(struct acpi_madt))
            return (const struct acpi_madt *)sdt;
    }
    mv_log("acpi: no valid MADT\n");
    return NULL;
}

uint32_t acpi_find_cpus(uint8_t *apic_ids, uint32_t max)
{
    for (unsigned i = 0; i < 256; i++)
        host_uid_of_apic[i] = (uint8_t)i;
    const struct acpi_madt *madt = madt_find();
    if (!madt)
        return 0;
    host_madt_flags = madt->flags;
    const uint8_t *p = (const uint8_t *)(madt + 1);
    const uint8_t *end = (const uint8_t *)madt + madt->header.length;
    uint32_t count = 0;
    while (p + sizeof(struct madt_entry) <= end) {
        const struct madt_entry *e = (const void *)p;
        if (e->length < sizeof(*e) || p + e->length > end)
            break;
        if (e->type == MADT_LOCAL_APIC && e->length >= sizeof(struct madt_local_apic)) {
            const struct madt_local_apic *l = (const void *)p;
            if ((l->flags & MADT_LAPIC_ENABLED) && count < max) {
                apic_ids[count++] = l->apic_id;
                host_uid_of_apic[l->apic_id] = l->uid;
            }
        } else if ((e->type == MADT_IO_APIC || e->type == MADT_ISO || e->type == MADT_NMI_SOURCE
                    || e->type == MADT_LOCAL_APIC_NMI) && host_extra_len + e->length <= HOST_EXTRA_MAX) {
            memcpy(host_extra + host_extra_len, p, e->length);
            host_extra_len += e->length;
        }
        p += e->length;
    }
    return count;
}

static void sdt_header(struct acpi_sdt_header *h, const char *signature, uint32_t length, uint8_t revision)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->signature, signature, 4);
    h->length = length;
    h->revision = revision;
    memcpy(h->oem_id, "MINIVI", 6);
    memcpy(h->oem_table_id, "MINIVISR", 8);
    h->oem_revision = 1;
    memcpy(&h->creator_id, "MNVS", 4);
    h->creator_revision = 1;
}

/* The guest's RSDP, RSDT and MADT at GUEST_ACPI_GPA (the guest zeroed its low 1 MiB). */
void acpi_build_guest(void)
{
    uint8_t *base = gpa_to_hva(GUEST_ACPI_GPA);

    struct acpi_madt *madt = (void *)(base + GUEST_MADT_OFFSET);
    uint8_t *p = (uint8_t *)(madt + 1);
    uint32_t listed = 0;
    for (uint32_t i = 0; i < cpu_count; i++) {
        if (cpus[i].join != JOIN_READY)
            continue;
        struct madt_local_apic *l = (void *)p;
        *l = (struct madt_local_apic){ MADT_LOCAL_APIC, sizeof(*l), host_uid_of_apic[cpus[i].apic_id],
                                       (uint8_t)cpus[i].apic_id, MADT_LAPIC_ENABLED };
        p += sizeof(*l);
        listed++;
    }
    memcpy(p, host_extra, host_extra_len);
    p += host_extra_len;
    uint32_t madt_len = (uint32_t)(p - (uint8_t *)madt);
    if (madt_len > GUEST_MADT_MAX)
        mv_stop(this_cpu(), "acpi: the guest MADT would be %u bytes\n", madt_len);
    sdt_header(&madt->header, "APIC", madt_len, 3);
    madt->local_apic_address = (uint32_t)LAPIC_PHYS;
    madt->flags = host_madt_flags;
    madt->header.checksum = (uint8_t)(0 - checksum(madt, madt_len));

    struct acpi_sdt_header *rsdt = (void *)(base + GUEST_RSDT_OFFSET);
    sdt_header(rsdt, "RSDT", sizeof(*rsdt) + 4, 1);
    uint32_t madt_gpa = (uint32_t)(GUEST_ACPI_GPA + GUEST_MADT_OFFSET);
    memcpy(rsdt + 1, &madt_gpa, 4);
    rsdt->checksum = (uint8_t)(0 - checksum(rsdt, rsdt->length));

    struct acpi_rsdp *rsdp = (void *)base;
    memset(rsdp, 0, sizeof(*rsdp));
    memcpy(rsdp->signature, "RSD PTR ", 8);
    memcpy(rsdp->oem_id, "MINIVI", 6);
    rsdp->revision = 0;                 /* ACPI 1.0: RSDT only, 20-byte checksum */
    rsdp->rsdt_address = (uint32_t)(GUEST_ACPI_GPA + GUEST_RSDT_OFFSET);
    rsdp->checksum = (uint8_t)(0 - checksum(rsdp, 20));

    mv_log("guest acpi: RSDP 0x%lx, RSDT 0x%lx, MADT 0x%x (%u CPUs, %u bytes of host I/O APIC/override/NMI entries)\n",
           GUEST_ACPI_GPA, GUEST_ACPI_GPA + GUEST_RSDT_OFFSET, madt_gpa, listed, host_extra_len);
}
