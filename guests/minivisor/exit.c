/*
 * VM-exit handling (Intel SDM Vol. 3C chapter 28 "VM Exits", exit reasons in Appendix C,
 * exit qualifications in 28.2.1).  Called by vmx_exit_stub (vmentry.S) with the guest's
 * GPRs; returning resumes the guest (VMRESUME), a fatal exit stops the CPU (mv_stop).
 *
 *   CPUID (10)        executed natively, then fixed: the vCPU's APIC ID, no VMX, no x2APIC
 *   HLT (12)          the guest waits: resumed in the HLT activity state (SDM 25.4.2)
 *   APIC access (44)  the instruction is decoded and emulated on the real local APIC,
 *                     INIT and SIPI are the hypervisor's (vCPU start-up), fixed IPIs are
 *                     sent through the real ICR (vCPU i runs on pCPU i, same APIC ID)
 *   CR access (28)    MOV to CR0/CR4 that changes a hypervisor-owned bit, CR3 exiting
 *   MSR (31/32)       MSRs outside the bitmap ranges: #GP(0), as on hvdbg's CPU
 *   VMCALL (18)       passed to the hypervisor below (hvdbg's hypercalls)
 *   everything else   printed, then the CPU stops: EPT violation / misconfiguration,
 *                     triple fault, an exception (only #PF in the BUG_PML4 build), a
 *                     failed VM entry, anything unexpected
 */
#include "lapic.h"
#include "vmx.h"

#define CS_AR_L             (1u << 13)
#define CS_AR_DB            (1u << 14)
#define ACCESS_LINEAR_READ  0
#define ACCESS_LINEAR_WRITE 1

static const char *const exit_names[EXIT_REASON_MAX + 1] = {
    [0] = "EXCEPTION_NMI", [1] = "EXTERNAL_INTERRUPT", [2] = "TRIPLE_FAULT", [3] = "INIT_SIGNAL", [4] = "SIPI",
    [5] = "IO_SMI", [6] = "OTHER_SMI", [7] = "INTERRUPT_WINDOW", [8] = "NMI_WINDOW", [9] = "TASK_SWITCH",
    [10] = "CPUID", [11] = "GETSEC", [12] = "HLT", [13] = "INVD", [14] = "INVLPG", [15] = "RDPMC",
    [16] = "RDTSC", [17] = "RSM", [18] = "VMCALL", [19] = "VMCLEAR", [20] = "VMLAUNCH", [21] = "VMPTRLD",
    [22] = "VMPTRST", [23] = "VMREAD", [24] = "VMRESUME", [25] = "VMWRITE", [26] = "VMXOFF", [27] = "VMXON",
    [28] = "CR_ACCESS", [29] = "DR_ACCESS", [30] = "IO_INSTRUCTION", [31] = "MSR_READ", [32] = "MSR_WRITE",
    [33] = "INVALID_GUEST_STATE", [34] = "MSR_LOADING", [36] = "MWAIT", [37] = "MONITOR_TRAP_FLAG",
    [39] = "MONITOR", [40] = "PAUSE", [41] = "MACHINE_CHECK", [43] = "TPR_BELOW_THRESHOLD",
    [44] = "APIC_ACCESS", [45] = "VIRTUALIZED_EOI", [46] = "GDTR_IDTR", [47] = "LDTR_TR",
    [48] = "EPT_VIOLATION", [49] = "EPT_MISCONFIG", [50] = "INVEPT", [51] = "RDTSCP",
    [52] = "PREEMPTION_TIMER", [53] = "INVVPID", [54] = "WBINVD", [55] = "XSETBV", [56] = "APIC_WRITE",
    [57] = "RDRAND", [58] = "INVPCID", [59] = "VMFUNC", [60] = "ENCLS", [61] = "RDSEED", [62] = "PML_FULL",
    [63] = "XSAVES", [64] = "XRSTORS", [65] = "PCONFIG", [66] = "SPP", [67] = "UMWAIT", [68] = "TPAUSE",
    [69] = "LOADIWKEY", [70] = "ENCLV", [72] = "ENQCMD_PASID", [73] = "ENQCMDS_PASID", [74] = "BUS_LOCK",
    [75] = "NOTIFY", [76] = "SEAMCALL", [77] = "TDCALL",
};

static const char *const vector_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

const char *exit_reason_name(uint32_t reason)
{
    reason &= 0xffff;
    return reason <= EXIT_REASON_MAX && exit_names[reason] ? exit_names[reason] : "UNKNOWN";
}

/* ---- guest state helpers ----------------------------------------------------------- */

static uint32_t guest_code_bits(struct cpu *c)
{
    uint64_t ar = vmcs_get(c, GUEST_CS_AR);
    if ((vmcs_get(c, GUEST_IA32_EFER) & EFER_LMA) && (ar & CS_AR_L))
        return 64;
    return (ar & CS_AR_DB) ? 32 : 16;
}

static uint64_t get_gpr(struct cpu *c, const struct guest_regs *r, unsigned reg)
{
    return reg == GPR_RSP ? vmcs_get(c, GUEST_RSP) : r->gpr[reg & 15];
}

static void set_gpr32(struct cpu *c, struct guest_regs *r, unsigned reg, uint32_t value)
{
    if (reg == GPR_RSP)
        vmcs_set(c, GUEST_RSP, value);
    else
        r->gpr[reg & 15] = value;        /* a 32-bit destination zero-extends (SDM Vol. 1 3.4.1.1) */
}

/* Skip the emulated instruction; its STI / MOV SS shadow ends with it (SDM 25.4.2). */
static void advance_rip(struct cpu *c, uint64_t length)
{
    uint64_t rip = vmcs_get(c, GUEST_RIP) + length;
    if (guest_code_bits(c) != 64)
        rip &= 0xffffffffUL;
    vmcs_set(c, GUEST_RIP, rip);
    uint64_t intr = vmcs_get(c, GUEST_INTERRUPTIBILITY_INFO);
    if (intr & (INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS))
        vmcs_set(c, GUEST_INTERRUPTIBILITY_INFO, intr & ~(uint64_t)(INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS));
}

static void advance_rip_by_exit_length(struct cpu *c)
{
    advance_rip(c, vmcs_get(c, VM_EXIT_INSTRUCTION_LEN));
}

/* Event injection (SDM 27.6): a hardware exception with an error code when the guest is
 * in protected mode (in real mode an exception has none, SDM 27.2.1.3). */
static void inject_exception(struct cpu *c, uint32_t vector, bool has_error_code, uint32_t error_code)
{
    uint32_t info = INTR_INFO_VALID | INTR_TYPE_HW_EXCEPTION | vector;
    if (has_error_code && (vmcs_get(c, GUEST_CR0) & CR0_PE)) {
        info |= INTR_INFO_DELIVER_ERROR_CODE;
        vmcs_set(c, VM_ENTRY_EXCEPTION_ERROR_CODE, error_code);
    }
    vmcs_set(c, VM_ENTRY_INTR_INFO, info);
}

static void dump_guest(struct cpu *c)
{
    mv_log("  vCPU %u: rip 0x%lx rsp 0x%lx rflags 0x%lx cr0 0x%lx cr3 0x%lx cr4 0x%lx efer 0x%lx\n", c->index,
           vmcs_get(c, GUEST_RIP), vmcs_get(c, GUEST_RSP), vmcs_get(c, GUEST_RFLAGS), vmcs_get(c, GUEST_CR0),
           vmcs_get(c, GUEST_CR3), vmcs_get(c, GUEST_CR4), vmcs_get(c, GUEST_IA32_EFER));
    mv_log("  vCPU %u: cs 0x%lx base 0x%lx ar 0x%lx, gdtr 0x%lx/0x%lx, idtr 0x%lx/0x%lx, activity %lu, "
           "interruptibility 0x%lx\n", c->index, vmcs_get(c, GUEST_CS_SELECTOR), vmcs_get(c, GUEST_CS_BASE),
           vmcs_get(c, GUEST_CS_AR), vmcs_get(c, GUEST_GDTR_BASE), vmcs_get(c, GUEST_GDTR_LIMIT),
           vmcs_get(c, GUEST_IDTR_BASE), vmcs_get(c, GUEST_IDTR_LIMIT), vmcs_get(c, GUEST_ACTIVITY_STATE),
           vmcs_get(c, GUEST_INTERRUPTIBILITY_INFO));
}

/* ---- the local APIC: INIT / SIPI / IPIs ------------------------------------------- */

static struct cpu *vcpu_by_apic_id(uint32_t apic_id)
{
    for (uint32_t i = 0; i < cpu_count; i++) {
        if (cpus[i].apic_id == apic_id && cpus[i].vmx_ready)
            return &cpus[i];
    }
    return NULL;
}

