/*
 * Benchmark guest: every CPU runs the same loop of ITERATIONS iterations, then the
 * last CPU to finish writes status 0 to the debug-exit port 0xF4.
 *
 * Built by bench/guests.py (gcc -m32 -c, ld -m elf_i386) with
 *   -DITERATIONS=<n>         loop iterations per CPU
 *   -DWORKLOAD=<k>           0 alu, 1 cpuid, 2 out to an unclaimed port,
 *                            3 out to the UART, 4 xAPIC MMIO read (APIC ID register)
 *   -DMSR_SITES=<n>          n never-executed RDMSR instructions after the code (hvdbg
 *                            puts an MSR-exit code hook on each RDMSR/WRMSR of the image;
 *                            the SMP test kernel has 8 such sites)
 *
 * Machine contract: Multiboot 1 (0.6.96, 3.2): 32-bit protected mode, flat segments,
 * paging off, IF=0.  The number of CPUs is CPUID.1:EBX[23:16] (SDM Vol. 2A, CPUID).
 * With more than one CPU the BSP starts the APs with INIT-SIPI-SIPI broadcast to
 * "all excluding self" (SDM Vol. 3A 9.4.4.1, 11.6.1) into a real-mode trampoline
 * copied to TRAMPOLINE_PHYS, which enters protected mode and joins the loop.
 *
 * The loop proper lies between the symbols `work` and `work_done`; the raw-Unicorn
 * baselines run exactly those bytes.
 */
#define MB1_MAGIC        0x1BADB002
#define MB1_FLAGS        0x00000000

#define APIC_BASE        0xFEE00000
#define APIC_ID          0x020
#define APIC_SVR         0x0F0
#define APIC_ICR_LOW     0x300
#define ICR_INIT_ALL_BUT_SELF  0x000C4500   /* INIT, level assert, all excluding self */
#define ICR_SIPI_ALL_BUT_SELF  0x000C4600   /* STARTUP, all excluding self; | vector */

#define TRAMPOLINE_PHYS  0x8000             /* SIPI vector 0x08 */
#define DEBUG_EXIT_PORT  0xF4
#define UNCLAIMED_PORT   0x5F0              /* no device decodes it, in hvdbg or QEMU (0x510 is fw_cfg) */
#define UART_THR         0x3F8

#define CODE32_SEL       0x08
#define DATA32_SEL       0x10

#ifndef ITERATIONS
#error "ITERATIONS must be defined"
#endif
#ifndef WORKLOAD
#error "WORKLOAD must be defined"
#endif
#ifndef MSR_SITES
#define MSR_SITES 0
#endif

    .section .multiboot, "a"
    .balign 4
    .long MB1_MAGIC
    .long MB1_FLAGS
    .long (0x100000000 - (MB1_MAGIC + MB1_FLAGS)) & 0xffffffff

    .section .text, "ax"
    .code32
    .global _start, work, work_done, ap_trampoline, ap_trampoline_end
_start:
    cli
    cld
    movl    $1, %eax
    cpuid
    shrl    $16, %ebx
    andl    $0xff, %ebx
    movl    %ebx, ncpus
    cmpl    $1, %ebx
    jbe     work

    /* copy the AP trampoline below 1 MiB */
    movl    $ap_trampoline, %esi
    movl    $TRAMPOLINE_PHYS, %edi
    movl    $(ap_trampoline_end - ap_trampoline), %ecx
    rep movsb

    movl    $0x1FF, APIC_BASE + APIC_SVR        /* software enable, spurious vector 0xFF */
    movl    $ICR_INIT_ALL_BUT_SELF, APIC_BASE + APIC_ICR_LOW
    movl    $(ICR_SIPI_ALL_BUT_SELF | (TRAMPOLINE_PHYS >> 12)), APIC_BASE + APIC_ICR_LOW
    movl    $(ICR_SIPI_ALL_BUT_SELF | (TRAMPOLINE_PHYS >> 12)), APIC_BASE + APIC_ICR_LOW

/* ---- the measured loop (identical bytes on every CPU and in the raw baselines) ---- */
work:
    movl    $ITERATIONS, %esi
#if WORKLOAD == 2
    movl    $UNCLAIMED_PORT, %edx
#elif WORKLOAD == 3
    movl    $UART_THR, %edx
    movl    $'.', %eax
#endif
1:
#if WORKLOAD == 0
    addl    %eax, %ebx                      /* ALU only: no VM exit */
    xorl    %ebx, %ecx
#elif WORKLOAD == 1
    xorl    %eax, %eax                      /* CPUID leaf 0: one CPUID exit */
    cpuid
#elif WORKLOAD == 2 || WORKLOAD == 3
    outb    %al, (%dx)                      /* one I/O-instruction exit */
#elif WORKLOAD == 4
    movl    APIC_BASE + APIC_ID, %eax       /* one APIC-access exit */
#else
#error "unknown WORKLOAD"
#endif
    subl    $1, %esi
    jnz     1b
work_done:

    /* the last CPU to finish ends the run */
    movl    $1, %eax
    lock xaddl %eax, finished
    incl    %eax
    cmpl    ncpus, %eax
    jb      park
    xorl    %eax, %eax
    outl    %eax, $DEBUG_EXIT_PORT
park:
    cli
    hlt
    jmp     park

#if MSR_SITES > 0
msr_sites:                                  /* never executed: only their bytes matter */
    .rept MSR_SITES
    rdmsr
    .endr
#endif

ap_pm32:
    movw    $DATA32_SEL, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    jmp     work

/* ---- AP trampoline: copied to TRAMPOLINE_PHYS, entered at CS:IP = 0800:0000 ---- */
    .code16
ap_trampoline:
    cli
    xorw    %ax, %ax
    movw    %ax, %ds
    lgdtl   TRAMPOLINE_PHYS + (gdt_pointer - ap_trampoline)
    movl    %cr0, %eax
    orl     $1, %eax
    movl    %eax, %cr0
    ljmpl   $CODE32_SEL, $ap_pm32
    .balign 8
gdt:
    .quad   0
    .quad   0x00CF9A000000FFFF              /* 0x08: flat 32-bit code */
    .quad   0x00CF92000000FFFF              /* 0x10: flat data */
gdt_pointer:
    .word   gdt_pointer - gdt - 1
    .long   TRAMPOLINE_PHYS + (gdt - ap_trampoline)
ap_trampoline_end:

    .section .data
    .balign 4
ncpus:
    .long   1
finished:
    .long   0
