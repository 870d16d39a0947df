/*
 * VMX instruction workload (`workload=vmx`, vmx.c): every CPU (the BSP and every AP, at
 * the same time) checks VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMPTRST, VMREAD, VMWRITE,
 * VMLAUNCH and VMRESUME, the VMX capability MSRs and IA32_FEATURE_CONTROL against the
 * Intel SDM (Vol. 3C chapter 31 "VMX Instruction Reference", 31.2 conventions, 31.4
 * error numbers; 24.7-24.8, 25.1-25.2; Vol. 3D Appendix A), in 13 steps on its own
 * VMXON and VMCS regions.  After every step each CPU does VMX_STEP_INCS `lock incq` on
 * one shared counter.  The BSP then prints, per CPU, `vmx cpu N: K checks ok` or one
 * `vmx cpu N: FAILED <check>: <what was seen>` line per failed check, then
 * `vmx counter ok` (or `vmx counter FAILED got X want Y`) and `vmx: ok` / `vmx: FAILED`.
 * Without CPUID.1:ECX.VMX on the BSP (QEMU TCG) it prints `vmx: not offered` and ends
 * with EXIT_OK.
 */
#ifndef HVDBG_GUEST_VMX_H
#define HVDBG_GUEST_VMX_H

#include "work.h"

#define EXIT_VMX_BAD        13      /* a VMX check or the shared counter failed */
#define VMX_STEPS           13      /* the steps of vmx.c; one counter run after each */
#define VMX_STEP_INCS       2000ULL /* `lock incq` per CPU after each step */

/* BSP, before the APs are started: build the IDT the checks run with (expected #UD/#GP). */
void vmx_prepare(void);

/* True once vmx_prepare() ran (the APs run vmx_run instead of work_run). */
bool vmx_active(void);

/* BSP, after work_set_cpus(): CPUID.1:ECX.VMX of the BSP decides whether the checks run. */
void vmx_set_cpus(struct workload *work, uint32_t ncpus);

/* Every participant: barrier, the 13 steps (each followed by its counter run), barrier. */
void vmx_run(struct workload *work, uint32_t cpu_index);

/* BSP, after vmx_run: print the results and exit (EXIT_OK or EXIT_VMX_BAD). */
__attribute__((noreturn)) void vmx_finish(uint32_t ncpus);

#endif
