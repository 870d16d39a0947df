/*
 * Host exception entry stubs (Intel SDM Vol. 3A 6.14 "Exception and Interrupt Handling
 * in 64-bit Mode").  The hypervisor never enables interrupts, so only the 32 exception
 * vectors have handlers; each one pushes a dummy error code when the CPU does not, then
 * the vector, saves the GPRs (struct host_frame, trap.c) and calls host_exception(),
 * which prints and stops the CPU.
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

.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    ISR_NOERR \v
.endr
/* #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX push an error code */
.irp v, 8,10,11,12,13,14,17,21,29,30
    ISR_ERR \v
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
    andq    $-16, %rsp
    cld
    call    host_exception      /* noreturn */
1:  cli
    hlt
    jmp     1b

    .section .rodata, "a"
    .balign 8
    .global isr_stub_table
isr_stub_table:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\v
.endr
