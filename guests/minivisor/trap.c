/*
 * Per-CPU descriptor tables of the hypervisor: the shared GDT (boot.S) with one TSS
 * descriptor per CPU (SDM Vol. 3A 8.2.3, 8.7 "Task Management in 64-bit Mode"), the
 * shared IDT with the 32 exception gates (SDM 6.14.1), and the fatal exception handler.
 * VMX needs a usable TR in the host state (HOST_TR_SELECTOR != 0, SDM 27.2.3).
 */
#include "minivisor.h"

#define GATE_INTERRUPT_PRESENT 0x8e     /* P=1, DPL=0, type 0xE (64-bit interrupt gate) */
#define TSS_AVAILABLE_PRESENT  0x89     /* P=1, DPL=0, type 9 (available 64-bit TSS) */

struct __attribute__((packed)) idt_gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attr;
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t reserved;
};

/* isr.S saves these below the vector, the error code and the CPU's interrupt frame. */
struct host_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error_code, rip, cs, rflags, rsp, ss;
};

extern uint64_t gdt[GDT_ENTRIES];
extern const uint64_t isr_stub_table[32];

static struct idt_gate idt[32] __attribute__((aligned(16)));

static void idt_init_once(void)
{
    static bool done;
    if (done)
        return;
    for (unsigned v = 0; v < 32; v++) {
        uint64_t addr = isr_stub_table[v];
        idt[v] = (struct idt_gate){
            .offset_low = (uint16_t)addr, .selector = SEL_CODE64, .ist = 0,
            .type_attr = GATE_INTERRUPT_PRESENT, .offset_mid = (uint16_t)(addr >> 16),
            .offset_high = (uint32_t)(addr >> 32), .reserved = 0,
        };
    }
    done = true;
}

void cpu_local_init(struct cpu *c)
{
    /* The BSP initializes the IDT before it starts any AP. */
    idt_init_once();

    /* 64-bit GDT and IDT registers (the 32-bit boot code loaded a 32-bit GDT base). */
    struct table_register gdtr = { GDT_ENTRIES * 8 - 1, (uint64_t)gdt };
    struct table_register idtr = { sizeof(idt) - 1, (uint64_t)idt };
    __asm__ volatile("lgdt %0" : : "m"(gdtr) : "memory");
    __asm__ volatile("lidt %0" : : "m"(idtr) : "memory");

    /* This CPU's TSS (no I/O permission bitmap: iomap_base past the limit). */
    memset(&c->tss, 0, sizeof(c->tss));
    c->tss.iomap_base = sizeof(c->tss);
    uint64_t base = (uint64_t)&c->tss;
    uint64_t limit = sizeof(c->tss) - 1;
    unsigned slot = GDT_FIXED_ENTRIES + 2 * c->index;
    gdt[slot] = (limit & 0xffff) | (base & 0xffffff) << 16 | (uint64_t)TSS_AVAILABLE_PRESENT << 40
                | ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
    gdt[slot + 1] = base >> 32;
    c->tr_selector = (uint16_t)(SEL_TSS0 + 16 * c->index);
    __asm__ volatile("ltr %0" : : "r"(c->tr_selector) : "memory");
}

static const char *const exception_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
    "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
    "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

__attribute__((noreturn)) void host_exception(struct host_frame *f);

void host_exception(struct host_frame *f)
{
    mv_stop(this_cpu(), "host exception %s (vector %lu) error 0x%lx at rip 0x%lx rsp 0x%lx cr2 0x%lx\n",
            exception_names[f->vector & 31], f->vector, f->error_code, f->rip, f->rsp, read_cr2());
}
