#include "trap.h"

#include "console.h"
#include "lapic.h"

#define IDT_ENTRIES 256
#define GATE_INTERRUPT_PRESENT 0x8e  /* P=1, DPL=0, type 0xE (64-bit interrupt gate) */

struct __attribute__((packed)) idt_gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attr;
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t reserved;
};

struct __attribute__((packed)) idt_pointer {
    uint16_t limit;
    uint64_t base;
};

/* One (vector, entry stub) pair of the table built in isr.S. */
struct isr_stub {
    uint64_t vector;
    void (*entry)(void);
};

extern const struct isr_stub isr_stub_table[];
extern const uint64_t isr_stub_count;

static const char *const exception_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
    "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
    "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

static struct idt_gate idt[IDT_ENTRIES] __attribute__((aligned(16)));

volatile uint64_t trap_breakpoint_count;
volatile uint64_t trap_timer_ticks;
volatile uint32_t trap_ipi_count[MAX_CPUS];

void idt_init(void)
{
    for (uint64_t i = 0; i < isr_stub_count; i++) {
        uint64_t addr = (uint64_t)isr_stub_table[i].entry;
        struct idt_gate *gate = &idt[isr_stub_table[i].vector];
        gate->offset_low = (uint16_t)addr;
        gate->selector = GDT_CODE64_SEL;
        gate->ist = 0;
        gate->type_attr = GATE_INTERRUPT_PRESENT;
        gate->offset_mid = (uint16_t)(addr >> 16);
        gate->offset_high = (uint32_t)(addr >> 32);
        gate->reserved = 0;
    }
}

void idt_load(void)
{
    struct idt_pointer ptr = { sizeof(idt) - 1, (uint64_t)idt };
    __asm__ volatile("lidt %0" : : "m"(ptr));
}

__attribute__((noreturn)) static void fatal_trap(const struct trap_frame *frame)
{
    const char *name = frame->vector < 32 ? exception_names[frame->vector] : "interrupt";
    kprintf_panic("EXCEPTION %s vector %lu error 0x%lx rip 0x%lx cr2 0x%lx rsp 0x%lx apic %u\n", name,
                  frame->vector, frame->error_code, frame->rip, read_cr2(), frame->rsp, lapic_id());
    debug_exit(EXIT_EXCEPTION_BASE + (uint32_t)frame->vector);
}

void trap_dispatch(struct trap_frame *frame)
{
    switch (frame->vector) {
    case 3:  /* int3 is a trap: RIP already points past it, just return */
        __atomic_fetch_add(&trap_breakpoint_count, 1, __ATOMIC_SEQ_CST);
        return;
    case VEC_TIMER:
        __atomic_fetch_add(&trap_timer_ticks, 1, __ATOMIC_SEQ_CST);
        lapic_eoi();
        return;
    case VEC_TEST_IPI: {
        uint32_t id = lapic_id();
        if (id < MAX_CPUS)
            __atomic_fetch_add(&trap_ipi_count[id], 1, __ATOMIC_SEQ_CST);
        lapic_eoi();
        return;
    }
    case VEC_SPURIOUS:  /* no EOI for spurious interrupts (SDM Vol. 3A 11.9) */
        return;
    default:
        fatal_trap(frame);
    }
}
