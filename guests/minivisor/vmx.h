/*
 * The VMX instructions (SDM Vol. 3C chapter 31) as inline functions.  Each returns the
 * RFLAGS bits of the SDM 31.2 conventions: 0 = VMsucceed, CF = VMfailInvalid,
 * ZF = VMfailValid (the error number is in VM_INSTRUCTION_ERROR).
 *
 * AT&T operand order: `vmread %field, %dest`, `vmwrite %value, %field`,
 * `invept %desc128, %type` (Intel: VMREAD r/m64, r64; VMWRITE r64, r/m64; INVEPT r64, m128).
 */
#ifndef MINIVISOR_VMX_H
#define MINIVISOR_VMX_H

#include "minivisor.h"

#define RFLAGS_CF (1UL << 0)
#define RFLAGS_ZF (1UL << 6)
#define RFLAGS_IF (1UL << 9)
#define VMX_FAIL_MASK (RFLAGS_CF | RFLAGS_ZF)

static inline uint64_t vmx_vmxon(uint64_t pa)
{
    uint64_t flags;
    __asm__ volatile("vmxon %1\n\tpushfq\n\tpopq %0" : "=r"(flags) : "m"(pa) : "cc", "memory");
    return flags & VMX_FAIL_MASK;
}

static inline uint64_t vmx_vmclear(uint64_t pa)
{
    uint64_t flags;
    __asm__ volatile("vmclear %1\n\tpushfq\n\tpopq %0" : "=r"(flags) : "m"(pa) : "cc", "memory");
    return flags & VMX_FAIL_MASK;
}

static inline uint64_t vmx_vmptrld(uint64_t pa)
{
    uint64_t flags;
    __asm__ volatile("vmptrld %1\n\tpushfq\n\tpopq %0" : "=r"(flags) : "m"(pa) : "cc", "memory");
    return flags & VMX_FAIL_MASK;
}

static inline uint64_t vmx_vmread(uint64_t field, uint64_t *value)
{
    uint64_t flags, v;
    __asm__ volatile("vmread %2, %1\n\tpushfq\n\tpopq %0" : "=r"(flags), "=r"(v) : "r"(field) : "cc");
    *value = v;
    return flags & VMX_FAIL_MASK;
}

static inline uint64_t vmx_vmwrite(uint64_t field, uint64_t value)
{
    uint64_t flags;
    __asm__ volatile("vmwrite %2, %1\n\tpushfq\n\tpopq %0" : "=r"(flags) : "r"(field), "r"(value) : "cc", "memory");
    return flags & VMX_FAIL_MASK;
}

struct invept_descriptor {
    uint64_t eptp;
    uint64_t reserved;
};

static inline uint64_t vmx_invept(uint64_t type, uint64_t eptp)
{
    struct invept_descriptor desc = { eptp, 0 };
    uint64_t flags;
    __asm__ volatile("invept %1, %2\n\tpushfq\n\tpopq %0" : "=r"(flags) : "m"(desc), "r"(type) : "cc", "memory");
    return flags & VMX_FAIL_MASK;
}

/* vmentry.S: load the guest GPRs from *regs and VMLAUNCH; returns RFLAGS if it failed. */
uint64_t vmx_launch(const struct guest_regs *regs);
/* vmentry.S: HOST_RIP. */
void vmx_exit_stub(void);

/* vmx.c: VMREAD / VMWRITE of the current VMCS; a failure is fatal (printed, the CPU stops). */
uint64_t vmread(uint64_t field);
void vmwrite(uint64_t field, uint64_t value);
__attribute__((noreturn)) void vmx_instruction_failed(const char *what, uint64_t field, uint64_t flags);

/* vmx.c: the same through the per-exit cache of struct cpu (reset at each VM exit). */
void vmcs_cache_reset(struct cpu *c);
uint64_t vmcs_get(struct cpu *c, uint64_t field);
void vmcs_set(struct cpu *c, uint64_t field, uint64_t value);

#endif
