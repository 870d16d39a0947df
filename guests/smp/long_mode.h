/*
 * Assembly macro shared by the BSP entry (boot.S) and the AP trampoline
 * (trampoline.S): from 32-bit protected mode with paging off, enable PAE,
 * load CR3 = boot_pml4, set EFER.LME and CR0.PG (Intel SDM Vol. 3A 10.8.5).
 * The caller then far-jumps to a 64-bit code segment. Clobbers EAX, ECX, EDX.
 */
#ifndef HVDBG_GUEST_LONG_MODE_H
#define HVDBG_GUEST_LONG_MODE_H

#define CR0_PE      (1 << 0)
#define CR0_PG      (1 << 31)
#define CR4_PAE     (1 << 5)
#define MSR_EFER    0xC0000080
#define EFER_LME    (1 << 8)

.macro ENABLE_LONG_MODE_PAGING
    movl    %cr4, %eax
    orl     $CR4_PAE, %eax
    movl    %eax, %cr4
    movl    $(boot_pml4 - KERNEL_BASE), %eax
    movl    %eax, %cr3
    movl    $MSR_EFER, %ecx
    rdmsr
    orl     $EFER_LME, %eax
    wrmsr
    movl    %cr0, %eax
    orl     $(CR0_PG | CR0_PE), %eax
    movl    %eax, %cr0
.endm

#endif
