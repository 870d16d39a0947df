#include "pit.h"

#include "console.h"
#include "cpu.h"
#include "ioapic.h"
#include "lapic.h"
#include "layout.h"
#include "pic.h"

#define IOAPIC_IOREGSEL     0x00
#define IOAPIC_IOWIN        0x10
#define IOAPIC_REDIR(pin)   (0x10 + 2 * (pin))
#define PIT_IOAPIC_PIN      2           /* ISA IRQ 0 (MADT interrupt source override) */
#define REDIR_MASKED        (1U << 16)
#define PIT_CHANNEL0        0x40
#define PIT_COMMAND         0x43
#define PIT_HZ              1193182ULL
#define PIT_SPINS_PER_TICK  4000000ULL   /* barrier bound per tick of the wait */

struct pit_state {
    volatile uint64_t ticks;             /* handler invocations, every CPU */
    volatile uint64_t shared __attribute__((aligned(64)));  /* lock incq: handler + spinners */
    volatile uint64_t spinner_total;     /* increments the spinners made */
    volatile uint32_t per_apic[MAX_CPUS];
    volatile uint64_t first_tsc, last_tsc;
    volatile uint32_t target_apic;
    volatile bool done;
    volatile uint64_t spurious;          /* pit_via=pic: the 8259A's IR7 */
    uint64_t target_cpu, want;
    bool active, via_pic;
};

static struct pit_state pit;

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

void pit_prepare(uint64_t target_cpu, uint64_t ticks, bool via_pic)
{
    memset((void *)&pit, 0, sizeof(pit));
    pit.target_cpu = target_cpu;
    pit.want = ticks ? ticks : DEFAULT_PIT_TICKS;
    pit.via_pic = via_pic;
    pit.active = true;
}

void pit_spurious(void)
{
    __atomic_fetch_add(&pit.spurious, 1, __ATOMIC_SEQ_CST);
}

bool pit_active(void)
{
    return pit.active;
}

void pit_set_cpus(struct workload *work, uint32_t ncpus)
{
    if (pit.target_cpu >= ncpus)
        pit.target_cpu = ncpus - 1;
    work->barrier_spin_limit += pit.want * PIT_SPINS_PER_TICK;
    if (pit.via_pic)
        kprintf("pit: IRQ 0 -> 8259A IR0 -> LINT0 (ExtINT) of CPU %lu, vector 0x%x, %lu ticks of %u counts\n",
                pit.target_cpu, VEC_PIC_PIT, pit.want, PIT_RELOAD);
    else
        kprintf("pit: IRQ 0 -> I/O APIC pin %u -> CPU %lu, vector 0x%x, %lu ticks of %u counts\n",
                PIT_IOAPIC_PIN, pit.target_cpu, VEC_PIT, pit.want, PIT_RELOAD);
}

void pit_interrupt(void)
{
    uint64_t now = rdtsc();
    uint32_t id = lapic_id();
    if (id < MAX_CPUS)
        __atomic_fetch_add(&pit.per_apic[id], 1, __ATOMIC_SEQ_CST);
    __asm__ volatile("lock incq %0" : "+m"(pit.shared) : : "memory", "cc");
    uint64_t n = __atomic_add_fetch(&pit.ticks, 1, __ATOMIC_SEQ_CST);
    if (n == 1)
        pit.first_tsc = now;
    pit.last_tsc = now;
}

static void pit_start(void)
{
    if (pit.via_pic)
        pic_init(VEC_PIC_BASE, VEC_PIC_BASE + 8, 1u << 0);   /* IR0 only */
    else
        ioapic_route(PIT_IOAPIC_PIN, pit.target_apic, VEC_PIT);
    outb(PIT_COMMAND, 0x34);             /* channel 0, lobyte/hibyte, mode 2, binary */
    outb(PIT_CHANNEL0, PIT_RELOAD & 0xff);
    outb(PIT_CHANNEL0, PIT_RELOAD >> 8);
}

static void pit_stop(void)
{
    pic_mask_all();
    ioapic_write(IOAPIC_REDIR(PIT_IOAPIC_PIN), REDIR_MASKED | VEC_PIT);
    outb(PIT_COMMAND, 0x30);             /* channel 0 mode 0, no count written: OUT stays low */
}

void pit_run(struct workload *work, uint32_t cpu_index)
{
    uint32_t local_sense = 0;
    bool target = cpu_index == pit.target_cpu;
    if (target)
        pit.target_apic = lapic_id();
    if (target && pit.via_pic)
        lapic_write(LAPIC_LVT_LINT0, LVT_DELIVERY_EXTINT);   /* the PIC's INT reaches this CPU */
    work_barrier(work, &local_sense, cpu_index, "start");
    if (cpu_index == 0)
        pit_start();
    if (target) {
        __asm__ volatile("cli");
        while (pit.ticks < pit.want)
            __asm__ volatile("sti; hlt; cli" : : : "memory");
        pit.done = true;
    } else {
        spin_with_interrupts(&pit.shared, &pit.done, &pit.spinner_total);
    }
    if (cpu_index == 0)
        pit_stop();
    if (target && pit.via_pic)
        lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    work_barrier(work, &local_sense, cpu_index, "end");
}

void pit_finish(uint32_t ncpus)
{
    uint32_t on_target = pit.per_apic[pit.target_apic];
    uint64_t elsewhere = pit.ticks - on_target;
    uint64_t expected = PIT_RELOAD * 1000000000ULL / PIT_HZ;   /* the TSC counts at 1 GHz */
    uint64_t span = pit.ticks > 1 ? pit.last_tsc - pit.first_tsc : 0;
    /* each interrupt is taken on a PIT edge: the span is a whole number of periods (more
     * than ticks - 1 when edges came while the last one was still pending: lost ticks) */
    uint64_t periods = (span + expected / 2) / expected;
    uint64_t off = span > periods * expected ? span - periods * expected : periods * expected - span;
    uint64_t lost = periods >= pit.ticks - 1 ? periods - (pit.ticks - 1) : 0;
    kprintf("pit: %u interrupts on CPU %lu (APIC id %u), %lu on the other %u CPUs; "
            "%lu TSC cycles from the first to the last = %lu PIT periods of %lu ns (%lu ticks lost)\n",
            on_target, pit.target_cpu, pit.target_apic, elsewhere, ncpus - 1, span, periods, expected, lost);
    kprintf("pit: shared counter %lu = %lu lock incq by the other CPUs + %lu by the handler\n",
            pit.shared, pit.spinner_total, pit.ticks);
    if (pit.via_pic)
        kprintf("pit: %lu spurious 8259A interrupts\n", pit.spurious);
    if (on_target >= pit.want && elsewhere == 0 && periods >= pit.ticks - 1 && off * 100 <= expected &&
        pit.shared == pit.spinner_total + pit.ticks && pit.spurious == 0) {
        kprintf("pit ok\n");
        debug_exit(EXIT_OK);
    }
    kprintf("pit FAILED\n");
    debug_exit(EXIT_PIT_BAD);
}
