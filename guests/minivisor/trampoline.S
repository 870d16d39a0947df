/*
 * Host AP start-up trampoline (Intel SDM Vol. 3A 9.4.4 "MP Initialization Example"),
 * the same shape as guests/smp/trampoline.S: the BSP copies
 * [mv_trampoline_start, mv_trampoline_end) to TRAMPOLINE_PHYS and sends INIT, SIPI,
 * SIPI with vector TRAMPOLINE_PHYS >> 12.  The AP starts in real mode at
 * CS:IP = 0800:0000, loads the host GDT, enters protected mode, then long mode with
 * host_pml4, then jumps to ap_long_entry (boot.S).  No stack is used.
 *
 * Assembled for TRAMPOLINE_PHYS (TRAMP()); it is never relocated elsewhere.
 */
#include "layout.h"
#include "long_mode.h"

#define TRAMP(x) (TRAMPOLINE_PHYS + ((x) - mv_trampoline_start))

    .section .rodata.trampoline, "a"
    .balign 16
    .global mv_trampoline_start, mv_trampoline_end

    .code16
mv_trampoline_start:
    cli
    cld
    xorw    %ax, %ax
    movw    %ax, %ds
    lgdtl   TRAMP(tramp_gdt_ptr)
    movl    %cr0, %eax
    orl     $CR0_PE, %eax
    movl    %eax, %cr0
    ljmpl   $SEL_CODE32, $TRAMP(tramp_protected)

    .code32
tramp_protected:
    movw    $SEL_DATA, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movw    %ax, %fs
    movw    %ax, %gs
    ENABLE_LONG_MODE
    ljmp    $SEL_CODE64, $TRAMP(tramp_long)

    .code64
tramp_long:
    movl    $ap_long_entry, %eax
    jmp     *%rax

    .balign 8
tramp_gdt_ptr:
    .word   GDT_ENTRIES * 8 - 1
    .long   gdt
mv_trampoline_end:
