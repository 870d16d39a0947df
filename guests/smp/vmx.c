/*
 * VMX instruction checks on every CPU at once (`workload=vmx`, see vmx.h).
 *
 * References: Intel SDM Vol. 3C 31.2 (VMsucceed: CF, PF, AF, ZF, SF, OF = 0;
 * VMfailInvalid: CF = 1, the others 0; VMfailValid: ZF = 1, the others 0, error number in
 * the current VMCS's VM-instruction error field), 31.3 (each instruction's "Operation"),
 * 31.4 (error numbers), 24.7 (IA32_FEATURE_CONTROL), 24.8 (fixed CR0/CR4 bits; CR4.VMXE
 * cannot be cleared in VMX operation), 25.1-25.2 (VMCS states, region, revision
 * identifier), 26.2.1 (control checks of VM entry), Vol. 3D A.1 (IA32_VMX_BASIC), A.6
 * (IA32_VMX_MISC), A.7/A.8 (CR0/CR4 fixed bits), B (field encodings).
 *
 * Per CPU, in this order (a counter run of VMX_STEP_INCS `lock incq` after each step):
 *   1  CPUID.1:ECX.VMX
 *   2  IA32_FEATURE_CONTROL locked with VMX outside SMX; WRMSR to it #GP(0)
 *   3  IA32_VMX_BASIC (bit 31 = 0, region size <= 4096), IA32_VMX_MISC, CR0 against
 *      IA32_VMX_CR0_FIXED0/1 (after setting CR0.NE, see step_basic), WRMSR 0x480 #GP(0)
 *   4  VMPTRLD outside VMX operation #UD, VMXON with CR4.VMXE = 0 #UD
 *   5  CR4.VMXE = 1, CR4 against IA32_VMX_CR4_FIXED0/1; VMXON with a wrong revision,
 *      with revision bit 31 set, with an unaligned pointer: VMfailInvalid; VMXON: VMsucceed
 *   6  VMXON in VMX root operation without a current VMCS: VMfailInvalid
 *   7  clearing CR4.VMXE in VMX operation: #GP(0)
 *   8  VMPTRST = FFFFFFFF_FFFFFFFFH; VMCLEAR, VMPTRLD: VMsucceed; VMPTRST = the VMCS
 *   9  VMPTRLD / VMCLEAR of the VMXON pointer: VMfailValid 10 / 3; VMPTRLD of a region
 *      with a wrong revision: VMfailValid 11
 *  10  VMWRITE GUEST_RIP (register source) and GUEST_RSP (memory source) with per-CPU
 *      values; a barrier of all CPUs; VMREAD both back (register / memory destination);
 *      VMWRITE VM_EXIT_REASON: VMfailValid 13 (VMsucceed if IA32_VMX_MISC[29]);
 *      VMREAD of encoding 0xFFFE: VMfailValid 12
 *  11  VMRESUME of the clear VMCS: VMfailValid 5; VMLAUNCH with all controls 0:
 *      VMfailValid 7 (the default1 control bits are 0)
 *  12  VMCLEAR of the current VMCS: VMsucceed, VMPTRST = FFFFFFFF_FFFFFFFFH, VMREAD:
 *      VMfailInvalid
 *  13  VMXOFF: VMsucceed; VMREAD #UD; clearing CR4.VMXE is allowed again
 * A step whose premise failed (no VMX on this CPU, VMXON failed, no current VMCS) is
 * not run; the CPU's result lists it as `not_run`.
 *
 * Expected exceptions: the checks run with their own copy of the IDT (vmx_idt) whose
 * #UD and #GP gates enter vmx_trap.  A guarded instruction (GUARD_ENTER / GUARD_LEAVE)
 * runs with R10 = GUARD_MAGIC and R11 = the address to resume at; a #UD or #GP taken
 * with that R10 resumes there with R10 = GUARD_HIT | vector and R11 = the error code.
 * The state is in the faulting CPU's own registers, so every CPU can expect faults at
 * the same time.  Any other exception goes on to trap_dispatch (trap.c): fatal, as
 * everywhere else in the kernel.
 *
 * Memory: each CPU has three 4 KiB-aligned pages in .bss, its VMXON region, its VMCS
 * region and a region with a wrong revision identifier.  The kernel runs in the high
 * half (KERNEL_BASE + physical, layout.h), so the instructions get virt_to_phys().
 */
#include "vmx.h"

#include "console.h"
#include "trap.h"

/* MSRs (SDM Vol. 4, Vol. 3D Appendix A). */
#define MSR_FEATURE_CONTROL     0x3a
#define MSR_VMX_BASIC           0x480
#define MSR_VMX_MISC            0x485
#define MSR_VMX_CR0_FIXED0      0x486
#define MSR_VMX_CR0_FIXED1      0x487
#define MSR_VMX_CR4_FIXED0      0x488
#define MSR_VMX_CR4_FIXED1      0x489

#define FC_LOCK                 (1UL << 0)
#define FC_VMX_OUTSIDE_SMX      (1UL << 2)
#define BASIC_REVISION_MASK     0x7fffffffUL    /* bits 30:0 */
#define BASIC_BIT31             (1UL << 31)
#define BASIC_SIZE_SHIFT        32              /* bits 44:32: region size in bytes */
#define BASIC_SIZE_MASK         0x1fffUL
#define MISC_VMWRITE_ANY        (1UL << 29)     /* VMWRITE may write the exit-information fields */
#define REVISION_SHADOW         0x80000000u     /* bit 31 of a region's first dword */

#define CPUID1_ECX_VMX          (1u << 5)
#define CR0_NE                  (1UL << 5)
#define CR4_VMXE                (1UL << 13)

/* VMCS field encodings (SDM Vol. 3D Appendix B). */
#define F_VM_INSTRUCTION_ERROR  0x4400UL        /* 32-bit read-only data */
#define F_VM_EXIT_REASON        0x4402UL        /* 32-bit read-only data */
#define F_GUEST_RSP             0x681cUL        /* natural-width guest state */
#define F_GUEST_RIP             0x681eUL
#define F_NO_SUCH_FIELD         0xfffeUL        /* bit 12 is reserved: no field has it */

