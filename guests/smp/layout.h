/*
 * Memory layout and constants shared by the SMP guest's assembly and C code.
 * Included from .S files (with __ASSEMBLER__ defined) and from C.
 */
#ifndef HVDBG_GUEST_LAYOUT_H
#define HVDBG_GUEST_LAYOUT_H

#ifdef __ASSEMBLER__
#define UL(x) x
#else
#define UL(x) x##UL
#endif

/* Kernel virtual base (PML4 index 511) and physical load address. */
#define KERNEL_BASE         UL(0xffffff8000000000)
#define KERNEL_PHYS         UL(0x100000)

/* Size of the boot page tables' identity and high-half mappings. */
#define BOOT_MAP_SIZE       UL(0x40000000)

/* Real-mode AP trampoline: assembled for and by default copied here, started by SIPI
 * vector 0x08. `sipi_vector=0` copies it to physical 0 instead (relocated by the BSP,
 * see trampoline.S) and sends SIPI vector 0x00. */
#define TRAMPOLINE_PHYS     0x8000
#define TRAMPOLINE_VECTOR   (TRAMPOLINE_PHYS >> 12)

/* Local APIC xAPIC MMIO base (identity mapped, uncached). */
#define LAPIC_PHYS          UL(0xfee00000)
/* I/O APIC MMIO base (82093AA default; identity mapped, uncached). */
#define IOAPIC_PHYS         UL(0xfec00000)

/* ap_stacks[] is indexed by the CPUID initial APIC ID, so this bounds the APIC IDs. */
#define MAX_CPUS            128
#define AP_STACK_SIZE       16384
#define BOOT_STACK_SIZE     16384

/* Boot GDT selectors (see boot_gdt in boot.S). */
#define GDT_CODE32_SEL      0x08
#define GDT_DATA_SEL        0x10
#define GDT_CODE64_SEL      0x18
#define BOOT_GDT_SIZE       32      /* 4 descriptors */

/* Multiboot 1 (Multiboot Specification 0.6.96, section 3.1). */
#define MB1_HEADER_MAGIC    0x1BADB002
#define MB1_BOOT_MAGIC      0x2BADB002
#define MB1_FLAG_MEMINFO    (1 << 1)
#define MB1_FLAG_AOUT_KLUDGE (1 << 16)

/* Interrupt vectors used by the guest. */
#define VEC_TIMER           0x40
#define VEC_TEST_IPI        0x41
#define VEC_PIT             0x42    /* workload=pit: PIT IRQ 0 through I/O APIC pin 2 */
#define VEC_UART            0x43    /* workload=echo: COM1 IRQ 4 through I/O APIC pin 4 */
#define VEC_ATA             0x44    /* workload=disk: ATA IRQ 14 through I/O APIC pin 14 */
#define VEC_PIC_BASE        0x48    /* workload=pit pit_via=pic: the master 8259A's vectors (ICW2) */
#define VEC_PIC_PIT         0x48    /* ... its IR0 (the PIT) */
#define VEC_PIC_SPURIOUS    0x4f    /* ... its IR7: the spurious vector of an INTA with no request */
#define VEC_PIC_RTC         0x50    /* rtc_via=pic: the slave 8259A's IR0 (its base 0x50), IRQ 8 */
#define VEC_RTC             0x45    /* rtc_ticks=T: RTC IRQ 8 through I/O APIC pin 8 */
#define VEC_SPURIOUS        0xff

/* Debug-exit port (QEMU isa-debug-exit / hvdbg) and exit statuses. */
#define DEBUG_EXIT_PORT     0xf4
#define EXIT_OK             0
#define EXIT_SUM_BAD        1
#define EXIT_CPUS_MISSING   2
#define EXIT_BARRIER_TIMEOUT 3
#define EXIT_SELFTEST_FAILED 4
#define EXIT_ACPI_ERROR     5
#define EXIT_LOCK_BAD       6
#define EXIT_CPU_CHECKS_FAILED 7
#define EXIT_ATOMICS_BAD    8
#define EXIT_PIT_BAD        9
#define EXIT_ECHO_BAD       10
#define EXIT_DISK_BAD       11
#define EXIT_RTC_BAD        12
#define EXIT_EXCEPTION_BASE 0x80

#endif
