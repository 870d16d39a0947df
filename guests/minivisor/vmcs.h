/*
 * VMX architectural constants: capability MSRs (SDM Vol. 3D Appendix A), VMCS field
 * encodings (Appendix B), control bits (SDM Vol. 3C 25.6-25.8), exit reasons
 * (Appendix C) and VM-instruction error numbers (31.4).
 */
#ifndef MINIVISOR_VMCS_H
#define MINIVISOR_VMCS_H

/* ---- MSRs (SDM Vol. 4 Table 2-2) ------------------------------------------------- */
#define MSR_IA32_FEATURE_CONTROL        0x03A
#define MSR_IA32_SYSENTER_CS            0x174
#define MSR_IA32_SYSENTER_ESP           0x175
#define MSR_IA32_SYSENTER_EIP           0x176
#define MSR_IA32_VMX_BASIC              0x480
#define MSR_IA32_VMX_PINBASED_CTLS      0x481
#define MSR_IA32_VMX_PROCBASED_CTLS     0x482
#define MSR_IA32_VMX_EXIT_CTLS          0x483
#define MSR_IA32_VMX_ENTRY_CTLS         0x484
#define MSR_IA32_VMX_MISC               0x485
#define MSR_IA32_VMX_CR0_FIXED0         0x486
#define MSR_IA32_VMX_CR0_FIXED1         0x487
#define MSR_IA32_VMX_CR4_FIXED0         0x488
#define MSR_IA32_VMX_CR4_FIXED1         0x489
#define MSR_IA32_VMX_PROCBASED_CTLS2    0x48B
#define MSR_IA32_VMX_EPT_VPID_CAP       0x48C
#define MSR_IA32_VMX_TRUE_PINBASED_CTLS 0x48D
#define MSR_IA32_VMX_TRUE_PROCBASED_CTLS 0x48E
#define MSR_IA32_VMX_TRUE_EXIT_CTLS     0x48F
#define MSR_IA32_VMX_TRUE_ENTRY_CTLS    0x490

/* IA32_FEATURE_CONTROL (SDM 24.7) */
#define FEATURE_CONTROL_LOCK            (1UL << 0)
#define FEATURE_CONTROL_VMX_OUTSIDE_SMX (1UL << 2)

/* IA32_VMX_BASIC (SDM A.1) */
#define VMX_BASIC_REVISION_MASK         0x7FFFFFFFUL
#define VMX_BASIC_REGION_SIZE(b)        (((b) >> 32) & 0x1FFF)
#define VMX_BASIC_32BIT_ADDRESSES       (1UL << 48)
#define VMX_BASIC_MEMTYPE(b)            (((b) >> 50) & 0xF)
#define VMX_BASIC_TRUE_CTLS             (1UL << 55)

/* IA32_VMX_MISC (SDM A.6) */
#define VMX_MISC_LMA_IN_ENTRY_CTL       (1UL << 5)
#define VMX_MISC_ACTIVITY_HLT           (1UL << 6)

/* IA32_VMX_EPT_VPID_CAP (SDM A.10) */
#define EPT_CAP_WALK_LENGTH_4           (1UL << 6)
#define EPT_CAP_MEMTYPE_UC              (1UL << 8)
#define EPT_CAP_MEMTYPE_WB              (1UL << 14)
#define EPT_CAP_2MB_PAGES               (1UL << 16)
#define EPT_CAP_INVEPT                  (1UL << 20)
#define EPT_CAP_INVEPT_SINGLE           (1UL << 25)
#define EPT_CAP_INVEPT_ALL              (1UL << 26)

/* ---- control bits ------------------------------------------------------------------ */
/* Pin-based (SDM 25.6.1, Table 25-5) */
#define PIN_EXTERNAL_INTERRUPT_EXITING  (1U << 0)
#define PIN_NMI_EXITING                 (1U << 3)
/* Primary processor-based (SDM 25.6.2, Table 25-6) */
#define PROC_HLT_EXITING                (1U << 7)
#define PROC_UNCONDITIONAL_IO_EXITING   (1U << 24)
#define PROC_USE_IO_BITMAPS             (1U << 25)
#define PROC_USE_MSR_BITMAPS            (1U << 28)
#define PROC_ACTIVATE_SECONDARY         (1U << 31)
/* Secondary processor-based (SDM 25.6.2, Table 25-7) */
#define PROC2_VIRTUALIZE_APIC_ACCESSES  (1U << 0)
#define PROC2_ENABLE_EPT                (1U << 1)
#define PROC2_ENABLE_RDTSCP             (1U << 3)
#define PROC2_UNRESTRICTED_GUEST        (1U << 7)
/* VM-exit controls (SDM 25.7.1, Table 25-13) */
#define EXIT_HOST_ADDRESS_SPACE_SIZE    (1U << 9)
#define EXIT_SAVE_IA32_EFER             (1U << 20)
#define EXIT_LOAD_IA32_EFER             (1U << 21)
/* VM-entry controls (SDM 25.8.1, Table 25-15) */
#define ENTRY_LOAD_DEBUG_CONTROLS       (1U << 2)
#define ENTRY_IA32E_MODE_GUEST          (1U << 9)
#define ENTRY_LOAD_IA32_EFER            (1U << 15)

