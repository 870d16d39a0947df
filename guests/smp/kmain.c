/* BSP C entry: boot info, IDT, LAPIC, MADT, AP start-up, self-tests, workload. */
#include "acpi.h"
#include "atomics.h"
#include "bootinfo.h"
#include "console.h"
#include "cpucheck.h"
#include "lapic.h"
#include "lock.h"
#include "disk.h"
#include "pci.h"
#include "echo.h"
#include "pit.h"
#include "rtc.h"
#include "pic.h"
#include "selftest.h"
#include "smp.h"
#include "trap.h"
#include "vmx.h"
#include "work.h"

/* gcc places these in .bss in reverse order: lock_work (added last) goes behind the
 * others, which keep their addresses (the APs print &work). */
static struct lock_workload lock_work;
static struct boot_options options;
static struct cpu_table madt_cpus;
static struct cpu_table started_aps;
static struct workload work;

__attribute__((noreturn)) void kmain(uint32_t magic, uint32_t mb_info_phys)
{
    kprintf("hvdbg smp guest\n");
    bootinfo_parse(magic, mb_info_phys, &options);
    kprintf("multiboot: magic 0x%x mem_upper %u KiB cmdline '%s'\n", options.magic,
            options.mem_upper_kib, options.cmdline);

    idt_init();
    idt_load();
    pic_mask_all();     /* before lapic_enable masks LINT0 (pic.h) */
    lapic_enable();
    uint32_t bsp_apic_id = lapic_id();
    kprintf("lapic: BSP APIC id %u\n", bsp_apic_id);

    if (options.pci_scan)
        pci_scan();
    if (!acpi_find_cpus(&madt_cpus))
        debug_exit(EXIT_ACPI_ERROR);

    /* workload=cpu: CPU conformance checks on the BSP (cpucheck.h), no array. */
    bool cpu_checks = cpucheck_requested(options.cmdline);

    /* The bump allocator may overwrite the loader's multiboot info: parsed above. */
    if (cpu_checks) {
        /* nothing to prepare */
    } else if (options.workload == WORKLOAD_LOCK) {
        lock_prepare(&lock_work, options.lock_tas ? LOCK_TAS : LOCK_TICKET, options.lock_iters,
                     options.lock_inside, options.lock_outside);
        work.lock = &lock_work;
    } else if (options.workload == WORKLOAD_ATOMICS) {
        atomics_prepare(options.atomic_iters);  /* no array */
    } else if (options.workload == WORKLOAD_PIT) {
        pit_prepare(options.pit_cpu, options.pit_ticks, options.pit_pic);  /* no array */
    } else if (options.workload == WORKLOAD_ECHO) {
        echo_prepare(options.echo_cpu);  /* no array */
    } else if (options.workload == WORKLOAD_VMX) {
        vmx_prepare();  /* no array */
    } else {
        work_prepare(&work, options.work_entries);
    }

    smp_start_aps(&madt_cpus, bsp_apic_id, options.ap_wait_loops, options.max_aps, options.trampoline_phys,
                  &started_aps);
    uint32_t online = 1 + started_aps.count;
    kprintf("smp: %u of %u CPUs online\n", online, madt_cpus.count);
    if (online < madt_cpus.count) {
        kprintf("smp: %u CPUs missing\n", madt_cpus.count - online);
        if (!cpu_checks)  /* the CPU checks run on the BSP alone */
            debug_exit(EXIT_CPUS_MISSING);
    }

    if (options.selftest && !selftest_run(&started_aps))
        debug_exit(EXIT_SELFTEST_FAILED);
    if (options.rtc_ticks)
        rtc_check(options.rtc_ticks, options.rtc_pic);
    if (cpu_checks)
        cpucheck_run();
    if (options.workload == WORKLOAD_DISK)
        disk_run();     /* on the BSP alone; ends the run */

    work_set_cpus(&work, online);
    if (atomics_active())
        atomics_set_cpus(&work, online);
    if (pit_active())
        pit_set_cpus(&work, online);
    if (echo_active())
        echo_set_cpus(&work, online);
    if (vmx_active())
        vmx_set_cpus(&work, online);
    smp_release(&work);
    if (work.lock) {
        lock_run(&work, 0);
        lock_finish(work.lock, online);
    }
    if (atomics_active()) {
        atomics_run(&work, 0);
        atomics_finish(online);
    }
    if (pit_active()) {
        pit_run(&work, 0);
        pit_finish(online);
    }
    if (echo_active()) {
        echo_run(&work, 0);
        echo_finish(online);
    }
    if (vmx_active()) {
        vmx_run(&work, 0);
        vmx_finish(online);
    }
    work_run(&work, 0);

    uint64_t expected = work_expected(work.entries);
    if (work.total == expected) {
        kprintf("sum ok %lu\n", work.total);
        debug_exit(EXIT_OK);
    }
    kprintf("sum BAD got %lu expected %lu\n", work.total, expected);
    debug_exit(EXIT_SUM_BAD);
}
