/*
 * AP startup trampoline (Intel SDM Vol. 3A 9.4.4 "MP Initialization
 * Example"): the BSP copies [ap_trampoline_start, ap_trampoline_end) to
 * TRAMPOLINE_PHYS and sends INIT, SIPI, SIPI with vector TRAMPOLINE_VECTOR.
 * The AP starts in real mode at CS:IP = 0x0800:0000, goes to protected mode,
 * then to long mode with boot_pml4, then jumps to the high-half ap_start64.
 * No stack is used, so several APs may run it at the same time.
 */
#include "layout.h"
#include "long_mode.h"

/* Address of a trampoline label once copied to TRAMPOLINE_PHYS. */
#define TRAMP(x) (TRAMPOLINE_PHYS + ((x) - ap_trampoline_start))

    .section .rodata.trampoline, "a"
    .balign 16
    .global ap_trampoline_start, ap_trampoline_end

    .code16
ap_trampoline_start:
    cli
    cld
    xorw    %ax, %ax
    movw    %ax, %ds
    lgdtl   TRAMP(tramp_gdt_ptr)
    movl    %cr0, %eax
    orl     $CR0_PE, %eax
    movl    %eax, %cr0
    ljmpl   $GDT_CODE32_SEL, $TRAMP(tramp_protected)

    .code32
tramp_protected:
    movw    $GDT_DATA_SEL, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movw    %ax, %fs
    movw    %ax, %gs
    ENABLE_LONG_MODE_PAGING
    ljmp    $GDT_CODE64_SEL, $TRAMP(tramp_long)

    .code64
tramp_long:
    movabsq $ap_start64, %rax
    jmp     *%rax

    .balign 8
tramp_gdt_ptr:
    .word   BOOT_GDT_SIZE - 1
    .long   boot_gdt - KERNEL_BASE
ap_trampoline_end:
