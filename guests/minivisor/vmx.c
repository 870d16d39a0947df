/*
 * VMX operation of one CPU (Intel SDM Vol. 3C):
 *   24.6 "Discovering Support for VMX" (CPUID.1:ECX.VMX), 24.7 "Enabling and Entering VMX
 *   Operation" (IA32_FEATURE_CONTROL, VMXON region), 24.8 "Restrictions on VMX Operation"
 *   (CR0/CR4 fixed bits), Appendix A (capability MSRs: every control value is
 *   (wanted | allowed-0) & allowed-1, from the TRUE_ MSRs when IA32_VMX_BASIC[55] = 1),
 *   25.11.3 "Initializing a VMCS" (VMCLEAR, VMPTRLD, VMWRITE), 25.4-25.8 (guest state,
 *   host state, execution / exit / entry controls), 27 (VM-entry checks the values must
 *   pass), 31 (the instructions).
 */
#include "vmx.h"

/* Controls the hypervisor wants (README.md "Design"). */
#define WANT_PIN        0u
#define WANT_PROC       (PROC_USE_IO_BITMAPS | PROC_USE_MSR_BITMAPS | PROC_ACTIVATE_SECONDARY)
#define NEED_PROC       WANT_PROC
#define WANT_PROC2      (PROC2_ENABLE_EPT | PROC2_UNRESTRICTED_GUEST | PROC2_VIRTUALIZE_APIC_ACCESSES)
#define NEED_PROC2      WANT_PROC2
#define WANT_EXIT       (EXIT_HOST_ADDRESS_SPACE_SIZE | EXIT_SAVE_IA32_EFER | EXIT_LOAD_IA32_EFER)
#define NEED_EXIT       WANT_EXIT
#define WANT_ENTRY      ENTRY_LOAD_IA32_EFER
#define NEED_ENTRY      WANT_ENTRY

#ifdef BUG_PML4
#define GUEST_EXCEPTION_BITMAP (1u << 14)  /* #PF: the guest's page faults are VM exits */
#else
#define GUEST_EXCEPTION_BITMAP 0u
#endif

static uint8_t vmxon_regions[MAX_CPUS][4096] __attribute__((aligned(4096)));
static uint8_t vmcs_regions[MAX_CPUS][4096] __attribute__((aligned(4096)));
static uint8_t exit_stacks[MAX_CPUS][STACK_SIZE] __attribute__((aligned(16)));
/* All zeros: no I/O port and no MSR (in the bitmap ranges) causes a VM exit (SDM 25.6.4, 25.6.9). */
static uint8_t io_bitmap_a[4096] __attribute__((aligned(4096)));
static uint8_t io_bitmap_b[4096] __attribute__((aligned(4096)));
static uint8_t msr_bitmap[4096] __attribute__((aligned(4096)));

/* SDM 31.4 "VM Instruction Error Numbers". */
static const char *vm_error_name(uint64_t error)
{
    switch (error) {
    case 1: return "VMCALL executed in VMX root operation";
    case 2: return "VMCLEAR with invalid physical address";
    case 3: return "VMCLEAR with VMXON pointer";
    case 4: return "VMLAUNCH with non-clear VMCS";
    case 5: return "VMRESUME with non-launched VMCS";
    case 6: return "VMRESUME after VMXOFF";
    case 7: return "VM entry with invalid control field(s)";
    case 8: return "VM entry with invalid host-state field(s)";
    case 9: return "VMPTRLD with invalid physical address";
    case 10: return "VMPTRLD with VMXON pointer";
    case 11: return "VMPTRLD with incorrect VMCS revision identifier";
    case 12: return "VMREAD/VMWRITE from/to unsupported VMCS component";
    case 13: return "VMWRITE to read-only VMCS component";
    case 15: return "VMXON executed in VMX root operation";
    case 26: return "VM entry with events blocked by MOV SS";
    case 28: return "invalid operand to INVEPT/INVVPID";
    default: return "see SDM 31.4";
    }
}