/* VM-instruction error numbers (SDM 31.4). */
#define VMERR_VMCLEAR_VMXON_POINTER     3
#define VMERR_VMRESUME_NOT_LAUNCHED     5
#define VMERR_ENTRY_INVALID_CONTROLS    7
#define VMERR_VMPTRLD_VMXON_POINTER     10
#define VMERR_VMPTRLD_BAD_REVISION      11
#define VMERR_UNSUPPORTED_COMPONENT     12
#define VMERR_VMWRITE_READ_ONLY         13

#define RFLAGS_CF               0x001UL
#define RFLAGS_ZF               0x040UL
#define RFLAGS_ARITH            0x8d5UL         /* CF PF AF ZF SF OF: what 31.2 defines */

#define VEC_UD                  6
#define VEC_GP                  13

/* R10 of a guarded instruction; after a caught fault R10 = GUARD_HIT | vector. */
#define GUARD_MAGIC             0x3c6ef372fe94f82aUL
#define GUARD_HIT               0x100UL
#define NO_POINTER              0xffffffffffffffffUL   /* VMPTRST without a current VMCS */

#define VMX_MAX_CPUS            (MAX_CPUS + 1)  /* APs have APIC IDs < MAX_CPUS, plus the BSP */
#define VMX_PAGE                4096
#define VMX_FAIL_LINES          12
#define VMX_LINE                128
#define BARRIER_SPINS_PER_INC   64ULL

enum { PAGE_VMXON, PAGE_VMCS, PAGE_BAD, PAGES_PER_CPU };

struct vmx_cpu {
    uint32_t index;
    uint32_t ok, failed;                /* checks passed / failed */
    uint32_t lines, lost_lines;         /* failure lines stored / that did not fit */
    uint32_t skipped;                   /* bit n: step n was not (completely) run */
    const char *skip_reason;            /* the first premise that failed */
    bool have_vmx, in_vmx, current;     /* CPUID VMX; VMXON done; our VMCS current */
    uint32_t revision;                  /* IA32_VMX_BASIC[30:0] */
    uint64_t misc;
    uint64_t cr4_fixed0, cr4_fixed1;
    bool cr4_fixed_read;
    uint64_t vmxon_pa, vmcs_pa, bad_pa;
    struct workload *work;
    uint32_t *sense;
    char line[VMX_FAIL_LINES][VMX_LINE];
};

static uint8_t vmx_pages[VMX_MAX_CPUS][PAGES_PER_CPU][VMX_PAGE] __attribute__((aligned(VMX_PAGE)));
static struct vmx_cpu vmx_cpus[VMX_MAX_CPUS];

struct __attribute__((packed)) vmx_gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attr;
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t reserved;
};

struct __attribute__((packed)) vmx_dtr {
    uint16_t limit;
    uint64_t base;
};

static struct vmx_gate vmx_idt[256] __attribute__((aligned(16)));

static struct {
    volatile uint64_t counter __attribute__((aligned(64)));  /* lock incq by every CPU */
    uint32_t ncpus;
    bool active;
    bool offered;                       /* CPUID.1:ECX.VMX on the BSP */
} vmx;

/* ------------------------------------------------------------------ */
/* Expected exceptions: vmx_idt's #UD and #GP gates. Same frame as isr.S (struct trap_frame). */

void vmx_trap(struct trap_frame *frame);
extern const char vmx_isr_ud[], vmx_isr_gp[];

__asm__(
    "    .pushsection .text, \"ax\"\n"
    "    .balign 16\n"
    "vmx_isr_ud:\n"
    "    pushq   $0\n"                  /* #UD pushes no error code */
    "    pushq   $6\n"
    "    jmp     vmx_isr_common\n"
    "    .balign 16\n"
    "vmx_isr_gp:\n"
    "    pushq   $13\n"
    "    jmp     vmx_isr_common\n"
    "vmx_isr_common:\n"
    "    pushq %rax\n    pushq %rbx\n    pushq %rcx\n    pushq %rdx\n"
    "    pushq %rsi\n    pushq %rdi\n    pushq %rbp\n    pushq %r8\n"
    "    pushq %r9\n    pushq %r10\n    pushq %r11\n    pushq %r12\n"
    "    pushq %r13\n    pushq %r14\n    pushq %r15\n"
    "    movq    %rsp, %rdi\n"
    "    cld\n"
    "    call    vmx_trap\n"
    "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n"
    "    popq %r11\n    popq %r10\n    popq %r9\n    popq %r8\n"
    "    popq %rbp\n    popq %rdi\n    popq %rsi\n    popq %rdx\n"
    "    popq %rcx\n    popq %rbx\n    popq %rax\n"
    "    addq    $16, %rsp\n"           /* vector + error code */
    "    iretq\n"
    "    .popsection\n");

void vmx_trap(struct trap_frame *frame)
{
    if (frame->r10 == GUARD_MAGIC) {
        uint64_t resume = frame->r11;
        frame->r10 = GUARD_HIT | frame->vector;
        frame->r11 = frame->error_code;
        frame->rip = resume;
        return;
    }
    trap_dispatch(frame);  /* not expected: the kernel's usual (fatal) path */
}

static void set_gate(uint32_t vector, const void *entry)
{
    uint64_t addr = (uint64_t)entry;
    struct vmx_gate *gate = &vmx_idt[vector];
    gate->offset_low = (uint16_t)addr;
    gate->selector = GDT_CODE64_SEL;
    gate->ist = 0;
    gate->type_attr = 0x8e;             /* present, DPL 0, 64-bit interrupt gate */
    gate->offset_mid = (uint16_t)(addr >> 16);
    gate->offset_high = (uint32_t)(addr >> 32);
    gate->reserved = 0;
}

static inline void sidt(struct vmx_dtr *dtr) { __asm__ volatile("sidt %0" : "=m"(*dtr)); }
static inline void lidt(const struct vmx_dtr *dtr) { __asm__ volatile("lidt %0" : : "m"(*dtr)); }

