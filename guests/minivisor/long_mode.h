/*
 * Assembly macro shared by the BSP entry (boot.S) and the AP trampoline (trampoline.S):
 * from 32-bit protected mode with paging off, enable PAE, load CR3 = host_pml4, set
 * EFER.LME and CR0.PG (Intel SDM Vol. 3A 10.8.5).  CR0.NE is set too (VMXON needs it,
 * SDM 24.8).  The caller then far-jumps to a 64-bit code segment.  Clobbers EAX/ECX/EDX.
 */
#ifndef MINIVISOR_LONG_MODE_H
#define MINIVISOR_LONG_MODE_H

#include "layout.h"

#ifdef __ASSEMBLER__
.macro ENABLE_LONG_MODE
    movl    %cr4, %eax
    orl     $CR4_PAE, %eax
    movl    %eax, %cr4
    movl    $host_pml4, %eax
    movl    %eax, %cr3
    movl    $MSR_EFER, %ecx
    rdmsr
    orl     $EFER_LME, %eax
    wrmsr
    movl    %cr0, %eax
    orl     $(CR0_PG | CR0_NE | CR0_PE), %eax
    movl    %eax, %cr0
.endm
#endif

#endif
