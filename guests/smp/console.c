/* Serial output: 16550 THR at COM1_PORT after polling LSR bit 5 (THR empty). */
#include "console.h"

#define UART_THR 0
#define UART_LSR 5
#define UART_LSR_THR_EMPTY 0x20
#define PANIC_LOCK_SPINS 10000000ULL
#define KPRINTF_LINE 192

static spinlock_t console_lock;

void serial_putc(char c)
{
    while (!(inb(COM1_PORT + UART_LSR) & UART_LSR_THR_EMPTY))
        cpu_pause();
    outb(COM1_PORT + UART_THR, (uint8_t)c);
}

/* Formatted text goes to a sink: straight to the UART (panic path) or into a line
 * buffer on the caller's stack, written out under the console lock in one go. */
struct sink {
    char *buf;      /* NULL: write to the UART directly */
    size_t len, cap;
};

static void sink_putc(struct sink *out, char c)
{
    if (!out->buf)
        serial_putc(c);
    else if (out->len < out->cap)
        out->buf[out->len++] = c;
}

static void put_string(struct sink *out, const char *s, int width, bool zero_pad)
{
    int len = (int)strlen(s);
    for (int i = len; i < width; i++)
        sink_putc(out, zero_pad ? '0' : ' ');
    while (*s)
        sink_putc(out, *s++);
}

static void put_unsigned(struct sink *out, uint64_t value, unsigned base, int width, bool zero_pad)
{
    static const char digits[] = "0123456789abcdef";
    char buf[24];
    int pos = sizeof(buf) - 1;
    buf[pos] = '\0';
    do {
        buf[--pos] = digits[value % base];
        value /= base;
    } while (value);
    put_string(out, &buf[pos], width, zero_pad);
}

static void put_signed(struct sink *out, int64_t value, int width, bool zero_pad)
{
    if (value < 0) {
        sink_putc(out, '-');
        put_unsigned(out, (uint64_t)0 - (uint64_t)value, 10, width > 0 ? width - 1 : 0, zero_pad);
    } else {
        put_unsigned(out, (uint64_t)value, 10, width, zero_pad);
    }
}

static void vprint(struct sink *out, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            sink_putc(out, *fmt);
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
            sink_putc(out, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            put_string(out, s ? s : "(null)", width, false);
            break;
        }
        case 'd':
        case 'i':
            put_signed(out, longs ? va_arg(ap, int64_t) : va_arg(ap, int), width, zero_pad);
            break;
        case 'u':
            put_unsigned(out, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, zero_pad);
            break;
        case 'x':
            put_unsigned(out, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, zero_pad);
            break;
        case 'p':
            put_string(out, "0x", 0, false);
            put_unsigned(out, (uint64_t)va_arg(ap, void *), 16, width, zero_pad);
            break;
        case '%':
            sink_putc(out, '%');
            break;
        case '\0':
            return;
        default:
            sink_putc(out, '%');
            sink_putc(out, *fmt);
            break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    char line[KPRINTF_LINE];            /* formatted outside the lock */
    struct sink out = { line, 0, sizeof(line) };
    va_list ap;
    va_start(ap, fmt);
    vprint(&out, fmt, ap);
    va_end(ap);
    spin_lock(&console_lock);
    for (size_t i = 0; i < out.len; i++)
        serial_putc(line[i]);
    spin_unlock(&console_lock);
}

void kprintf_panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct sink out = { 0, 0, 0 };
    bool locked = spin_lock_bounded(&console_lock, PANIC_LOCK_SPINS);
    vprint(&out, fmt, ap);
    if (locked)
        spin_unlock(&console_lock);
    va_end(ap);
}