/*
 * A guarded instruction: R11 = where to resume after a fault, R10 = GUARD_MAGIC, all six
 * arithmetic flags set (so an instruction that leaves RFLAGS alone matches no VMX
 * outcome), the instruction, then RFLAGS into %[fl] and R10 = 0.  After a fault, vmx_trap
 * resumes at the final label with R10 = GUARD_HIT | vector, R11 = error code, %[fl]
 * untouched (0).  The kernel is built with -mno-red-zone: pushing is safe.
 */
#define GUARD_ENTER                                 \
    "leaq    1f(%%rip), %%r11\n\t"                  \
    "movabsq %[magic], %%r10\n\t"                   \
    "pushfq\n\t"                                    \
    "orq     $0x8d5, (%%rsp)\n\t"                   \
    "popfq\n\t"
#define GUARD_LEAVE                                 \
    "\n\t"                                          \
    "pushfq\n\t"                                    \
    "popq    %[fl]\n\t"                             \
    "xorl    %%r10d, %%r10d\n"                      \
    "1:"
#define GUARD_REGS                                  \
    register uint64_t guard_r10 __asm__("r10");     \
    register uint64_t guard_r11 __asm__("r11")
#define GUARD_OUT(o) [fl] "+r"((o).rflags), "=&r"(guard_r10), "=&r"(guard_r11)
#define GUARD_IN [magic] "i"(GUARD_MAGIC)
#define GUARD_DONE(o)                               \
    do {                                            \
        (o).fault = guard_r10;                      \
        (o).error_code = guard_r10 ? guard_r11 : 0; \
    } while (0)

struct outcome {
    uint64_t rflags;        /* RFLAGS right after the instruction (0 after a fault) */
    uint64_t fault;         /* 0, or GUARD_HIT | the exception vector */
    uint64_t error_code;    /* of the exception */
};

static struct outcome g_vmxon(uint64_t pa)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmxon %[pa]" GUARD_LEAVE
                     : GUARD_OUT(o) : [pa] "m"(pa), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static struct outcome g_vmclear(uint64_t pa)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmclear %[pa]" GUARD_LEAVE
                     : GUARD_OUT(o) : [pa] "m"(pa), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static struct outcome g_vmptrld(uint64_t pa)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmptrld %[pa]" GUARD_LEAVE
                     : GUARD_OUT(o) : [pa] "m"(pa), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

/* *pa keeps its value when VMPTRST does not store ("+m"). */
static struct outcome g_vmptrst(uint64_t *pa)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmptrst %[pa]" GUARD_LEAVE
                     : GUARD_OUT(o), [pa] "+m"(*pa) : GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

/* VMREAD r/m64, r64 (AT&T: the encoding register first): register destination. */
static struct outcome g_vmread_reg(uint64_t field, uint64_t *value)
{
    struct outcome o = { 0, 0, 0 };
    uint64_t v = *value;
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmread %[field], %[v]" GUARD_LEAVE
                     : GUARD_OUT(o), [v] "+r"(v) : [field] "r"(field), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    *value = v;
    return o;
}

/* VMREAD with a memory destination. */
static struct outcome g_vmread_mem(uint64_t field, uint64_t *value)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmread %[field], %[v]" GUARD_LEAVE
                     : GUARD_OUT(o), [v] "+m"(*value) : [field] "r"(field), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

/* VMWRITE r64, r/m64 (AT&T: the value first): register source. */
static struct outcome g_vmwrite_reg(uint64_t field, uint64_t value)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmwrite %[v], %[field]" GUARD_LEAVE
                     : GUARD_OUT(o) : [v] "r"(value), [field] "r"(field), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

/* VMWRITE with a memory source. */
static struct outcome g_vmwrite_mem(uint64_t field, uint64_t value)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmwrite %[v], %[field]" GUARD_LEAVE
                     : GUARD_OUT(o) : [v] "m"(value), [field] "r"(field), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

/* VMLAUNCH / VMRESUME are expected to fail here (VMfailValid: execution goes on). */
static struct outcome g_vmlaunch(void)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmlaunch" GUARD_LEAVE
                     : GUARD_OUT(o) : GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static struct outcome g_vmresume(void)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmresume" GUARD_LEAVE
                     : GUARD_OUT(o) : GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static struct outcome g_vmxoff(void)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "vmxoff" GUARD_LEAVE
                     : GUARD_OUT(o) : GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static struct outcome g_rdmsr(uint32_t msr, uint64_t *value)
{
    struct outcome o = { 0, 0, 0 };
    uint32_t lo = 0, hi = 0;
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "rdmsr" GUARD_LEAVE
                     : GUARD_OUT(o), "+a"(lo), "+d"(hi) : "c"(msr), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    *value = (uint64_t)hi << 32 | lo;
    return o;
}

static struct outcome g_wrmsr(uint32_t msr, uint64_t value)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "wrmsr" GUARD_LEAVE
                     : GUARD_OUT(o)
                     : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)), GUARD_IN
                     : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static struct outcome g_write_cr0(uint64_t value)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "movq %[v], %%cr0" GUARD_LEAVE
                     : GUARD_OUT(o) : [v] "r"(value), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static struct outcome g_write_cr4(uint64_t value)
{
    struct outcome o = { 0, 0, 0 };
    GUARD_REGS;
    __asm__ volatile(GUARD_ENTER "movq %[v], %%cr4" GUARD_LEAVE
                     : GUARD_OUT(o) : [v] "r"(value), GUARD_IN : "cc", "memory");
    GUARD_DONE(o);
    return o;
}

static inline uint64_t read_cr0(void)
{
    uint64_t value;
    __asm__ volatile("movq %%cr0, %0" : "=r"(value));
    return value;
}

static inline uint64_t read_cr4(void)
{
    uint64_t value;
    __asm__ volatile("movq %%cr4, %0" : "=r"(value));
    return value;
}

static inline uint32_t cpuid1_ecx(void)
{
    uint32_t a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    return c;
}

/* ------------------------------------------------------------------ */
/* Results: a failure is one line of text in the CPU's slot, printed by the BSP. */

struct text {
    char *buf;              /* NULL: the CPU's lines are full, only counted */
    uint32_t len;
};

