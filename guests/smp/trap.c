#include "trap.h"

#include "console.h"
#include "lapic.h"
#include "disk.h"
#include "echo.h"
#include "pic.h"
#include "pit.h"
#include "rtc.h"

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
struct trap_expect trap_expect;

_Static_assert(__builtin_offsetof(struct trap_expect, active) == TE_ACTIVE, "TE_ACTIVE");
_Static_assert(__builtin_offsetof(struct trap_expect, hit) == TE_HIT, "TE_HIT");
_Static_assert(__builtin_offsetof(struct trap_expect, vector) == TE_VECTOR, "TE_VECTOR");
_Static_assert(__builtin_offsetof(struct trap_expect, error_code) == TE_ERROR_CODE, "TE_ERROR_CODE");
_Static_assert(__builtin_offsetof(struct trap_expect, rip) == TE_RIP, "TE_RIP");
_Static_assert(__builtin_offsetof(struct trap_expect, cs) == TE_CS, "TE_CS");
_Static_assert(__builtin_offsetof(struct trap_expect, fixup_rip) == TE_FIXUP_RIP, "TE_FIXUP_RIP");
_Static_assert(__builtin_offsetof(struct trap_expect, fixup_rsp) == TE_FIXUP_RSP, "TE_FIXUP_RSP");

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

/* An exception the armed trap_expect accepts (not NMI, #BP, #DF, #MC). */
static bool trap_expected(uint64_t vector)
{
    return trap_expect.active && vector < 32 && vector != 2 && vector != 3 && vector != 8 &&
           vector != 18;
}

/* Record the exception and resume at the fixup (see struct trap_expect). */
static void trap_expect_fixup(struct trap_frame *frame)
{
    trap_expect.vector = frame->vector;
    trap_expect.error_code = frame->error_code;
    trap_expect.rip = frame->rip;
    trap_expect.cs = frame->cs;
    frame->rip = trap_expect.fixup_rip;
    if (trap_expect.fixup_rsp) {
        /* IRETQ in 64-bit mode pops SS:RSP at the same CPL too (SDM Vol. 3A 6.14.3) */
        frame->cs = GDT_CODE64_SEL;
        frame->ss = GDT_DATA_SEL;
        frame->rsp = trap_expect.fixup_rsp;
    }
    frame->rflags &= ~(1UL << 8);  /* TF */
    trap_expect.active = 0;
    trap_expect.hit = 1;
}

void trap_dispatch(struct trap_frame *frame)
{
    if (trap_expected(frame->vector)) {
        trap_expect_fixup(frame);
        return;
    }
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
    case VEC_PIT:
        pit_interrupt();
        lapic_eoi();
        return;
    case VEC_PIC_PIT:   /* through the 8259A and LINT0 (ExtINT): the EOI goes to the PIC */
        pit_interrupt();
        pic_eoi();
        return;
    case VEC_RTC:
    case VEC_PIC_RTC:   /* rtc_interrupt sends the EOI (to the APIC or to both PICs) */
        rtc_interrupt();
        return;
    case VEC_PIC_SPURIOUS:  /* the 8259A's spurious IR7: no EOI (8259A data sheet) */
        pit_spurious();
        return;
    case VEC_UART:
        echo_interrupt();
        lapic_eoi();
        return;
    case VEC_ATA:
        disk_interrupt();
        lapic_eoi();
        return;
    case VEC_SPURIOUS:  /* no EOI for spurious interrupts (SDM Vol. 3A 11.9) */
        return;
    default:
        fatal_trap(frame);
    }
}
