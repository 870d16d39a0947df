/*
 * 32-bit serial and debug-exit helpers for the hello kernels.
 * 16550 UART at 0x3F8: poll LSR (0x3FD) bit 5, then write THR (0x3F8).
 */
#define COM1_THR 0x3f8
#define COM1_LSR 0x3fd
#define LSR_THR_EMPTY 0x20
#define DEBUG_EXIT_PORT 0xf4

    .section .text, "ax"
    .code32

/* serial_putc: AL = character. Preserves all registers but EFLAGS. */
    .global serial_putc
serial_putc:
    pushl   %edx
    pushl   %eax
1:  movw    $COM1_LSR, %dx
    inb     %dx, %al
    testb   $LSR_THR_EMPTY, %al
    jnz     2f
    pause
    jmp     1b
2:  popl    %eax
    movw    $COM1_THR, %dx
    outb    %al, %dx
    popl    %edx
    ret

/* serial_puts: ESI = NUL-terminated string. Preserves all registers but EFLAGS. */
    .global serial_puts
serial_puts:
    pushl   %eax
    pushl   %esi
1:  lodsb
    testb   %al, %al
    jz      2f
    call    serial_putc
    jmp     1b
2:  popl    %esi
    popl    %eax
    ret

/* serial_puthex: EAX = value, printed as 0x followed by 8 lowercase digits. */
    .global serial_puthex
serial_puthex:
    pushl   %eax
    pushl   %ebx
    pushl   %ecx
    movl    %eax, %ebx
    movb    $'0', %al
    call    serial_putc
    movb    $'x', %al
    call    serial_putc
    movl    $8, %ecx
1:  roll    $4, %ebx
    movl    %ebx, %eax
    andl    $0xf, %eax
    movb    hex_digits(%eax), %al
    call    serial_putc
    loop    1b
    popl    %ecx
    popl    %ebx
    popl    %eax
    ret

/* debug_exit: EAX = status; outl to the debug-exit port, then halt forever. */
    .global debug_exit
debug_exit:
    movw    $DEBUG_EXIT_PORT, %dx
    outl    %eax, %dx
1:  cli
    hlt
    jmp     1b

    .section .rodata, "a"
hex_digits:
    .ascii "0123456789abcdef"
