"""Guest accesses to physical addresses that are not RAM, as the engine reports them.

- The APIC-access page (SDM 29.4): a linear access to the xAPIC page is an APIC-access
  VM exit (reason 44) whose qualification holds the page offset and access type.
- Device MMIO (the I/O APIC): the EPT does not map it, so the access is an EPT violation
  (reason 48, qualification per SDM Table 28-7, the GPA in the VMCS), which the VMM
  completes by emulating the access (hvdbg.hv.vmm, KVM's MMIO emulation).  The engine
  has already decoded the access, so the exit carries its size and data (:class:`MmioAccess`).
"""

from __future__ import annotations

from hvdbg.arch.apic import XAPIC_BASE
from hvdbg.hv import nested_memory
from hvdbg.hv.exit import ApicAccess, ExitInfo, MmioAccess
from hvdbg.vmx.exits import ExitReason, apic_access_qualification, ept_violation_qualification


def apic_read(vcpu, offset: int, size: int) -> int:
    info = ExitInfo(ExitReason.APIC_ACCESS, qualification=apic_access_qualification(offset, False),
                    rip=vcpu.engine.rip(), guest_physical=XAPIC_BASE + offset, payload=ApicAccess(size))
    vcpu.vm_exit(info)
    return info.data


def apic_write(vcpu, offset: int, size: int, value: int) -> None:
    vcpu.vm_exit(ExitInfo(ExitReason.APIC_ACCESS, qualification=apic_access_qualification(offset, True),
                          rip=vcpu.engine.rip(), guest_physical=XAPIC_BASE + offset, data=value,
                          payload=ApicAccess(size)))


def mmio_access(vcpu, gpa: int, size: int, value: int | None) -> int:
    """The EPT violation of a read (``value`` None) or write of ``size`` bytes at ``gpa``;
    returns the data read (0 for a write).  If the VMM does not complete the access, the
    exit leaves the engine."""
    kind = "read" if value is None else "write"
    rip = vcpu.engine.rip()
    gla = vcpu.guess_linear_address(rip, gpa, kind)
    if vcpu.vmx is not None and vcpu.vmx.non_root:   # an L2-physical address: the L1's EPT first
        l1_gpa, _ = nested_memory.ept_fault(vcpu, gpa, kind, rip, gla, True)
        if l1_gpa is None:
            return 0       # the guest hypervisor's exit; the access is undone with L2's state
        gpa = l1_gpa
    walk = vcpu.memory.ept.walk(gpa)
    qual = ept_violation_qualification(kind, walk, gla_valid=gla is not None, translated_access=True)
    info = ExitInfo(ExitReason.EPT_VIOLATION, qualification=qual.encode(), rip=rip, guest_physical=gpa,
                    guest_linear=gla, data=value or 0, payload=MmioAccess(size, kind == "write", walk))
    vcpu.vm_exit(info)
    return info.data if value is None else 0
