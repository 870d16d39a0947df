"""RDMSR and WRMSR in VMX non-root operation.

The engine hands every one over with RIP at the instruction (hvdbg.engine.intercepts),
wherever its code came from.  It is a VM exit if the MSR bitmap says so (SDM 25.1.3,
25.6.9; indexes outside the bitmap's ranges always exit); otherwise, and when the VMM
leaves it to the processor, the processor executes it: #GP(0) for an MSR it does not
implement, or for a non-canonical address written to one that holds a linear address
(hvdbg.arch.msrs), else the engine's CPU model.
"""

from __future__ import annotations

from hvdbg.arch.events import hardware_exception
from hvdbg.arch.msrs import write_value_problem
from hvdbg.hv.exit import ExitDecision, ExitInfo, MsrAccess
from hvdbg.vmx.exits import ExitReason


def rdmsr_wrmsr(vcpu, write: bool) -> None:
    """Perform the intercepted RDMSR/WRMSR of ``vcpu`` (a hvdbg.hv.vcpu.Vcpu inside its
    engine callback)."""
    e = vcpu.engine
    rip = e.rip()
    ecx, eax, edx = vcpu.msr_regs.read()
    ecx &= 0xFFFFFFFF
    value = (edx & 0xFFFFFFFF) << 32 | (eax & 0xFFFFFFFF)     # EDX:EAX, what a WRMSR writes
    if vcpu.msr_bitmap is None or vcpu.msr_bitmap.exits(ecx, write):
        info = ExitInfo(ExitReason.MSR_WRITE if write else ExitReason.MSR_READ, rip=rip,
                        instruction_length=2, data=value if write else 0, payload=MsrAccess(ecx))
        vcpu.vm_exit(info)
        decision = info.decision
        if decision.abandoned:
            return  # a #GP delivered at the next entry, or the guest hypervisor's exit
        if decision is not ExitDecision.NATIVE:
            if not write:
                e.write("rax", info.data & 0xFFFFFFFF)
                e.write("rdx", (info.data >> 32) & 0xFFFFFFFF)
            e.set_rip(rip + 2)
            return
    problem = vcpu.msr_model.problem(ecx, write) or (write_value_problem(ecx, value) if write else None)
    if problem is not None:
        vcpu.msr_faults.append((ecx, write, rip, problem))
        del vcpu.msr_faults[:-16]
        vcpu.raise_exception(hardware_exception(13, 0), rip)
        return
    if write:
        e.msr_write(ecx, value)
    else:
        value = e.msr_read(ecx)
        e.write("rax", value & 0xFFFFFFFF)
        e.write("rdx", value >> 32)
    e.set_rip(rip + 2)
