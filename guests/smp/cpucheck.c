/*
 * CPU conformance checks (`workload=cpu`), run by the BSP after the boot.
 * Each check prints one line `cpu: <name> ok` (possibly `ok skipped`) or
 * `cpu: <name> FAILED <detail>`, then `cpu checks: <P> passed <F> failed`,
 * and the kernel exits with EXIT_OK or EXIT_CPU_CHECKS_FAILED (7).
 *
 * Expected results (Intel SDM semantics; the kernel is written for those):
 *  - Real hardware (Intel): every check ok.
 *  - QEMU 7.2 TCG: wrmsr_unimplemented_gp and rdmsr_reserved_gp FAIL, because
 *    TCG ignores WRMSR / RDMSR of MSRs it does not know (no #GP; RDMSR reads 0);
 *    wrmsr_noncanonical_gp FAILs: TCG writes a non-canonical FS_BASE.
 *    A MOV to CR4 that sets a bit reserved on the emulated CPU neither faults
 *    nor completes under TCG (it re-executes forever: seen with QEMU 7.2), so
 *    under TCG (CPUID leaf 0x40000000 "TCGTCGTCGTCG") such a CR4 check is not
 *    run and prints `FAILED not run`: cr4_reserved_gp always, cr4_osxsave_gp
 *    without XSAVE, cr4_la57_toggle_gp without LA57 (`-cpu max` has LA57: ok).
 *    QEMU's default CPU (qemu64) is AuthenticAMD: SYSENTER is #UD in 64-bit
 *    mode on AMD, so sysenter_sysexit is skipped there (run it with
 *    `-cpu qemu64,vendor=GenuineIntel`).
 *  - hvdbg: whatever it does not implement yet (SYSCALL, CR4 checks, ...).
 *
 * A check that faults is never fatal: the instructions under test run with
 * trap_expect armed (trap.h), which records the exception and resumes at a
 * fixup. cr4_la57_toggle_gp runs last: a CPU that accepted LA57 in IA-32e
 * mode would switch to 5-level paging (see cpucheck_page_tables()).
 */
#include "cpucheck.h"

#include "console.h"
#include "lapic.h"
#include "trap.h"
#include "work.h"

#define PTE_P       (1UL << 0)
#define PTE_RW      (1UL << 1)
#define PTE_US      (1UL << 2)

#define RFLAGS_TF   (1UL << 8)
#define RFLAGS_IF   (1UL << 9)
#define RFLAGS_DF   (1UL << 10)
#define RFLAGS_RF   (1UL << 16)
#define RFLAGS_VM   (1UL << 17)
#define RFLAGS_AC   (1UL << 18)

#define CR4_LA57    (1UL << 12)
#define CR4_OSXSAVE (1UL << 18)
#define CR4_BIT31   (1UL << 31)  /* reserved (SDM Vol. 3A 2.5) */

#define EFER_SCE    (1UL << 0)

#define VEC_UD      6
#define VEC_GP      13

/* IA32_APIC_BASE of the BSP: base 0xFEE00000, BSP (bit 8), global enable (bit 11). */
#define APIC_BASE_BSP_EXPECTED 0xfee00900UL

/* SYSCALL's IA32_FMASK: clear TF, IF and DF in the handler (SDM Vol. 2B SYSCALL). */
#define SYSCALL_FMASK (RFLAGS_TF | RFLAGS_IF | RFLAGS_DF)

/* RFLAGS of the CPL3 code: IF (so that FMASK / SYSENTER must clear it), AC, bit 1. */
#define USER_RFLAGS (RFLAGS_AC | RFLAGS_IF | 0x2UL)

/*
 * sti_window_timer: periodic LAPIC timer, divide by 1, this initial count.
 * hvdbg counts the timer in guest instructions (one count per instruction);
 * the loop body (sti; nop; cli; cmp; jne; dec; jnz) is 7 instructions, so
 * the bound of 3 timer periods is 3 * count / 7 = 449 389 iterations.
 * Under QEMU TCG the timer counts host nanoseconds (a period is ~1 ms) and
 * one iteration takes ~25 ns, so that bound is ~11 ms; but QEMU's timer
 * callback runs in a host thread that competes with the vCPU threads (the
 * parked APs spin): with -smp 4 on 2 host cores it was seen late by more than
 * that. Under QEMU TCG the bound is therefore STI_TCG_FACTOR times larger.
 */
