/*
 * RTC periodic-interrupt check (`rtc_ticks=T`, `rtc_via=pic`): on the BSP, before the
 * workload, the MC146818's periodic interrupt at 1024 Hz (register A = 0x26, register B
 * PIE) raises ISA IRQ 8. By default it goes through I/O APIC pin 8 to the BSP with
 * vector VEC_RTC; with `rtc_via=pic` through the slave 8259A's IR0 and the master's IR2
 * to the BSP's LINT0 in ExtINT mode (vector VEC_PIC_BASE + 8). The handler reads register
 * C (which re-arms the interrupt) and counts those with PF set. The BSP waits in
 * `sti; hlt` for T of them and checks that the TSC time from the first to the last is
 * within 1% of a whole number of 976.5625 us periods. One interrupt without PF is allowed:
 * an edge latched before the guest's clearing read of register C (as on hardware).
 */
#ifndef HVDBG_GUEST_RTC_H
#define HVDBG_GUEST_RTC_H

#include <stdbool.h>
#include <stdint.h>

/* Run the check (prints "rtc ok" or "rtc FAILED" and exits with EXIT_RTC_BAD). */
void rtc_check(uint64_t ticks, bool via_pic);

/* The interrupt handler's work (trap.c); the caller sends no EOI: this does. */
void rtc_interrupt(void);

#endif
