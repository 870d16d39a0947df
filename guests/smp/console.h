/* Serial console on the 16550 UART at 0x3F8, shared by all CPUs. */
#ifndef HVDBG_GUEST_CONSOLE_H
#define HVDBG_GUEST_CONSOLE_H

#include <stdarg.h>

#include "cpu.h"

#define COM1_PORT 0x3f8

void serial_putc(char c);

/*
 * printf subset: %c %s %d %u %x %p with optional '0' flag, width and the
 * 'l'/'ll' length modifiers. Each call holds the console spinlock, so lines
 * printed by different CPUs do not interleave.
 */
__attribute__((format(printf, 1, 2))) void kprintf(const char *fmt, ...);

/*
 * Like kprintf for fatal paths: takes the console lock with a bound, so a
 * fault while this CPU already holds it still prints.
 */
__attribute__((format(printf, 1, 2))) void kprintf_panic(const char *fmt, ...);

#endif
