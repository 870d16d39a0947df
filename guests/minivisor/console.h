/* Serial console of the hypervisor: the 16550 UART at COM1_PORT, polled (shared with the
 * guest, whose own output goes to the same port directly, without VM exits). */
#ifndef MINIVISOR_CONSOLE_H
#define MINIVISOR_CONSOLE_H

#include <stdarg.h>

#include "cpu.h"

/*
 * printf subset: %c %s %d %u %x %p, the '0' flag, a width and the 'l' modifier.
 * The line is formatted on the caller's stack, then written under the console lock
 * (bounded: a CPU that dies holding it does not silence the others).
 */
__attribute__((format(printf, 1, 2))) void mv_printf(const char *fmt, ...);

/* One line: `prefix` then the formatted text, in one locked write. */
void mv_vprintf_prefixed(const char *prefix, const char *fmt, va_list ap);

/* Format into buf (at most cap - 1 characters and a NUL); returns the length. */
__attribute__((format(printf, 3, 4))) size_t mv_format(char *buf, size_t cap, const char *fmt, ...);

/* mv_printf with the "minivisor: " prefix; the format should end in "\n". */
#define mv_log(...) mv_printf("minivisor: " __VA_ARGS__)

#endif
