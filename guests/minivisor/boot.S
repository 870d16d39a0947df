/*
 * minivisor boot path (BSP): Multiboot 1 header with the a.out kludge (so that a
 * Multiboot 1 loader, hvdbg's, QEMU's -kernel or GRUB's, loads this ELF64), the 32-bit
 * entry, the switch to long mode (Intel SDM Vol. 3A 10.8.5 "Initializing IA-32e Mode")
 * with an identity map of the first 4 GiB, then bsp_main().  Also the APs' 64-bit entry
 * (reached from trampoline.S), the host GDT and the host page tables.
 *
 * Everything is linked at its physical address (linker.ld), so no PHYS() games: the same
 * address works before and after paging is on.
 */
#include "layout.h"
#include "long_mode.h"

#define MB1_FLAGS   (MB1_FLAG_PAGE_ALIGN | MB1_FLAG_MEMINFO | MB1_FLAG_AOUT_KLUDGE)

#define PTE_P       0x001
#define PTE_RW      0x002
#define PTE_PWT     0x008
#define PTE_PCD     0x010
#define PTE_PS      0x080

/* ------------------------------------------------------------------ */
/* Multiboot 1 header: in the first 8 KiB of the file, 4-byte aligned. */
    .section .multiboot, "a"
    .balign 4
    .global mb_header
mb_header:
    .long MB1_HEADER_MAGIC
    .long MB1_FLAGS
    .long (0x100000000 - (MB1_HEADER_MAGIC + MB1_FLAGS)) & 0xffffffff
    /* a.out kludge address fields (physical) */
    .long mb_header             /* header_addr   */
    .long _image_start          /* load_addr     */
    .long _load_end             /* load_end_addr */
    .long _bss_end              /* bss_end_addr  */
    .long _start                /* entry_addr    */

/* ------------------------------------------------------------------ */
    .section .text.boot, "ax"
    .code32
    .global _start
    .type _start, @function
_start:
    /* Multiboot machine state (spec 3.2): protected mode, paging off, EAX = magic,
     * EBX = information.  The magic is checked (and reported) in C. */
    cli
    cld
    movl    %eax, boot_mb_magic
    movl    %ebx, boot_mb_info
    movl    $(boot_stacks + STACK_SIZE), %esp

    lgdt    gdt_ptr32
    ljmp    $SEL_CODE32, $1f
1:  movw    $SEL_DATA, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movw    %ax, %fs
    movw    %ax, %gs

    ENABLE_LONG_MODE
    ljmp    $SEL_CODE64, $bsp_long_entry

    .code64
bsp_long_entry:
    movw    $SEL_DATA, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    xorw    %ax, %ax
    movw    %ax, %fs
    movw    %ax, %gs
    movq    $(boot_stacks + STACK_SIZE), %rsp
    movl    boot_mb_magic(%rip), %edi
    movl    boot_mb_info(%rip), %esi
    xorl    %ebp, %ebp
    call    bsp_main
2:  cli
    hlt
    jmp     2b

/*
 * AP 64-bit entry, jumped to by the trampoline (trampoline.S) with the host page tables
 * loaded.  The BSP starts the APs one at a time and leaves the AP's CPU index and stack
 * in ap_boot_index / ap_boot_rsp before its INIT-SIPI-SIPI.
 */
    .global ap_long_entry
    .type ap_long_entry, @function
ap_long_entry:
    movw    $SEL_DATA, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    xorw    %ax, %ax
    movw    %ax, %fs
    movw    %ax, %gs
    movq    ap_boot_rsp(%rip), %rsp
    movl    ap_boot_index(%rip), %edi
    xorl    %ebp, %ebp
    call    ap_main
3:  cli
    hlt
    jmp     3b

/* ------------------------------------------------------------------ */
    .section .data, "aw"
    .balign 4
    .global boot_mb_magic, boot_mb_info
boot_mb_magic: .long 0
boot_mb_info:  .long 0

/*
 * Host GDT: null, 64-bit code, data, 32-bit code, then one 16-byte TSS descriptor per
 * CPU (filled by cpu_local_init(), SDM 8.2.3 "TSS Descriptor in 64-bit mode").
 */
    .balign 16
    .global gdt, gdt_ptr32
gdt:
    .quad 0                         /* 0x00 null */
    .quad 0x00af9a000000ffff        /* 0x08 64-bit code, L=1 */
    .quad 0x00cf92000000ffff        /* 0x10 data, flat 4 GiB */
    .quad 0x00cf9a000000ffff        /* 0x18 32-bit code, flat 4 GiB */
    .fill 2 * MAX_CPUS, 8, 0        /* 0x20 + 16 * i: TSS of CPU i */
gdt_end:
    .balign 8
gdt_ptr32:
    .word gdt_end - gdt - 1
    .long gdt

/*
 * Host page tables (identity map of the first 4 GiB, 2 MiB pages; the I/O APIC's and
 * the local APIC's 2 MiB pages uncached).  The APs load the same CR3.
 */
    .section .data.pagetables, "aw"
    .balign 4096
    .global host_pml4
host_pml4:
    .quad host_pdpt + (PTE_P | PTE_RW)
    .fill 511, 8, 0
host_pdpt:
    .quad host_pd + 0x0000 + (PTE_P | PTE_RW)
    .quad host_pd + 0x1000 + (PTE_P | PTE_RW)
    .quad host_pd + 0x2000 + (PTE_P | PTE_RW)
    .quad host_pd + 0x3000 + (PTE_P | PTE_RW)
    .fill 508, 8, 0
host_pd:
    .set pde, 0
    .rept 2048
    .if (pde == (IOAPIC_PHYS >> 21)) || (pde == (LAPIC_PHYS >> 21))
    .quad (pde << 21) | (PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PS)
    .else
    .quad (pde << 21) | (PTE_P | PTE_RW | PTE_PS)
    .endif
    .set pde, pde + 1
    .endr