static void t_str(struct text *t, const char *s)
{
    if (!t->buf)
        return;
    while (*s && t->len < VMX_LINE - 1)
        t->buf[t->len++] = *s++;
    t->buf[t->len] = '\0';
}

static void t_num(struct text *t, uint64_t value, unsigned base)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[24];
    int pos = sizeof(tmp) - 1;
    tmp[pos] = '\0';
    do {
        tmp[--pos] = digits[value % base];
        value /= base;
    } while (value);
    if (base == 16)
        t_str(t, "0x");
    t_str(t, &tmp[pos]);
}

static void t_hex(struct text *t, uint64_t value) { t_num(t, value, 16); }
static void t_dec(struct text *t, uint64_t value) { t_num(t, value, 10); }

static void pass(struct vmx_cpu *c)
{
    c->ok++;
}

/* Count a failed check and start its line: "<name>: ". */
static struct text fail(struct vmx_cpu *c, const char *name)
{
    struct text t = { NULL, 0 };
    c->failed++;
    if (c->lines < VMX_FAIL_LINES)
        t.buf = c->line[c->lines++];
    else
        c->lost_lines++;
    t_str(&t, name);
    t_str(&t, ": ");
    return t;
}

/* A step whose premise does not hold is not run (reported as not_run). */
static bool need(struct vmx_cpu *c, uint32_t step, bool premise, const char *why)
{
    if (premise)
        return true;
    c->skipped |= 1u << step;
    if (!c->skip_reason)
        c->skip_reason = why;
    return false;
}

#define NO_VMX "no VMX on this CPU (CPUID.1:ECX bit 5 is 0)"
#define NOT_IN_VMX "not in VMX operation (VMXON did not succeed)"
#define NO_CURRENT "no current VMCS (VMPTRLD did not succeed)"

/* ------------------------------------------------------------------ */
/* Classifying an outcome (SDM 31.2). */

enum kind { K_SUCCEED, K_FAIL_INVALID, K_FAIL_VALID, K_FAULT, K_NO_OUTCOME };

static enum kind kind_of(const struct outcome *o)
{
    if (o->fault)
        return K_FAULT;
    switch (o->rflags & RFLAGS_ARITH) {
    case 0:
        return K_SUCCEED;
    case RFLAGS_CF:
        return K_FAIL_INVALID;
    case RFLAGS_ZF:
        return K_FAIL_VALID;
    default:
        return K_NO_OUTCOME;
    }
}

static void t_fault(struct text *t, uint64_t vector, uint64_t error_code)
{
    if (vector == VEC_UD) {
        t_str(t, "#UD");
    } else if (vector == VEC_GP) {
        t_str(t, "#GP(");
        t_hex(t, error_code);
        t_str(t, ")");
    } else {
        t_str(t, "exception ");
        t_dec(t, vector);
    }
}

/* What an instruction did; `error` is the VM-instruction error read after a VMfailValid. */
static void t_outcome(struct text *t, const struct outcome *o, bool error_read, uint64_t error)
{
    switch (kind_of(o)) {
    case K_SUCCEED:
        t_str(t, "VMsucceed");
        break;
    case K_FAIL_INVALID:
        t_str(t, "VMfailInvalid");
        break;
    case K_FAIL_VALID:
        t_str(t, "VMfailValid error ");
        if (error_read)
            t_dec(t, error);
        else
            t_str(t, "? (VMREAD of VM_INSTRUCTION_ERROR did not succeed)");
        break;
    case K_FAULT:
        t_fault(t, o->fault & 0xff, o->error_code);
        break;
    case K_NO_OUTCOME:
        t_str(t, "rflags ");
        t_hex(t, o->rflags);
        t_str(t, " (no VMX outcome)");
        break;
    }
}

static void t_want(struct text *t, enum kind want, uint64_t number)
{
    switch (want) {
    case K_SUCCEED:
        t_str(t, "VMsucceed");
        break;
    case K_FAIL_INVALID:
        t_str(t, "VMfailInvalid");
        break;
    case K_FAIL_VALID:
        t_str(t, "VMfailValid error ");
        t_dec(t, number);
        break;
    case K_FAULT:
        t_fault(t, number, 0);
        break;
    case K_NO_OUTCOME:
        break;
    }
}

/* The VM-instruction error field of the current VMCS (after a VMfailValid). */
static bool read_vm_error(uint64_t *error)
{
    *error = 0;
    struct outcome r = g_vmread_reg(F_VM_INSTRUCTION_ERROR, error);
    return kind_of(&r) == K_SUCCEED;
}

/*
 * Check a VMX instruction's outcome: `want` with `number` = the VM-instruction error
 * (K_FAIL_VALID) or the vector (K_FAULT; a #GP must have error code 0).  True if it
 * matched (the check is counted either way).
 */
static bool check_vmx(struct vmx_cpu *c, const char *name, const struct outcome *o, enum kind want,
                      uint64_t number)
{
    enum kind got = kind_of(o);
    uint64_t error = 0;
    bool error_read = got == K_FAIL_VALID && read_vm_error(&error);
    bool match = got == want;
    if (match && want == K_FAIL_VALID)
        match = error_read && error == number;
    if (match && want == K_FAULT)
        match = (o->fault & 0xff) == number && o->error_code == 0;
    if (match) {
        pass(c);
        return true;
    }
    struct text t = fail(c, name);
    t_str(&t, "saw ");
    t_outcome(&t, o, error_read, error);
    t_str(&t, ", want ");
    t_want(&t, want, number);
    return false;
}

/* A VMREAD / VMPTRST that must succeed with `want_value`. */
static void check_value(struct vmx_cpu *c, const char *name, const struct outcome *o, uint64_t value,
                        uint64_t want_value)
{
    enum kind got = kind_of(o);
    if (got == K_SUCCEED && value == want_value) {
        pass(c);
        return;
    }
    uint64_t error = 0;
    bool error_read = got == K_FAIL_VALID && read_vm_error(&error);
    struct text t = fail(c, name);
    t_str(&t, "saw ");
    t_outcome(&t, o, error_read, error);
    if (got == K_SUCCEED) {
        t_str(&t, " value ");
        t_hex(&t, value);
    }
    t_str(&t, ", want VMsucceed value ");
    t_hex(&t, want_value);
}

