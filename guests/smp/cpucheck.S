/*
 * Assembly side of the CPU conformance checks (cpucheck.c): guarded single
 * instructions, the CPL3 entry/exit, the SYSCALL and SYSENTER handlers and the
 * user-mode test code.
 *
 * The user code runs at CPL3 from the identity (low) alias of the kernel
 * image, which cpucheck.c maps with U/S=1: it only uses RIP-relative
 * addressing, so its data accesses (cpu_rec) go through the same alias.
 */
#include "cpucheck.h"
#include "trap.h"

#define REC(i)  cpu_rec + 8 * (i)(%rip)

/* Arm trap_expect (trap.h): a fault resumes at \fixup with the current RSP, at CPL0. */
.macro EXPECT_ARM fixup
    leaq    \fixup(%rip), %r11
    movq    %r11, trap_expect + TE_FIXUP_RIP(%rip)
    movq    %rsp, trap_expect + TE_FIXUP_RSP(%rip)
    movq    $0, trap_expect + TE_HIT(%rip)
    movq    $1, trap_expect + TE_ACTIVE(%rip)
.endm

.macro EXPECT_DISARM
    movq    $0, trap_expect + TE_ACTIVE(%rip)
.endm

/* RCX = AX = a segment register, zero-extended, without touching RFLAGS. */
.macro READ_SEG seg, reg64, reg16
    movl    $0, \reg64
    movw    \seg, \reg16
.endm

/*
 * What a system-call entry records for the checks: the entry RFLAGS (saved before
 * anything changes them), CS, SS and the registers SYSCALL / SYSENTER hand over.
 * RAX = 2 asks for the way back to the kernel: jumps to the next "1:" label with
 * R8 = CS.
 */
.macro RECORD_SYSTEM_CALL_ENTRY
    pushfq
    popq    cpu_entry_rflags(%rip)
    incq    REC(REC_SYS_CALLS)
    READ_SEG %cs, %r8d, %r8w
    cmpq    $2, %rax
    je      1f
    movq    %r8, REC(REC_K_CS)
    READ_SEG %ss, %r8d, %r8w
    movq    %r8, REC(REC_K_SS)
    movq    %rcx, REC(REC_K_RCX)
    movq    %r11, REC(REC_K_R11)
    movq    %rdx, REC(REC_K_RDX)
    movq    cpu_entry_rflags(%rip), %r8
    movq    %r8, REC(REC_K_RFLAGS)
    movq    cpu_entry_rsp(%rip), %r8
    movq    %r8, REC(REC_K_RSP)
.endm

    .section .text, "ax"
    .code64

/* uint64_t cpu_try_rdmsr(uint32_t msr): EDX:EAX, 0 if it faulted. */
    .global cpu_try_rdmsr
    .type cpu_try_rdmsr, @function
cpu_try_rdmsr:
    EXPECT_ARM 1f
    movl    %edi, %ecx
    xorl    %eax, %eax
    xorl    %edx, %edx
    rdmsr
1:  EXPECT_DISARM
    shlq    $32, %rdx
    orq     %rdx, %rax
    ret

/* void cpu_try_wrmsr(uint32_t msr, uint64_t value) */
    .global cpu_try_wrmsr
    .type cpu_try_wrmsr, @function
cpu_try_wrmsr:
    EXPECT_ARM 1f
    movl    %edi, %ecx
    movl    %esi, %eax
    movq    %rsi, %rdx
    shrq    $32, %rdx
    wrmsr
1:  EXPECT_DISARM
    ret

/* void cpu_try_write_cr4(uint64_t value) */
    .global cpu_try_write_cr4
    .type cpu_try_write_cr4, @function
cpu_try_write_cr4:
    EXPECT_ARM 1f
    movq    %rdi, %cr4
1:  EXPECT_DISARM
    ret

/* void cpu_try_write_cr8(uint64_t value) */
    .global cpu_try_write_cr8
    .type cpu_try_write_cr8, @function
