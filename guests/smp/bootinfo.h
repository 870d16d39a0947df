/* Multiboot 1 information and the kernel command line (Multiboot Spec 0.6.96, 3.3). */
#ifndef HVDBG_GUEST_BOOTINFO_H
#define HVDBG_GUEST_BOOTINFO_H

#include "cpu.h"

#define CMDLINE_MAX 256
#define DEFAULT_WORK_ENTRIES 65536ULL
#define DEFAULT_AP_WAIT_LOOPS 20000000ULL
#define DEFAULT_LOCK_ITERS 1000ULL
#define DEFAULT_LOCK_INSIDE 20ULL
#define DEFAULT_LOCK_OUTSIDE 100ULL
#define DEFAULT_ATOMIC_ITERS 1000000ULL

enum workload_kind { WORKLOAD_SUM, WORKLOAD_LOCK, WORKLOAD_ATOMICS, WORKLOAD_PIT, WORKLOAD_ECHO, WORKLOAD_DISK, WORKLOAD_VMX };

struct boot_options {
    uint32_t magic;
    bool have_mem;               /* info flags bit 0 */
    uint32_t mem_lower_kib;
    uint32_t mem_upper_kib;
    char cmdline[CMDLINE_MAX];   /* copied: the loader's copy may be overwritten */
    uint64_t work_entries;       /* u64 entries of the workload array */
    bool selftest;
    uint64_t ap_wait_loops;      /* PAUSE loops to wait for each AP */
    uint64_t max_aps;            /* start at most this many APs */
    enum workload_kind workload; /* workload=sum (default) or workload=lock */
    bool lock_tas;               /* lock=tas: test-and-test-and-set instead of a ticket lock */
    uint64_t lock_iters;         /* critical sections per CPU */
    uint64_t lock_inside;        /* work steps inside the critical section */
    uint64_t lock_outside;       /* work steps outside */
    uint64_t atomic_iters;       /* workload=atomics: updates per CPU and primitive */
    uint64_t pit_cpu;            /* workload=pit: the CPU (index) IRQ 0 is routed to */
    uint64_t pit_ticks;          /* workload=pit: interrupts it waits for */
    bool pit_pic;                /* pit_via=pic: through the 8259A and LINT0 (ExtINT) instead */
    uint64_t rtc_ticks;          /* rtc_ticks=T: check the RTC's periodic interrupt first (rtc.h) */
    bool rtc_pic;                /* rtc_via=pic: through the slave 8259A and LINT0 */
    bool pci_scan;               /* pci_scan=1: list PCI bus 0 at boot (pci.h) */
    uint64_t echo_cpu;           /* workload=echo: the CPU (index) IRQ 4 is routed to */
    uint32_t trampoline_phys;    /* AP trampoline (SIPI vector << 12): 0x8000 or 0 */
};

/*
 * Read the multiboot info at `info_phys` and parse the command line:
 *   work_mib=N   workload array of N MiB (default DEFAULT_WORK_ENTRIES u64s)
 *   selftest     run the int3 / LAPIC timer / IPI self-tests
 *   ap_wait=N    PAUSE loops to wait for each AP (default DEFAULT_AP_WAIT_LOOPS)
 *   max_aps=N    start at most N APs (default: all the MADT lists)
 *   workload=lock  the lock-heavy workload (lock.h) instead of the parallel sum
 *   lock=tas|ticket, lock_iters=N, lock_inside=N, lock_outside=N  its parameters
 *   workload=atomics  lock incq / lock cmpxchgq / xchg counters (atomics.h)
 *   workload=pit pit_cpu=N pit_ticks=T  PIT IRQ 0 through the I/O APIC to CPU N (pit.h)
 *   pit_via=pic  ... through the 8259A to CPU N's LINT0 in ExtINT mode instead
 *   rtc_ticks=T [rtc_via=pic]  first wait for T RTC periodic interrupts on the BSP (rtc.h)
 *   workload=echo echo_cpu=N  COM1 input through IRQ 4 to CPU N, echoed (echo.h)
 *   workload=disk  the ATA disk: identify, read, write with IRQ 14, read back (disk.h)
 *   workload=vmx   VMX instruction checks on every CPU at once (vmx.h)
 *   atomic_iters=N    its updates per CPU and primitive (default DEFAULT_ATOMIC_ITERS)
 *   sipi_vector=0|8   start the APs at physical 0 (vector 0) or 0x8000 (8, the default)
 * Other words (QEMU passes the kernel path first) are ignored.
 */
void bootinfo_parse(uint32_t magic, uint32_t info_phys, struct boot_options *out);

#endif
