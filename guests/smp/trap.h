/* IDT and interrupt/exception dispatch (Intel SDM Vol. 3A 6.10, 6.14). */
#ifndef HVDBG_GUEST_TRAP_H
#define HVDBG_GUEST_TRAP_H

#include "cpu.h"

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

#endif