void vmx_instruction_failed(const char *what, uint64_t field, uint64_t flags)
{
    struct cpu *c = this_cpu();
    if (flags & RFLAGS_ZF) {
        uint64_t error = 0;
        vmx_vmread(VM_INSTRUCTION_ERROR, &error);
        mv_stop(c, "%s (0x%lx) failed: VMfailValid, VM-instruction error %lu: %s\n", what, field, error,
                vm_error_name(error));
    }
    mv_stop(c, "%s (0x%lx) failed: VMfailInvalid (no current VMCS, or a bad pointer)\n", what, field);
}

uint64_t vmread(uint64_t field)
{
    uint64_t value = 0;
    uint64_t flags = vmx_vmread(field, &value);
    if (flags)
        vmx_instruction_failed("VMREAD", field, flags);
    return value;
}

void vmwrite(uint64_t field, uint64_t value)
{
    uint64_t flags = vmx_vmwrite(field, value);
    if (flags)
        vmx_instruction_failed("VMWRITE", field, flags);
}

void vmcs_cache_reset(struct cpu *c)
{
    c->vc_count = 0;
}

uint64_t vmcs_get(struct cpu *c, uint64_t field)
{
    for (uint32_t i = 0; i < c->vc_count; i++) {
        if (c->vc_field[i] == field)
            return c->vc_value[i];
    }
    uint64_t value = vmread(field);
    if (c->vc_count < sizeof(c->vc_field) / sizeof(c->vc_field[0])) {
        c->vc_field[c->vc_count] = (uint32_t)field;
        c->vc_value[c->vc_count++] = value;
    }
    return value;
}

void vmcs_set(struct cpu *c, uint64_t field, uint64_t value)
{
    vmwrite(field, value);
    for (uint32_t i = 0; i < c->vc_count; i++) {
        if (c->vc_field[i] == field) {
            c->vc_value[i] = value;
            return;
        }
    }
    if (c->vc_count < sizeof(c->vc_field) / sizeof(c->vc_field[0])) {
        c->vc_field[c->vc_count] = (uint32_t)field;
        c->vc_value[c->vc_count++] = value;
    }
}

/* Called by vmentry.S when VMRESUME falls through (SDM 31.3 VMRESUME). */
__attribute__((noreturn)) void vmx_resume_failed(struct cpu *c, uint64_t rflags);

void vmx_resume_failed(struct cpu *c, uint64_t rflags)
{
    (void)c;
    vmx_instruction_failed("VMRESUME", 0, rflags & VMX_FAIL_MASK);
}

/*
 * A control value from its capability MSR (SDM A.3.1): bits 31:0 are the allowed-0
 * settings (1 = must be 1), bits 63:32 the allowed-1 settings (0 = must be 0).
 */
static bool adjust_controls(struct cpu *c, const char *name, uint32_t msr, uint32_t wanted, uint32_t needed,
                            uint32_t *out)
{
    uint64_t cap = rdmsr(msr);
    uint32_t must_be_1 = (uint32_t)cap, may_be_1 = (uint32_t)(cap >> 32);
    uint32_t value = (wanted | must_be_1) & may_be_1;
    *out = value;
    if ((value & needed) != needed) {
        mv_log("cpu %u: %s controls: bits 0x%x are needed but not allowed (MSR 0x%x = 0x%lx)\n", c->index, name,
               needed & ~value, msr, cap);
        return false;
    }
    return true;
}

