"""Architectural register facts, in one place (the role of QEMU's target/i386/cpu.h):
RFLAGS, CR0, CR4 and EFER bits, the MSR numbers hvdbg models, and the bit-name tables
the front-ends print.  SDM Vol. 1 3.4.3 (EFLAGS), Vol. 3A 2.5 (control registers),
2.2.1 (EFER), Vol. 4 (MSRs)."""

from __future__ import annotations

# -- RFLAGS (SDM Vol. 1 3.4.3) ------------------------------------------------------------
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1            # reads as 1
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_IOPL = 3 << 12
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18
RFLAGS_ID = 1 << 21

# -- CR0 (SDM Vol. 3A 2.5) -------------------------------------------------------------------
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR0_RESET = CR0_CD | CR0_NW | CR0_ET      # 0x60000010 after RESET/INIT (SDM Table 9-1)

# -- CR4 (SDM Vol. 3A 2.5) -------------------------------------------------------------------
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_OSFXSR = 1 << 9
CR4_LA57 = 1 << 12
CR4_VMXE = 1 << 13
CR4_PCIDE = 1 << 17
CR4_OSXSAVE = 1 << 18
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
CR4_PKE = 1 << 22
CR4_RESERVED = 1 << 15 | ~((1 << 26) - 1)  # bit 15 and 63:26 (the others of 25:0 are defined)

# -- IA32_EFER (SDM Vol. 3A 2.2.1) ------------------------------------------------------------
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
EFER_DEFINED = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE

# -- MSR numbers (SDM Vol. 4) ------------------------------------------------------------------
IA32_TSC = 0x10
IA32_APIC_BASE = 0x1B
IA32_MISC_ENABLE = 0x1A0
IA32_PAT = 0x277
IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
IA32_DEBUGCTL = 0x1D9
#: IA32_DEBUGCTL bits a WRMSR may set (SDM Vol. 4 Table 2-2: LBR, BTF, TR, BTS, BTINT, BTS_OFF_OS/USR,
#: FREEZE_LBRS_ON_PMI, FREEZE_PERFMON_ON_PMI, FREEZE_WHILE_SMM, RTM_DEBUG); others #GP(0)
DEBUGCTL_DEFINED = 0x3 | 0x3FC0 | 1 << 14 | 1 << 15
IA32_TSC_DEADLINE = 0x6E0
X2APIC_MSR_BASE = 0x800                   # x2APIC registers 0x800-0x8FF (SDM 11.12.1)
X2APIC_MSR_END = 0x8FF
IA32_EFER = 0xC0000080
IA32_KERNEL_GS_BASE = 0xC0000102
IA32_TSC_AUX = 0xC0000103

# -- segment access rights, VMX format (SDM 25.4.1 Table 25-2) ----------------------------------
AR_L = 1 << 13                             # 64-bit code segment
AR_DB = 1 << 14                            # default operation size 32
AR_UNUSABLE = 1 << 16

# -- bit names for display (bit, name) ---------------------------------------------------------
RFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
               (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"), (20, "VIP"),
               (21, "ID"))
CR0_BITS = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"), (18, "AM"),
            (29, "NW"), (30, "CD"), (31, "PG"))
CR4_BITS = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"), (7, "PGE"),
            (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"), (12, "LA57"), (13, "VMXE"),
            (14, "SMXE"), (16, "FSGSBASE"), (17, "PCIDE"), (18, "OSXSAVE"), (20, "SMEP"), (21, "SMAP"),
            (22, "PKE"))
EFER_BITS = ((0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE"))


#: the general-purpose registers in ModRM / VMX-instruction-information order (SDM Vol. 2A 2.1.5)
GPR_NUMBERS = {n: i for i, n in enumerate(("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"))}
_LEGACY_GPR = {"eax": "rax", "ecx": "rcx", "edx": "rdx", "ebx": "rbx", "esp": "rsp", "ebp": "rbp", "esi": "rsi",
               "edi": "rdi", "ax": "rax", "cx": "rcx", "dx": "rdx", "bx": "rbx", "sp": "rsp", "bp": "rbp",
               "si": "rsi", "di": "rdi"}


def full_gpr(name: str) -> str:
    """The 64-bit register a 32/16-bit register name is part of (``r8d`` -> ``r8``,
    ``esi`` -> ``rsi``); other names as they are."""
    if name in GPR_NUMBERS:
        return name
    if name[:1] == "r" and name[1:2].isdigit():
        return name.rstrip("dwb")
    return _LEGACY_GPR.get(name, name)
