/*
 * CPU conformance checks (`workload=cpu`, cpucheck.c and cpucheck.S): MSR,
 * CR4, STI shadow, SYSCALL/SYSRET, SYSENTER/SYSEXIT and CPL3 checks, run by
 * the BSP. Included from assembly (with __ASSEMBLER__ defined) and from C.
 */
#ifndef HVDBG_GUEST_CPUCHECK_H
#define HVDBG_GUEST_CPUCHECK_H

#include "layout.h"

/*
 * GDT of the checks (cpucheck_gdt, loaded by the BSP only). 0x08-0x18 are the
 * boot GDT's descriptors, unchanged (the IDT gates use GDT_CODE64_SEL). The
 * rest follows the fixed selector arithmetic of SDM Vol. 2B:
 *   SYSCALL:   CS = STAR[47:32] = 0x18, SS = STAR[47:32] + 8 = 0x20
 *   SYSRET64:  CS = STAR[63:48] + 16 = 0x38 | 3, SS = STAR[63:48] + 8 = 0x30 | 3
 *              (STAR[63:48] = 0x28, the 32-bit user code of a SYSRET32)
 *   SYSENTER:  CS = IA32_SYSENTER_CS = 0x18, SS = IA32_SYSENTER_CS + 8 = 0x20
 *   SYSEXIT64: CS = IA32_SYSENTER_CS + 32 = 0x38 | 3, SS = IA32_SYSENTER_CS + 40 = 0x40 | 3
 */
#define CK_KDATA_SEL        0x20    /* kernel data (SS of SYSCALL / SYSENTER) */
#define CK_UCODE32_SEL      0x28    /* user 32-bit code, DPL 3 (SYSRET32 CS, unused) */
#define CK_UDATA_SEL        0x30    /* user data, DPL 3 (SYSRET SS, IRETQ SS) */
#define CK_UCODE64_SEL      0x38    /* user 64-bit code, DPL 3 (SYSRET64 / SYSEXIT64 CS) */
#define CK_UDATA2_SEL       0x40    /* user data, DPL 3 (SYSEXIT SS) */
#define CK_TSS_SEL          0x48    /* 64-bit TSS (16-byte descriptor): RSP0 for CPL3 -> CPL0 */
#define CK_GDT_ENTRIES      11

#define USER_CS             (CK_UCODE64_SEL | 3)
#define USER_SS             (CK_UDATA_SEL | 3)
#define USER_SS_SYSEXIT     (CK_UDATA2_SEL | 3)

/* RAX the SYSCALL / SYSENTER handlers return to user mode, and to the kernel (call 2). */
#define SYS_MARK_USER       0x5ca1
#define SYS_MARK_KERNEL     0x6b1

/* Indices of cpu_rec[]: what the handlers (K_*) and the user code (U_*) saw. */
#define REC_SYS_CALLS       0   /* entries into the SYSCALL / SYSENTER handler */
#define REC_K_CS            1   /* first call: CS in the handler */
#define REC_K_SS            2
#define REC_K_RCX           3
#define REC_K_R11           4
#define REC_K_RFLAGS        5   /* RFLAGS on entry to the handler */
#define REC_K_RSP           6   /* RSP on entry to the handler */
#define REC_K_RDX           7
#define REC_K2_CS           8   /* second call (RAX = 2): CS in the handler */
#define REC_U_CS0           9   /* user CS before the first call */
#define REC_U_FLAGS0        10  /* user RFLAGS just before the first call */
#define REC_U_RET_RIP       11  /* the user RIP the first call must return to */
#define REC_U_RSP0          12
#define REC_U_RAX1          13  /* after the return to user mode */
#define REC_U_CS1           14
#define REC_U_SS1           15
#define REC_U_FLAGS1        16
#define REC_U_RSP1          17
#define REC_COUNT           18

#define MSR_APIC_BASE       0x1b
#define MSR_SYSENTER_CS     0x174
#define MSR_SYSENTER_ESP    0x175
#define MSR_SYSENTER_EIP    0x176
#define MSR_EFER            0xc0000080
#define MSR_STAR            0xc0000081
#define MSR_LSTAR           0xc0000082
#define MSR_FMASK           0xc0000084
#define MSR_FS_BASE         0xc0000100

#ifndef __ASSEMBLER__
#include "cpu.h"

/* True if the command line has the word `workload=cpu`. */
bool cpucheck_requested(const char *cmdline);

/* Run every check on the calling CPU (the BSP), print the summary, exit 0 or 7. */
__attribute__((noreturn)) void cpucheck_run(void);

/* --- cpucheck.S ------------------------------------------------------------------- */
extern volatile uint64_t cpu_rec[REC_COUNT];
extern uint64_t cpu_handler_stack_top;  /* RSP of the SYSCALL handler (also SYSENTER_ESP) */

/* Each arms trap_expect around the one instruction; the caller reads trap_expect.hit. */
uint64_t cpu_try_rdmsr(uint32_t msr);
void cpu_try_wrmsr(uint32_t msr, uint64_t value);
void cpu_try_write_cr4(uint64_t value);
void cpu_try_write_cr8(uint64_t value);
/* Call fn with trap_expect armed; a fault resumes behind the call, callee-saved regs restored. */
uint64_t cpu_guarded_call(uint64_t (*fn)(void));

/*
 * IRETQ to CPL3 (USER_CS:rip, USER_SS:rsp, rflags) with trap_expect armed; returns
 * when a handler jumps to cpu_user_return (RAX = SYS_MARK_KERNEL) or when an
 * exception is taken (trap_expect.hit set).
 */
uint64_t cpu_enter_user(uint64_t rip, uint64_t rsp, uint64_t rflags);

extern const char apic_base_reader[], apic_base_reader_end[];
void cpu_syscall_entry(void);
void cpu_sysenter_entry(void);
void user_syscall_test(void);
void user_sysenter_test(void);
void user_rdmsr_test(void);
#endif

#endif
