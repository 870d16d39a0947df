/*
 * minivisor: a small VMX hypervisor that boots a multiboot kernel (module 0) as its
 * guest, one vCPU per physical CPU (README.md).  Declarations shared by the C files.
 */
#ifndef MINIVISOR_H
#define MINIVISOR_H

#include "console.h"
#include "cpu.h"
#include "layout.h"
#include "vmcs.h"

/* ---- build identity ---------------------------------------------------------------- */
#if defined(BUG_MAGIC)
#define MV_BUILD "bug-magic (EAX = multiboot header magic 0x1BADB002)"
#elif defined(BUG_EPT16M)
#define MV_BUILD "bug-ept16m (the EPT maps only the first 16 MiB of the guest RAM it advertises)"
#elif defined(BUG_PML4)
#define MV_BUILD "bug-pml4 (exception bitmap #PF: a guest page fault is a VM exit)"
#elif defined(BUG_SIPI_HPA)
#define MV_BUILD "bug-sipi_hpa (SIPI entry computed from the host-physical address)"
#elif defined(BUG_APIC_ID)
#define MV_BUILD "bug-apic_id (CPUID initial APIC ID 0 on every vCPU)"
#else
#define MV_BUILD "correct"
#endif

/* ---- guest registers saved by the VM-exit stub (vmentry.S) --------------------------- */
enum gpr {
    GPR_RAX, GPR_RCX, GPR_RDX, GPR_RBX, GPR_RSP, GPR_RBP, GPR_RSI, GPR_RDI,
    GPR_R8, GPR_R9, GPR_R10, GPR_R11, GPR_R12, GPR_R13, GPR_R14, GPR_R15,
};

/* Indexed by the x86 register number; gpr[GPR_RSP] is a hole (RSP is GUEST_RSP). */
struct guest_regs {
    uint64_t gpr[16];
};

/* ---- VMX capabilities and the control values derived from them ---------------------- */
struct vmx_setup {
    uint64_t basic, misc, ept_cap;
    uint64_t cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1;
    uint32_t revision;
    uint32_t pin, proc, proc2, exit, entry;   /* (wanted | allowed-0) & allowed-1 */
    uint32_t entry_may_be_1;                  /* allowed-1 of the entry controls */
};

/* ---- one physical CPU and the vCPU it runs --------------------------------------------- */
enum vcpu_state {
    VCPU_WAIT_INIT,     /* an AP before the guest's INIT */
    VCPU_WAIT_SIPI,     /* after the guest's INIT, before its SIPI */
    VCPU_RUNNING,       /* launched (or its SIPI posted) */
};

enum join_state {
    JOIN_NONE,          /* not started */
    JOIN_ALIVE,         /* the AP reached ap_main */
    JOIN_READY,         /* VMXON and VMPTRLD done: it will run a vCPU */
    JOIN_FAILED,        /* no VMX on it: it is not part of the guest */
};

struct __attribute__((packed)) tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
};

#define SIPI_MAILBOX_VALID (1UL << 63)

struct cpu {
    uint32_t index;                 /* pCPU index = vCPU index; 0 = BSP */
    uint32_t apic_id;               /* its local APIC ID = the APIC ID its vCPU sees */
    volatile uint32_t join;         /* enum join_state, AP start-up handshake */
    bool vmx_ready;
    struct vmx_setup vmx;
    uint64_t vmxon_pa, vmcs_pa;
    uint64_t exit_rsp;              /* HOST_RSP: [exit_rsp] = this struct */
    uint16_t tr_selector;
    struct tss64 tss;

    /* the vCPU */
    volatile uint32_t vcpu_state;   /* enum vcpu_state */
    volatile uint64_t sipi_mailbox; /* SIPI_MAILBOX_VALID | guest-physical entry */
    uint32_t sipi_vector;
    uint32_t icr_high, icr_low;     /* the guest's view of its ICR */
    bool halt_reported;
    uint64_t exit_count;
    /* VMCS fields read during the current VM exit (vmx.c vmcs_get): under a hypervisor
     * without VMCS shadowing each VMREAD is itself a VM exit, so each is read once. */
    uint32_t vc_count;
    uint32_t vc_field[16];
    uint64_t vc_value[16];
    uint32_t exit_counts[EXIT_REASON_MAX + 1];
};

extern struct cpu cpus[MAX_CPUS];
extern uint32_t cpu_count;          /* CPUs found (MADT), BSP included */

/* ---- options (minivisor's own command line, main.c) --------------------------------- */
#define GUEST_CMDLINE_MAX 512
struct options {
    bool verbose;                   /* `verbose`: one line per VM exit */
    bool fatal_exit;                /* `fatal=exit`: a fatal stop writes MV_FATAL_STATUS to port 0xF4 */
    bool hlt_native;                /* `hlt=native`: no HLT exiting, the guest halts in non-root */
    bool no_cr_shadow;              /* `cr_shadow=off`: CR0/CR4 guest/host masks 0 (the guest sees NE/VMXE) */
    uint32_t max_cpus;              /* `cpus=N`: use at most N CPUs */
    char guest_cmdline[GUEST_CMDLINE_MAX];
};
extern struct options opt;

/* main.c */
__attribute__((noreturn, format(printf, 2, 3))) void mv_stop(struct cpu *c, const char *fmt, ...);
struct cpu *this_cpu(void);

/* trap.c: GDT/TSS/IDT of one CPU */
void cpu_local_init(struct cpu *c);

/* acpi.c */
uint32_t acpi_find_cpus(uint8_t *apic_ids, uint32_t max);
void acpi_build_guest(void);

/* smp.c */
void smp_start_aps(void);

/* vmx.c */
bool vmx_cpu_init(struct cpu *c);
void vmx_report_controls(const struct cpu *c);

struct guest_segment {
    uint16_t selector;
    uint64_t base;
    uint32_t limit;
    uint32_t ar;
};

struct guest_entry {                /* the state a vCPU starts in */
    uint64_t cr0, cr3, cr4, efer, rip, rsp, rflags;
    struct guest_segment cs, ss, ds, es, fs, gs, ldtr, tr;
    uint64_t gdtr_base, idtr_base;
    uint32_t gdtr_limit, idtr_limit;
    struct guest_regs regs;
};

__attribute__((noreturn)) void vmx_launch_vcpu(struct cpu *c, const struct guest_entry *g);

/* ept.c */
extern uint64_t ept_pointer;
extern uint8_t apic_access_page[4096];
void ept_build(void);

/* guest.c */
struct guest_image {
    uint64_t entry;                 /* guest-physical entry point (32-bit code) */
    uint64_t image_end;             /* end of the highest PT_LOAD segment */
    uint64_t info_gpa;              /* multiboot information for the guest */
};
extern struct guest_image guest;
bool guest_load(const uint8_t *module, uint64_t size);
void guest_bsp_entry(struct guest_entry *g);
void guest_sipi_entry(struct guest_entry *g, uint64_t entry);
void *gpa_to_hva(uint64_t gpa);
bool gpa_mapped(uint64_t gpa, uint64_t len);
bool guest_linear_to_gpa(struct cpu *c, uint64_t linear, uint64_t *gpa, bool print_walk);
uint32_t guest_read_linear(struct cpu *c, uint64_t linear, uint8_t *out, uint32_t len);

/* decode.c */
struct mmio_insn {
    uint32_t length;                /* bytes, prefixes included */
    bool write;
    int reg;                        /* register operand (0-15), or -1 for an immediate */
    uint32_t imm;
};
const char *decode_mmio_mov(const uint8_t *code, uint32_t avail, uint32_t code_bits, struct mmio_insn *out);

/* exit.c */
void vmx_exit_handler(struct guest_regs *regs, struct cpu *c);
const char *exit_reason_name(uint32_t reason);

#endif