static void vcpu_init(struct cpu *from, struct cpu *t)
{
    uint32_t expected = VCPU_WAIT_INIT;
    if (__atomic_compare_exchange_n(&t->vcpu_state, &expected, VCPU_WAIT_SIPI, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
        mv_log("init vCPU %u (APIC id %u) from vCPU %u: waiting for SIPI\n", t->index, t->apic_id, from->index);
    } else if (opt.verbose) {
        mv_log("init vCPU %u from vCPU %u ignored (state %u: no vCPU reset)\n", t->index, from->index,
               t->vcpu_state);
    }
}

static void vcpu_sipi(struct cpu *from, struct cpu *t, uint32_t vector)
{
    uint32_t expected = VCPU_WAIT_SIPI;
    if (!__atomic_compare_exchange_n(&t->vcpu_state, &expected, VCPU_RUNNING, false, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST)) {
        if (opt.verbose)   /* the second SIPI of INIT-SIPI-SIPI: ignored, as by a started CPU */
            mv_log("sipi vCPU %u from vCPU %u ignored (state %u)\n", t->index, from->index, t->vcpu_state);
        return;
    }
    /* SIPI: the AP starts in real mode at vector << 12 (SDM Vol. 3A 9.4.4, 11.6.1). */
    uint64_t entry = (uint64_t)vector << 12;
#ifdef BUG_SIPI_HPA
    entry += EPT_OFFSET;        /* the host-physical address of that page, not the guest's */
#endif
    t->sipi_vector = vector;
    mv_log("sipi vCPU %u entry=0x%lx (vector 0x%02x, from vCPU %u)\n", t->index, entry, vector, from->index);
    __atomic_store_n(&t->sipi_mailbox, SIPI_MAILBOX_VALID | entry, __ATOMIC_RELEASE);
}

/* Apply INIT or SIPI to each vCPU the ICR names (SDM Vol. 3A 11.6.1: destination
 * shorthand, physical destination = APIC ID; logical destinations are not supported). */
static void icr_start_up(struct cpu *c, uint32_t low, uint32_t high)
{
    uint32_t mode = ICR_DELIVERY(low);
    if (mode == ICR_DM_INIT && !(low & ICR_LEVEL_ASSERT) && (low & ICR_TRIGGER_LEVEL))
        return;                 /* INIT level de-assert: no effect (SDM 11.6.1) */
    uint32_t sh = ICR_SHORTHAND(low);
    uint32_t dest = high >> 24;
    if (sh == ICR_SH_NONE && (low & ICR_LOGICAL)) {
        mv_log("vCPU %u: %s with a logical destination 0x%x: not supported, ignored\n", c->index,
               mode == ICR_DM_INIT ? "INIT" : "SIPI", dest);
        return;
    }
    for (uint32_t i = 0; i < cpu_count; i++) {
        struct cpu *t = &cpus[i];
        if (!t->vmx_ready)
            continue;
        bool hit = sh == ICR_SH_NONE ? (dest == 0xff || t->apic_id == dest)
                   : sh == ICR_SH_SELF ? t == c : sh == ICR_SH_ALL ? true : t != c;
        if (!hit)
            continue;
        if (t == c) {
            mv_log("vCPU %u: %s to itself ignored\n", c->index, mode == ICR_DM_INIT ? "INIT" : "SIPI");
            continue;
        }
        if (mode == ICR_DM_INIT)
            vcpu_init(c, t);
        else
            vcpu_sipi(c, t, ICR_VECTOR(low));
    }
    if (sh == ICR_SH_NONE && dest != 0xff && !vcpu_by_apic_id(dest))
        mv_log("vCPU %u: %s to APIC id %u: no such vCPU\n", c->index, mode == ICR_DM_INIT ? "INIT" : "SIPI", dest);
}

/* Other IPIs go out through the real ICR.  vCPU i runs on pCPU i and sees its pCPU's
 * APIC ID, so physical and logical destinations and shorthands mean the same CPUs. */
static void icr_forward(uint32_t low, uint32_t high)
{
    lapic_icr_wait_idle();
    lapic_write(LAPIC_ICR_HIGH, high);
    lapic_write(LAPIC_ICR_LOW, low & ~ICR_SEND_PENDING);
}

static uint32_t vapic_read(struct cpu *c, uint32_t offset)
{
    if (offset & 0xf)
        return 0;               /* registers are 16-byte aligned (SDM Vol. 3A 11.4.1) */
    switch (offset) {
    case LAPIC_ID:
        return c->apic_id << 24;
    case LAPIC_ICR_LOW:
        return c->icr_low & ~ICR_SEND_PENDING;  /* the hypervisor sent it: idle */
    case LAPIC_ICR_HIGH:
        return c->icr_high;
    default:
        return lapic_read(offset);
    }
}

static void vapic_write(struct cpu *c, uint32_t offset, uint32_t value)
{
    if (offset & 0xf)
        return;
    switch (offset) {
    case LAPIC_ID:
        if (opt.verbose)
            mv_log("vCPU %u: write 0x%x to the APIC ID register ignored\n", c->index, value);
        return;
    case LAPIC_ICR_HIGH:
        c->icr_high = value;
        return;
    case LAPIC_ICR_LOW: {
        c->icr_low = value;
        uint32_t mode = ICR_DELIVERY(value);
        if (mode == ICR_DM_INIT || mode == ICR_DM_STARTUP)
            icr_start_up(c, value, c->icr_high);
        else
            icr_forward(value, c->icr_high);
        return;
    }
    default:                    /* EOI, SVR, TPR, LVTs, timer, DFR/LDR, ESR: the real APIC's */
        lapic_write(offset, value);
        return;
    }
}

static void handle_apic_access(struct guest_regs *r, struct cpu *c)
{
    uint64_t qual = vmcs_get(c, EXIT_QUALIFICATION);
    uint32_t offset = (uint32_t)(qual & 0xfff), type = (uint32_t)((qual >> 12) & 0xf);
    uint64_t rip = vmcs_get(c, GUEST_RIP);
    if (type != ACCESS_LINEAR_READ && type != ACCESS_LINEAR_WRITE)
        mv_stop(c, "exit APIC_ACCESS vCPU %u: access type %u at offset 0x%x, rip 0x%lx: not a data read/write "
                "(2 = fetch, 3 = event delivery, 10/15 = guest-physical)\n", c->index, type, offset, rip);

    uint32_t bits = guest_code_bits(c);
    uint64_t linear = bits == 64 ? rip : vmcs_get(c, GUEST_CS_BASE) + rip;
    uint8_t code[15] = { 0 };
    uint32_t got = guest_read_linear(c, linear, code, sizeof(code));
    struct mmio_insn insn;
    const char *why = decode_mmio_mov(code, got, bits, &insn);
    if (why)
        mv_stop(c, "exit APIC_ACCESS vCPU %u: cannot emulate the %u-bit instruction at rip 0x%lx "
                "(%02x %02x %02x %02x %02x %02x, %u bytes readable), offset 0x%x: %s\n", c->index, bits, rip,
                code[0], code[1], code[2], code[3], code[4], code[5], got, offset, why);
    if (insn.write != (type == ACCESS_LINEAR_WRITE))
        mv_stop(c, "exit APIC_ACCESS vCPU %u: rip 0x%lx decodes as a %s, the exit qualification says %s\n",
                c->index, rip, insn.write ? "write" : "read", type ? "write" : "read");

    uint32_t value;
    if (insn.write) {
        value = insn.reg < 0 ? insn.imm : (uint32_t)get_gpr(c, r, (unsigned)insn.reg);
        vapic_write(c, offset, value);
    } else {
        value = vapic_read(c, offset);
        set_gpr32(c, r, (unsigned)insn.reg, value);
    }
    if (opt.verbose)
        mv_log("exit APIC_ACCESS vCPU %u rip 0x%lx: %s offset 0x%03x value 0x%x\n", c->index, rip,
               insn.write ? "write" : "read", offset, value);
    advance_rip(c, insn.length);
}

/* ---- CPUID, HLT, CR access, MSRs, VMCALL ------------------------------------------ */

static void handle_cpuid(struct guest_regs *r, struct cpu *c)
{
    uint32_t leaf = (uint32_t)r->gpr[GPR_RAX], subleaf = (uint32_t)r->gpr[GPR_RCX];
    struct cpuid_regs o = cpuid(leaf, subleaf);
#ifdef BUG_APIC_ID
    uint32_t apic_id = 0;       /* the same initial APIC ID for every vCPU */
#else
    uint32_t apic_id = c->apic_id;
#endif
    if (leaf == 1) {
        o.ebx = (o.ebx & 0x00ffffffu) | apic_id << 24;  /* EBX[31:24] initial APIC ID */
        o.ecx &= ~(1u << 5);                            /* no VMX for the guest */
        o.ecx &= ~(1u << 21);                           /* no x2APIC: only the xAPIC page is virtualized */
    } else if (leaf == 0xb || leaf == 0x1f) {
        o.edx = apic_id;                                /* x2APIC ID */
    } else if (leaf == 0x80000001 && !(c->vmx.proc2 & PROC2_ENABLE_RDTSCP)) {
        o.edx &= ~(1u << 27);                           /* RDTSCP would #UD without "enable RDTSCP" */
    }
    r->gpr[GPR_RAX] = o.eax;
    r->gpr[GPR_RBX] = o.ebx;
    r->gpr[GPR_RCX] = o.ecx;
    r->gpr[GPR_RDX] = o.edx;
    if (opt.verbose)
        mv_log("exit CPUID vCPU %u leaf 0x%x.%u: eax 0x%x ebx 0x%x ecx 0x%x edx 0x%x\n", c->index, leaf, subleaf,
               o.eax, o.ebx, o.ecx, o.edx);
    advance_rip_by_exit_length(c);
}

static void handle_hlt(struct cpu *c)
{
    uint64_t rflags = vmcs_get(c, GUEST_RFLAGS);
    uint64_t rip = vmcs_get(c, GUEST_RIP);
    advance_rip_by_exit_length(c);
    /* HLT with IF=0 is for good.  Said for the BSP's vCPU (a guest that gave up, e.g. the
     * multiboot magic check) and, with `verbose`, for the others (APs parked at the end
     * of a run; a line of theirs could cut into the guest's last lines). */
    if (!(rflags & RFLAGS_IF) && !c->halt_reported && (c->index == 0 || opt.verbose)) {
        c->halt_reported = true;
        mv_log("exit HLT vCPU %u: halted with IF=0 at rip 0x%lx: only NMI/INIT could wake it\n", c->index, rip);
    }
    /* Resume in the HLT activity state: the vCPU sleeps in VMX non-root operation until an
     * interrupt arrives, which is delivered through the guest's IDT (SDM 25.4.2, 27.7.4). */
    if (c->vmx.misc & VMX_MISC_ACTIVITY_HLT)
        vmcs_set(c, GUEST_ACTIVITY_STATE, ACTIVITY_HLT);
}

static bool write_guest_cr0(struct cpu *c, uint64_t value)
{
    const struct vmx_setup *v = &c->vmx;
    uint64_t owned = v->cr0_fixed0 & ~(CR0_PE | CR0_PG) & 0xffffffffUL;
    uint64_t real = value | owned;
    if ((value >> 32) || (real & ~v->cr0_fixed1) || ((value & CR0_PG) && !(value & CR0_PE))) {
        mv_log("vCPU %u: MOV to CR0 of 0x%lx at rip 0x%lx: #GP(0)\n", c->index, value, vmcs_get(c, GUEST_RIP));
        inject_exception(c, 13, true, 0);
        return false;
    }
    /* With "unrestricted guest" the processor would set EFER.LMA itself on MOV to CR0;
     * emulating the MOV, the hypervisor does (SDM Vol. 3A 10.8.5). */
    uint64_t old = vmcs_get(c, GUEST_CR0), efer = vmcs_get(c, GUEST_IA32_EFER);
    if ((value & CR0_PG) && !(old & CR0_PG) && (efer & EFER_LME)) {
        if (!(vmcs_get(c, GUEST_CR4) & CR4_PAE)) {
            mv_log("vCPU %u: MOV to CR0 of 0x%lx with EFER.LME and without CR4.PAE: #GP(0)\n", c->index, value);
            inject_exception(c, 13, true, 0);
            return false;
        }
        efer |= EFER_LMA;
    } else if (!(value & CR0_PG)) {
        efer &= ~EFER_LMA;
    }
    vmcs_set(c, GUEST_IA32_EFER, efer);
    vmcs_set(c, GUEST_CR0, real);
    vmcs_set(c, CR0_READ_SHADOW, value);
    return true;
}

static bool write_guest_cr4(struct cpu *c, uint64_t value)
{
    const struct vmx_setup *v = &c->vmx;
    /* CR4.VMXE: CPUID tells the guest there is no VMX, so setting it is a #GP. */
    if ((value & CR4_VMXE) || ((value | v->cr4_fixed0) & ~v->cr4_fixed1)) {
        mv_log("vCPU %u: MOV to CR4 of 0x%lx at rip 0x%lx (read shadow 0x%lx): %s: #GP(0)\n", c->index, value,
               vmcs_get(c, GUEST_RIP), vmcs_get(c, CR4_READ_SHADOW),
               (value & CR4_VMXE) ? "sets VMXE, which CPUID does not offer the guest" : "sets a reserved bit");
        inject_exception(c, 13, true, 0);
        return false;
    }
    vmcs_set(c, GUEST_CR4, value | v->cr4_fixed0);
    vmcs_set(c, CR4_READ_SHADOW, value);
    return true;
}

/* Exit qualification for control-register accesses: SDM 28.2.1 (CR number 3:0, access
 * type 5:4, 0 = MOV to CR, 1 = MOV from CR; GPR 11:8). */
static void handle_cr_access(struct guest_regs *r, struct cpu *c)
{
    uint64_t qual = vmcs_get(c, EXIT_QUALIFICATION);
    unsigned cr = qual & 15, type = (qual >> 4) & 3, reg = (qual >> 8) & 15;
    bool done = false;
    if (type == 0) {
        uint64_t value = get_gpr(c, r, reg);
        if (guest_code_bits(c) != 64)
            value &= 0xffffffffUL;
        if (cr == 0)
            done = write_guest_cr0(c, value);
        else if (cr == 4)
            done = write_guest_cr4(c, value);
        else if (cr == 3) {
            vmcs_set(c, GUEST_CR3, value);
            done = true;
        } else
            mv_stop(c, "exit CR_ACCESS vCPU %u: MOV to CR%u\n", c->index, cr);
    } else if (type == 1 && cr == 3) {
        uint64_t cr3 = vmcs_get(c, GUEST_CR3);
        if (reg == GPR_RSP)
            vmcs_set(c, GUEST_RSP, cr3);
        else
            r->gpr[reg] = cr3;
        done = true;
    } else {
        mv_stop(c, "exit CR_ACCESS vCPU %u: qualification 0x%lx at rip 0x%lx not handled\n", c->index, qual,
                vmcs_get(c, GUEST_RIP));
    }
    if (opt.verbose)
        mv_log("exit CR_ACCESS vCPU %u: qualification 0x%lx%s\n", c->index, qual, done ? "" : ": #GP(0)");
    if (done)
        advance_rip_by_exit_length(c);
}

/* RDMSR/WRMSR exit whatever the bitmaps say outside 0-1FFFH and C0000000H-C0001FFFH
 * (SDM 26.1.3); hvdbg's CPU raises #GP for MSRs it does not implement, so does this. */
static void handle_msr(struct guest_regs *r, struct cpu *c, bool write)
{
    if (opt.verbose)
        mv_log("exit %s vCPU %u: MSR 0x%lx outside the MSR-bitmap ranges: #GP(0)\n", write ? "MSR_WRITE" : "MSR_READ",
               c->index, r->gpr[GPR_RCX] & 0xffffffffUL);
    inject_exception(c, 13, true, 0);
}

static void handle_vmcall(struct guest_regs *r, struct cpu *c)
{
    uint64_t a = r->gpr[GPR_RAX], b = r->gpr[GPR_RBX], cx = r->gpr[GPR_RCX], d = r->gpr[GPR_RDX];
    uint64_t si = r->gpr[GPR_RSI], di = r->gpr[GPR_RDI];
    mv_log("exit VMCALL vCPU %u: rax 0x%lx rbx 0x%lx rcx 0x%lx: executed again for the hypervisor below\n", c->index,
           a, b, cx);
    /* Under hvdbg this hypervisor runs in VMX non-root operation itself, so its VMCALL is
     * hvdbg's hypercall.  On bare metal it would be VMfailValid(1) (SDM 31.3 VMCALL). */
    __asm__ volatile("vmcall" : "+a"(a), "+b"(b), "+c"(cx), "+d"(d), "+S"(si), "+D"(di) : : "memory", "cc");
    r->gpr[GPR_RAX] = a;
    r->gpr[GPR_RBX] = b;
    r->gpr[GPR_RCX] = cx;
    r->gpr[GPR_RDX] = d;
    r->gpr[GPR_RSI] = si;
    r->gpr[GPR_RDI] = di;
    advance_rip_by_exit_length(c);
}

/* ---- fatal exits ---------------------------------------------------------------------- */

__attribute__((noreturn)) static void fatal_ept_violation(struct cpu *c)
{
    uint64_t gpa = vmcs_get(c, GUEST_PHYSICAL_ADDRESS), qual = vmcs_get(c, EXIT_QUALIFICATION);
    uint64_t rip = vmcs_get(c, GUEST_RIP);
    /* Exit qualification for EPT violations (SDM 28.2.1): bit 0 read, 1 write, 2 fetch;
     * bits 5:3 what the EPT entry allowed; bit 7 guest-linear address valid. */
    const char *access = (qual & 2) ? "write" : (qual & 4) ? "instruction fetch" : "read";
    mv_log("exit EPT_VIOLATION vCPU %u: %s of GPA 0x%lx, exit qualification 0x%lx, guest rip 0x%lx\n", c->index,
           access, gpa, qual, rip);
    if (qual & (1UL << 7))
        mv_log("  guest linear address 0x%lx\n", vmcs_get(c, GUEST_LINEAR_ADDRESS));
    if (gpa >= EPT_MAPPED_MEM && gpa < GUEST_MEM)
        mv_log("  GPA 0x%lx is %lu KiB past the end of the EPT-mapped guest RAM (0x%lx), inside the %lu MiB the "
               "guest was told it has\n", gpa, (gpa - EPT_MAPPED_MEM) / 1024, EPT_MAPPED_MEM, GUEST_MEM / MIB);
    else if (gpa >= EPT_OFFSET && gpa < EPT_OFFSET + GUEST_MEM)
        mv_log("  GPA 0x%lx = EPT_OFFSET + 0x%lx: a host-physical address of guest RAM used as a guest-physical "
               "one\n", gpa, gpa - EPT_OFFSET);
    else if (gpa >= EPT_MAPPED_MEM)
        mv_log("  GPA 0x%lx is outside guest RAM (0x0-0x%lx): the EPT maps nothing there\n", gpa, EPT_MAPPED_MEM - 1);
    dump_guest(c);
    mv_stop(c, "EPT violation\n");
}

__attribute__((noreturn)) static void fatal_exception(struct cpu *c)
{
    uint64_t info = vmcs_get(c, VM_EXIT_INTR_INFO), qual = vmcs_get(c, EXIT_QUALIFICATION);
    uint64_t rip = vmcs_get(c, GUEST_RIP);
    uint32_t vector = info & 0xff, type = (info >> 8) & 7;
    uint64_t error = (info & INTR_INFO_DELIVER_ERROR_CODE) ? vmcs_get(c, VM_EXIT_INTR_ERROR_CODE) : 0;
    if (vector == 14) {
        mv_log("exit EXCEPTION vCPU %u: #PF (vector 14) error code 0x%lx at guest rip 0x%lx, cr2 0x%lx\n", c->index,
               error, rip, qual);
        mv_log("  guest page walk of cr2 0x%lx (cr3 0x%lx):\n", qual, vmcs_get(c, GUEST_CR3));
        uint64_t gpa;
        if (guest_linear_to_gpa(c, qual, &gpa, true))
            mv_log("  => GPA 0x%lx\n", gpa);
    } else {
        mv_log("exit EXCEPTION vCPU %u: %s (vector %u, type %u) error code 0x%lx at guest rip 0x%lx, "
               "qualification 0x%lx\n", c->index, vector < 32 ? vector_names[vector] : "?", vector, type, error, rip,
               qual);
    }
    dump_guest(c);
    mv_stop(c, "guest exception\n");
}

__attribute__((noreturn)) static void fatal_triple_fault(struct cpu *c)
{
    uint64_t rip = vmcs_get(c, GUEST_RIP);
    mv_log("exit TRIPLE_FAULT vCPU %u at guest rip 0x%lx (idtr 0x%lx limit 0x%lx)\n", c->index, rip,
           vmcs_get(c, GUEST_IDTR_BASE), vmcs_get(c, GUEST_IDTR_LIMIT));
    mv_log("  guest page walk of rip 0x%lx:\n", rip);
    uint64_t gpa;
    if (guest_linear_to_gpa(c, rip, &gpa, true))
        mv_log("  => GPA 0x%lx\n", gpa);
    dump_guest(c);
    mv_stop(c, "triple fault\n");
}

__attribute__((noreturn)) static void fatal_entry_failure(struct cpu *c, uint32_t reason)
{
    uint64_t qual = vmcs_get(c, EXIT_QUALIFICATION);
    uint32_t basic = reason & 0xffff;
    const char *what = basic == EXIT_REASON_INVALID_GUEST_STATE ? "invalid guest state (SDM 27.3.1)"
                       : basic == EXIT_REASON_MSR_LOADING ? "MSR loading (SDM 27.4)"
                       : basic == EXIT_REASON_MACHINE_CHECK ? "machine-check event" : "unknown";
    mv_log("VM entry failed on vCPU %u: exit reason 0x%x (%s, %s), exit qualification 0x%lx\n", c->index, reason,
           exit_reason_name(basic), what, qual);
    dump_guest(c);
    mv_stop(c, "VM-entry failure\n");
}

/* ---- dispatch ------------------------------------------------------------------------- */

void vmx_exit_handler(struct guest_regs *r, struct cpu *c)
{
    vmcs_cache_reset(c);
    uint32_t reason = (uint32_t)vmcs_get(c, VM_EXIT_REASON);
    uint32_t basic = reason & 0xffff;
    c->exit_count++;
    if (basic <= EXIT_REASON_MAX)
        c->exit_counts[basic]++;
    if (reason & EXIT_REASON_FAILED_ENTRY)
        fatal_entry_failure(c, reason);
    if (opt.verbose && basic != EXIT_REASON_APIC_ACCESS && basic != EXIT_REASON_CPUID)
        mv_log("exit %s vCPU %u #%lu: qualification 0x%lx rip 0x%lx\n", exit_reason_name(basic), c->index,
               c->exit_count, vmcs_get(c, EXIT_QUALIFICATION), vmcs_get(c, GUEST_RIP));

    switch (basic) {
    case EXIT_REASON_CPUID:
        handle_cpuid(r, c);
        break;
    case EXIT_REASON_APIC_ACCESS:
        handle_apic_access(r, c);
        break;
    case EXIT_REASON_HLT:
        handle_hlt(c);
        break;
    case EXIT_REASON_CR_ACCESS:
        handle_cr_access(r, c);
        break;
    case EXIT_REASON_MSR_READ:
    case EXIT_REASON_MSR_WRITE:
        handle_msr(r, c, basic == EXIT_REASON_MSR_WRITE);
        break;
    case EXIT_REASON_VMCALL:
        handle_vmcall(r, c);
        break;
    case EXIT_REASON_EPT_VIOLATION:
        fatal_ept_violation(c);
    case EXIT_REASON_EPT_MISCONFIG:
        mv_log("exit EPT_MISCONFIG vCPU %u: GPA 0x%lx, guest rip 0x%lx\n", c->index,
               vmcs_get(c, GUEST_PHYSICAL_ADDRESS), vmcs_get(c, GUEST_RIP));
        dump_guest(c);
        mv_stop(c, "EPT misconfiguration\n");
    case EXIT_REASON_TRIPLE_FAULT:
        fatal_triple_fault(c);
    case EXIT_REASON_EXCEPTION_NMI:
        fatal_exception(c);
    default:
        mv_log("exit %s (reason %u) vCPU %u: unexpected, exit qualification 0x%lx, guest rip 0x%lx\n",
               exit_reason_name(basic), basic, c->index, vmcs_get(c, EXIT_QUALIFICATION), vmcs_get(c, GUEST_RIP));
        dump_guest(c);
        mv_stop(c, "unexpected VM exit\n");
    }
    /* No event is re-injected from the IDT-vectoring information: the exits resumed here
     * (CPUID, HLT, CR access, MSR, VMCALL, data APIC accesses) are caused by instructions,
     * never by event delivery (SDM 28.2.4); APIC accesses during event delivery and EPT
     * violations stop the vCPU. */

    /* "IA-32e mode guest" must equal the guest's EFER.LMA at VM entry (SDM 27.3.1.1); the
     * guest turns long mode on by itself, saved on exit in GUEST_IA32_EFER (SDM 28.3.1). */
    uint64_t efer = vmcs_get(c, GUEST_IA32_EFER);
    uint64_t entry = c->vmx.entry | ((efer & EFER_LMA) ? ENTRY_IA32E_MODE_GUEST : 0);
    if (entry != vmcs_get(c, VM_ENTRY_CONTROLS))
        vmcs_set(c, VM_ENTRY_CONTROLS, entry);
}
