#include "smp.h"

#include "atomics.h"
#include "console.h"
#include "lapic.h"
#include "lock.h"
#include "echo.h"
#include "pit.h"
#include "trap.h"
#include "vmx.h"

extern const uint8_t ap_trampoline_start[], ap_trampoline_end[];

/* Where trampoline.S's code holds an absolute address assembled for TRAMPOLINE_PHYS. */
struct trampoline_fixup {
    uint16_t offset;  /* from ap_trampoline_start */
    uint16_t size;    /* 2 or 4 bytes, little endian */
};
extern const struct trampoline_fixup ap_trampoline_fixups[], ap_trampoline_fixups_end[];

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

/*
 * Copy the trampoline to `phys` (page aligned, below 1 MiB) and relocate the
 * addresses it was assembled with (for TRAMPOLINE_PHYS, where it needs none).
 * At physical 0 it overwrites the real-mode IVT and part of the BDA, which the
 * kernel no longer needs: the ACPI scan (EBDA pointer at 0x40E) is done and
 * the multiboot info (above the image) was parsed.
 */
static void trampoline_install(uint32_t phys)
{
    uint64_t size = (uint64_t)(ap_trampoline_end - ap_trampoline_start);
    uint8_t *copy = phys_to_virt(phys);
    memcpy(copy, ap_trampoline_start, size);
    if (phys == TRAMPOLINE_PHYS)
        return;
    uint32_t delta = phys - TRAMPOLINE_PHYS;  /* modulo 2^32 (2^16 for the 16-bit ones) */
    for (const struct trampoline_fixup *f = ap_trampoline_fixups; f < ap_trampoline_fixups_end; f++) {
        uint32_t value = 0;
        memcpy(&value, copy + f->offset, f->size);
        uint32_t link = value & (f->size == 2 ? 0xffffu : 0xffffffffu);
        if (link < TRAMPOLINE_PHYS || link >= TRAMPOLINE_PHYS + size) {
            kprintf_panic("smp: trampoline fixup at +0x%x holds 0x%x\n", f->offset, link);
            debug_exit(EXIT_CPUS_MISSING);
        }
        value = link + delta;
        memcpy(copy + f->offset, &value, f->size);
    }
}

void smp_start_aps(const struct cpu_table *cpus, uint32_t bsp_apic_id, uint64_t wait_loops,
                   uint64_t max_aps, uint32_t trampoline_phys, struct cpu_table *started)
{
    uint8_t vector = (uint8_t)(trampoline_phys >> 12);
    trampoline_install(trampoline_phys);
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
        lapic_send_startup(apic_id, vector);
        delay_loops(SIPI_DELAY_LOOPS);
        lapic_send_startup(apic_id, vector);
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
    else if (atomics_active())
        atomics_run(work, cpu_index);
    else if (pit_active())
        pit_run(work, cpu_index);
    else if (echo_active())
        echo_run(work, cpu_index);
    else if (vmx_active())
        vmx_run(work, cpu_index);
    else
        work_run(work, cpu_index);
    halt_forever();
}
