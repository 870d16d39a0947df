#include "lapic.h"

#define ICR_SEND_WAIT_LOOPS 1000000ULL

void lapic_enable(void)
{
    lapic_write(LAPIC_SVR, SVR_APIC_ENABLE | VEC_SPURIOUS);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
}

void lapic_send_ipi(uint32_t apic_id, uint32_t icr_low)
{
    lapic_write(LAPIC_ICR_HIGH, apic_id << 24);
    lapic_write(LAPIC_ICR_LOW, icr_low);
    for (uint64_t i = 0; i < ICR_SEND_WAIT_LOOPS; i++) {
        if (!(lapic_read(LAPIC_ICR_LOW) & ICR_SEND_PENDING))
            return;
        cpu_pause();
    }
}

void lapic_send_init(uint32_t apic_id)
{
    lapic_send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

void lapic_send_startup(uint32_t apic_id, uint8_t vector)
{
    lapic_send_ipi(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | vector);
}

void lapic_send_fixed(uint32_t apic_id, uint8_t vector)
{
    lapic_send_ipi(apic_id, ICR_FIXED | ICR_LEVEL_ASSERT | vector);
}

void lapic_timer_periodic(uint8_t vector, uint32_t initial_count)
{
    lapic_write(LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
    lapic_write(LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | vector);
    lapic_write(LAPIC_TIMER_INITIAL, initial_count);
}

void lapic_timer_stop(void)
{
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    lapic_write(LAPIC_TIMER_INITIAL, 0);
}
