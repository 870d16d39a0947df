/* Serial output: 16550 THR at COM1_PORT after polling LSR bit 5 (THR empty). */
#include "console.h"

#define UART_THR 0
#define UART_LSR 5
#define UART_LSR_THR_EMPTY 0x20
#define PANIC_LOCK_SPINS 10000000ULL

static spinlock_t console_lock;

void serial_putc(char c)
{
    while (!(inb(COM1_PORT + UART_LSR) & UART_LSR_THR_EMPTY))
        cpu_pause();
    outb(COM1_PORT + UART_THR, (uint8_t)c);
}

static void put_string(const char *s, int width, bool zero_pad)
{
    int len = (int)strlen(s);
    for (int i = len; i < width; i++)
        serial_putc(zero_pad ? '0' : ' ');
    while (*s)
        serial_putc(*s++);
}

static void put_unsigned(uint64_t value, unsigned base, int width, bool zero_pad)
{
    static const char digits[] = "0123456789abcdef";
    char buf[24];
    int pos = sizeof(buf) - 1;
    buf[pos] = '\0';
    do {
        buf[--pos] = digits[value % base];
        value /= base;
    } while (value);
    put_string(&buf[pos], width, zero_pad);
}

static void put_signed(int64_t value, int width, bool zero_pad)
{
    if (value < 0) {
        serial_putc('-');
        put_unsigned((uint64_t)0 - (uint64_t)value, 10, width > 0 ? width - 1 : 0, zero_pad);
    } else {
        put_unsigned((uint64_t)value, 10, width, zero_pad);
    }
}

static void vprint(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        fmt++;
        bool zero_pad = false;
        int width = 0, longs = 0;
        if (*fmt == '0') {
            zero_pad = true;
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            put_string(s ? s : "(null)", width, false);
            break;
        }
        case 'd':
        case 'i':
            put_signed(longs ? va_arg(ap, int64_t) : va_arg(ap, int), width, zero_pad);
            break;
        case 'u':
            put_unsigned(longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, zero_pad);
            break;
        case 'x':
            put_unsigned(longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, zero_pad);
            break;
        case 'p':
            put_string("0x", 0, false);
            put_unsigned((uint64_t)va_arg(ap, void *), 16, width, zero_pad);
            break;
        case '%':
            serial_putc('%');
            break;
        case '\0':
            return;
        default:
            serial_putc('%');
            serial_putc(*fmt);
            break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    spin_lock(&console_lock);
    vprint(fmt, ap);
    spin_unlock(&console_lock);
    va_end(ap);
}

void kprintf_panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool locked = spin_lock_bounded(&console_lock, PANIC_LOCK_SPINS);
    vprint(fmt, ap);
    if (locked)
        spin_unlock(&console_lock);
    va_end(ap);
}
