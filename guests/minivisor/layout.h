/*
 * minivisor: memory layout, selectors and build options shared by the assembly
 * (__ASSEMBLER__) and the C code.
 *
 * The hypervisor is linked and runs identity-mapped at physical 1 MiB (virtual =
 * physical, the first 4 GiB mapped with 2 MiB pages), so the small code model works and
 * every address it uses fits in 32 bits.
 */
#ifndef MINIVISOR_LAYOUT_H
#define MINIVISOR_LAYOUT_H

#ifdef __ASSEMBLER__
#define UL(x) x
#else
#define UL(x) x##UL
#endif

#define MIB                 UL(0x100000)

/* Where the multiboot loader puts us (the a.out kludge fields say so). */
#define MV_PHYS_BASE        UL(0x100000)

/* ---- build options (Makefile: GUEST_MEM_MIB, EPT_OFFSET_MIB, BUG=...) ------------- */

/* Guest RAM the guest is told about (multiboot mem_upper and memory map). */
#ifndef GUEST_MEM_MIB
#define GUEST_MEM_MIB       64
#endif
/* Host-physical address of guest-physical 0: HPA = GPA + EPT_OFFSET. */
#ifndef EPT_OFFSET_MIB
#define EPT_OFFSET_MIB      256
#endif
#define GUEST_MEM           ((GUEST_MEM_MIB) * MIB)
#define EPT_OFFSET          ((EPT_OFFSET_MIB) * MIB)

/* Guest RAM the EPT maps.  BUG_EPT16M: only 16 MiB, while the guest is told GUEST_MEM. */
#ifdef BUG_EPT16M
#define EPT_MAPPED_MEM      (16 * MIB)
#else
#define EPT_MAPPED_MEM      GUEST_MEM
#endif

/* ---- CPUs ------------------------------------------------------------------------ */

#define MAX_CPUS            64          /* hvdbg offers at most 64 vCPUs */
#define STACK_SIZE          16384       /* per CPU: one boot stack, one VM-exit stack */

/* Host AP start-up trampoline, real mode, started by SIPI vector TRAMPOLINE_PHYS >> 12. */
#define TRAMPOLINE_PHYS     0x8000

/* ---- devices ----------------------------------------------------------------------- */

#define LAPIC_PHYS          UL(0xfee00000)
#define IOAPIC_PHYS         UL(0xfec00000)
#define COM1_PORT           0x3f8
#define DEBUG_EXIT_PORT     0xf4
/* Status written to the debug-exit port by a fatal stop when `fatal=exit` is given. */
#define MV_FATAL_STATUS     0x70

/* ---- host GDT (boot.S gdt) ------------------------------------------------------- */

#define SEL_CODE64          0x08
#define SEL_DATA            0x10
#define SEL_CODE32          0x18
#define SEL_TSS0            0x20        /* CPU i: SEL_TSS0 + 16 * i (16-byte descriptors) */
#define GDT_FIXED_ENTRIES   4
#define GDT_ENTRIES         (GDT_FIXED_ENTRIES + 2 * MAX_CPUS)

/* ---- multiboot 1 (Multiboot Specification 0.6.96) -------------------------------- */

#define MB1_HEADER_MAGIC    0x1BADB002
#define MB1_BOOT_MAGIC      0x2BADB002
#define MB1_FLAG_PAGE_ALIGN (UL(1) << 0)
#define MB1_FLAG_MEMINFO    (UL(1) << 1)
#define MB1_FLAG_AOUT_KLUDGE (UL(1) << 16)

/* Control registers and EFER (SDM Vol. 3A 2.5, 2.2.1). */
#define CR0_PE              (UL(1) << 0)
#define CR0_ET              (UL(1) << 4)
#define CR0_NE              (UL(1) << 5)
#define CR0_PG              (UL(1) << 31)
#define CR4_PAE             (UL(1) << 5)
#define CR4_VMXE            (UL(1) << 13)
#define MSR_EFER            0xC0000080
#define EFER_LME            (UL(1) << 8)
#define EFER_LMA            (UL(1) << 10)

#endif
