/*
 * Atomics workload (`workload=atomics`): every CPU updates three shared 64-bit
 * counters, one per primitive, in one interleaved loop:
 *   inc      `lock incq`
 *   cmpxchg  a `lock cmpxchgq` retry loop adding 1
 *   xchg     a plain (non-atomic) increment under a test-and-set spin lock taken
 *            with `xchg` (implicitly locked), so xchg's atomicity keeps it exact
 * The BSP checks every total == iterations * CPUs.
 */
#ifndef HVDBG_GUEST_ATOMICS_H
#define HVDBG_GUEST_ATOMICS_H

#include "work.h"

/* BSP, before the APs are started: reset the counters, print what will run. */
void atomics_prepare(uint64_t iterations);

/* True once atomics_prepare() ran (the APs run atomics_run instead of work_run). */
bool atomics_active(void);

/* BSP, after work_set_cpus(): a barrier bound that covers the whole loop. */
void atomics_set_cpus(struct workload *work, uint32_t ncpus);

/* Every participant: barrier, `iterations` rounds of the three updates, barrier. */
void atomics_run(struct workload *work, uint32_t cpu_index);

/* BSP, after atomics_run: print the result and exit (EXIT_OK or EXIT_ATOMICS_BAD). */
__attribute__((noreturn)) void atomics_finish(uint32_t ncpus);

#endif