/* A non-VMX instruction (RDMSR, WRMSR, MOV to CR) that must raise #GP(0). */
static void check_gp(struct vmx_cpu *c, const char *name, const char *what, const struct outcome *o)
{
    if ((o->fault & 0xff) == VEC_GP && o->fault && o->error_code == 0) {
        pass(c);
        return;
    }
    struct text t = fail(c, name);
    t_str(&t, what);
    t_str(&t, ": saw ");
    if (o->fault)
        t_fault(&t, o->fault & 0xff, o->error_code);
    else
        t_str(&t, "no exception");
    t_str(&t, ", want #GP(0x0)");
}

/* A non-VMX instruction that must not fault: false (and a failed check) if it did. */
static bool no_fault(struct vmx_cpu *c, const char *name, const char *what, const struct outcome *o)
{
    if (!o->fault)
        return true;
    struct text t = fail(c, name);
    t_str(&t, what);
    t_str(&t, ": ");
    t_fault(&t, o->fault & 0xff, o->error_code);
    return false;
}

/* A VMXON that must fail succeeded: leave VMX operation again for the next check. */
static void undo_vmxon(const struct outcome *o)
{
    if (kind_of(o) == K_SUCCEED)
        (void)g_vmxoff();
}

static void set_revision(uint64_t pa, uint32_t first_dword)
{
    *(volatile uint32_t *)phys_to_virt(pa) = first_dword;
}

/* ------------------------------------------------------------------ */
/* The steps. */

/* 1. CPUID.1:ECX bit 5 (SDM 24.6 "Discovering Support for VMX"). */
static void step_cpuid(struct vmx_cpu *c)
{
    uint32_t ecx = cpuid1_ecx();
    c->have_vmx = ecx & CPUID1_ECX_VMX;
    if (c->have_vmx) {
        pass(c);
        return;
    }
    struct text t = fail(c, "cpuid_vmx");
    t_str(&t, "CPUID.1:ECX ");
    t_hex(&t, ecx);
    t_str(&t, ", bit 5 (VMX) is 0");
}

/* 2. IA32_FEATURE_CONTROL (SDM 24.7): locked by the firmware with VMX outside SMX on. */
static void step_feature_control(struct vmx_cpu *c)
{
    if (!need(c, 2, c->have_vmx, NO_VMX))
        return;
    uint64_t fc = 0;
    struct outcome o = g_rdmsr(MSR_FEATURE_CONTROL, &fc);
    if (no_fault(c, "feature_control_locked", "RDMSR 0x3a", &o)) {
        if ((fc & (FC_LOCK | FC_VMX_OUTSIDE_SMX)) == (FC_LOCK | FC_VMX_OUTSIDE_SMX)) {
            pass(c);
        } else {
            struct text t = fail(c, "feature_control_locked");
            t_str(&t, "IA32_FEATURE_CONTROL ");
            t_hex(&t, fc);
            t_str(&t, ", want bits 0 (lock) and 2 (VMX outside SMX) set");
        }
    }
    /* The value it holds: a CPU that wrongly accepts the write changes nothing. */
    o = g_wrmsr(MSR_FEATURE_CONTROL, fc);
    check_gp(c, "feature_control_wrmsr_gp", "WRMSR 0x3a (locked)", &o);
}

/*
 * 3. IA32_VMX_BASIC (A.1), IA32_VMX_MISC (A.6), CR0 against IA32_VMX_CR0_FIXED0/1 (A.7).
 * The boot code never sets CR0.NE (the BSP starts with the loader's CR0, the APs with
 * 0x60000010 | PE | PG), and NE is fixed to 1 in VMX operation (SDM 24.8, A.7): like
 * every VMM, the workload sets it before it checks CR0 (no x87 code runs here).
 */
static void step_basic(struct vmx_cpu *c)
{
    if (!need(c, 3, c->have_vmx, NO_VMX))
        return;
    uint64_t basic = 0;
    struct outcome o = g_rdmsr(MSR_VMX_BASIC, &basic);
    if (no_fault(c, "vmx_basic", "RDMSR 0x480", &o)) {
        uint64_t size = basic >> BASIC_SIZE_SHIFT & BASIC_SIZE_MASK;
        if (basic & BASIC_BIT31) {
            struct text t = fail(c, "vmx_basic");
            t_str(&t, "IA32_VMX_BASIC ");
            t_hex(&t, basic);
            t_str(&t, ": bit 31 is 1, want 0");
        } else if (size == 0 || size > VMX_PAGE) {
            struct text t = fail(c, "vmx_basic");
            t_str(&t, "IA32_VMX_BASIC ");
            t_hex(&t, basic);
            t_str(&t, ": region size ");
            t_dec(&t, size);
            t_str(&t, ", want 1..4096");
        } else {
            pass(c);
        }
    }
    /* The revision identifier goes into the first dword of the VMXON and VMCS regions
     * (SDM 25.2, 25.11.5); the rest of them stays 0. */
    c->revision = (uint32_t)(basic & BASIC_REVISION_MASK);
    set_revision(c->vmxon_pa, c->revision);
    set_revision(c->vmcs_pa, c->revision);

    o = g_rdmsr(MSR_VMX_MISC, &c->misc);
    if (no_fault(c, "vmx_misc", "RDMSR 0x485", &o))
        pass(c);

    uint64_t fixed0 = 0, fixed1 = 0, cr0 = read_cr0();
    struct outcome w = { 0, 0, 0 };
    if (!(cr0 & CR0_NE))
        w = g_write_cr0(cr0 | CR0_NE);
    struct outcome r0 = g_rdmsr(MSR_VMX_CR0_FIXED0, &fixed0);
    struct outcome r1 = g_rdmsr(MSR_VMX_CR0_FIXED1, &fixed1);
    cr0 = read_cr0();
    if (no_fault(c, "cr0_fixed", "MOV to CR0 (setting NE)", &w) &&
        no_fault(c, "cr0_fixed", "RDMSR 0x486", &r0) && no_fault(c, "cr0_fixed", "RDMSR 0x487", &r1)) {
        if ((cr0 & fixed0) != fixed0) {
            struct text t = fail(c, "cr0_fixed");
            t_str(&t, "CR0 ");
            t_hex(&t, cr0);
            t_str(&t, " lacks bits ");
            t_hex(&t, fixed0 & ~cr0);
            t_str(&t, " of IA32_VMX_CR0_FIXED0 ");
            t_hex(&t, fixed0);
        } else if (cr0 & ~fixed1) {
            struct text t = fail(c, "cr0_fixed");
            t_str(&t, "CR0 ");
            t_hex(&t, cr0);
            t_str(&t, " has bits ");
            t_hex(&t, cr0 & ~fixed1);
            t_str(&t, " outside IA32_VMX_CR0_FIXED1 ");
            t_hex(&t, fixed1);
        } else {
            pass(c);
        }
    }

    /* CR4's are checked in step 5, with CR4.VMXE set. */
    r0 = g_rdmsr(MSR_VMX_CR4_FIXED0, &c->cr4_fixed0);
    r1 = g_rdmsr(MSR_VMX_CR4_FIXED1, &c->cr4_fixed1);
    c->cr4_fixed_read = !r0.fault && !r1.fault;

    o = g_wrmsr(MSR_VMX_BASIC, basic);
    check_gp(c, "vmx_basic_wrmsr_gp", "WRMSR 0x480 (read-only)", &o);
}

