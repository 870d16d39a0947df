/* CPU discovery through the ACPI MADT (ACPI 6.5 sections 5.2.5, 5.2.7, 5.2.8, 5.2.12). */
#ifndef HVDBG_GUEST_ACPI_H
#define HVDBG_GUEST_ACPI_H

#include "cpu.h"

#define MADT_MAX_CPUS 256

struct cpu_table {
    uint32_t count;                  /* enabled processor local APIC entries */
    uint8_t apic_id[MADT_MAX_CPUS];  /* in MADT order */
};

/*
 * Find the RSDP (EBDA first KiB, then 0xE0000-0xFFFFF), follow the XSDT
 * (revision >= 2) or the RSDT to the MADT and list its enabled processor
 * local APIC entries (type 0, flags bit 0). Prints what it finds. Returns
 * false (after printing why) when no usable MADT is found.
 */
bool acpi_find_cpus(struct cpu_table *out);

#endif