/* ---- VMCS field encodings (SDM Appendix B) ------------------------------------------- */
/* 16-bit guest state */
#define GUEST_ES_SELECTOR               0x0800
#define GUEST_CS_SELECTOR               0x0802
#define GUEST_SS_SELECTOR               0x0804
#define GUEST_DS_SELECTOR               0x0806
#define GUEST_FS_SELECTOR               0x0808
#define GUEST_GS_SELECTOR               0x080A
#define GUEST_LDTR_SELECTOR             0x080C
#define GUEST_TR_SELECTOR               0x080E
/* 16-bit host state */
#define HOST_ES_SELECTOR                0x0C00
#define HOST_CS_SELECTOR                0x0C02
#define HOST_SS_SELECTOR                0x0C04
#define HOST_DS_SELECTOR                0x0C06
#define HOST_FS_SELECTOR                0x0C08
#define HOST_GS_SELECTOR                0x0C0A
#define HOST_TR_SELECTOR                0x0C0C
/* 64-bit control */
#define IO_BITMAP_A                     0x2000
#define IO_BITMAP_B                     0x2002
#define MSR_BITMAP                      0x2004
#define VM_EXIT_MSR_STORE_ADDR          0x2006
#define VM_EXIT_MSR_LOAD_ADDR           0x2008
#define VM_ENTRY_MSR_LOAD_ADDR          0x200A
#define TSC_OFFSET                      0x2010
#define APIC_ACCESS_ADDR                0x2014
#define EPT_POINTER                     0x201A
/* 64-bit read-only data */
#define GUEST_PHYSICAL_ADDRESS          0x2400
/* 64-bit guest state */
#define VMCS_LINK_POINTER               0x2800
#define GUEST_IA32_DEBUGCTL             0x2802
#define GUEST_IA32_EFER                 0x2806
/* 64-bit host state */
#define HOST_IA32_EFER                  0x2C02
/* 32-bit control */
#define PIN_BASED_VM_EXEC_CONTROL       0x4000
#define CPU_BASED_VM_EXEC_CONTROL       0x4002
#define EXCEPTION_BITMAP                0x4004
#define PAGE_FAULT_ERROR_CODE_MASK      0x4006
#define PAGE_FAULT_ERROR_CODE_MATCH     0x4008
#define CR3_TARGET_COUNT                0x400A
#define VM_EXIT_CONTROLS                0x400C
#define VM_EXIT_MSR_STORE_COUNT         0x400E
#define VM_EXIT_MSR_LOAD_COUNT          0x4010
#define VM_ENTRY_CONTROLS               0x4012
#define VM_ENTRY_MSR_LOAD_COUNT         0x4014
#define VM_ENTRY_INTR_INFO              0x4016
#define VM_ENTRY_EXCEPTION_ERROR_CODE   0x4018
#define VM_ENTRY_INSTRUCTION_LEN        0x401A
#define SECONDARY_VM_EXEC_CONTROL       0x401E
/* 32-bit read-only data */
#define VM_INSTRUCTION_ERROR            0x4400
#define VM_EXIT_REASON                  0x4402
#define VM_EXIT_INTR_INFO               0x4404
#define VM_EXIT_INTR_ERROR_CODE         0x4406
#define IDT_VECTORING_INFO              0x4408
#define IDT_VECTORING_ERROR_CODE        0x440A
#define VM_EXIT_INSTRUCTION_LEN         0x440C
#define VMX_INSTRUCTION_INFO            0x440E
/* 32-bit guest state */
#define GUEST_ES_LIMIT                  0x4800
#define GUEST_CS_LIMIT                  0x4802
#define GUEST_SS_LIMIT                  0x4804
#define GUEST_DS_LIMIT                  0x4806
#define GUEST_FS_LIMIT                  0x4808
#define GUEST_GS_LIMIT                  0x480A
#define GUEST_LDTR_LIMIT                0x480C
#define GUEST_TR_LIMIT                  0x480E
#define GUEST_GDTR_LIMIT                0x4810
#define GUEST_IDTR_LIMIT                0x4812
#define GUEST_ES_AR                     0x4814
#define GUEST_CS_AR                     0x4816
#define GUEST_SS_AR                     0x4818
#define GUEST_DS_AR                     0x481A
#define GUEST_FS_AR                     0x481C
#define GUEST_GS_AR                     0x481E
#define GUEST_LDTR_AR                   0x4820
#define GUEST_TR_AR                     0x4822
#define GUEST_INTERRUPTIBILITY_INFO     0x4824
#define GUEST_ACTIVITY_STATE            0x4826
#define GUEST_SYSENTER_CS               0x482A
/* 32-bit host state */
#define HOST_IA32_SYSENTER_CS           0x4C00
/* natural-width control */
#define CR0_GUEST_HOST_MASK             0x6000
#define CR4_GUEST_HOST_MASK             0x6002
#define CR0_READ_SHADOW                 0x6004
#define CR4_READ_SHADOW                 0x6006
/* natural-width read-only data */
#define EXIT_QUALIFICATION              0x6400
#define GUEST_LINEAR_ADDRESS            0x640A
/* natural-width guest state */
#define GUEST_CR0                       0x6800
#define GUEST_CR3                       0x6802
#define GUEST_CR4                       0x6804
#define GUEST_ES_BASE                   0x6806
#define GUEST_CS_BASE                   0x6808
#define GUEST_SS_BASE                   0x680A
#define GUEST_DS_BASE                   0x680C
#define GUEST_FS_BASE                   0x680E
#define GUEST_GS_BASE                   0x6810
#define GUEST_LDTR_BASE                 0x6812
#define GUEST_TR_BASE                   0x6814
#define GUEST_GDTR_BASE                 0x6816
#define GUEST_IDTR_BASE                 0x6818
#define GUEST_DR7                       0x681A
#define GUEST_RSP                       0x681C
#define GUEST_RIP                       0x681E
#define GUEST_RFLAGS                    0x6820
#define GUEST_PENDING_DBG_EXCEPTIONS    0x6822
#define GUEST_SYSENTER_ESP              0x6824
#define GUEST_SYSENTER_EIP              0x6826
/* natural-width host state */
#define HOST_CR0                        0x6C00
#define HOST_CR3                        0x6C02
#define HOST_CR4                        0x6C04
#define HOST_FS_BASE                    0x6C06
#define HOST_GS_BASE                    0x6C08
#define HOST_TR_BASE                    0x6C0A
#define HOST_GDTR_BASE                  0x6C0C
#define HOST_IDTR_BASE                  0x6C0E
#define HOST_IA32_SYSENTER_ESP          0x6C10
#define HOST_IA32_SYSENTER_EIP          0x6C12
#define HOST_RSP                        0x6C14
#define HOST_RIP                        0x6C16

