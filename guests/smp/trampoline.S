/*
 * AP startup trampoline (Intel SDM Vol. 3A 9.4.4 "MP Initialization
 * Example"): the BSP copies [ap_trampoline_start, ap_trampoline_end) to
 * TRAMPOLINE_PHYS and sends INIT, SIPI, SIPI with vector TRAMPOLINE_VECTOR.
 * The AP starts in real mode at CS:IP = 0x0800:0000, goes to protected mode,
 * then to long mode with boot_pml4, then jumps to the high-half ap_start64.
 * No stack is used, so several APs may run it at the same time.
 *
 * It is assembled for TRAMPOLINE_PHYS. With `sipi_vector=0` the BSP copies it
 * to physical 0 instead (the AP starts at CS:IP = 0000:0000, as with
 * kvm-unit-tests) and adds the difference to the absolute addresses listed in
 * ap_trampoline_fixups (smp.c, trampoline_install): the 16-bit displacement of
 * the LGDT and the 32-bit offsets of the two far jumps. The rest only uses
 * addresses outside the trampoline (boot GDT, boot_pml4, ap_start64).
 * Copied to TRAMPOLINE_PHYS, its bytes are the assembled ones.
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
    lgdtl   TRAMP(tramp_gdt_ptr)       /* 66 0f 01 16 disp16 */
tramp_fix_gdt:
    movl    %cr0, %eax
    orl     $CR0_PE, %eax
    movl    %eax, %cr0
    ljmpl   $GDT_CODE32_SEL, $TRAMP(tramp_protected)   /* 66 ea off32 sel16 */
tramp_fix_protected:

    .code32
tramp_protected:
    movw    $GDT_DATA_SEL, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movw    %ax, %fs
    movw    %ax, %gs
    ENABLE_LONG_MODE_PAGING
    ljmp    $GDT_CODE64_SEL, $TRAMP(tramp_long)        /* ea off32 sel16 */
tramp_fix_long:

    .code64
tramp_long:
    movabsq $ap_start64, %rax
    jmp     *%rax

    .balign 8
tramp_gdt_ptr:
    .word   BOOT_GDT_SIZE - 1
    .long   boot_gdt - KERNEL_BASE
ap_trampoline_end:

    /* Not copied: {offset from ap_trampoline_start, size} of each absolute address
     * of the trampoline that is assembled for TRAMPOLINE_PHYS. */
    .balign 4
    .global ap_trampoline_fixups, ap_trampoline_fixups_end
ap_trampoline_fixups:
    .word   tramp_fix_gdt - 2 - ap_trampoline_start, 2
    .word   tramp_fix_protected - 6 - ap_trampoline_start, 4
    .word   tramp_fix_long - 6 - ap_trampoline_start, 4
ap_trampoline_fixups_end:
