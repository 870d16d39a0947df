/*
 * minivisor entry points: bsp_main (boot.S, after the switch to long mode) and ap_main
 * (each AP, after trampoline.S), the multiboot information this hypervisor was booted
 * with (Multiboot Specification 0.6.96, 3.3), its command line, and the fatal stop.
 *
 * Stages, each with a serial line (README.md): boot, CPUs (ACPI MADT), memory check,
 * APs started (INIT-SIPI-SIPI) and each in VMX operation, the BSP in VMX operation, EPT,
 * guest loaded, VMLAUNCH of the BSP's vCPU; the APs launch theirs when the guest's SIPI
 * arrives in their mailbox.
 */
#include "lapic.h"
#include "vmx.h"

#define MBI_MEM             (1u << 0)
#define MBI_CMDLINE         (1u << 2)
#define MBI_MODS            (1u << 3)
#define MBI_MMAP            (1u << 6)
#define FOUR_GIB            0x100000000UL
#define MODULE_STRING_MAX   256
#define MV_CMDLINE_MAX      512

_Static_assert((EPT_OFFSET & 0x1fffff) == 0, "EPT_OFFSET must be 2 MiB aligned");
_Static_assert((GUEST_MEM & 0x1fffff) == 0, "GUEST_MEM must be a multiple of 2 MiB");
_Static_assert(EPT_MAPPED_MEM <= GUEST_MEM, "the EPT cannot map more than the guest RAM");
_Static_assert(GUEST_MEM >= 2 * MIB, "the guest needs memory above 1 MiB");
_Static_assert(EPT_OFFSET + GUEST_MEM <= IOAPIC_PHYS, "guest RAM must lie in the host's RAM below 4 GiB");

struct __attribute__((packed)) mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
};

struct __attribute__((packed)) mb_module {
    uint32_t mod_start, mod_end, string, reserved;
};

struct __attribute__((packed)) mb_mmap_entry {
    uint32_t size;
    uint64_t addr, len;
    uint32_t type;
};

struct cpu cpus[MAX_CPUS];
uint32_t cpu_count;
struct options opt;
uint8_t boot_stacks[MAX_CPUS][STACK_SIZE] __attribute__((aligned(16)));

extern uint8_t _image_start[], _bss_end[];

static struct {
    uint64_t start, end;
    char string[MODULE_STRING_MAX];
} module0;
static char mv_cmdline[MV_CMDLINE_MAX];
static uint32_t mbi_flags, mbi_mem_upper;
static uint64_t mbi_mmap_addr, mbi_mmap_length;

struct cpu *this_cpu(void)
{
    uint16_t tr = read_tr();
    if (tr >= SEL_TSS0 && (uint32_t)(tr - SEL_TSS0) / 16 < MAX_CPUS)
        return &cpus[(tr - SEL_TSS0) / 16];
    return &cpus[0];
}

void mv_stop(struct cpu *c, const char *fmt, ...)
{
    char prefix[48];
    mv_format(prefix, sizeof(prefix), "minivisor: cpu %u stopped: ", c->index);
    va_list ap;
    va_start(ap, fmt);
    mv_vprintf_prefixed(prefix, fmt, ap);
    va_end(ap);
    if (c->exit_count) {
        char line[256];
        size_t len = mv_format(line, sizeof(line), "minivisor: cpu %u: %lu VM exits:", c->index, c->exit_count);
        for (uint32_t r = 0; r <= EXIT_REASON_MAX; r++) {
            if (c->exit_counts[r])
                len += mv_format(line + len, sizeof(line) - len, " %s %u", exit_reason_name(r), c->exit_counts[r]);
        }
        mv_printf("%s\n", line);
    }
    if (opt.fatal_exit)
        outl(DEBUG_EXIT_PORT, MV_FATAL_STATUS);
    halt_forever();
}

static void copy_string(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < cap; i++)
        dst[i] = src[i];
    dst[i] = '\0';
}

static void parse_multiboot(uint32_t info_phys)
{
    const struct mb_info *mbi = phys_ptr(info_phys);
    mbi_flags = mbi->flags;
    if (mbi->flags & MBI_MEM)
        mbi_mem_upper = mbi->mem_upper;
    if (mbi->flags & MBI_CMDLINE)
        copy_string(mv_cmdline, sizeof(mv_cmdline), phys_ptr(mbi->cmdline));
    if (mbi->flags & MBI_MMAP) {
        mbi_mmap_addr = mbi->mmap_addr;
        mbi_mmap_length = mbi->mmap_length;
    }
    if ((mbi->flags & MBI_MODS) && mbi->mods_count > 0) {
        const struct mb_module *m = phys_ptr(mbi->mods_addr);
        module0.start = m->mod_start;
        module0.end = m->mod_end;
        copy_string(module0.string, sizeof(module0.string), m->string ? phys_ptr(m->string) : "");
    }
}

static bool word_is(const char *w, size_t len, const char *s)
{
    return strlen(s) == len && memcmp(w, s, len) == 0;
}

static void append_guest_word(const char *w, size_t len)
{
    size_t used = strlen(opt.guest_cmdline);
    if (used && used + 1 < GUEST_CMDLINE_MAX)
        opt.guest_cmdline[used++] = ' ';
    for (size_t i = 0; i < len && used + 1 < GUEST_CMDLINE_MAX; i++)
        opt.guest_cmdline[used++] = w[i];
    opt.guest_cmdline[used] = '\0';
}

/*
 * minivisor's command line: `verbose`, `fatal=exit`, `hlt=native`, `cr_shadow=off`,
 * `cpus=N`;
 * other words are ignored (QEMU and GRUB put the kernel's path first).  Everything after
 * a `--` word is appended to the guest's command line, which starts with module 0's
 * string (GRUB: `module /smp.elf ARGS`; hvdbg: the module's file name).
 */
static void parse_options(void)
{
    opt.max_cpus = MAX_CPUS;
    copy_string(opt.guest_cmdline, sizeof(opt.guest_cmdline), module0.string);
    const char *s = mv_cmdline;
    bool guest_words = false;
    while (*s) {
        while (*s == ' ')
            s++;
        const char *w = s;
        while (*s && *s != ' ')
            s++;
        size_t len = (size_t)(s - w);
        if (!len)
            continue;
        if (guest_words)
            append_guest_word(w, len);
        else if (word_is(w, len, "--"))
            guest_words = true;
        else if (word_is(w, len, "verbose"))
            opt.verbose = true;
        else if (word_is(w, len, "fatal=exit"))
            opt.fatal_exit = true;
        else if (word_is(w, len, "fatal=halt"))
            opt.fatal_exit = false;
        else if (word_is(w, len, "hlt=native"))
            opt.hlt_native = true;
        else if (word_is(w, len, "hlt=exit"))
            opt.hlt_native = false;
        else if (word_is(w, len, "cr_shadow=off"))
            opt.no_cr_shadow = true;
        else if (word_is(w, len, "cr_shadow=on"))
            opt.no_cr_shadow = false;
        else if (len > 5 && memcmp(w, "cpus=", 5) == 0) {
            uint32_t n = 0;
            for (size_t i = 5; i < len && w[i] >= '0' && w[i] <= '9'; i++)
                n = n * 10 + (uint32_t)(w[i] - '0');
            if (n >= 1 && n <= MAX_CPUS)
                opt.max_cpus = n;
        }
    }
}

/* [start, end) lies in RAM the loader reported (memory map, else mem_upper). */
static bool host_ram_covers(uint64_t start, uint64_t end)
{
    if (mbi_flags & MBI_MMAP) {
        for (uint64_t p = mbi_mmap_addr; p < mbi_mmap_addr + mbi_mmap_length;) {
            const struct mb_mmap_entry *e = phys_ptr(p);
            if (e->type == 1 && e->addr <= start && end <= e->addr + e->len)
                return true;
            p += e->size + 4;
        }
        return false;
    }
    return (mbi_flags & MBI_MEM) && end <= 0x100000 + (uint64_t)mbi_mem_upper * 1024;
}

static bool overlaps(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1)
{
    return a0 < b1 && b0 < a1;
}

static void check_memory(struct cpu *bsp)
{
    uint64_t g0 = EPT_OFFSET, g1 = EPT_OFFSET + GUEST_MEM;
    if (!module0.end)
        mv_stop(bsp, "no multiboot module: module 0 must be the guest kernel\n");
    if (!host_ram_covers(g0, g1))
        mv_stop(bsp, "guest RAM HPA 0x%lx-0x%lx is not in the machine's RAM: give the machine at least %lu MiB "
                "(hvdbg: memory = \"%luM\")\n", g0, g1 - 1, g1 / MIB, g1 / MIB + 64);
    if (overlaps(g0, g1, (uint64_t)_image_start, (uint64_t)_bss_end) || overlaps(g0, g1, module0.start, module0.end))
        mv_stop(bsp, "guest RAM HPA 0x%lx-0x%lx overlaps the hypervisor (0x%lx-0x%lx) or module 0 (0x%lx-0x%lx)\n",
                g0, g1 - 1, (uint64_t)_image_start, (uint64_t)_bss_end, module0.start, module0.end);
    mv_log("memory: hypervisor 0x%lx-0x%lx, module 0 0x%lx-0x%lx '%s', guest RAM %lu MiB at HPA 0x%lx-0x%lx\n",
           (uint64_t)_image_start, (uint64_t)_bss_end, module0.start, module0.end, module0.string, GUEST_MEM / MIB,
           g0, g1 - 1);
}

static void discover_cpus(struct cpu *bsp)
{
    uint8_t ids[MAX_CPUS];
    uint32_t n = acpi_find_cpus(ids, MAX_CPUS);
    cpu_count = 1;
    bool bsp_listed = false;
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] == bsp->apic_id) {
            bsp_listed = true;
            continue;
        }
        if (cpu_count >= opt.max_cpus)
            continue;
        cpus[cpu_count].index = cpu_count;
        cpus[cpu_count].apic_id = ids[i];
        cpu_count++;
    }
    if (!n)
        mv_log("cpus: no MADT: running the BSP alone\n");
    else if (!bsp_listed)
        mv_log("cpus: warning: the BSP's APIC id %u is not in the MADT\n", bsp->apic_id);
    char line[256];
    size_t len = mv_format(line, sizeof(line), "minivisor: cpus: %u (MADT lists %u), APIC ids:", cpu_count, n);
    for (uint32_t i = 0; i < cpu_count; i++)
        len += mv_format(line + len, sizeof(line) - len, " %u", cpus[i].apic_id);
    mv_printf("%s; one vCPU per CPU, vCPU i on CPU i with the same APIC id\n", line);
}

__attribute__((noreturn)) void bsp_main(uint32_t magic, uint32_t info_phys);
__attribute__((noreturn)) void ap_main(uint32_t index);

void bsp_main(uint32_t magic, uint32_t info_phys)
{
    struct cpu *bsp = &cpus[0];
    bsp->index = 0;
    cpu_local_init(bsp);
    mv_log("boot: %s build; guest RAM %lu MiB (EPT maps %lu MiB) at HPA = GPA + 0x%lx\n", MV_BUILD,
           GUEST_MEM / MIB, EPT_MAPPED_MEM / MIB, EPT_OFFSET);
    if (magic != MB1_BOOT_MAGIC)
        mv_stop(bsp, "EAX = 0x%x at entry: not booted by a multiboot 1 loader\n", magic);
    parse_multiboot(info_phys);
    parse_options();
    mv_log("boot: cmdline '%s'; guest cmdline '%s'%s%s%s%s\n", mv_cmdline, opt.guest_cmdline,
           opt.verbose ? ", verbose" : "", opt.fatal_exit ? ", fatal=exit" : "", opt.hlt_native ? ", hlt=native" : "",
           opt.no_cr_shadow ? ", cr_shadow=off" : "");

    bsp->apic_id = lapic_id();
    discover_cpus(bsp);
    check_memory(bsp);

    smp_start_aps();
    bool vmx = vmx_cpu_init(bsp);
    __atomic_store_n(&bsp->join, vmx ? JOIN_READY : JOIN_FAILED, __ATOMIC_RELEASE);
    if (vmx)
        vmx_report_controls(bsp);
    uint32_t ready = 0;
    for (uint32_t i = 0; i < cpu_count; i++)
        ready += cpus[i].join == JOIN_READY;
    mv_log("smp: %u of %u CPUs in VMX operation\n", ready, cpu_count);

    ept_build();
    if (!guest_load(phys_ptr(module0.start), module0.end - module0.start))
        mv_stop(bsp, "cannot load the guest kernel (module 0)\n");
    if (!vmx)
        mv_stop(bsp, "no VMX operation on the BSP: the guest cannot be launched\n");

    struct guest_entry g;
    guest_bsp_entry(&g);
    vmx_launch_vcpu(bsp, &g);
}

void ap_main(uint32_t index)
{
    struct cpu *c = &cpus[index];
    if (index >= cpu_count || lapic_id() != c->apic_id)
        halt_forever();             /* late from an earlier, timed-out start: stay out */
    cpu_local_init(c);
    __atomic_store_n(&c->join, JOIN_ALIVE, __ATOMIC_RELEASE);
    bool ok = vmx_cpu_init(c);
    __atomic_store_n(&c->join, ok ? JOIN_READY : JOIN_FAILED, __ATOMIC_RELEASE);
    if (!ok) {
        mv_log("cpu %u: not in VMX operation: it runs no vCPU\n", index);
        halt_forever();
    }

    /* Wait for the guest's SIPI for this vCPU (exit.c vcpu_sipi posts the entry). */
    uint64_t mailbox;
    while (!((mailbox = __atomic_load_n(&c->sipi_mailbox, __ATOMIC_ACQUIRE)) & SIPI_MAILBOX_VALID))
        cpu_pause();
    struct guest_entry g;
    guest_sipi_entry(&g, mailbox & ~SIPI_MAILBOX_VALID);
    vmx_launch_vcpu(c, &g);
}
