#include "atomics.h"

#include "console.h"

/* PAUSE loops a CPU may wait at the end barrier, per update of the slowest CPU. */
#define ATOMICS_BARRIER_SPINS_PER_UPDATE 64ULL

/*
 * One cache line per counter (and one for the xchg lock), so the three
 * primitives contend on their own line each. This object is linked at the end
 * of .bss (linker.ld): the other .bss objects keep their addresses.
 */
struct atomics_state {
    volatile uint64_t inc __attribute__((aligned(64)));       /* lock incq */
    volatile uint64_t cas __attribute__((aligned(64)));       /* lock cmpxchgq loop */
    volatile uint32_t xchg_lock __attribute__((aligned(64))); /* 1 = taken (xchg) */
    volatile uint64_t xchg_counter __attribute__((aligned(64))); /* plain ++ under xchg_lock */
    volatile uint64_t cas_retries __attribute__((aligned(64))); /* failed cmpxchgs, all CPUs */
    volatile uint64_t xchg_spins;  /* xchgs that found the lock taken, all CPUs */
    uint64_t iterations;
    bool active;
};

static struct atomics_state atomics;

void atomics_prepare(uint64_t iterations)
{
    memset((void *)&atomics, 0, sizeof(atomics));
    atomics.iterations = iterations;
    atomics.active = true;
    kprintf("atomics: lock incq, lock cmpxchgq, xchg lock; %lu iterations per CPU\n", iterations);
}

bool atomics_active(void)
{
    return atomics.active;
}

void atomics_set_cpus(struct workload *work, uint32_t ncpus)
{
    work->barrier_spin_limit += atomics.iterations * ncpus * ATOMICS_BARRIER_SPINS_PER_UPDATE;
}

static inline void inc_locked(volatile uint64_t *p)
{
    __asm__ volatile("lock incq %0" : "+m"(*p) : : "memory", "cc");
}

/* Add 1 with a `lock cmpxchgq` retry loop; returns the number of failed attempts. */
static inline uint64_t add_cmpxchg(volatile uint64_t *p)
{
    uint64_t retries = 0;
    uint64_t old = *p;
    bool done;
    for (;;) {
        /* ZF = 1: *p was `old` and is now old + 1; else RAX = the current *p. */
        __asm__ volatile("lock cmpxchgq %3, %1"
                         : "+a"(old), "+m"(*p), "=@ccz"(done)
                         : "r"(old + 1)
                         : "memory");
        if (done)
            return retries;
        retries++;
    }
}

/* Test-and-set lock with `xchg` (locked without a prefix); returns the failed xchgs. */
static inline uint64_t xchg_acquire(volatile uint32_t *lock)
{
    uint64_t spins = 0;
    for (;;) {
        uint32_t value = 1;
        __asm__ volatile("xchgl %0, %1" : "+r"(value), "+m"(*lock) : : "memory");
        if (value == 0)
            return spins;
        spins++;
        while (*lock)
            cpu_pause();
    }
}

static inline void xchg_release(volatile uint32_t *lock)
{
    __asm__ volatile("" : : : "memory");
    *lock = 0;  /* a plain store releases on x86 (TSO) */
}

void atomics_run(struct workload *work, uint32_t cpu_index)
{
    uint32_t local_sense = 0;
    uint64_t cas_retries = 0, xchg_spins = 0;
    work_barrier(work, &local_sense, cpu_index, "start");
    for (uint64_t n = atomics.iterations; n; n--) {
        inc_locked(&atomics.inc);
        cas_retries += add_cmpxchg(&atomics.cas);
        xchg_spins += xchg_acquire(&atomics.xchg_lock);
        atomics.xchg_counter = atomics.xchg_counter + 1;  /* a plain read-modify-write */
        xchg_release(&atomics.xchg_lock);
    }
    __atomic_fetch_add(&atomics.cas_retries, cas_retries, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&atomics.xchg_spins, xchg_spins, __ATOMIC_SEQ_CST);
    work_barrier(work, &local_sense, cpu_index, "end");
}

void atomics_finish(uint32_t ncpus)
{
    uint64_t expected = atomics.iterations * ncpus;
    uint64_t inc = atomics.inc, cas = atomics.cas, xchg = atomics.xchg_counter;
    kprintf("atomics: cmpxchg retries %lu xchg spins %lu\n", atomics.cas_retries, atomics.xchg_spins);
    if (inc == expected && cas == expected && xchg == expected) {
        kprintf("atomics ok inc %lu cmpxchg %lu xchg %lu cpus %u\n", inc, cas, xchg, ncpus);
        debug_exit(EXIT_OK);
    }
    kprintf("atomics FAILED inc %lu cmpxchg %lu xchg %lu cpus %u expected %lu\n", inc, cas, xchg,
            ncpus, expected);
    debug_exit(EXIT_ATOMICS_BAD);
}
