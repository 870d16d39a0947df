/* Local APIC in xAPIC mode, MMIO at LAPIC_PHYS (Intel SDM Vol. 3A chapter 11). */
#ifndef HVDBG_GUEST_LAPIC_H
#define HVDBG_GUEST_LAPIC_H

#include "cpu.h"

/* Register offsets (SDM Vol. 3A Table 11-1). */
#define LAPIC_ID            0x020
#define LAPIC_TPR           0x080
#define LAPIC_EOI           0x0b0
#define LAPIC_SVR           0x0f0
#define LAPIC_ICR_LOW       0x300
#define LAPIC_ICR_HIGH      0x310
#define LAPIC_LVT_TIMER     0x320
#define LAPIC_LVT_LINT0     0x350
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_CURRENT 0x390
#define LAPIC_TIMER_DIVIDE  0x3e0

/* ICR low fields (SDM Vol. 3A 11.6.1). */
#define ICR_FIXED           (0u << 8)
#define ICR_INIT            (5u << 8)
#define ICR_STARTUP         (6u << 8)
#define ICR_SEND_PENDING    (1u << 12)
#define ICR_LEVEL_ASSERT    (1u << 14)

#define SVR_APIC_ENABLE     (1u << 8)
#define LVT_MASKED          (1u << 16)
#define LVT_TIMER_PERIODIC  (1u << 17)
#define LVT_DELIVERY_EXTINT (7u << 8)   /* LINT0: the vector comes from the 8259A (SDM 11.5.1) */
#define TIMER_DIVIDE_BY_1   0xb

static inline uint32_t lapic_read(uint32_t reg)
{
    return *(volatile uint32_t *)(LAPIC_PHYS + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)(LAPIC_PHYS + reg) = value;
}

/* The local APIC ID register (bits 31:24), not CPUID's initial APIC ID. */
static inline uint32_t lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

static inline void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

/*
 * Software-enable the APIC with the spurious vector VEC_SPURIOUS and mask
 * LVT LINT0: firmware (SeaBIOS) leaves the 8259 PIC in virtual-wire mode
 * with the PIT on IRQ0 = vector 8, which would look like a #DF after sti.
 */
void lapic_enable(void);

/* Write ICR high (destination) then ICR low; wait (bounded) until sent. */
void lapic_send_ipi(uint32_t apic_id, uint32_t icr_low);

void lapic_send_init(uint32_t apic_id);
void lapic_send_startup(uint32_t apic_id, uint8_t vector);
void lapic_send_fixed(uint32_t apic_id, uint8_t vector);

void lapic_timer_periodic(uint8_t vector, uint32_t initial_count);
void lapic_timer_stop(void);

#endif