cpu_try_write_cr8:
    EXPECT_ARM 1f
    movq    %rdi, %cr8
1:  EXPECT_DISARM
    ret

/* uint64_t cpu_guarded_call(uint64_t (*fn)(void)) */
    .global cpu_guarded_call
    .type cpu_guarded_call, @function
cpu_guarded_call:
    pushq   %rbx
    pushq   %rbp
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    subq    $8, %rsp                /* RSP 16-aligned at the call (SysV ABI) */
    EXPECT_ARM 1f
    call    *%rdi
1:  EXPECT_DISARM
    addq    $8, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbp
    popq    %rbx
    ret

/*
 * uint64_t cpu_enter_user(uint64_t rip, uint64_t rsp, uint64_t rflags)
 * IRETQ to CPL3 (SDM Vol. 3A 6.14.3: the 64-bit frame SS, RSP, RFLAGS, CS, RIP).
 * Back through cpu_user_return: from a handler, or as the fixup of an expected
 * fault (trap_expect.fixup_rsp brings a CPL3 fault back to CPL0).
 */
    .global cpu_enter_user
    .type cpu_enter_user, @function
cpu_enter_user:
    pushq   %rbx
    pushq   %rbp
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, cpu_kernel_rsp(%rip)
    EXPECT_ARM cpu_user_return
    pushq   $USER_SS
    pushq   %rsi
    pushq   %rdx
    pushq   $USER_CS
    pushq   %rdi
    iretq

    .global cpu_user_return
    .type cpu_user_return, @function
cpu_user_return:
    movq    cpu_kernel_rsp(%rip), %rsp
    EXPECT_DISARM
    /* IRETQ to CPL3 nulled DS/ES (DPL 0 < CPL, SDM Vol. 3A 6.14.3); SYSCALL left SS = 0x20 */
    movl    $GDT_DATA_SEL, %ecx
    movw    %cx, %ds
    movw    %cx, %es
    movw    %cx, %ss
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbp
    popq    %rbx
    ret

/*
 * IA32_LSTAR target (SDM Vol. 2B SYSCALL): CPL0, CS = 0x18, SS = 0x20,
 * RCX = user RIP, R11 = user RFLAGS, RFLAGS &= ~IA32_FMASK, RSP still the
 * user's. RAX = 1: record and SYSRETQ to user; RAX = 2: back to the kernel
 * (cpu_user_return) instead.
 */
    .global cpu_syscall_entry
    .type cpu_syscall_entry, @function
cpu_syscall_entry:
    movq    %rsp, cpu_entry_rsp(%rip)
    movq    cpu_handler_stack_top(%rip), %rsp
    RECORD_SYSTEM_CALL_ENTRY
    movq    cpu_entry_rsp(%rip), %rsp
    movl    $SYS_MARK_USER, %eax
    sysretq                         /* REX.W: 64-bit CS = STAR[63:48] + 16, RIP = RCX */
1:  movq    %r8, REC(REC_K2_CS)
    movl    $SYS_MARK_KERNEL, %eax
    jmp     cpu_user_return

/*
 * IA32_SYSENTER_EIP target (SDM Vol. 2B SYSENTER): CPL0, CS = SYSENTER_CS,
 * SS = SYSENTER_CS + 8, RSP = IA32_SYSENTER_ESP, RFLAGS.VM/IF/RF cleared.
 * The user passes its return RIP in RDX and RSP in RCX (SYSEXIT's convention).
 */
    .global cpu_sysenter_entry
    .type cpu_sysenter_entry, @function
cpu_sysenter_entry:
    movq    %rsp, cpu_entry_rsp(%rip)
    RECORD_SYSTEM_CALL_ENTRY
    movl    $SYS_MARK_USER, %eax
    sysexitq                        /* REX.W: CS = SYSENTER_CS + 32, RIP = RDX, RSP = RCX */