/* 4. Outside VMX operation: VMPTRLD #UD; VMXON with CR4.VMXE = 0 #UD (SDM 31.3). */
static void step_outside(struct vmx_cpu *c)
{
    if (!need(c, 4, c->have_vmx, NO_VMX))
        return;
    uint64_t cr4 = read_cr4();
    if (cr4 & CR4_VMXE)     /* not expected from the boot code; allowed outside VMX operation */
        (void)g_write_cr4(cr4 & ~CR4_VMXE);

    struct outcome o = g_vmptrld(c->vmcs_pa);
    check_vmx(c, "vmptrld_outside_vmx_ud", &o, K_FAULT, VEC_UD);

    o = g_vmxon(c->vmxon_pa);
    check_vmx(c, "vmxon_vmxe0_ud", &o, K_FAULT, VEC_UD);
    undo_vmxon(&o);
}

/* 5. CR4.VMXE = 1, then VMXON: VMfailInvalid for a bad region / pointer, then VMsucceed. */
static void step_vmxon(struct vmx_cpu *c)
{
    if (!need(c, 5, c->have_vmx, NO_VMX))
        return;
    struct outcome o = g_write_cr4(read_cr4() | CR4_VMXE);
    uint64_t cr4 = read_cr4();
    if (no_fault(c, "cr4_vmxe_set", "MOV to CR4 (setting VMXE)", &o)) {
        if (cr4 & CR4_VMXE) {
            pass(c);
        } else {
            struct text t = fail(c, "cr4_vmxe_set");
            t_str(&t, "CR4 ");
            t_hex(&t, cr4);
            t_str(&t, " after setting VMXE (bit 13)");
        }
    }
    if (!c->cr4_fixed_read) {
        struct text t = fail(c, "cr4_fixed");
        t_str(&t, "RDMSR of IA32_VMX_CR4_FIXED0/1 (0x488/0x489) faulted");
    } else if ((cr4 & c->cr4_fixed0) != c->cr4_fixed0) {
        struct text t = fail(c, "cr4_fixed");
        t_str(&t, "CR4 ");
        t_hex(&t, cr4);
        t_str(&t, " lacks bits ");
        t_hex(&t, c->cr4_fixed0 & ~cr4);
        t_str(&t, " of IA32_VMX_CR4_FIXED0 ");
        t_hex(&t, c->cr4_fixed0);
    } else if (cr4 & ~c->cr4_fixed1) {
        struct text t = fail(c, "cr4_fixed");
        t_str(&t, "CR4 ");
        t_hex(&t, cr4);
        t_str(&t, " has bits ");
        t_hex(&t, cr4 & ~c->cr4_fixed1);
        t_str(&t, " outside IA32_VMX_CR4_FIXED1 ");
        t_hex(&t, c->cr4_fixed1);
    } else {
        pass(c);
    }

    set_revision(c->bad_pa, c->revision ^ 1);  /* bits 30:0 wrong, bit 31 0 */
    o = g_vmxon(c->bad_pa);
    check_vmx(c, "vmxon_wrong_revision", &o, K_FAIL_INVALID, 0);
    undo_vmxon(&o);

    set_revision(c->bad_pa, c->revision | REVISION_SHADOW);  /* VMXON: rev[31] = 1 fails too */
    o = g_vmxon(c->bad_pa);
    check_vmx(c, "vmxon_revision_bit31", &o, K_FAIL_INVALID, 0);
    undo_vmxon(&o);
    set_revision(c->bad_pa, c->revision ^ 1);  /* for VMPTRLD in step 9 */

    o = g_vmxon(c->vmxon_pa + 0x10);
    check_vmx(c, "vmxon_unaligned", &o, K_FAIL_INVALID, 0);
    undo_vmxon(&o);

    o = g_vmxon(c->vmxon_pa);
    c->in_vmx = check_vmx(c, "vmxon", &o, K_SUCCEED, 0);
}

/* 6. VMXON in VMX root operation: VMfail(15), VMfailInvalid as no VMCS is current. */
static void step_vmxon_again(struct vmx_cpu *c)
{
    if (!need(c, 6, c->in_vmx, NOT_IN_VMX))
        return;
    struct outcome o = g_vmxon(c->vmxon_pa);
    check_vmx(c, "vmxon_in_root", &o, K_FAIL_INVALID, 0);
}

