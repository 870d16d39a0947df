/*
 * PIT workload (`workload=pit pit_cpu=N pit_ticks=T`): the BSP routes ISA IRQ 0
 * (the 8254's channel 0, I/O APIC pin 2 as the MADT's interrupt source
 * override says) to CPU N's APIC ID with vector VEC_PIT, edge-triggered, and
 * starts channel 0 in mode 2 at 1193 counts (~1 kHz).  CPU N waits in
 * `sti; hlt` for T interrupts; every other CPU runs with IF=1 and increments a
 * shared counter with `lock incq`, which the interrupt handler increments too.
 * The BSP checks: T interrupts on CPU N and none elsewhere, each on a PIT edge
 * (the TSC time from the first to the last within 1% of a whole number of
 * periods; more periods than interrupts are ticks lost while CPU N was not
 * running), and the shared counter exact.
 * With `pit_via=pic` IRQ 0 goes through the master 8259A (IR0, vector VEC_PIC_PIT) to
 * the LINT0 of CPU N, which alone programs it for ExtINT (the vector comes from the
 * PIC's INTA cycle; the handler's EOI goes to the PIC).
 */
#ifndef HVDBG_GUEST_PIT_H
#define HVDBG_GUEST_PIT_H

#include "work.h"

#define PIT_RELOAD          1193U       /* counts per period at 1.193182 MHz */
#define DEFAULT_PIT_TICKS   20ULL

/* BSP, before the APs are started. */
void pit_prepare(uint64_t target_cpu, uint64_t ticks, bool via_pic);

/* True once pit_prepare() ran (the APs run pit_run). */
bool pit_active(void);

/* BSP, after work_set_cpus(): the target index within the CPUs online, the barrier bound. */
void pit_set_cpus(struct workload *work, uint32_t ncpus);

/* Every participant, between two barriers. */
void pit_run(struct workload *work, uint32_t cpu_index);

/* The VEC_PIT handler (trap.c): count, remember the TSC (the caller sends the EOI). */
void pit_interrupt(void);

/* The 8259A's spurious IR7 (pit_via=pic): counted, and the check fails if any came. */
void pit_spurious(void);

/* BSP, after pit_run: print the result and exit (EXIT_OK or EXIT_PIT_BAD). */
__attribute__((noreturn)) void pit_finish(uint32_t ncpus);

#endif
