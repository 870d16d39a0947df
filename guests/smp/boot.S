/*
 * BSP boot path of the SMP guest, shaped like the ArceOS x86_64 boot:
 * Multiboot 1 header with the a.out kludge (so a 64-bit ELF loads), 32-bit
 * entry, temporary GDT and PML4, switch to long mode (Intel SDM Vol. 3A
 * 10.8.5 "Initializing IA-32e Mode"), then a jump to the high half.
 *
 * Everything is linked at KERNEL_BASE + physical address, so code that runs
 * before paging (or before the jump to the high half) uses PHYS(symbol).
 *
 * Build with -DBUG_MISSING_HIGH_MAPPING to leave PML4[511] empty: the jump
 * to long_mode_entry then page-faults with an empty IDT (triple fault).
 */
#include "layout.h"
#include "long_mode.h"

#define PHYS(x) ((x) - KERNEL_BASE)

#define MB1_FLAGS   (MB1_FLAG_MEMINFO | MB1_FLAG_AOUT_KLUDGE)

#define PTE_P       (1 << 0)
#define PTE_RW      (1 << 1)
#define PTE_PWT     (1 << 3)
#define PTE_PCD     (1 << 4)
#define PTE_PS      (1 << 7)

/* ------------------------------------------------------------------ */
/* Multiboot 1 header: must sit in the first 8 KiB of the file.       */
    .section .multiboot, "a"
    .balign 4
    .global mb_header
mb_header:
    .long MB1_HEADER_MAGIC
    .long MB1_FLAGS
    .long (0x100000000 - (MB1_HEADER_MAGIC + MB1_FLAGS)) & 0xffffffff
    /* a.out kludge address fields (all physical) */
    .long PHYS(mb_header)        /* header_addr   */
    .long PHYS(_image_start)     /* load_addr     */
    .long PHYS(_load_end)        /* load_end_addr */
    .long PHYS(_bss_end)         /* bss_end_addr  */
    .long PHYS(_start)           /* entry_addr    */

/* ------------------------------------------------------------------ */
    .section .text.boot, "ax"
    .code32
    .global _start
    .type _start, @function
_start:
    cmpl    $MB1_BOOT_MAGIC, %eax
    jne     bad_magic_halt
    movl    %eax, PHYS(boot_mb_magic)
    movl    %ebx, PHYS(boot_mb_info)
    movl    $PHYS(boot_stack_top), %esp

    lgdt    PHYS(boot_gdt_ptr32)
    ljmp    $GDT_CODE32_SEL, $PHYS(1f)
1:  movw    $GDT_DATA_SEL, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movw    %ax, %fs
    movw    %ax, %gs
    /* No IDT until kmain: any fault before that is a triple fault. */
    lidt    PHYS(null_idt_ptr)

    ENABLE_LONG_MODE_PAGING
    ljmp    $GDT_CODE64_SEL, $PHYS(long_mode_low)

/*
 * Wrong boot protocol (not a Multiboot 1 loader): halt silently, as ArceOS
 * does. This is one of the scenarios hvdbg diagnoses.
 */
    .global bad_magic_halt
    .type bad_magic_halt, @function
bad_magic_halt:
    cli
    hlt
    jmp     bad_magic_halt

    .code64
long_mode_low:
    /* Still executing at the physical address: go to the high half. */
    movabsq $long_mode_entry, %rax
    jmp     *%rax

/* ------------------------------------------------------------------ */
    .section .text, "ax"
    .global long_mode_entry
    .type long_mode_entry, @function
long_mode_entry:
    movabsq $boot_stack_top, %rsp
    lgdt    boot_gdt_ptr64(%rip)
    movw    $GDT_DATA_SEL, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movl    boot_mb_magic(%rip), %edi
    movl    boot_mb_info(%rip), %esi
    xorl    %ebp, %ebp
    call    kmain
2:  cli
    hlt
    jmp     2b

/*
 * AP long-mode entry, reached from the trampoline (trampoline.S). The stack
 * is chosen by the CPUID initial APIC ID (ArceOS style): APs that report the
 * same ID share a stack.
 */
    .global ap_start64
    .type ap_start64, @function
