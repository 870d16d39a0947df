/* AP startup with INIT-SIPI-SIPI (Intel SDM Vol. 3A 9.4.4) and AP entry. */
#ifndef HVDBG_GUEST_SMP_H
#define HVDBG_GUEST_SMP_H

#include "acpi.h"
#include "work.h"

/* Delays between the start-up IPIs, in PAUSE loops (no calibrated clock). */
#define INIT_DELAY_LOOPS 100000ULL
#define SIPI_DELAY_LOOPS 20000ULL

/* Stacks of the APs, indexed by the CPUID initial APIC ID (see ap_start64). */
extern uint8_t ap_stacks[MAX_CPUS][AP_STACK_SIZE];

/* APs that reached ap_entry, incremented with a lock-prefixed add. */
extern volatile uint32_t ap_online;

/*
 * Copy the trampoline to `trampoline_phys` (TRAMPOLINE_PHYS or 0, relocated
 * there) and start the CPUs of `cpus`
 * other than `bsp_apic_id` (at most `max_aps` of them), one at a time,
 * waiting up to `wait_loops` PAUSE loops for each to come online. The APs
 * then wait for smp_release(). The SIPI vector is trampoline_phys >> 12.
 * Fills `started` with the MADT APIC IDs of the APs that came up.
 */
void smp_start_aps(const struct cpu_table *cpus, uint32_t bsp_apic_id, uint64_t wait_loops,
                   uint64_t max_aps, uint32_t trampoline_phys, struct cpu_table *started);

/* Let the waiting APs run `work` (their CPU index is their start order). */
void smp_release(struct workload *work);

/* C entry of an AP, called by ap_start64 on its ap_stacks[] stack. */
__attribute__((noreturn)) void ap_entry(uint32_t cpuid_apic_id);

#endif
