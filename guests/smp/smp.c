#include "smp.h"

#include "console.h"
#include "lapic.h"
#include "lock.h"
#include "trap.h"

extern const uint8_t ap_trampoline_start[], ap_trampoline_end[];

uint8_t ap_stacks[MAX_CPUS][AP_STACK_SIZE] __attribute__((aligned(4096)));
volatile uint32_t ap_online;

/* CPU index handed to the AP being started (APs are started one by one). */
static volatile uint32_t ap_boot_index;
static struct workload *volatile released_work;

static bool wait_online_above(uint32_t count, uint64_t wait_loops)
{
    for (uint64_t i = 0; i < wait_loops; i++) {
        if (__atomic_load_n(&ap_online, __ATOMIC_ACQUIRE) > count)
            return true;
        cpu_pause();
    }
    return false;
}

void smp_start_aps(const struct cpu_table *cpus, uint32_t bsp_apic_id, uint64_t wait_loops,
                   uint64_t max_aps, struct cpu_table *started)
{
    memcpy(phys_to_virt(TRAMPOLINE_PHYS), ap_trampoline_start,
           (size_t)(ap_trampoline_end - ap_trampoline_start));
    started->count = 0;
    uint64_t attempted = 0;
    for (uint32_t i = 0; i < cpus->count; i++) {
        uint32_t apic_id = cpus->apic_id[i];
        if (apic_id == bsp_apic_id)
            continue;
        if (attempted++ >= max_aps) {
            kprintf("smp: APIC id %u not started (max_aps=%lu)\n", apic_id, max_aps);
            continue;
        }
        if (apic_id >= MAX_CPUS) {
            kprintf("smp: APIC id %u >= MAX_CPUS (%u), not started\n", apic_id, MAX_CPUS);
            continue;
        }
        uint32_t before = ap_online;
        ap_boot_index = started->count + 1;
        lapic_send_init(apic_id);
        delay_loops(INIT_DELAY_LOOPS);
        lapic_send_startup(apic_id, TRAMPOLINE_VECTOR);
        delay_loops(SIPI_DELAY_LOOPS);
        lapic_send_startup(apic_id, TRAMPOLINE_VECTOR);
        delay_loops(SIPI_DELAY_LOOPS);
        if (wait_online_above(before, wait_loops))
            started->apic_id[started->count++] = (uint8_t)apic_id;
        else
            kprintf("smp: CPU %u (APIC id %u) did not come up\n", ap_boot_index, apic_id);
    }
}

void smp_release(struct workload *work)
{
    __atomic_store_n(&released_work, work, __ATOMIC_RELEASE);
}

/* An AP parks two calls deep until the BSP releases the workload, like the idle loop
 * of a real kernel.  If two APs share a stack (a hypervisor that gives every vCPU the
 * same CPUID APIC ID), the next AP's kprintf line buffer lands on these frames and the
 * parked AP later returns to whatever text was formatted there. */
static __attribute__((noinline)) struct workload *ap_poll_release(void)
{
    struct workload *work;
    while (!(work = __atomic_load_n(&released_work, __ATOMIC_ACQUIRE)))
        cpu_pause();
    return work;
}

static __attribute__((noinline)) struct workload *ap_park(uint32_t cpu_index)
{
    volatile uint64_t parked_at[26] = { cpu_index };  /* per-CPU idle bookkeeping */
    struct workload *work = ap_poll_release();
    parked_at[1] = (uint64_t)work;
    return (struct workload *)parked_at[1];
}

void ap_entry(uint32_t cpuid_apic_id)
{
    uint32_t cpu_index = ap_boot_index;
    idt_load();
    lapic_enable();
    kprintf("CPU %u (APIC id %u) online, stack %p\n", cpu_index, cpuid_apic_id,
            __builtin_frame_address(0));
    __atomic_fetch_add(&ap_online, 1, __ATOMIC_SEQ_CST);

    /* Interrupts on (for the self-test IPI) while waiting to be released. */
    cpu_sti();
    struct workload *work = ap_park(cpu_index);
    cpu_cli();
    kprintf("CPU %u released: workload at %p, stack %p\n", cpu_index, (void *)work,
            __builtin_frame_address(0));
    if (work->lock)
        lock_run(work, cpu_index);
    else
        work_run(work, cpu_index);
    halt_forever();
}
