/*
 * Interrupt/exception entry stubs (Intel SDM Vol. 3A 6.14 "Exception and
 * Interrupt Handling in 64-bit Mode"). Each stub pushes a dummy error code
 * when the CPU does not push one, then its vector, saves the general
 * registers into a struct trap_frame (trap.h) and calls trap_dispatch().
 */
    .section .text, "ax"
    .code64

.macro ISR_NOERR vec
isr_\vec:
    pushq   $0
    pushq   $\vec
    jmp     isr_common
.endm

.macro ISR_ERR vec
isr_\vec:
    pushq   $\vec
    jmp     isr_common
.endm

/* Exceptions without an error code (and reserved vectors). */
.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    ISR_NOERR \v
.endr
/* Exceptions that push an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX */
.irp v, 8,10,11,12,13,14,17,21,29,30
    ISR_ERR \v
.endr
/* Timer (0x40), test IPI (0x41), PIT, COM1, ATA, RTC through the I/O APIC (0x42-0x45),
   the master 8259A's IR0 and IR7 (0x48, 0x4f), the slave's IR0 (0x50), spurious (0xff) */
.irp v, 64,65,66,67,68,69,72,79,80,255
    ISR_NOERR \v
.endr

isr_common:
    pushq   %rax
    pushq   %rbx
    pushq   %rcx
    pushq   %rdx
    pushq   %rsi
    pushq   %rdi
    pushq   %rbp
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, %rdi
    cld
    call    trap_dispatch
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %r11
    popq    %r10
    popq    %r9
    popq    %r8
    popq    %rbp
    popq    %rdi
    popq    %rsi
    popq    %rdx
    popq    %rcx
    popq    %rbx
    popq    %rax
    addq    $16, %rsp               /* vector + error code */
    iretq

/* Table of (vector, stub) pairs read by idt_init() (struct isr_stub). */
    .section .rodata, "a"
    .balign 8
    .global isr_stub_table, isr_stub_count
isr_stub_table:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,64,65,66,67,68,69,72,79,80,255
    .quad \v, isr_\v
.endr
isr_stub_table_end:
isr_stub_count:
    .quad (isr_stub_table_end - isr_stub_table) / 16
