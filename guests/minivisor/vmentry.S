/*
 * VM entry and VM exit glue (Intel SDM Vol. 3C 27 "VM Entries", 28 "VM Exits").
 *
 * struct guest_regs (minivisor.h) is 16 qwords indexed by the register number:
 *   0 rax, 1 rcx, 2 rdx, 3 rbx, 4 (rsp: unused, the VMCS holds GUEST_RSP), 5 rbp,
 *   6 rsi, 7 rdi, 8-15 r8-r15.
 *
 * A VM exit loads RSP = HOST_RSP and RIP = HOST_RIP = vmx_exit_stub (SDM 28.5.1).  Each
 * CPU's HOST_RSP points at a qword holding its struct cpu *, at the top of its own exit
 * stack, 16-byte aligned: the 16 pushes below leave RSP 16-byte aligned for the call.
 * The processor does not save the guest's GPRs (other than RSP/RIP/RFLAGS), so the stub
 * does, and puts them back before VMRESUME.  RFLAGS is 0x2 after a VM exit (IF = 0):
 * the hypervisor always runs with interrupts off.
 */
    .section .text, "ax"
    .code64

    .global vmx_exit_stub
    .type vmx_exit_stub, @function
vmx_exit_stub:
    pushq   %r15
    pushq   %r14
    pushq   %r13
    pushq   %r12
    pushq   %r11
    pushq   %r10
    pushq   %r9
    pushq   %r8
    pushq   %rdi
    pushq   %rsi
    pushq   %rbp
    pushq   $0                      /* the RSP hole */
    pushq   %rbx
    pushq   %rdx
    pushq   %rcx
    pushq   %rax
    movq    %rsp, %rdi              /* struct guest_regs * */
    movq    128(%rsp), %rsi         /* struct cpu * (at HOST_RSP) */
    cld
    call    vmx_exit_handler        /* returns only to resume the guest */
    popq    %rax
    popq    %rcx
    popq    %rdx
    popq    %rbx
    addq    $8, %rsp
    popq    %rbp
    popq    %rsi
    popq    %rdi
    popq    %r8
    popq    %r9
    popq    %r10
    popq    %r11
    popq    %r12
    popq    %r13
    popq    %r14
    popq    %r15
    vmresume
    /* Only reached if VMRESUME failed (VMfailInvalid / VMfailValid, SDM 31.3 VMRESUME):
     * RSP is HOST_RSP again, [RSP] = struct cpu *. */
    pushfq
    popq    %rsi
    movq    (%rsp), %rdi
    call    vmx_resume_failed       /* noreturn */
1:  cli
    hlt
    jmp     1b

/*
 * uint64_t vmx_launch(const struct guest_regs *regs): load the guest's GPRs and
 * VMLAUNCH the current VMCS.  On success the guest runs and every VM exit goes to
 * vmx_exit_stub (on the exit stack), so this never returns; on failure it returns
 * RFLAGS (CF: VMfailInvalid, ZF: VMfailValid) with the callee-saved registers intact.
 */
    .global vmx_launch
    .type vmx_launch, @function
vmx_launch:
    pushq   %rbx
    pushq   %rbp
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rdi, %rax
    movq    8(%rax), %rcx
    movq    16(%rax), %rdx
    movq    24(%rax), %rbx
    movq    40(%rax), %rbp
    movq    48(%rax), %rsi
    movq    56(%rax), %rdi
    movq    64(%rax), %r8
    movq    72(%rax), %r9
    movq    80(%rax), %r10
    movq    88(%rax), %r11
    movq    96(%rax), %r12
    movq    104(%rax), %r13
    movq    112(%rax), %r14
    movq    120(%rax), %r15
    movq    0(%rax), %rax
    vmlaunch
    pushfq
    popq    %rax
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbp
    popq    %rbx
    ret
