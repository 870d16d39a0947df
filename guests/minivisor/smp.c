/*
 * Host AP start-up (Intel SDM Vol. 3A 9.4 "Multiple-Processor (MP) Initialization",
 * 9.4.4.1 "Typical BSP Initialization Sequence"): INIT, a delay, SIPI, a delay, a second
 * SIPI if the AP has not shown up, through the BSP's real local APIC.  The APs are started
 * one at a time; each gets its CPU index and stack from ap_boot_index / ap_boot_rsp
 * (boot.S ap_long_entry) and reports through cpus[i].join (main.c ap_main).
 */
#include "lapic.h"
#include "minivisor.h"

#define INIT_DELAY_LOOPS    100000ULL
#define SIPI_DELAY_LOOPS    20000ULL
#define AP_JOIN_WAIT_LOOPS  50000000ULL

extern const uint8_t mv_trampoline_start[], mv_trampoline_end[];
extern uint8_t boot_stacks[MAX_CPUS][STACK_SIZE];

volatile uint32_t ap_boot_index;
volatile uint64_t ap_boot_rsp;

static uint32_t join_state(const struct cpu *c)
{
    return __atomic_load_n(&c->join, __ATOMIC_ACQUIRE);
}

static bool wait_join(const struct cpu *c, uint32_t at_least, uint64_t loops)
{
    for (uint64_t i = 0; i < loops; i++) {
        if (join_state(c) >= at_least)
            return true;
        cpu_pause();
    }
    return false;
}

void smp_start_aps(void)
{
    uint64_t size = (uint64_t)(mv_trampoline_end - mv_trampoline_start);
    memcpy(phys_ptr(TRAMPOLINE_PHYS), mv_trampoline_start, size);
    uint8_t vector = (uint8_t)(TRAMPOLINE_PHYS >> 12);

    for (uint32_t i = 1; i < cpu_count; i++) {
        struct cpu *c = &cpus[i];
        ap_boot_index = i;
        ap_boot_rsp = (uint64_t)&boot_stacks[i][STACK_SIZE];
        __atomic_thread_fence(__ATOMIC_SEQ_CST);

        lapic_send_ipi(c->apic_id, ICR_INIT_ASSERT);
        delay_loops(INIT_DELAY_LOOPS);
        lapic_send_ipi(c->apic_id, ICR_STARTUP | vector);
        delay_loops(SIPI_DELAY_LOOPS);
        if (join_state(c) == JOIN_NONE) {
            lapic_send_ipi(c->apic_id, ICR_STARTUP | vector);
            delay_loops(SIPI_DELAY_LOOPS);
        }
        if (!wait_join(c, JOIN_READY, AP_JOIN_WAIT_LOOPS))
            mv_log("cpu %u (APIC id %u) did not come up (join state %u): it will not run a vCPU\n",
                   i, c->apic_id, join_state(c));
    }
}
