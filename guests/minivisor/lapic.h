/*
 * The real local APIC of the CPU the code runs on, xAPIC MMIO at LAPIC_PHYS (Intel SDM
 * Vol. 3A chapter 11), identity-mapped uncached by the host page tables.
 */
#ifndef MINIVISOR_LAPIC_H
#define MINIVISOR_LAPIC_H

#include "cpu.h"

/* Register offsets (SDM Vol. 3A Table 11-1). */
#define LAPIC_ID            0x020
#define LAPIC_VERSION       0x030
#define LAPIC_TPR           0x080
#define LAPIC_EOI           0x0b0
#define LAPIC_LDR           0x0d0
#define LAPIC_DFR           0x0e0
#define LAPIC_SVR           0x0f0
#define LAPIC_ESR           0x280
#define LAPIC_ICR_LOW       0x300
#define LAPIC_ICR_HIGH      0x310
#define LAPIC_LVT_TIMER     0x320
#define LAPIC_LVT_LINT0     0x350
#define LAPIC_TIMER_INITIAL 0x380

/* ICR fields (SDM Vol. 3A 11.6.1, Figure 11-12). */
#define ICR_VECTOR(v)       ((v) & 0xffu)
#define ICR_DELIVERY(v)     (((v) >> 8) & 7u)
#define ICR_DM_FIXED        0
#define ICR_DM_LOWEST       1
#define ICR_DM_SMI          2
#define ICR_DM_NMI          4
#define ICR_DM_INIT         5
#define ICR_DM_STARTUP      6
#define ICR_LOGICAL         (1u << 11)
#define ICR_SEND_PENDING    (1u << 12)
#define ICR_LEVEL_ASSERT    (1u << 14)
#define ICR_TRIGGER_LEVEL   (1u << 15)
#define ICR_SHORTHAND(v)    (((v) >> 18) & 3u)
#define ICR_SH_NONE         0
#define ICR_SH_SELF         1
#define ICR_SH_ALL          2
#define ICR_SH_OTHERS       3
#define ICR_INIT_ASSERT     ((ICR_DM_INIT << 8) | ICR_LEVEL_ASSERT)
#define ICR_STARTUP         ((ICR_DM_STARTUP << 8) | ICR_LEVEL_ASSERT)

#define ICR_IDLE_WAIT_LOOPS 1000000ULL

static inline uint32_t lapic_read(uint32_t reg)
{
    return *(volatile uint32_t *)(LAPIC_PHYS + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)(LAPIC_PHYS + reg) = value;
}

static inline uint32_t lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

/* Wait (bounded) until the ICR's delivery status is idle; false on timeout. */
static inline bool lapic_icr_wait_idle(void)
{
    for (uint64_t i = 0; i < ICR_IDLE_WAIT_LOOPS; i++) {
        if (!(lapic_read(LAPIC_ICR_LOW) & ICR_SEND_PENDING))
            return true;
        cpu_pause();
    }
    return false;
}

/* ICR high (physical destination) then ICR low, which sends (SDM 11.6.1). */
static inline bool lapic_send_ipi(uint32_t dest_apic_id, uint32_t icr_low)
{
    lapic_icr_wait_idle();
    lapic_write(LAPIC_ICR_HIGH, dest_apic_id << 24);
    lapic_write(LAPIC_ICR_LOW, icr_low);
    return lapic_icr_wait_idle();
}

#endif
