/* IDT and interrupt/exception dispatch (Intel SDM Vol. 3A 6.10, 6.14). */
#ifndef HVDBG_GUEST_TRAP_H
#define HVDBG_GUEST_TRAP_H

#include "layout.h"

/*
 * Expected faults (used by the conformance checks, cpucheck.c): while
 * `active` is set, an exception (any vector below 32 except NMI, #BP, #DF
 * and #MC) is not fatal: the handler records it in `vector`, `error_code`,
 * `rip` and `cs`, sets `hit`, clears `active` and resumes at `fixup_rip`.
 * With `fixup_rsp` != 0 it resumes at CPL0 (CS GDT_CODE64_SEL, SS
 * GDT_DATA_SEL) with that RSP, which also brings a CPL3 fault back to the
 * kernel; with 0 it keeps the interrupted context's CS:RSP.
 * Every field is 8 bytes: the TE_* offsets are used from assembly.
 */
#define TE_ACTIVE       0
#define TE_HIT          8
#define TE_VECTOR       16
#define TE_ERROR_CODE   24
#define TE_RIP          32
#define TE_CS           40
#define TE_FIXUP_RIP    48
#define TE_FIXUP_RSP    56

#ifndef __ASSEMBLER__
#include "cpu.h"

struct trap_expect {
    volatile uint64_t active;
    volatile uint64_t hit;
    uint64_t vector, error_code, rip, cs;  /* of the recorded exception */
    uint64_t fixup_rip;
    uint64_t fixup_rsp;
};

extern struct trap_expect trap_expect;

/* Layout pushed by isr.S: saved GPRs, vector, error code, CPU frame. */
struct trap_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error_code;
    uint64_t rip, cs, rflags, rsp, ss;
};

/* Event counters updated by the handlers (read by the self-tests). */
extern volatile uint64_t trap_breakpoint_count;
extern volatile uint64_t trap_timer_ticks;
extern volatile uint32_t trap_ipi_count[MAX_CPUS];  /* indexed by local APIC ID */

/* Fill the shared IDT from isr_stub_table (BSP, once). */
void idt_init(void);

/* Load the shared IDT on the calling CPU. */
void idt_load(void);

void trap_dispatch(struct trap_frame *frame);

#endif /* __ASSEMBLER__ */

#endif