/* 7. CR4.VMXE is fixed to 1 in VMX operation (SDM 24.8, A.8): clearing it is #GP(0). */
static void step_cr4_locked(struct vmx_cpu *c)
{
    if (!need(c, 7, c->in_vmx, NOT_IN_VMX))
        return;
    uint64_t cr4 = read_cr4();
    struct outcome o = g_write_cr4(cr4 & ~CR4_VMXE);
    check_gp(c, "cr4_clear_vmxe_gp", "MOV to CR4 clearing VMXE", &o);
    if (!(read_cr4() & CR4_VMXE))
        (void)g_write_cr4(cr4);   /* it took the write: VMXE back for the next steps */
}

/* 8. VMPTRST (none current yet), VMCLEAR and VMPTRLD of our VMCS, VMPTRST. */
static void step_vmcs_load(struct vmx_cpu *c)
{
    if (!need(c, 8, c->in_vmx, NOT_IN_VMX))
        return;
    uint64_t stored = 0;
    struct outcome o = g_vmptrst(&stored);
    check_value(c, "vmptrst_no_current", &o, stored, NO_POINTER);

    o = g_vmclear(c->vmcs_pa);
    check_vmx(c, "vmclear", &o, K_SUCCEED, 0);
    o = g_vmptrld(c->vmcs_pa);
    c->current = check_vmx(c, "vmptrld", &o, K_SUCCEED, 0);

    stored = 0;
    o = g_vmptrst(&stored);
    check_value(c, "vmptrst", &o, stored, c->vmcs_pa);
}

/* 9. VMfailValid with the current VMCS: the VMXON pointer, a wrong revision. */
static void step_bad_pointers(struct vmx_cpu *c)
{
    if (!need(c, 9, c->current, NO_CURRENT))
        return;
    struct outcome o = g_vmptrld(c->vmxon_pa);
    bool reload = kind_of(&o) == K_SUCCEED;
    check_vmx(c, "vmptrld_vmxon_pointer", &o, K_FAIL_VALID, VMERR_VMPTRLD_VMXON_POINTER);
    if (reload)
        (void)g_vmptrld(c->vmcs_pa);

    o = g_vmclear(c->vmxon_pa);
    check_vmx(c, "vmclear_vmxon_pointer", &o, K_FAIL_VALID, VMERR_VMCLEAR_VMXON_POINTER);

    o = g_vmptrld(c->bad_pa);
    reload = kind_of(&o) == K_SUCCEED;
    check_vmx(c, "vmptrld_wrong_revision", &o, K_FAIL_VALID, VMERR_VMPTRLD_BAD_REVISION);
    if (reload)
        (void)g_vmptrld(c->vmcs_pa);
}

/* 10. VMWRITE / VMREAD of this CPU's values, every CPU at once; read-only and unknown fields. */
static void step_fields(struct vmx_cpu *c)
{
    uint64_t rip = 0x1000 + (uint64_t)c->index * 0x10;
    uint64_t rsp = 0x8000 + (uint64_t)c->index * 0x10;
    bool run = need(c, 10, c->current, NO_CURRENT);
    if (run) {
        struct outcome o = g_vmwrite_reg(F_GUEST_RIP, rip);
        check_vmx(c, "vmwrite_guest_rip", &o, K_SUCCEED, 0);
        o = g_vmwrite_mem(F_GUEST_RSP, rsp);
        check_vmx(c, "vmwrite_guest_rsp", &o, K_SUCCEED, 0);
    }
    /* Every CPU has written its fields before any reads them back (all CPUs pass here). */
    work_barrier(c->work, c->sense, c->index, "vmx fields");
    if (!run)
        return;

    uint64_t value = 0;
    struct outcome o = g_vmread_reg(F_GUEST_RIP, &value);
    check_value(c, "vmread_guest_rip", &o, value, rip);
    value = 0;
    o = g_vmread_mem(F_GUEST_RSP, &value);
    check_value(c, "vmread_guest_rsp", &o, value, rsp);

    o = g_vmwrite_reg(F_VM_EXIT_REASON, 0);
    if (c->misc & MISC_VMWRITE_ANY)
        check_vmx(c, "vmwrite_read_only", &o, K_SUCCEED, 0);
    else
        check_vmx(c, "vmwrite_read_only", &o, K_FAIL_VALID, VMERR_VMWRITE_READ_ONLY);

    value = 0;
    o = g_vmread_reg(F_NO_SUCH_FIELD, &value);
    check_vmx(c, "vmread_unsupported", &o, K_FAIL_VALID, VMERR_UNSUPPORTED_COMPONENT);
}

/*
 * 11. VM entry of the clear VMCS: VMRESUME needs a launched one (5); VMLAUNCH checks the
 * controls first (SDM 26.2.1), and 0 lacks the default1 bits (pin-based 1, 2, 4, ...): 7.
 */
static void step_entry(struct vmx_cpu *c)
{
    if (!need(c, 11, c->current, NO_CURRENT))
        return;
    struct outcome o = g_vmresume();
    check_vmx(c, "vmresume_not_launched", &o, K_FAIL_VALID, VMERR_VMRESUME_NOT_LAUNCHED);
    o = g_vmlaunch();
    check_vmx(c, "vmlaunch_invalid_controls", &o, K_FAIL_VALID, VMERR_ENTRY_INVALID_CONTROLS);
}

/* 12. VMCLEAR of the current VMCS makes the current-VMCS pointer invalid. */
static void step_clear(struct vmx_cpu *c)
{
    if (!need(c, 12, c->in_vmx, NOT_IN_VMX))
        return;
    struct outcome o = g_vmclear(c->vmcs_pa);
    check_vmx(c, "vmclear_current", &o, K_SUCCEED, 0);
    c->current = false;

    uint64_t stored = 0;
    o = g_vmptrst(&stored);
    check_value(c, "vmptrst_after_vmclear", &o, stored, NO_POINTER);

    uint64_t value = 0;
    o = g_vmread_reg(F_GUEST_RIP, &value);
    check_vmx(c, "vmread_no_current", &o, K_FAIL_INVALID, 0);
}