1:  movq    %r8, REC(REC_K2_CS)
    movl    $SYS_MARK_KERNEL, %eax
    jmp     cpu_user_return

/* ------------------------------------------------------------------ */
/* CPL3 code (entered at its identity alias by cpu_enter_user).        */

/*
 * SYSCALL with RAX = 1 (DF set: FMASK must clear it in the handler), record
 * what SYSRET restored, SYSCALL with RAX = 2 (the handler goes back to the
 * kernel). A SYSCALL that does not leave user mode (a no-op) falls through to
 * UD2, whose expected #UD also returns to the kernel.
 */
    .global user_syscall_test
    .type user_syscall_test, @function
user_syscall_test:
    READ_SEG %cs, %eax, %ax
    movq    %rax, REC(REC_U_CS0)
    movq    %rsp, REC(REC_U_RSP0)
    leaq    1f(%rip), %rcx
    movq    %rcx, REC(REC_U_RET_RIP)
    std
    pushfq
    popq    %rbx
    movq    %rbx, REC(REC_U_FLAGS0)
    movl    $1, %eax
    syscall
1:  pushfq
    popq    %rbx
    cld
    movq    %rbx, REC(REC_U_FLAGS1)
    movq    %rax, REC(REC_U_RAX1)
    movq    %rsp, REC(REC_U_RSP1)
    READ_SEG %cs, %eax, %ax
    movq    %rax, REC(REC_U_CS1)
    READ_SEG %ss, %eax, %ax
    movq    %rax, REC(REC_U_SS1)
    movl    $2, %eax
    syscall
    ud2

/* The same with SYSENTER / SYSEXIT (RDX = return RIP, RCX = return RSP). */
    .global user_sysenter_test
    .type user_sysenter_test, @function
user_sysenter_test:
    READ_SEG %cs, %eax, %ax
    movq    %rax, REC(REC_U_CS0)
    movq    %rsp, REC(REC_U_RSP0)
    leaq    1f(%rip), %rdx
    movq    %rdx, REC(REC_U_RET_RIP)
    pushfq
    popq    %rbx
    movq    %rbx, REC(REC_U_FLAGS0)
    movq    %rsp, %rcx
    movl    $1, %eax
    sysenter
1:  pushfq
    popq    %rbx
    movq    %rbx, REC(REC_U_FLAGS1)
    movq    %rax, REC(REC_U_RAX1)
    movq    %rsp, REC(REC_U_RSP1)
    READ_SEG %cs, %eax, %ax
    movq    %rax, REC(REC_U_CS1)
    READ_SEG %ss, %eax, %ax
    movq    %rax, REC(REC_U_SS1)
    leaq    2f(%rip), %rdx
    movq    %rsp, %rcx
    movl    $2, %eax
    sysenter
2:  ud2

/* RDMSR at CPL3 must #GP(0) (SDM Vol. 2B RDMSR); UD2 if it did not. */
    .global user_rdmsr_test
    .type user_rdmsr_test, @function
user_rdmsr_test:
    movl    $MSR_APIC_BASE, %ecx
    rdmsr
    ud2

/* ------------------------------------------------------------------ */
/*
 * Template of check 1: never executed here (it is in .rodata), only from
 * the copy cpucheck.c makes into a page outside the image.
 */
    .section .rodata, "a"
    .global apic_base_reader, apic_base_reader_end
apic_base_reader:
    movl    $MSR_APIC_BASE, %ecx
    rdmsr
    shlq    $32, %rdx
    orq     %rdx, %rax
    ret
apic_base_reader_end:

/* ------------------------------------------------------------------ */
    .section .bss, "aw", @nobits
    .balign 8
    .global cpu_rec, cpu_handler_stack_top
cpu_rec:                .skip 8 * REC_COUNT
cpu_handler_stack_top:  .skip 8
cpu_kernel_rsp:         .skip 8
cpu_entry_rsp:          .skip 8
cpu_entry_rflags:       .skip 8
