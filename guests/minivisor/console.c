/* Serial output: 16550 THR at COM1_PORT after polling LSR bit 5 (THR empty). */
#include "console.h"

#define UART_THR 0
#define UART_LSR 5
#define UART_LSR_THR_EMPTY 0x20
#define UART_WAIT_LOOPS 1000000ULL
#define LOCK_SPINS 50000000ULL
#define LINE_MAX 256

static spinlock_t console_lock;

static void serial_putc(char c)
{
    for (uint64_t i = 0; i < UART_WAIT_LOOPS; i++) {
        if (inb(COM1_PORT + UART_LSR) & UART_LSR_THR_EMPTY)
            break;
        cpu_pause();
    }
    outb(COM1_PORT + UART_THR, (uint8_t)c);
}

struct sink {
    char *buf;
    size_t len, cap;
};

static void sink_putc(struct sink *out, char c)
{
    if (out->len < out->cap)
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
        case 'd': {
            int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
            if (v < 0) {
                sink_putc(out, '-');
                put_unsigned(out, (uint64_t)0 - (uint64_t)v, 10, width, zero_pad);
            } else {
                put_unsigned(out, (uint64_t)v, 10, width, zero_pad);
            }
            break;
        }
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

static void write_line(const char *line, size_t len)
{
    bool locked = spin_lock_bounded(&console_lock, LOCK_SPINS);
    for (size_t i = 0; i < len; i++)
        serial_putc(line[i]);
    if (locked)
        spin_unlock(&console_lock);
}

void mv_printf(const char *fmt, ...)
{
    char line[LINE_MAX];
    struct sink out = { line, 0, sizeof(line) };
    va_list ap;
    va_start(ap, fmt);
    vprint(&out, fmt, ap);
    va_end(ap);
    write_line(line, out.len);
}

void mv_vprintf_prefixed(const char *prefix, const char *fmt, va_list ap)
{
    char line[LINE_MAX];
    struct sink out = { line, 0, sizeof(line) };
    put_string(&out, prefix, 0, false);
    vprint(&out, fmt, ap);
    write_line(line, out.len);
}

size_t mv_format(char *buf, size_t cap, const char *fmt, ...)
{
    struct sink out = { buf, 0, cap ? cap - 1 : 0 };
    va_list ap;
    va_start(ap, fmt);
    vprint(&out, fmt, ap);
    va_end(ap);
    if (cap)
        buf[out.len] = '\0';
    return out.len;
}