/* 13. VMXOFF; then VMREAD is #UD and CR4.VMXE may be cleared. */
static void step_vmxoff(struct vmx_cpu *c)
{
    if (!need(c, 13, c->have_vmx, NO_VMX))
        return;
    if (need(c, 13, c->in_vmx, NOT_IN_VMX)) {
        struct outcome o = g_vmxoff();
        if (check_vmx(c, "vmxoff", &o, K_SUCCEED, 0))
            c->in_vmx = false;
    }

    uint64_t value = 0;
    struct outcome o = g_vmread_reg(F_GUEST_RIP, &value);
    check_vmx(c, "vmread_after_vmxoff_ud", &o, K_FAULT, VEC_UD);

    o = g_write_cr4(read_cr4() & ~CR4_VMXE);
    uint64_t cr4 = read_cr4();
    if (no_fault(c, "cr4_clear_vmxe", "MOV to CR4 clearing VMXE", &o)) {
        if (!(cr4 & CR4_VMXE)) {
            pass(c);
        } else {
            struct text t = fail(c, "cr4_clear_vmxe");
            t_str(&t, "CR4 ");
            t_hex(&t, cr4);
            t_str(&t, " after clearing VMXE (bit 13)");
        }
    }
}

static void (*const vmx_steps[VMX_STEPS])(struct vmx_cpu *) = {
    step_cpuid, step_feature_control, step_basic, step_outside, step_vmxon, step_vmxon_again,
    step_cr4_locked, step_vmcs_load, step_bad_pointers, step_fields, step_entry, step_clear,
    step_vmxoff,
};

/* ------------------------------------------------------------------ */

void vmx_prepare(void)
{
    /* The kernel's IDT (trap.c, loaded by idt_load) with #UD and #GP through vmx_trap. */
    struct vmx_dtr idtr;
    sidt(&idtr);
    uint64_t size = (uint64_t)idtr.limit + 1;
    if (size > sizeof(vmx_idt))
        size = sizeof(vmx_idt);
    memcpy(vmx_idt, (const void *)idtr.base, size);
    set_gate(VEC_UD, vmx_isr_ud);
    set_gate(VEC_GP, vmx_isr_gp);
    vmx.counter = 0;
    vmx.active = true;
}

bool vmx_active(void)
{
    return vmx.active;
}

void vmx_set_cpus(struct workload *work, uint32_t ncpus)
{
    if (ncpus > VMX_MAX_CPUS) {     /* cannot happen: smp.c starts APs with IDs < MAX_CPUS */
        kprintf("vmx: %u CPUs, more than %u\n", ncpus, VMX_MAX_CPUS);
        debug_exit(EXIT_VMX_BAD);
    }
    vmx.ncpus = ncpus;
    vmx.offered = cpuid1_ecx() & CPUID1_ECX_VMX;
    work->barrier_spin_limit += VMX_STEPS * VMX_STEP_INCS * ncpus * BARRIER_SPINS_PER_INC;
}

static void contend(void)
{
    for (uint64_t n = VMX_STEP_INCS; n; n--)
        __asm__ volatile("lock incq %0" : "+m"(vmx.counter) : : "memory", "cc");
}

void vmx_run(struct workload *work, uint32_t cpu_index)
{
    uint32_t local_sense = 0;
    work_barrier(work, &local_sense, cpu_index, "start");
    if (vmx.offered) {
        struct vmx_cpu *c = &vmx_cpus[cpu_index];
        memset(c, 0, sizeof(*c));
        c->index = cpu_index;
        c->work = work;
        c->sense = &local_sense;
        memset(vmx_pages[cpu_index], 0, sizeof(vmx_pages[cpu_index]));
        c->vmxon_pa = virt_to_phys(vmx_pages[cpu_index][PAGE_VMXON]);
        c->vmcs_pa = virt_to_phys(vmx_pages[cpu_index][PAGE_VMCS]);
        c->bad_pa = virt_to_phys(vmx_pages[cpu_index][PAGE_BAD]);

        struct vmx_dtr kernel_idt, checks_idt = { sizeof(vmx_idt) - 1, (uint64_t)vmx_idt };
        sidt(&kernel_idt);
        lidt(&checks_idt);
        for (uint32_t s = 0; s < VMX_STEPS; s++) {
            vmx_steps[s](c);
            contend();
        }
        lidt(&kernel_idt);
    }
    work_barrier(work, &local_sense, cpu_index, "end");
}

static void print_cpu(const struct vmx_cpu *c)
{
    if (!c->failed && !c->skipped) {
        kprintf("vmx cpu %u: %u checks ok\n", c->index, c->ok);
        return;
    }
    for (uint32_t i = 0; i < c->lines; i++)
        kprintf("vmx cpu %u: FAILED %s\n", c->index, c->line[i]);
    if (c->lost_lines)
        kprintf("vmx cpu %u: FAILED more: %u further failed checks not shown\n", c->index, c->lost_lines);
    if (c->skipped) {
        char steps[64];
        struct text t = { steps, 0 };
        steps[0] = '\0';
        for (uint32_t s = 1; s <= VMX_STEPS; s++) {
            if (c->skipped & 1u << s) {
                t_str(&t, " ");
                t_dec(&t, s);
            }
        }
        kprintf("vmx cpu %u: FAILED not_run: steps%s: %s\n", c->index, steps, c->skip_reason);
    }
}

void vmx_finish(uint32_t ncpus)
{
    if (!vmx.offered) {
        kprintf("vmx: not offered\n");
        debug_exit(EXIT_OK);
    }
    bool ok = true;
    for (uint32_t i = 0; i < ncpus; i++) {
        print_cpu(&vmx_cpus[i]);
        ok = ok && !vmx_cpus[i].failed && !vmx_cpus[i].skipped;
    }
    uint64_t want = (uint64_t)ncpus * VMX_STEPS * VMX_STEP_INCS, got = vmx.counter;
    if (got == want) {
        kprintf("vmx counter ok\n");
    } else {
        kprintf("vmx counter FAILED got %lu want %lu\n", got, want);
        ok = false;
    }
    if (ok) {
        kprintf("vmx: ok\n");
        debug_exit(EXIT_OK);
    }
    kprintf("vmx: FAILED\n");
    debug_exit(EXIT_VMX_BAD);
}
