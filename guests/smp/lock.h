/* Lock-heavy workload: every CPU takes one shared spinlock again and again. */
#ifndef HVDBG_GUEST_LOCK_H
#define HVDBG_GUEST_LOCK_H

#include "work.h"

/* Ticket lock (Linux x86 before qspinlock): FIFO hand-over, spins with PAUSE. */
struct ticket_lock {
    volatile uint32_t next;          /* next ticket to hand out (lock xadd) */
    volatile uint32_t owner;         /* ticket being served */
};

enum lock_kind { LOCK_TICKET, LOCK_TAS };

struct lock_workload {
    enum lock_kind kind;
    uint64_t iterations;             /* critical sections per CPU */
    uint64_t inside;                 /* work steps inside the critical section */
    uint64_t outside;                /* work steps between two critical sections */
    struct ticket_lock ticket;
    spinlock_t tas;                  /* test-and-test-and-set lock (cpu.h) */
    volatile uint64_t counter;       /* incremented without atomics, under the lock */
    volatile uint32_t holder;        /* CPU index + 1 inside the critical section, else 0 */
    volatile uint64_t overlaps;      /* critical sections that found another holder */
    volatile uint64_t spins;         /* PAUSEs spent waiting for the lock, all CPUs */
    volatile uint64_t checksum;      /* results of the private work (keeps it alive) */
};

/* BSP: set up the lock workload (print what it will do). */
void lock_prepare(struct lock_workload *lock, enum lock_kind kind, uint64_t iterations,
                  uint64_t inside, uint64_t outside);

/*
 * Every participant: barrier, `iterations` times { lock; counter++ and `inside` steps of
 * private work; unlock; `outside` steps of private work }, barrier.
 */
void lock_run(struct workload *work, uint32_t cpu_index);

/* BSP, after lock_run: print the result line and exit through the debug-exit port. */
__attribute__((noreturn)) void lock_finish(const struct lock_workload *lock, uint32_t ncpus);

#endif