#define STI_TIMER_COUNT     0x100000U
#define STI_LOOP_INSNS      7
#define STI_MAX_ITERATIONS  (3ULL * STI_TIMER_COUNT / STI_LOOP_INSNS)
#define STI_TCG_FACTOR      20

extern uint64_t boot_pdpt_low[512], boot_pdpt_high[512], boot_pd_low[512];

struct __attribute__((packed)) tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
};

struct __attribute__((packed)) gdt_pointer {
    uint16_t limit;
    uint64_t base;
};

static uint64_t cpucheck_gdt[CK_GDT_ENTRIES] __attribute__((aligned(16)));
static struct tss64 cpucheck_tss __attribute__((aligned(16)));
static uint64_t user_stack_top;  /* identity (user) alias */

static uint32_t passed, failed;

#define PASS(name) do { kprintf("cpu: %s ok\n", name); passed++; } while (0)
#define SKIP(name) do { kprintf("cpu: %s ok skipped\n", name); passed++; } while (0)
#define FAIL(name, fmt, ...) \
    do { kprintf("cpu: %s FAILED " fmt "\n", name, ##__VA_ARGS__); failed++; } while (0)
/* Detail of the exception trap_expect recorded. */
#define FAULT_FMT "vector %lu error 0x%lx rip 0x%lx cs 0x%lx"
#define FAULT_ARGS trap_expect.vector, trap_expect.error_code, trap_expect.rip, trap_expect.cs

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* CPUID leaf 0x40000000 of QEMU's TCG accelerator: "TCGTCGTCGTCG". */
static bool cpu_is_qemu_tcg(void)
{
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    if (!(c & (1u << 31)))  /* CPUID.1:ECX.hypervisor */
        return false;
    cpuid(0x40000000, &a, &b, &c, &d);
    return b == 0x54474354 && c == 0x43544743 && d == 0x47435447;
}

static inline uint64_t read_cr4(void)
{
    uint64_t value;
    __asm__ volatile("mov %%cr4, %0" : "=r"(value));
    return value;
}

static inline void write_cr3(uint64_t value)
{
    __asm__ volatile("mov %0, %%cr3" : : "r"(value) : "memory");
}

static bool fault_is_gp0(void)
{
    return trap_expect.hit && trap_expect.vector == VEC_GP && trap_expect.error_code == 0;
}

static bool word_eq(const char *s, uint64_t len, const char *word)
{
    uint64_t n = strlen(word);
    return len == n && memcmp(s, word, n) == 0;
}

bool cpucheck_requested(const char *cmdline)
{
    const char *s = cmdline;
    bool found = false;
    while (*s) {
        while (*s == ' ')
            s++;
        const char *start = s;
        while (*s && *s != ' ')
            s++;
        uint64_t len = (uint64_t)(s - start);
        if (word_eq(start, len, "workload=cpu"))
            found = true;
        else if (len > 9 && memcmp(start, "workload=", 9) == 0)
            found = false;  /* the last workload= word wins, as in bootinfo.c */
    }
    return found;
}

/* ------------------------------------------------------------------ */
/* 1. RDMSR IA32_APIC_BASE from code copied at run time into a page outside the image. */
static void check_apic_base_copied_code(void)
{
    const char *name = "msr_apic_base_copied_code";
    /* bump_alloc starts at _kernel_end: this page is not part of the loaded image. */
    uint8_t *page = bump_alloc(4096, 4096);
    uint64_t len = (uint64_t)(apic_base_reader_end - apic_base_reader);
    for (uint64_t i = 0; i + 1 < 4096; i += 2) {  /* ud2 behind the copy */
        page[i] = 0x0f;
        page[i + 1] = 0x0b;
    }
    memcpy(page, apic_base_reader, len);
    /* Same linear address for the stores and the fetch: a serializing CPUID
     * (and the call) is enough (SDM Vol. 3A 9.1.3 "Handling Self- and Cross-Modifying Code"). */
    uint32_t a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    uint64_t value = cpu_guarded_call((uint64_t (*)(void))page);
    if (trap_expect.hit)
        FAIL(name, "at phys 0x%lx: " FAULT_FMT, virt_to_phys(page), FAULT_ARGS);
    else if (value != APIC_BASE_BSP_EXPECTED)
        FAIL(name, "IA32_APIC_BASE 0x%lx expected 0x%lx (code at phys 0x%lx)", value,
             APIC_BASE_BSP_EXPECTED, virt_to_phys(page));
    else
        PASS(name);
}

/* 2. WRMSR / RDMSR of an MSR the processor does not implement: #GP(0) (SDM Vol. 2B WRMSR, RDMSR). */
static void check_wrmsr_unimplemented_gp(void)
{
    const char *name = "wrmsr_unimplemented_gp";
    cpu_try_wrmsr(0x1ff, 0);
    if (fault_is_gp0())
        PASS(name);
    else if (trap_expect.hit)
        FAIL(name, "WRMSR 0x1ff: " FAULT_FMT, FAULT_ARGS);
    else
        FAIL(name, "WRMSR 0x1ff: no #GP");
}

/* WRMSR of a non-canonical address to an MSR that holds one: #GP(0), nothing written
   (SDM Vol. 2B WRMSR: IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR, ...). */
static void check_wrmsr_noncanonical_gp(void)
{
    const char *name = "wrmsr_noncanonical_gp";
    uint64_t before = cpu_try_rdmsr(MSR_FS_BASE);
    cpu_try_wrmsr(MSR_FS_BASE, 0xaaaaaaaaaaaaaaaaULL);
    bool gp = fault_is_gp0();
    bool was_hit = trap_expect.hit;
    uint64_t after = cpu_try_rdmsr(MSR_FS_BASE);
    if (gp && after == before)
        PASS(name);
    else if (gp)
        FAIL(name, "#GP, but FS_BASE changed to 0x%lx", after);
    else if (was_hit)
        FAIL(name, "WRMSR FS_BASE 0xaaaaaaaaaaaaaaaa: not #GP(0)");
    else
        FAIL(name, "WRMSR FS_BASE 0xaaaaaaaaaaaaaaaa: no #GP");
}

static void check_rdmsr_reserved_gp(void)
{
    const char *name = "rdmsr_reserved_gp";
    uint64_t value = cpu_try_rdmsr(0x40001234);
    if (fault_is_gp0())
        PASS(name);
    else if (trap_expect.hit)
        FAIL(name, "RDMSR 0x40001234: " FAULT_FMT, FAULT_ARGS);
    else
        FAIL(name, "RDMSR 0x40001234: no #GP, read 0x%lx", value);
}

/* Whether `bit` is reserved in CR4 on this CPU (the ones these checks set). */
static bool cr4_bit_reserved(uint64_t bit)
{
    uint32_t a, b, c, d;
    if (bit == CR4_BIT31)
        return true;
    if (bit == CR4_OSXSAVE) {
        cpuid(1, &a, &b, &c, &d);
        return !(c & (1u << 26));
    }
    if (bit == CR4_LA57) {
        cpuid(0, &a, &b, &c, &d);
        if (a < 7)
            return true;
        cpuid(7, &a, &b, &c, &d);
        return !(c & (1u << 16));  /* CPUID.(EAX=07H,ECX=0):ECX.LA57 */
    }
    return false;
}

/*
 * MOV to CR4 of `cr4 | bit` must #GP(0) and leave CR4 unchanged (SDM Vol. 2B
 * MOV—Move to/from Control Registers). If it was accepted, CR4 is put back.
 */
static void check_cr4_gp(const char *name, uint64_t bit)
{
    uint64_t before = read_cr4();
    if (cr4_bit_reserved(bit) && cpu_is_qemu_tcg()) {
        /* QEMU 7.2 TCG neither faults nor completes such a MOV to CR4: it re-executes it forever. */
        FAIL(name, "not run: QEMU TCG loops on MOV to CR4 with a reserved bit (0x%lx)", bit);
        return;
    }
    cpu_try_write_cr4(before | bit);
    bool gp = fault_is_gp0();
    uint64_t hit_vector = trap_expect.vector, hit_error = trap_expect.error_code;
    bool hit = trap_expect.hit;
    uint64_t after = read_cr4();
    if (after != before)
        cpu_try_write_cr4(before);
    if (gp && after == before)
        PASS(name);
    else if (gp)
        FAIL(name, "#GP but CR4 0x%lx -> 0x%lx", before, after);
    else if (hit)
        FAIL(name, "CR4 0x%lx: vector %lu error 0x%lx", before | bit, hit_vector, hit_error);
    else
        FAIL(name, "no #GP writing CR4 0x%lx, CR4 now 0x%lx", before | bit, after);
}

/* 3. CR4: a reserved bit; OSXSAVE without XSAVE; LA57 in IA-32e mode (run last). */
static void check_cr4_reserved_gp(void)
{
    check_cr4_gp("cr4_reserved_gp", CR4_BIT31);
}

static void check_cr4_osxsave_gp(void)
{
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    if (c & (1u << 26)) {  /* CPUID.1:ECX.XSAVE: then OSXSAVE may be set */
        SKIP("cr4_osxsave_gp");
        return;
    }
    check_cr4_gp("cr4_osxsave_gp", CR4_OSXSAVE);
}

static void check_cr4_la57_toggle_gp(void)
{
    /* "#GP(0) if an attempt is made to change CR4.LA57 while IA-32e mode is active" */
    check_cr4_gp("cr4_la57_toggle_gp", CR4_LA57);
}

/*
 * 4. STI's interrupt shadow ends after the next instruction (SDM Vol. 2B STI):
 * a pending timer interrupt must be delivered between `nop` and `cli`.
 */
static void check_sti_window_timer(void)
{
    const char *name = "sti_window_timer";
    cpu_cli();
    uint64_t start = trap_timer_ticks;
    uint64_t bound = STI_MAX_ITERATIONS * (cpu_is_qemu_tcg() ? STI_TCG_FACTOR : 1);
    uint64_t left = bound;
    lapic_timer_periodic(VEC_TIMER, STI_TIMER_COUNT);
    __asm__ volatile("1:\n\t"
                     "sti\n\t"
                     "nop\n\t"
                     "cli\n\t"
                     "cmpq %[start], (%[ticks])\n\t"
                     "jne 2f\n\t"
                     "decq %[left]\n\t"
                     "jnz 1b\n"
                     "2:"
                     : [left] "+r"(left)
                     : [start] "r"(start), [ticks] "r"(&trap_timer_ticks)
                     : "cc", "memory");
    lapic_timer_stop();
    uint64_t ticks = trap_timer_ticks - start;
    /* Let a tick that became pending meanwhile in now, not later in user mode. */
    __asm__ volatile("sti\n\tnop\n\tnop\n\tcli" : : : "memory");
    if (ticks)
        PASS(name);
    else
        FAIL(name, "no timer tick in %lu sti;nop;cli iterations (timer count 0x%x)", bound,
             STI_TIMER_COUNT);
}

/*
 * 5. CR8 is TPR[7:4] (SDM Vol. 3A 10.8.6.1): MOV to CR8 sets the APIC's TPR, a TPR
 * written through the APIC page reads back through CR8; MOV to CR8 with a bit of 63:4
 * set raises #GP(0) (SDM Vol. 2B MOV CR).
 */
static inline uint64_t read_cr8(void)
{
    uint64_t v;
    __asm__ volatile("mov %%cr8, %0" : "=r"(v));
    return v;
}

static void check_cr8_is_the_tpr(void)
{
    const char *name = "cr8_tpr";
    uint32_t tpr_before = lapic_read(LAPIC_TPR);
    __asm__ volatile("mov %0, %%cr8" : : "r"((uint64_t)5) : "memory");
    uint32_t tpr = lapic_read(LAPIC_TPR);
    lapic_write(LAPIC_TPR, 0x30);
    uint64_t cr8 = read_cr8();
    lapic_write(LAPIC_TPR, tpr_before);
    if (tpr >> 4 == 5 && cr8 == 3)
        PASS(name);
    else
        FAIL(name, "MOV CR8 <- 5 gave TPR 0x%x; TPR 0x30 gave CR8 %lu", tpr, cr8);
}

static void check_cr8_reserved_gp(void)
{
    const char *name = "cr8_reserved_gp";
    uint64_t before = read_cr8();
    cpu_try_write_cr8(0x10);
    bool gp = fault_is_gp0();
    uint64_t after = read_cr8();
    __asm__ volatile("mov %0, %%cr8" : : "r"(before) : "memory");
    if (gp && after == before)
        PASS(name);
    else
        FAIL(name, "MOV CR8 <- 0x10: %s, CR8 %lu -> %lu", gp ? "#GP" : "no #GP", before, after);
}

/* ------------------------------------------------------------------ */
/* User-mode machinery: GDT, TSS, user-accessible page tables, stacks. */

static uint64_t segment_descriptor(uint64_t access, uint64_t flags)
{
    /* base 0, limit 0xfffff (SDM Vol. 3A 3.4.5): access byte bits 47:40, flags bits 55:52 */
    return 0xffffUL | (0xfUL << 48) | (access << 40) | (flags << 52);
}

/* 64-bit TSS descriptor, 16 bytes (SDM Vol. 3A 8.2.3): type 9 (available), P = 1. */
static void tss_descriptor(uint64_t *slot, uint64_t base, uint64_t limit)
{
    slot[0] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89UL << 40) |
              (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    slot[1] = base >> 32;
}

static void cpucheck_gdt_load(void)
{
    cpucheck_gdt[0] = 0;
    cpucheck_gdt[GDT_CODE32_SEL / 8] = segment_descriptor(0x9a, 0xc);  /* as in boot_gdt */
    cpucheck_gdt[GDT_DATA_SEL / 8] = segment_descriptor(0x92, 0xc);
    cpucheck_gdt[GDT_CODE64_SEL / 8] = segment_descriptor(0x9a, 0xa);  /* L = 1 */
    cpucheck_gdt[CK_KDATA_SEL / 8] = segment_descriptor(0x92, 0xc);
    cpucheck_gdt[CK_UCODE32_SEL / 8] = segment_descriptor(0xfa, 0xc);  /* DPL 3 */
    cpucheck_gdt[CK_UDATA_SEL / 8] = segment_descriptor(0xf2, 0xc);
    cpucheck_gdt[CK_UCODE64_SEL / 8] = segment_descriptor(0xfa, 0xa);
    cpucheck_gdt[CK_UDATA2_SEL / 8] = segment_descriptor(0xf2, 0xc);
    tss_descriptor(&cpucheck_gdt[CK_TSS_SEL / 8], (uint64_t)&cpucheck_tss, sizeof(cpucheck_tss) - 1);

    struct gdt_pointer ptr = { sizeof(cpucheck_gdt) - 1, (uint64_t)cpucheck_gdt };
    /* CS and the data selectors keep their values and identical descriptors. */
    __asm__ volatile("lgdt %0\n\t"
                     "mov %1, %%ds\n\t"
                     "mov %1, %%es\n\t"
                     "mov %1, %%ss\n\t"
                     "ltr %w2"
                     : : "m"(ptr), "r"((uint64_t)GDT_DATA_SEL), "r"((uint64_t)CK_TSS_SEL) : "memory");
}

static uint64_t *zeroed_page(void)
{
    uint64_t *page = bump_alloc(4096, 4096);
    memset(page, 0, 4096);
    return page;
}

/*
 * BSP-only copy of the boot page tables (boot.S) with U/S = 1 on the identity
 * map of the first GiB, so CPL3 code runs from the low alias of the image:
 *   PML4[0]   -> pdpt_low (U): PDPT[0] -> pd_user (boot_pd_low | U), PDPT[3] = boot's APIC PD
 *   PML4[511] -> pdpt_high:    PDPT[0] -> boot_pd_low (supervisor, the kernel)
 * pdpt_high[511] points to pdpt_high itself: unused with 4-level paging
 * (0xffffffffc0000000), but if CR4.LA57 were accepted (5-level paging, this
 * PML4 read as the PML5) the kernel half would still translate the same way:
 * PML5[511] -> pdpt_high as PML4, [511] -> pdpt_high as PDPT, [0] -> boot_pd_low.
 */
static void cpucheck_page_tables(void)
{
    uint64_t *pml4 = zeroed_page(), *pdpt_low = zeroed_page(), *pd_user = zeroed_page();
    uint64_t *pdpt_high = zeroed_page();
    for (int i = 0; i < 512; i++)
        pd_user[i] = boot_pd_low[i] | PTE_US;
    pdpt_low[0] = virt_to_phys(pd_user) | PTE_P | PTE_RW | PTE_US;
    pdpt_low[3] = boot_pdpt_low[3];
    pdpt_high[0] = boot_pdpt_high[0];
    pdpt_high[511] = virt_to_phys(pdpt_high) | PTE_P | PTE_RW;
    pml4[0] = virt_to_phys(pdpt_low) | PTE_P | PTE_RW | PTE_US;
    pml4[511] = virt_to_phys(pdpt_high) | PTE_P | PTE_RW;
    write_cr3(virt_to_phys(pml4));
}

static void user_mode_setup(void)
{
    uint8_t *rsp0_stack = bump_alloc(16384, 4096);
    uint8_t *handler_stack = bump_alloc(16384, 4096);
    uint8_t *user_stack = bump_alloc(16384, 4096);
    memset(&cpucheck_tss, 0, sizeof(cpucheck_tss));
    cpucheck_tss.rsp[0] = (uint64_t)(rsp0_stack + 16384);  /* CPL3 -> CPL0 interrupts */
    cpucheck_tss.iomap_base = sizeof(cpucheck_tss);        /* no I/O permission bitmap */
    cpu_handler_stack_top = (uint64_t)(handler_stack + 16384);
    user_stack_top = virt_to_phys(user_stack + 16384);
    cpucheck_gdt_load();
    cpucheck_page_tables();
}

static void rec_clear(void)
{
    for (int i = 0; i < REC_COUNT; i++)
        cpu_rec[i] = 0;
}

/* Guarded WRMSR for the set-up of a check: false (and the FAILED line) if it faulted. */
static bool setup_wrmsr(const char *name, uint32_t msr, uint64_t value)
{
    cpu_try_wrmsr(msr, value);
    if (trap_expect.hit) {
        FAIL(name, "set-up WRMSR 0x%x: " FAULT_FMT, msr, FAULT_ARGS);
        return false;
    }
    return true;
}

/*
 * The checks common to SYSCALL and SYSENTER after cpu_enter_user returned
 * `rax`: two entries into the handler at CPL0 (CS 0x18, SS 0x20), the first
 * back to CPL3 with `user_ss`, same RSP, RAX = SYS_MARK_USER; the second
 * back to the kernel. Prints FAILED and returns false on the first mismatch.
 */
static bool check_round_trip(const char *name, const char *insn, uint64_t rax, uint64_t user_ss)
{
    if (trap_expect.hit) {
        if (trap_expect.vector == VEC_UD && cpu_rec[REC_SYS_CALLS] == 0 && (trap_expect.cs & 3) == 3 &&
            cpu_rec[REC_U_RAX1] == 1)
            FAIL(name, "%s did not enter the handler (no-op), then " FAULT_FMT, insn, FAULT_ARGS);
        else
            FAIL(name, "after %lu handler entries: " FAULT_FMT, cpu_rec[REC_SYS_CALLS], FAULT_ARGS);
        return false;
    }
    if (rax != SYS_MARK_KERNEL || cpu_rec[REC_SYS_CALLS] != 2) {
        FAIL(name, "returned rax 0x%lx after %lu handler entries", rax, cpu_rec[REC_SYS_CALLS]);
        return false;
    }
    if (cpu_rec[REC_U_CS0] != USER_CS) {
        FAIL(name, "user code ran with CS 0x%lx", cpu_rec[REC_U_CS0]);
        return false;
    }
    if (cpu_rec[REC_K_CS] != GDT_CODE64_SEL || cpu_rec[REC_K_SS] != CK_KDATA_SEL ||
        cpu_rec[REC_K2_CS] != GDT_CODE64_SEL) {
        FAIL(name, "handler CS 0x%lx SS 0x%lx (second call CS 0x%lx), expected CS 0x%x SS 0x%x",
             cpu_rec[REC_K_CS], cpu_rec[REC_K_SS], cpu_rec[REC_K2_CS], GDT_CODE64_SEL, CK_KDATA_SEL);
        return false;
    }
    if (cpu_rec[REC_U_CS1] != USER_CS || cpu_rec[REC_U_SS1] != user_ss) {
        FAIL(name, "back in user mode with CS 0x%lx SS 0x%lx, expected 0x%x 0x%lx", cpu_rec[REC_U_CS1],
             cpu_rec[REC_U_SS1], USER_CS, user_ss);
        return false;
    }
    if (cpu_rec[REC_U_RAX1] != SYS_MARK_USER || cpu_rec[REC_U_RSP1] != cpu_rec[REC_U_RSP0]) {
        FAIL(name, "back in user mode with RAX 0x%lx RSP 0x%lx (RSP before 0x%lx)", cpu_rec[REC_U_RAX1],
             cpu_rec[REC_U_RSP1], cpu_rec[REC_U_RSP0]);
        return false;
    }
    return true;
}

/*
 * 5. SYSCALL / SYSRET (SDM Vol. 2B): STAR selectors, LSTAR entry, FMASK; RCX
 * and R11 hold the user RIP and RFLAGS; SYSRETQ restores RFLAGS from R11.
 */
static void check_syscall_sysret(void)
{
    const char *name = "syscall_sysret";
    uint32_t a, b, c, d;
    cpuid(0x80000001, &a, &b, &c, &d);
    if (!(d & (1u << 11))) {  /* CPUID.80000001H:EDX.SYSCALL */
        SKIP(name);
        return;
    }
    uint64_t efer = cpu_try_rdmsr(MSR_EFER);
    if (!setup_wrmsr(name, MSR_EFER, efer | EFER_SCE) ||
        !setup_wrmsr(name, MSR_STAR, ((uint64_t)CK_UCODE32_SEL << 48) | ((uint64_t)GDT_CODE64_SEL << 32)) ||
        !setup_wrmsr(name, MSR_LSTAR, (uint64_t)cpu_syscall_entry) ||
        !setup_wrmsr(name, MSR_FMASK, SYSCALL_FMASK))
        return;
    rec_clear();
    uint64_t rax = cpu_enter_user(virt_to_phys(user_syscall_test), user_stack_top, USER_RFLAGS);
    if (!check_round_trip(name, "SYSCALL", rax, USER_SS))
        return;
    uint64_t uflags = cpu_rec[REC_U_FLAGS0];
    if (!(uflags & RFLAGS_IF) || !(uflags & RFLAGS_DF)) {
        FAIL(name, "user RFLAGS 0x%lx lacks IF or DF", uflags);
        return;
    }
    if (cpu_rec[REC_K_RCX] != cpu_rec[REC_U_RET_RIP] || cpu_rec[REC_K_R11] != uflags) {
        FAIL(name, "handler RCX 0x%lx R11 0x%lx, expected 0x%lx 0x%lx", cpu_rec[REC_K_RCX],
             cpu_rec[REC_K_R11], cpu_rec[REC_U_RET_RIP], uflags);
        return;
    }
    /* RFLAGS <- RFLAGS AND NOT(IA32_FMASK), RF cleared */
    uint64_t want = uflags & ~(SYSCALL_FMASK | RFLAGS_RF);
    if (cpu_rec[REC_K_RFLAGS] != want) {
        FAIL(name, "handler RFLAGS 0x%lx expected 0x%lx (FMASK 0x%lx)", cpu_rec[REC_K_RFLAGS], want,
             SYSCALL_FMASK);
        return;
    }
    /* SYSRET: RFLAGS <- (R11 AND 3C7FD7H) OR 2 */
    want = (uflags & 0x3c7fd7UL) | 2;
    if (cpu_rec[REC_U_FLAGS1] != want) {
        FAIL(name, "RFLAGS after SYSRET 0x%lx expected 0x%lx", cpu_rec[REC_U_FLAGS1], want);
        return;
    }
    PASS(name);
}

static bool cpu_is_intel(void)
{
    uint32_t a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    return b == 0x756e6547 && d == 0x49656e69 && c == 0x6c65746e;  /* "GenuineIntel" */
}

/*
 * 6. SYSENTER / SYSEXIT (SDM Vol. 2B): CS = SYSENTER_CS, RSP = SYSENTER_ESP,
 * RIP = SYSENTER_EIP, RFLAGS.IF cleared; REX.W SYSEXIT to 64-bit CPL3 with
 * RIP = RDX, RSP = RCX. Intel only: SYSENTER is #UD in long mode on AMD.
 */
static void check_sysenter_sysexit(void)
{
    const char *name = "sysenter_sysexit";
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    if (!(d & (1u << 11)) || !cpu_is_intel()) {  /* CPUID.1:EDX.SEP */
        SKIP(name);
        return;
    }
    if (!setup_wrmsr(name, MSR_SYSENTER_CS, GDT_CODE64_SEL) ||
        !setup_wrmsr(name, MSR_SYSENTER_ESP, cpu_handler_stack_top) ||
        !setup_wrmsr(name, MSR_SYSENTER_EIP, (uint64_t)cpu_sysenter_entry))
        return;
    rec_clear();
    uint64_t rax = cpu_enter_user(virt_to_phys(user_sysenter_test), user_stack_top, USER_RFLAGS);
    if (!check_round_trip(name, "SYSENTER", rax, USER_SS_SYSEXIT))
        return;
    if (cpu_rec[REC_K_RSP] != cpu_handler_stack_top) {
        FAIL(name, "handler RSP 0x%lx expected IA32_SYSENTER_ESP 0x%lx", cpu_rec[REC_K_RSP],
             cpu_handler_stack_top);
        return;
    }
    uint64_t kflags = cpu_rec[REC_K_RFLAGS];
    if (kflags & (RFLAGS_IF | RFLAGS_VM | RFLAGS_RF)) {
        FAIL(name, "handler RFLAGS 0x%lx: IF, VM or RF not cleared", kflags);
        return;
    }
    if (cpu_rec[REC_K_RDX] != cpu_rec[REC_U_RET_RIP]) {
        FAIL(name, "handler RDX 0x%lx expected 0x%lx", cpu_rec[REC_K_RDX], cpu_rec[REC_U_RET_RIP]);
        return;
    }
    PASS(name);
}

/* 7. RDMSR at CPL3: #GP(0) (SDM Vol. 2B RDMSR: "If the current privilege level is not 0"). */
static void check_cpl3_rdmsr_gp(void)
{
    const char *name = "cpl3_rdmsr_gp";
    rec_clear();
    uint64_t rip = virt_to_phys(user_rdmsr_test);
    cpu_enter_user(rip, user_stack_top, USER_RFLAGS);
    if (!trap_expect.hit)
        FAIL(name, "returned without an exception");
    else if (fault_is_gp0() && (trap_expect.cs & 3) == 3 && trap_expect.rip == rip + 5)
        PASS(name);
    else if (trap_expect.vector == VEC_UD)
        FAIL(name, "no #GP (RDMSR at CPL3 executed), then " FAULT_FMT, FAULT_ARGS);
    else
        FAIL(name, FAULT_FMT " (RDMSR at 0x%lx)", FAULT_ARGS, rip + 5);
}

void cpucheck_run(void)
{
    cpu_cli();
    check_apic_base_copied_code();
    check_wrmsr_unimplemented_gp();
    check_wrmsr_noncanonical_gp();
    check_rdmsr_reserved_gp();
    check_cr4_reserved_gp();
    check_cr4_osxsave_gp();
    check_sti_window_timer();
    check_cr8_is_the_tpr();
    check_cr8_reserved_gp();
    user_mode_setup();
    check_syscall_sysret();
    check_sysenter_sysexit();
    check_cpl3_rdmsr_gp();
    check_cr4_la57_toggle_gp();
    kprintf("cpu checks: %u passed %u failed\n", passed, failed);
    debug_exit(failed ? EXIT_CPU_CHECKS_FAILED : EXIT_OK);
}