/* ---- guest state values (SDM 25.4.1 Table 25-2, 25.4.2 Tables 25-3 and 25-4) ------- */
#define AR_UNUSABLE                     (1U << 16)
#define ACTIVITY_ACTIVE                 0
#define ACTIVITY_HLT                    1
#define INTERRUPTIBILITY_STI            (1U << 0)
#define INTERRUPTIBILITY_MOV_SS         (1U << 1)

/* Interruption information (SDM 25.8.3 Table 25-17, 28.2.2 Table 28-19) */
#define INTR_INFO_VALID                 (1U << 31)
#define INTR_INFO_DELIVER_ERROR_CODE    (1U << 11)
#define INTR_TYPE_EXTERNAL              (0U << 8)
#define INTR_TYPE_NMI                   (2U << 8)
#define INTR_TYPE_HW_EXCEPTION          (3U << 8)
#define INTR_TYPE_SW_INTERRUPT          (4U << 8)
#define INTR_TYPE_PRIV_SW_EXCEPTION     (5U << 8)
#define INTR_TYPE_SW_EXCEPTION          (6U << 8)

/* ---- basic exit reasons (SDM Appendix C) ----------------------------------------- */
#define EXIT_REASON_EXCEPTION_NMI       0
#define EXIT_REASON_EXTERNAL_INTERRUPT  1
#define EXIT_REASON_TRIPLE_FAULT        2
#define EXIT_REASON_INIT                3
#define EXIT_REASON_SIPI                4
#define EXIT_REASON_CPUID               10
#define EXIT_REASON_HLT                 12
#define EXIT_REASON_VMCALL              18
#define EXIT_REASON_CR_ACCESS           28
#define EXIT_REASON_IO                  30
#define EXIT_REASON_MSR_READ            31
#define EXIT_REASON_MSR_WRITE           32
#define EXIT_REASON_INVALID_GUEST_STATE 33
#define EXIT_REASON_MSR_LOADING         34
#define EXIT_REASON_MACHINE_CHECK       41
#define EXIT_REASON_APIC_ACCESS         44
#define EXIT_REASON_EPT_VIOLATION       48
#define EXIT_REASON_EPT_MISCONFIG       49
#define EXIT_REASON_MAX                 77
#define EXIT_REASON_FAILED_ENTRY        (1U << 31)

#endif
