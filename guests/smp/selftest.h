/* Optional self-tests (command line `selftest`): int3, LAPIC timer, IPIs. */
#ifndef HVDBG_GUEST_SELFTEST_H
#define HVDBG_GUEST_SELFTEST_H

#include "acpi.h"

#define SELFTEST_TIMER_TICKS 3
#define SELFTEST_TIMER_COUNT 0x4000
#define SELFTEST_IPI_WAIT_LOOPS 10000000ULL

/* Run all self-tests on the BSP; prints one line per test, false if any failed. */
bool selftest_run(const struct cpu_table *aps);

#endif
