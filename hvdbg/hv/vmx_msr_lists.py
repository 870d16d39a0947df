"""The MSR lists of a guest hypervisor's VMCS: the VM-entry MSR-load list (SDM 27.4), the
VM-exit MSR-store list (SDM 28.4) and the VM-exit MSR-load list (SDM 28.6).  Each list is
``count`` 16-byte entries in the guest hypervisor's memory: MSR index (bits 31:0),
reserved (63:32), data (127:64).

A load performs WRMSR semantics as hvdbg's VMM does (its emulated MSRs, else the
processor's, with the same #GP checks); an entry that WRMSR would refuse, or that names
an MSR the SDM excludes, fails.  A store reads the MSR as RDMSR would.
"""

from __future__ import annotations

import struct

from hvdbg.arch.msrs import write_value_problem

#: MSRs a load list may not write (SDM 27.4, 28.6): FS/GS base (the VMCS loads them), the
#: SMM monitor control, and the x2APIC range while x2APIC mode is on
_EXCLUDED_LOAD = (0xC0000100, 0xC0000101, 0x9B)
_ENTRY = struct.Struct("<IIQ")


def _entries(mem, address: int, count: int):
    for i in range(count):
        yield i, *_ENTRY.unpack(mem.read(address + 16 * i, 16))


def load(vcpu, address: int, count: int) -> tuple[int, str] | None:
    """Load ``count`` MSRs from the list at guest-physical ``address``: None, or (the
    1-based number of the entry that failed, why).  The entries before it stay loaded."""
    for i, msr, reserved, value in _entries(vcpu.memory, address, count):
        why = _load_problem(vcpu, msr, reserved)
        if why is None:
            done, why = vcpu.handler.write_msr(vcpu, msr, value)
            if why is None and not done:
                why = vcpu.msr_model.problem(msr, True) or write_value_problem(msr, value)
                if why is None:
                    vcpu.engine.msr_write(msr, value)
        if why is not None:
            return i + 1, f"MSR-load entry {i + 1} (MSR {msr:#x}): {why}"
    return None


def store(vcpu, address: int, count: int) -> tuple[int, str] | None:
    """Store the current value of each MSR the list at ``address`` names into its data
    field: None, or (entry number, why) for an MSR RDMSR would refuse."""
    for i, msr, reserved, _value in _entries(vcpu.memory, address, count):
        if reserved or (msr >> 8 == 0x8 and vcpu.apic.x2apic_mode) or msr == 0x9B:
            return i + 1, f"MSR-store entry {i + 1} (MSR {msr:#x}) is not allowed (SDM 28.4)"
        value, why = vcpu.handler.read_msr(vcpu, msr)
        if why is None and value is None:
            why = vcpu.msr_model.problem(msr, False)
            value = vcpu.engine.msr_read(msr) if why is None else 0
        if why is not None:
            return i + 1, f"MSR-store entry {i + 1} (MSR {msr:#x}): {why}"
        vcpu.memory.write(address + 16 * i + 8, struct.pack("<Q", value))
    return None


def _load_problem(vcpu, msr: int, reserved: int) -> str | None:
    if reserved:
        return "bits 63:32 of the entry are not 0"
    if msr in _EXCLUDED_LOAD:
        return "this MSR may not be loaded from an MSR list (SDM 27.4)"
    if msr >> 8 == 0x8 and vcpu.apic.x2apic_mode:
        return "x2APIC MSRs may not be loaded from an MSR list in x2APIC mode (SDM 27.4)"
    return None
