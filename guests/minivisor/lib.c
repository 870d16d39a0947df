/* Freestanding replacements for the libc functions gcc may emit calls to.  The string
 * instructions keep guest-memory copies short in instructions under an emulator. */
#include "cpu.h"

void *memset(void *dst, int value, size_t len)
{
    void *d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(len) : "a"(value) : "memory");
    return dst;
}

void *memcpy(void *dst, const void *src, size_t len)
{
    void *d = dst;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(len) : : "memory");
    return dst;
}

int memcmp(const void *a, const void *b, size_t len)
{
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < len; i++) {
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}