bool vmx_cpu_init(struct cpu *c)
{
    struct vmx_setup *v = &c->vmx;
    c->exit_rsp = (uint64_t)&exit_stacks[c->index][STACK_SIZE] - 16;
    *(struct cpu **)c->exit_rsp = c;

    /* SDM 24.6: CPUID.1:ECX.VMX[bit 5]. */
    if (!(cpuid(1, 0).ecx & (1u << 5))) {
        mv_log("cpu %u: no VMX (CPUID.1:ECX.VMX = 0)\n", c->index);
        return false;
    }

    /* SDM 24.7: VMXON outside SMX needs IA32_FEATURE_CONTROL lock = 1 and bit 2 = 1. */
    uint64_t fc = rdmsr(MSR_IA32_FEATURE_CONTROL);
    if (!(fc & FEATURE_CONTROL_LOCK)) {
        wrmsr(MSR_IA32_FEATURE_CONTROL, fc | FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX);
        fc = rdmsr(MSR_IA32_FEATURE_CONTROL);
    }
    if (!(fc & FEATURE_CONTROL_LOCK) || !(fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX)) {
        mv_log("cpu %u: VMX disabled by IA32_FEATURE_CONTROL = 0x%lx\n", c->index, fc);
        return false;
    }

    /* SDM A.1: IA32_VMX_BASIC. */
    v->basic = rdmsr(MSR_IA32_VMX_BASIC);
    v->revision = (uint32_t)(v->basic & VMX_BASIC_REVISION_MASK);
    if (VMX_BASIC_REGION_SIZE(v->basic) > 4096 || VMX_BASIC_REGION_SIZE(v->basic) == 0) {
        mv_log("cpu %u: IA32_VMX_BASIC = 0x%lx: VMCS region size %lu\n", c->index, v->basic,
               VMX_BASIC_REGION_SIZE(v->basic));
        return false;
    }
    if (VMX_BASIC_MEMTYPE(v->basic) != 6)
        mv_log("cpu %u: VMCS memory type %lu (not write-back)\n", c->index, VMX_BASIC_MEMTYPE(v->basic));
    bool true_ctls = (v->basic & VMX_BASIC_TRUE_CTLS) != 0;

    /* SDM A.2-A.5, A.3.3: the control values. */
    uint32_t want_proc = WANT_PROC | (opt.hlt_native ? 0 : PROC_HLT_EXITING);
    bool ok = adjust_controls(c, "pin-based", true_ctls ? MSR_IA32_VMX_TRUE_PINBASED_CTLS : MSR_IA32_VMX_PINBASED_CTLS,
                              WANT_PIN, 0, &v->pin);
    ok &= adjust_controls(c, "primary processor-based",
                          true_ctls ? MSR_IA32_VMX_TRUE_PROCBASED_CTLS : MSR_IA32_VMX_PROCBASED_CTLS,
                          want_proc, NEED_PROC, &v->proc);
    if (ok)
        ok &= adjust_controls(c, "secondary processor-based", MSR_IA32_VMX_PROCBASED_CTLS2,
                              WANT_PROC2 | PROC2_ENABLE_RDTSCP, NEED_PROC2, &v->proc2);
    ok &= adjust_controls(c, "VM-exit", true_ctls ? MSR_IA32_VMX_TRUE_EXIT_CTLS : MSR_IA32_VMX_EXIT_CTLS,
                          WANT_EXIT, NEED_EXIT, &v->exit);
    ok &= adjust_controls(c, "VM-entry", true_ctls ? MSR_IA32_VMX_TRUE_ENTRY_CTLS : MSR_IA32_VMX_ENTRY_CTLS,
                          WANT_ENTRY, NEED_ENTRY, &v->entry);
    if (!ok)
        return false;
    v->entry_may_be_1 = (uint32_t)(rdmsr(true_ctls ? MSR_IA32_VMX_TRUE_ENTRY_CTLS : MSR_IA32_VMX_ENTRY_CTLS) >> 32);
    if (!(v->entry_may_be_1 & ENTRY_IA32E_MODE_GUEST)) {
        mv_log("cpu %u: the \"IA-32e mode guest\" entry control is not allowed\n", c->index);
        return false;
    }
    v->entry &= ~ENTRY_IA32E_MODE_GUEST;     /* set per VM entry from the guest's EFER.LMA */
    if (!opt.hlt_native && !(v->proc & PROC_HLT_EXITING))
        mv_log("cpu %u: HLT exiting not allowed: the guest halts in VMX non-root operation\n", c->index);

    v->misc = rdmsr(MSR_IA32_VMX_MISC);
    v->ept_cap = rdmsr(MSR_IA32_VMX_EPT_VPID_CAP);   /* exists: EPT is allowed (checked above) */
    if (!(v->ept_cap & EPT_CAP_WALK_LENGTH_4) || !(v->ept_cap & (EPT_CAP_MEMTYPE_WB | EPT_CAP_MEMTYPE_UC))) {
        mv_log("cpu %u: IA32_VMX_EPT_VPID_CAP = 0x%lx: no 4-level EPT with WB or UC structures\n", c->index,
               v->ept_cap);
        return false;
    }

    /* SDM 24.8, A.7, A.8: CR0/CR4 bits fixed in VMX operation (CR0.NE, CR4.VMXE, ...). */
    v->cr0_fixed0 = rdmsr(MSR_IA32_VMX_CR0_FIXED0);
    v->cr0_fixed1 = rdmsr(MSR_IA32_VMX_CR0_FIXED1);
    v->cr4_fixed0 = rdmsr(MSR_IA32_VMX_CR4_FIXED0);
    v->cr4_fixed1 = rdmsr(MSR_IA32_VMX_CR4_FIXED1);
    if (!(v->cr4_fixed1 & CR4_VMXE)) {
        mv_log("cpu %u: CR4.VMXE may not be set (IA32_VMX_CR4_FIXED1 = 0x%lx)\n", c->index, v->cr4_fixed1);
        return false;
    }
    write_cr0((read_cr0() | v->cr0_fixed0) & v->cr0_fixed1);
    write_cr4((read_cr4() | v->cr4_fixed0 | CR4_VMXE) & v->cr4_fixed1);

    /* SDM 24.11.5: the VMXON region starts with the revision identifier, bit 31 clear. */
    uint32_t *vmxon = (uint32_t *)vmxon_regions[c->index];
    memset(vmxon, 0, 4096);
    vmxon[0] = v->revision;
    c->vmxon_pa = (uint64_t)vmxon;
    uint64_t flags = vmx_vmxon(c->vmxon_pa);
    if (flags) {
        mv_log("cpu %u: VMXON 0x%lx failed (RFLAGS CF/ZF 0x%lx)\n", c->index, c->vmxon_pa, flags);
        return false;
    }

    /* SDM 25.11.3: VMCLEAR, then VMPTRLD makes it current (revision identifier first). */
    uint32_t *vmcs = (uint32_t *)vmcs_regions[c->index];
    memset(vmcs, 0, 4096);
    vmcs[0] = v->revision;
    c->vmcs_pa = (uint64_t)vmcs;
    if ((flags = vmx_vmclear(c->vmcs_pa)) != 0) {
        mv_log("cpu %u: VMCLEAR 0x%lx failed (RFLAGS CF/ZF 0x%lx)\n", c->index, c->vmcs_pa, flags);
        return false;
    }
    if ((flags = vmx_vmptrld(c->vmcs_pa)) != 0) {
        mv_log("cpu %u: VMPTRLD 0x%lx failed (RFLAGS CF/ZF 0x%lx)\n", c->index, c->vmcs_pa, flags);
        return false;
    }
    c->vmx_ready = true;
    mv_log("vmxon cpu %u (APIC id %u): revision 0x%x, VMXON region 0x%lx, VMCS 0x%lx\n", c->index, c->apic_id,
           v->revision, c->vmxon_pa, c->vmcs_pa);
    return true;
}

void vmx_report_controls(const struct cpu *c)
{
    const struct vmx_setup *v = &c->vmx;
    mv_log("vmx: IA32_VMX_BASIC 0x%lx (%s controls), MISC 0x%lx, EPT/VPID cap 0x%lx\n", v->basic,
           (v->basic & VMX_BASIC_TRUE_CTLS) ? "TRUE_" : "default", v->misc, v->ept_cap);
    mv_log("vmx: controls pin 0x%x primary 0x%x secondary 0x%x exit 0x%x entry 0x%x (+0x%x when IA-32e), "
           "exception bitmap 0x%x\n", v->pin, v->proc, v->proc2, v->exit, v->entry, ENTRY_IA32E_MODE_GUEST,
           GUEST_EXCEPTION_BITMAP);
}

static void write_segment(uint32_t sel_field, const struct guest_segment *s)
{
    /* The selector, base, limit and access-rights fields of one segment register are at
     * fixed distances in the encoding space (SDM Appendix B): selector 0x080x, limit
     * 0x480x, access rights 0x4814 + x, base 0x6806 + x. */
    uint32_t i = sel_field - GUEST_ES_SELECTOR;
    vmwrite(sel_field, s->selector);
    vmwrite(GUEST_ES_LIMIT + i, s->limit);
    vmwrite(GUEST_ES_AR + i, s->ar);
    vmwrite(GUEST_ES_BASE + i, s->base);
}

static void invept_all(const struct cpu *c)
{
    const struct vmx_setup *v = &c->vmx;
    if (!(v->ept_cap & EPT_CAP_INVEPT))
        return;
    uint64_t type = (v->ept_cap & EPT_CAP_INVEPT_SINGLE) ? 1 : (v->ept_cap & EPT_CAP_INVEPT_ALL) ? 2 : 0;
    if (!type)
        return;
    uint64_t flags = vmx_invept(type, ept_pointer);
    if (flags)
        vmx_instruction_failed("INVEPT", type, flags);
}

void vmx_launch_vcpu(struct cpu *c, const struct guest_entry *g)
{
    const struct vmx_setup *v = &c->vmx;

    /* SDM 25.6: VM-execution controls. */
    vmwrite(PIN_BASED_VM_EXEC_CONTROL, v->pin);
    vmwrite(CPU_BASED_VM_EXEC_CONTROL, v->proc);
    vmwrite(SECONDARY_VM_EXEC_CONTROL, v->proc2);
    vmwrite(EXCEPTION_BITMAP, GUEST_EXCEPTION_BITMAP);
    vmwrite(PAGE_FAULT_ERROR_CODE_MASK, 0);     /* 25.6.3: with both 0 every #PF follows bit 14 */
    vmwrite(PAGE_FAULT_ERROR_CODE_MATCH, 0);
    vmwrite(CR3_TARGET_COUNT, 0);
    vmwrite(IO_BITMAP_A, (uint64_t)io_bitmap_a);
    vmwrite(IO_BITMAP_B, (uint64_t)io_bitmap_b);
    vmwrite(MSR_BITMAP, (uint64_t)msr_bitmap);
    vmwrite(APIC_ACCESS_ADDR, (uint64_t)apic_access_page);
    vmwrite(EPT_POINTER, ept_pointer);

    /* SDM 25.6.6: the CR0/CR4 bits fixed to 1 in VMX operation (CR0.NE, CR4.VMXE) are
     * owned by the hypervisor; the guest reads its own values from the read shadows.
     * With unrestricted guest, CR0.PE and CR0.PG are the guest's (SDM 27.3.1.1). */
    uint64_t cr0_fixed = v->cr0_fixed0 & ~(CR0_PE | CR0_PG) & 0xffffffffUL;
    uint64_t cr4_fixed = v->cr4_fixed0;
    uint64_t cr0_actual = (g->cr0 | cr0_fixed) & v->cr0_fixed1;
    uint64_t cr4_actual = (g->cr4 | cr4_fixed) & v->cr4_fixed1;
    /* `cr_shadow=off`: no host-owned bits, the guest reads the real CR0.NE / CR4.VMXE
     * (and a MOV that clears one is a #GP in the guest, SDM 24.8). */
    vmwrite(CR0_GUEST_HOST_MASK, opt.no_cr_shadow ? 0 : cr0_fixed);
    vmwrite(CR0_READ_SHADOW, opt.no_cr_shadow ? cr0_actual : g->cr0);
    vmwrite(CR4_GUEST_HOST_MASK, opt.no_cr_shadow ? 0 : cr4_fixed);
    vmwrite(CR4_READ_SHADOW, opt.no_cr_shadow ? cr4_actual : g->cr4);

    /* SDM 25.7, 25.8: VM-exit and VM-entry controls. */
    vmwrite(VM_EXIT_CONTROLS, v->exit);
    vmwrite(VM_EXIT_MSR_STORE_COUNT, 0);
    vmwrite(VM_EXIT_MSR_LOAD_COUNT, 0);
    vmwrite(VM_ENTRY_CONTROLS, v->entry | ((g->efer & EFER_LMA) ? ENTRY_IA32E_MODE_GUEST : 0));
    vmwrite(VM_ENTRY_MSR_LOAD_COUNT, 0);
    vmwrite(VM_ENTRY_INTR_INFO, 0);

    /* SDM 25.5: host state = this CPU as it runs now (27.2.2-27.2.4 checks). */
    struct table_register gdtr = sgdt(), idtr = sidt();
    vmwrite(HOST_CR0, read_cr0());
    vmwrite(HOST_CR3, read_cr3());
    vmwrite(HOST_CR4, read_cr4());
    vmwrite(HOST_ES_SELECTOR, SEL_DATA);
    vmwrite(HOST_CS_SELECTOR, SEL_CODE64);
    vmwrite(HOST_SS_SELECTOR, SEL_DATA);
    vmwrite(HOST_DS_SELECTOR, SEL_DATA);
    vmwrite(HOST_FS_SELECTOR, 0);
    vmwrite(HOST_GS_SELECTOR, 0);
    vmwrite(HOST_TR_SELECTOR, c->tr_selector);
    vmwrite(HOST_FS_BASE, 0);
    vmwrite(HOST_GS_BASE, 0);
    vmwrite(HOST_TR_BASE, (uint64_t)&c->tss);
    vmwrite(HOST_GDTR_BASE, gdtr.base);
    vmwrite(HOST_IDTR_BASE, idtr.base);
    vmwrite(HOST_IA32_SYSENTER_CS, 0);
    vmwrite(HOST_IA32_SYSENTER_ESP, 0);
    vmwrite(HOST_IA32_SYSENTER_EIP, 0);
    vmwrite(HOST_IA32_EFER, rdmsr(MSR_EFER));
    vmwrite(HOST_RSP, c->exit_rsp);
    vmwrite(HOST_RIP, (uint64_t)vmx_exit_stub);

    /* SDM 25.4: guest state (27.3.1 checks). */
    vmwrite(GUEST_CR0, cr0_actual);
    vmwrite(GUEST_CR3, g->cr3);
    vmwrite(GUEST_CR4, cr4_actual);
    vmwrite(GUEST_DR7, 0x400);
    vmwrite(GUEST_RSP, g->rsp);
    vmwrite(GUEST_RIP, g->rip);
    vmwrite(GUEST_RFLAGS, g->rflags);
    write_segment(GUEST_ES_SELECTOR, &g->es);
    write_segment(GUEST_CS_SELECTOR, &g->cs);
    write_segment(GUEST_SS_SELECTOR, &g->ss);
    write_segment(GUEST_DS_SELECTOR, &g->ds);
    write_segment(GUEST_FS_SELECTOR, &g->fs);
    write_segment(GUEST_GS_SELECTOR, &g->gs);
    write_segment(GUEST_LDTR_SELECTOR, &g->ldtr);
    write_segment(GUEST_TR_SELECTOR, &g->tr);
    vmwrite(GUEST_GDTR_BASE, g->gdtr_base);
    vmwrite(GUEST_GDTR_LIMIT, g->gdtr_limit);
    vmwrite(GUEST_IDTR_BASE, g->idtr_base);
    vmwrite(GUEST_IDTR_LIMIT, g->idtr_limit);
    vmwrite(GUEST_IA32_DEBUGCTL, 0);
    vmwrite(GUEST_IA32_EFER, g->efer);
    vmwrite(GUEST_SYSENTER_CS, 0);
    vmwrite(GUEST_SYSENTER_ESP, 0);
    vmwrite(GUEST_SYSENTER_EIP, 0);
    vmwrite(GUEST_INTERRUPTIBILITY_INFO, 0);
    vmwrite(GUEST_ACTIVITY_STATE, ACTIVITY_ACTIVE);
    vmwrite(GUEST_PENDING_DBG_EXCEPTIONS, 0);
    vmwrite(VMCS_LINK_POINTER, ~0UL);           /* no shadow VMCS (SDM 27.3.1.5) */

    invept_all(c);
    c->vcpu_state = VCPU_RUNNING;
    mv_log("vmlaunch cpu %u: vCPU %u (APIC id %u) at cs:rip 0x%x:0x%lx (cs base 0x%lx), cr0 0x%lx, %s\n", c->index,
           c->index, c->apic_id, g->cs.selector, g->rip, g->cs.base, vmread(GUEST_CR0),
           (g->cr0 & CR0_PE) ? "32-bit protected mode, paging off" : "real mode");
    uint64_t flags = vmx_launch(&g->regs);
    vmx_instruction_failed("VMLAUNCH", 0, flags & VMX_FAIL_MASK);
}
