#include "selftest.h"

#include "console.h"
#include "lapic.h"
#include "trap.h"

/* int3 must enter the IDT handler and come back. */
static bool selftest_int3(void)
{
    uint64_t before = trap_breakpoint_count;
    __asm__ volatile("int3" : : : "memory");
    return trap_breakpoint_count == before + 1;
}

/* Periodic LAPIC timer: sti; hlt until SELFTEST_TIMER_TICKS interrupts. */
static bool selftest_timer(void)
{
    uint64_t start = trap_timer_ticks;
    lapic_timer_periodic(VEC_TIMER, SELFTEST_TIMER_COUNT);
    while (trap_timer_ticks - start < SELFTEST_TIMER_TICKS)
        cpu_sti_hlt_cli();
    lapic_timer_stop();
    return true;
}

/* A fixed IPI to each AP, which counts it in its handler. */
static bool selftest_ipi(const struct cpu_table *aps)
{
    bool ok = true;
    for (uint32_t i = 0; i < aps->count; i++) {
        uint32_t id = aps->apic_id[i];
        uint32_t before = trap_ipi_count[id];
        lapic_send_fixed(id, VEC_TEST_IPI);
        uint64_t loops = 0;
        while (trap_ipi_count[id] == before && loops++ < SELFTEST_IPI_WAIT_LOOPS)
            cpu_pause();
        if (trap_ipi_count[id] != before + 1) {
            kprintf("selftest: ipi to APIC id %u counted %u times\n", id, trap_ipi_count[id] - before);
            ok = false;
        }
    }
    return ok;
}

static bool report(const char *name, bool ok)
{
    kprintf("selftest: %s %s\n", name, ok ? "ok" : "FAILED");
    return ok;
}

bool selftest_run(const struct cpu_table *aps)
{
    bool ok = report("int3", selftest_int3());
    ok = report("timer", selftest_timer()) && ok;
    ok = report("ipi", selftest_ipi(aps)) && ok;
    return ok;
}