ap_start64:
    lgdt    boot_gdt_ptr64(%rip)
    movw    $GDT_DATA_SEL, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movl    $1, %eax
    cpuid
    shrl    $24, %ebx               /* EBX[31:24] = initial APIC ID */
    cmpl    $MAX_CPUS, %ebx
    jae     ap_bad_apic_id
    leaq    1(%rbx), %rax
    shlq    $14, %rax               /* (id + 1) * AP_STACK_SIZE */
    leaq    ap_stacks(%rip), %rsp
    addq    %rax, %rsp
    movl    %ebx, %edi
    xorl    %ebp, %ebp
    call    ap_entry
ap_bad_apic_id:
    cli
    hlt
    jmp     ap_bad_apic_id

#if AP_STACK_SIZE != (1 << 14)
#error "ap_start64 assumes AP_STACK_SIZE == 16 KiB"
#endif

/* ------------------------------------------------------------------ */
    .section .rodata, "a"
    .balign 16
    .global boot_gdt, boot_gdt_end
boot_gdt:
    .quad 0                         /* null */
    .quad 0x00cf9a000000ffff        /* 0x08: 32-bit code, flat */
    .quad 0x00cf92000000ffff        /* 0x10: data, flat */
    .quad 0x00af9a000000ffff        /* 0x18: 64-bit code (L=1) */
boot_gdt_end:
    .if boot_gdt_end - boot_gdt != BOOT_GDT_SIZE
    .error "BOOT_GDT_SIZE does not match boot_gdt"
    .endif

    .balign 8
boot_gdt_ptr32:
    .word boot_gdt_end - boot_gdt - 1
    .long PHYS(boot_gdt)
    .balign 8
boot_gdt_ptr64:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .balign 8
null_idt_ptr:
    .word 0
    .long 0

/* ------------------------------------------------------------------ */
    .section .data, "aw"
    .balign 4
    .global boot_mb_magic, boot_mb_info
boot_mb_magic: .long 0
boot_mb_info:  .long 0

/*
 * Temporary page tables (kept for the whole run; the APs use them too):
 *   PML4[0]   -> boot_pdpt_low:  PDPT[0] -> boot_pd_low (first 1 GiB, 2 MiB pages)
 *                                PDPT[3] -> boot_pd_apic (2 MiB pages at 0xFEC00000 and 0xFEE00000, UC)
 *   PML4[511] -> boot_pdpt_high: PDPT[0] -> boot_pd_low (0xffffff8000000000)
 */
    .section .data.pagetables, "aw"
    .balign 4096
    .global boot_pml4, boot_pdpt_low, boot_pdpt_high, boot_pd_low, boot_pd_apic
boot_pml4:
    .quad PHYS(boot_pdpt_low) + (PTE_P | PTE_RW)
    .fill 510, 8, 0
#ifdef BUG_MISSING_HIGH_MAPPING
    .quad 0
#else
    .quad PHYS(boot_pdpt_high) + (PTE_P | PTE_RW)
#endif

boot_pdpt_low:
    .quad PHYS(boot_pd_low) + (PTE_P | PTE_RW)
    .quad 0
    .quad 0
    .quad PHYS(boot_pd_apic) + (PTE_P | PTE_RW)
    .fill 508, 8, 0

boot_pdpt_high:
    .quad PHYS(boot_pd_low) + (PTE_P | PTE_RW)
    .fill 511, 8, 0

boot_pd_low:
    .set pd_index, 0
    .rept 512
    .quad (pd_index << 21) | (PTE_P | PTE_RW | PTE_PS)
    .set pd_index, pd_index + 1
    .endr

/* the I/O APIC's 2 MiB page is the one just below the local APIC's */
boot_pd_apic:
    .fill ((IOAPIC_PHYS >> 21) & 511), 8, 0
    .quad IOAPIC_PHYS | (PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PS)
    .quad LAPIC_PHYS | (PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PS)
    .fill 511 - ((LAPIC_PHYS >> 21) & 511), 8, 0

/* ------------------------------------------------------------------ */
    .section .bss, "aw", @nobits
    .balign 4096
    .global boot_stack, boot_stack_top
boot_stack:
    .skip BOOT_STACK_SIZE
boot_stack_top:
