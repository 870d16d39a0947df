#include "lock.h"

#include "console.h"

static void ticket_acquire(struct ticket_lock *lock, uint64_t *spins)
{
    uint32_t me = __atomic_fetch_add(&lock->next, 1, __ATOMIC_RELAXED);   /* lock xadd */
    while (__atomic_load_n(&lock->owner, __ATOMIC_ACQUIRE) != me) {
        cpu_pause();
        ++*spins;
    }
}

static void ticket_release(struct ticket_lock *lock)
{
    __atomic_store_n(&lock->owner, lock->owner + 1, __ATOMIC_RELEASE);
}

/* spin_lock of cpu.h, counting the PAUSEs. */
static void tas_acquire(spinlock_t *lock, uint64_t *spins)
{
    while (__atomic_exchange_n(&lock->locked, 1, __ATOMIC_ACQUIRE)) {
        while (lock->locked) {
            cpu_pause();
            ++*spins;
        }
    }
}

/* `steps` rounds of a 64-bit LCG: a few instructions each, not folded by the compiler. */
static uint64_t private_work(uint64_t x, uint64_t steps)
{
    for (uint64_t i = 0; i < steps; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static const char *lock_name(enum lock_kind kind)
{
    return kind == LOCK_TAS ? "test-and-test-and-set" : "ticket";
}

void lock_prepare(struct lock_workload *lock, enum lock_kind kind, uint64_t iterations,
                  uint64_t inside, uint64_t outside)
{
    memset(lock, 0, sizeof(*lock));
    lock->kind = kind;
    lock->iterations = iterations;
    lock->inside = inside;
    lock->outside = outside;
    kprintf("lock: %s lock, %lu iterations per CPU, inside %lu, outside %lu\n", lock_name(kind),
            iterations, inside, outside);
}

void lock_run(struct workload *work, uint32_t cpu_index)
{
    struct lock_workload *lock = work->lock;
    uint32_t local_sense = 0;
    uint64_t spins = 0;
    uint64_t x = cpu_index + 1;
    work_barrier(work, &local_sense, cpu_index, "start");
    for (uint64_t n = 0; n < lock->iterations; n++) {
        if (lock->kind == LOCK_TAS)
            tas_acquire(&lock->tas, &spins);
        else
            ticket_acquire(&lock->ticket, &spins);
        if (lock->holder != 0)
            lock->overlaps = lock->overlaps + 1;
        lock->holder = cpu_index + 1;
        lock->counter = lock->counter + 1;        /* a plain read-modify-write */
        x = private_work(x, lock->inside);
        if (lock->holder != cpu_index + 1)
            lock->overlaps = lock->overlaps + 1;
        lock->holder = 0;
        if (lock->kind == LOCK_TAS)
            spin_unlock(&lock->tas);
        else
            ticket_release(&lock->ticket);
        x = private_work(x, lock->outside);
    }
    __atomic_fetch_add(&lock->spins, spins, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&lock->checksum, x, __ATOMIC_SEQ_CST);
    work_barrier(work, &local_sense, cpu_index, "end");
}

void lock_finish(const struct lock_workload *lock, uint32_t ncpus)
{
    uint64_t expected = lock->iterations * ncpus;
    if (lock->counter == expected && lock->overlaps == 0) {
        kprintf("lock ok counter %lu cpus %u spins %lu\n", lock->counter, ncpus, lock->spins);
        debug_exit(EXIT_OK);
    }
    kprintf("lock BAD counter %lu expected %lu overlaps %lu\n", lock->counter, expected,
            lock->overlaps);
    debug_exit(EXIT_LOCK_BAD);
}
