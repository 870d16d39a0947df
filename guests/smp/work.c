#include "work.h"

#include "console.h"

#define BARRIER_BASE_SPINS 20000000ULL

extern char _kernel_end[];

static uint64_t bump_next_phys;

void *bump_alloc(uint64_t size, uint64_t align)
{
    if (!bump_next_phys)
        bump_next_phys = virt_to_phys(_kernel_end);
    uint64_t phys = (bump_next_phys + align - 1) & ~(align - 1);
    bump_next_phys = phys + size;
    return phys_to_virt(phys);
}

void work_prepare(struct workload *work, uint64_t entries)
{
    uint64_t bytes = entries * sizeof(uint64_t);
    work->entries = entries;
    work->array = bump_alloc(bytes, 4096);
    work->total = 0;
    kprintf("work: %lu entries (%lu KiB) at phys 0x%lx-0x%lx\n", entries, bytes / 1024,
            virt_to_phys(work->array), virt_to_phys(work->array) + bytes - 1);
    for (uint64_t i = 0; i < entries; i++)
        work->array[i] = work_value(i);
}

void work_set_cpus(struct workload *work, uint32_t ncpus)
{
    work->ncpus = ncpus;
    work->barrier.participants = ncpus;
    work->barrier.remaining = ncpus;
    work->barrier.sense = 0;
    work->barrier_spin_limit = BARRIER_BASE_SPINS + work->entries * 4;
}

/* Sense-reversing centralized barrier; false on timeout. */
static bool barrier_wait(struct sense_barrier *b, uint32_t *local_sense, uint64_t spin_limit)
{
    uint32_t sense = !*local_sense;
    *local_sense = sense;
    if (__atomic_sub_fetch(&b->remaining, 1, __ATOMIC_ACQ_REL) == 0) {
        b->remaining = b->participants;
        __atomic_store_n(&b->sense, sense, __ATOMIC_RELEASE);
        return true;
    }
    for (uint64_t i = 0; i < spin_limit; i++) {
        if (__atomic_load_n(&b->sense, __ATOMIC_ACQUIRE) == sense)
            return true;
        cpu_pause();
    }
    return false;
}

/* Inlined, as it was before work_barrier() existed: work_run's code stays the same. */
static inline __attribute__((always_inline)) void barrier_or_exit(struct workload *work, uint32_t *local_sense, uint32_t cpu_index,
                            const char *which)
{
    if (!barrier_wait(&work->barrier, local_sense, work->barrier_spin_limit)) {
        kprintf_panic("barrier timeout (%s) on CPU %u\n", which, cpu_index);
        debug_exit(EXIT_BARRIER_TIMEOUT);
    }
}

void work_barrier(struct workload *work, uint32_t *local_sense, uint32_t cpu_index, const char *which)
{
    barrier_or_exit(work, local_sense, cpu_index, which);
}

void work_run(struct workload *work, uint32_t cpu_index)
{
    uint32_t local_sense = 0;
    barrier_or_exit(work, &local_sense, cpu_index, "start");
    uint64_t partial = 0;
    for (uint64_t i = cpu_index; i < work->entries; i += work->ncpus)
        partial += work->array[i];
    __atomic_fetch_add(&work->total, partial, __ATOMIC_SEQ_CST);
    barrier_or_exit(work, &local_sense, cpu_index, "end");
}

uint64_t work_expected(uint64_t entries)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < entries; i++)
        sum += work_value(i);
    return sum;
}

void spin_with_interrupts(volatile uint64_t *shared, volatile bool *done, volatile uint64_t *total)
{
    uint64_t mine = 0;
    __asm__ volatile("sti");
    while (!*done) {
        __asm__ volatile("lock incq %0" : "+m"(*shared) : : "memory", "cc");
        mine++;
        __asm__ volatile("pause");
    }
    __asm__ volatile("cli");
    __atomic_fetch_add(total, mine, __ATOMIC_SEQ_CST);
}
