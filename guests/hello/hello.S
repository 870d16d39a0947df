/*
 * 1-vCPU hello kernel, built twice from this file:
 *   MULTIBOOT_VERSION=1: Multiboot 1 header (Multiboot Spec 0.6.96, 3.1), no
 *                        a.out kludge: the loader uses the ELF program headers.
 *   MULTIBOOT_VERSION=2: Multiboot 2 header (Multiboot2 Spec 1.0, 3.1).
 * Checks the boot magic in EAX, prints a greeting and the magic on the
 * serial port and exits with status 0 (status 1 after "bad magic ...").
 */
#if MULTIBOOT_VERSION == 1
#define HEADER_MAGIC    0x1BADB002
#define HEADER_FLAGS    0x00000002          /* bit 1: memory information */
#define BOOT_MAGIC      0x2BADB002
#elif MULTIBOOT_VERSION == 2
#define HEADER_MAGIC    0xE85250D6
#define ARCH_I386       0
#define BOOT_MAGIC      0x36D76289
#else
#error "MULTIBOOT_VERSION must be 1 or 2"
#endif

#define EXIT_OK         0
#define EXIT_BAD_MAGIC  1

    .section .multiboot, "a"
#if MULTIBOOT_VERSION == 1
    .balign 4
mb_header:
    .long HEADER_MAGIC
    .long HEADER_FLAGS
    .long (0x100000000 - (HEADER_MAGIC + HEADER_FLAGS)) & 0xffffffff
#else
    .balign 8
mb_header:
    .long HEADER_MAGIC
    .long ARCH_I386
    .long mb_header_end - mb_header
    .long 0x100000000 - (HEADER_MAGIC + ARCH_I386 + (mb_header_end - mb_header))
    /* end tag: type 0, flags 0, size 8 */
    .balign 8
    .word 0
    .word 0
    .long 8
mb_header_end:
#endif

    .section .text, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    movl    $stack_top, %esp
    movl    %eax, boot_magic
    cmpl    $BOOT_MAGIC, %eax
    jne     bad_magic

    movl    $msg_hello, %esi
    call    serial_puts
    movl    $msg_magic, %esi
    call    serial_puts
    movl    boot_magic, %eax
    call    serial_puthex
    movb    $'\n', %al
    call    serial_putc
    movl    $EXIT_OK, %eax
    jmp     debug_exit

bad_magic:
    movl    $msg_bad_magic, %esi
    call    serial_puts
    movl    boot_magic, %eax
    call    serial_puthex
    movb    $'\n', %al
    call    serial_putc
    movl    $EXIT_BAD_MAGIC, %eax
    jmp     debug_exit

    .section .rodata, "a"
msg_hello:
#if MULTIBOOT_VERSION == 1
    .asciz "Hello from hvdbg (multiboot 1)\n"
#else
    .asciz "Hello from hvdbg (multiboot 2)\n"
#endif
msg_magic:
    .asciz "magic "
msg_bad_magic:
    .asciz "bad magic "

    .section .data, "aw"
    .balign 4
boot_magic:
    .long 0

    .section .bss, "aw", @nobits
    .balign 16
stack:
    .skip 4096
stack_top:
