/* Small x86-64 helpers: port I/O, control registers, spinlocks, debug exit. */
#ifndef HVDBG_GUEST_CPU_H
#define HVDBG_GUEST_CPU_H

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

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void cpu_pause(void) { __asm__ volatile("pause" : : : "memory"); }
static inline void cpu_cli(void) { __asm__ volatile("cli" : : : "memory"); }
static inline void cpu_sti(void) { __asm__ volatile("sti" : : : "memory"); }

/* Enable interrupts and halt until one arrives (STI's shadow covers HLT). */
static inline void cpu_sti_hlt_cli(void)
{
    __asm__ volatile("sti\n\thlt\n\tcli" : : : "memory");
}

static inline uint64_t read_cr2(void)
{
    uint64_t value;
    __asm__ volatile("mov %%cr2, %0" : "=r"(value));
    return value;
}

/* Kernel-half virtual address of a physical address below BOOT_MAP_SIZE. */
static inline void *phys_to_virt(uint64_t phys) { return (void *)(phys + KERNEL_BASE); }
static inline uint64_t virt_to_phys(const void *virt) { return (uint64_t)virt - KERNEL_BASE; }

/* Busy-wait `loops` PAUSE iterations (hvdbg counts time in instructions). */
static inline void delay_loops(uint64_t loops)
{
    for (uint64_t i = 0; i < loops; i++)
        cpu_pause();
}

/* End the run: `outl` of the status to the debug-exit port. Never returns. */
__attribute__((noreturn)) static inline void debug_exit(uint32_t status)
{
    outl(DEBUG_EXIT_PORT, status);
    for (;;)
        __asm__ volatile("cli\n\thlt");
}

__attribute__((noreturn)) static inline void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli\n\thlt");
}

typedef struct {
    volatile uint32_t locked;
} spinlock_t;

/* Try to take the lock within `max_spins` PAUSE iterations. */
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

static inline void spin_lock(spinlock_t *lock)
{
    while (__atomic_exchange_n(&lock->locked, 1, __ATOMIC_ACQUIRE))
        while (lock->locked)
            cpu_pause();
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
