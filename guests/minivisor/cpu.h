/* Small x86-64 helpers: port I/O, MSRs, control registers, CPUID, spinlocks. */
#ifndef MINIVISOR_CPU_H
#define MINIVISOR_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (uint64_t)hi << 32 | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)) : "memory");
}

struct cpuid_regs {
    uint32_t eax, ebx, ecx, edx;
};

static inline struct cpuid_regs cpuid(uint32_t leaf, uint32_t subleaf)
{
    struct cpuid_regs r;
    __asm__ volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
    return r;
}

#define DEFINE_CR(n)                                                              \
    static inline uint64_t read_cr##n(void)                                       \
    {                                                                             \
        uint64_t v;                                                               \
        __asm__ volatile("mov %%cr" #n ", %0" : "=r"(v));                         \
        return v;                                                                 \
    }                                                                             \
    static inline void write_cr##n(uint64_t v)                                    \
    {                                                                             \
        __asm__ volatile("mov %0, %%cr" #n : : "r"(v) : "memory");                \
    }
DEFINE_CR(0)
DEFINE_CR(2)
DEFINE_CR(3)
DEFINE_CR(4)
#undef DEFINE_CR

static inline uint64_t read_rflags(void)
{
    uint64_t v;
    __asm__ volatile("pushfq; popq %0" : "=r"(v));
    return v;
}

struct __attribute__((packed)) table_register {
    uint16_t limit;
    uint64_t base;
};

static inline struct table_register sgdt(void)
{
    struct table_register t;
    __asm__ volatile("sgdt %0" : "=m"(t));
    return t;
}

static inline struct table_register sidt(void)
{
    struct table_register t;
    __asm__ volatile("sidt %0" : "=m"(t));
    return t;
}

static inline uint16_t read_tr(void)
{
    uint16_t sel;
    __asm__ volatile("str %0" : "=r"(sel));
    return sel;
}

/* A pointer to identity-mapped physical memory.  The empty asm hides the constant from
 * gcc, which otherwise treats small addresses (0x40E, 0x8000) as out-of-bounds
 * offsets from NULL (-Warray-bounds). */
static inline void *phys_ptr(uint64_t phys)
{
    void *p;
    __asm__("" : "=r"(p) : "0"(phys));
    return p;
}

static inline void cpu_pause(void) { __asm__ volatile("pause" : : : "memory"); }

static inline void delay_loops(uint64_t loops)
{
    for (uint64_t i = 0; i < loops; i++)
        cpu_pause();
}

__attribute__((noreturn)) static inline void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli\n\thlt" : : : "memory");
}

typedef struct {
    volatile uint32_t locked;
} spinlock_t;

/* Take the lock within `max_spins` PAUSE iterations; false if it stayed taken. */
static inline bool spin_lock_bounded(spinlock_t *lock, uint64_t max_spins)
{
    uint64_t spins = 0;
    while (__atomic_exchange_n(&lock->locked, 1, __ATOMIC_ACQUIRE)) {
        while (lock->locked) {
            if (++spins > max_spins)
                return false;
            cpu_pause();
        }
    }
    return true;
}

static inline void spin_unlock(spinlock_t *lock)
{
    __atomic_store_n(&lock->locked, 0, __ATOMIC_RELEASE);
}

void *memset(void *dst, int value, size_t len);
void *memcpy(void *dst, const void *src, size_t len);
int memcmp(const void *a, const void *b, size_t len);
size_t strlen(const char *s);

#endif
