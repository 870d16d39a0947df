/*
 * Serial echo workload (`workload=echo echo_cpu=N`): the BSP routes ISA IRQ 4 (COM1,
 * I/O APIC pin 4, no override) to CPU N's APIC ID with vector VEC_UART, turns on the
 * UART's FIFO, its received-data interrupt and OUT2 (the IRQ line's gate on a PC).
 * CPU N waits in `sti; hlt`; its handler drains the receiver (LSR.DR) into a line
 * buffer and counts a `lock incq` on a counter the other CPUs increment too while they
 * spin with IF=1.  For every line CPU N prints "echo: LINE"; the line "quit" ends the
 * workload.  The BSP checks: every interrupt on CPU N, each byte read in a handler
 * (none polled), and the shared counter exact.
 */
#ifndef HVDBG_GUEST_ECHO_H
#define HVDBG_GUEST_ECHO_H

#include "work.h"

void echo_prepare(uint64_t target_cpu);
bool echo_active(void);
void echo_set_cpus(struct workload *work, uint32_t ncpus);
/* The VEC_UART handler (trap.c); the caller sends the EOI. */
void echo_interrupt(void);
void echo_run(struct workload *work, uint32_t cpu_index);
void echo_finish(uint32_t ncpus);

#endif
