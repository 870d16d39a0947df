/* Bump allocator, parallel sum workload and sense-reversing barrier. */
#ifndef HVDBG_GUEST_WORK_H
#define HVDBG_GUEST_WORK_H

#include "cpu.h"

/*
 * Allocate from physical memory right after the kernel image (_kernel_end).
 * Deliberately does NOT consult the multiboot memory map: a too-large
 * request runs past the end of guest RAM (a bug scenario for hvdbg).
 * Returns a kernel-half pointer.
 */
void *bump_alloc(uint64_t size, uint64_t align);

/* Deterministic value of array entry i; the sum wraps modulo 2^64. */
static inline uint64_t work_value(uint64_t i)
{
    return (i * 2654435761ULL) ^ (i << 17);
}

struct sense_barrier {
    volatile uint32_t remaining;
    volatile uint32_t sense;
    uint32_t participants;
};

struct lock_workload;

struct workload {
    uint64_t *array;
    uint64_t entries;
    uint32_t ncpus;                  /* CPUs taking part (BSP + online APs) */
    volatile uint64_t total;         /* sum of partial sums, lock-added */
    struct sense_barrier barrier;
    uint64_t barrier_spin_limit;
    struct lock_workload *lock;      /* set: the lock-heavy workload (lock.h) runs instead */
};

/* BSP: allocate and fill the array (print where it lives). */
void work_prepare(struct workload *work, uint64_t entries);

/* BSP: set the number of participants before releasing the APs. */
void work_set_cpus(struct workload *work, uint32_t ncpus);

/*
 * Every participant: barrier, sum indices cpu_index, cpu_index + ncpus, ...,
 * lock-add the partial sum to work->total, barrier. A barrier that does not
 * complete within barrier_spin_limit PAUSE loops prints and exits with
 * EXIT_BARRIER_TIMEOUT.
 */
void work_run(struct workload *work, uint32_t cpu_index);

/* The barrier of work_run, for other workloads (prints and exits on timeout). */
void work_barrier(struct workload *work, uint32_t *local_sense, uint32_t cpu_index, const char *which);

/* The expected total, computed serially from work_value(). */
uint64_t work_expected(uint64_t entries);

/* A CPU that is not an interrupt's target: `lock incq *shared` with IF=1 (the handler
 * increments it too) until *done, then adds its count to *total (workload=pit, echo). */
void spin_with_interrupts(volatile uint64_t *shared, volatile bool *done, volatile uint64_t *total);

#endif
