"""The guest-physical address space of a guest hypervisor's guest (L2): the L1's EPT,
rooted in the L1's own memory, composed with hvdbg's EPT (SDM 29.3).  While L2 runs, the
engine maps :class:`L2Memory`'s pieces instead of the machine's RAM runs; the debugger's
page walks and reads go through :class:`L2Physical`; an access the composition does not
allow is decided by :func:`ept_fault` (an EPT violation or misconfiguration for the L1,
or hvdbg's own EPT for the L1-physical address)."""

from __future__ import annotations

from dataclasses import dataclass

from hvdbg.hv.exit import ExitInfo, NestedEptFault
from hvdbg.vmx.ept import ADDR_MASK, EptStatus, walk_ept
from hvdbg.vmx.ept_tables import Ept
from hvdbg.vmx.exits import ExitReason, ept_violation_qualification
from hvdbg.vmx.vmcs_region import OpenBusMemory


def ept_fault(vcpu, gpa: int, kind: str, rip: int, gla: int | None, translated: bool) -> tuple[int | None, bool]:
    """An L2-physical access the engine could not make: through the L1's EPT.  Where that
    EPT does not map it (or forbids the access) it is an EPT violation (or
    misconfiguration) for the L1, reflected: (None, False).  Otherwise (L1-physical
    address, _): hvdbg's own EPT decides, as for an L1 access there."""
    from hvdbg.hv.nested_guest import ept_enabled, vmcs12
    region = vmcs12(vcpu)
    if not ept_enabled(region):
        return gpa, True
    walk = walk_ept(OpenBusMemory(vcpu.memory), region.read("EPT_POINTER") & ADDR_MASK, gpa)
    if walk.status is EptStatus.OK and not walk.is_violation(kind):
        return walk.hpa, True
    if walk.is_misconfig:
        info = ExitInfo(ExitReason.EPT_MISCONFIG, rip=rip, guest_physical=gpa, detail=walk.reason,
                        payload=NestedEptFault(walk, kind))
    else:
        qual = ept_violation_qualification(kind, walk, gla_valid=gla is not None, translated_access=translated)
        info = ExitInfo(ExitReason.EPT_VIOLATION, qualification=qual.encode(), rip=rip, guest_physical=gpa,
                        guest_linear=gla, detail=f"{kind} of L2-physical {gpa:#x}: {walk.reason or 'not permitted'} "
                        "in the guest hypervisor's EPT", payload=NestedEptFault(walk, kind))
    vcpu.vm_exit(info)
    return None, False


@dataclass
class L2Memory:
    """The L2-physical address space: the L1's EPT (rooted in the L1's memory) composed with
    hvdbg's own EPT.  ``pieces`` are what the engine maps while L2 runs: (L2 GPA, size,
    EPT permissions, host-physical address)."""

    eptp: int
    pieces: list[tuple[int, int, int, int]]

    @classmethod
    def build(cls, vcpu, eptp: int) -> "L2Memory":
        l1 = vcpu.memory
        tables = Ept(OpenBusMemory(l1), _no_alloc, pml4_hpa=eptp & ADDR_MASK & ~0xFFF)
        pieces = []
        root = eptp & ADDR_MASK & ~0xFFF
        for run in tables.mapped_ranges():
            # a run the engine may not map: no permission, or misconfigured entries (W without
            # R, a reserved memory type or bit, SDM 29.3.3.1): every access faults, and the
            # walk then decides between the EPT violation and the misconfiguration
            if not run.perms or walk_ept(OpenBusMemory(l1), root, run.gpa_start).status is not EptStatus.OK:
                continue
            gpa, end, l1_gpa = run.gpa_start, run.gpa_end, run.hpa_start
            while gpa < end:
                hpa = l1.translate(l1_gpa)
                span = _run_left(l1, l1_gpa)
                if hpa is None or span == 0:
                    break     # beyond hvdbg's RAM: the engine faults, the walk decides the exit
                n = min(end - gpa, span)
                if not vcpu.engine.overlaps_mmio(gpa, n):
                    pieces.append((gpa, n, int(run.perms), hpa))
                gpa += n
                l1_gpa += n
        return cls(eptp, pieces)

    def install(self, vcpu) -> None:
        vcpu.engine.replace_ram([(p[0], p[1], p[2], vcpu.memory.host.pointer(p[3], p[1])) for p in self.pieces],
                                nested=True)
        vcpu.physical = L2Physical(vcpu, self.eptp)

    def remove(self, vcpu) -> None:
        m = vcpu.memory
        vcpu.engine.replace_ram([(r.gpa_start, r.gpa_end - r.gpa_start, int(r.perms),
                                  m.host.pointer(r.hpa_start, r.gpa_end - r.gpa_start)) for r in m.runs()],
                                nested=False)
        vcpu.physical = m


def _no_alloc() -> int:
    raise RuntimeError("the guest hypervisor's EPT is only read")


def _run_left(mem, gpa: int) -> int:
    """Bytes from ``gpa`` to the end of hvdbg's EPT run that maps it (0 if none)."""
    for r in mem.runs():
        if r.gpa_start <= gpa < r.gpa_end:
            return r.gpa_end - gpa
    return 0


class L2Physical:
    """Reads and writes of L2-physical addresses (the debugger's, the page walker's): through
    the L1's EPT, then hvdbg's memory (PhysicalMemory)."""

    def __init__(self, vcpu, eptp: int) -> None:
        self.l1 = vcpu.memory
        self.pml4 = eptp & ADDR_MASK & ~0xFFF

    def translate(self, gpa: int) -> int:
        from hvdbg.errors import GuestMemoryError
        walk = walk_ept(OpenBusMemory(self.l1), self.pml4, gpa)
        if walk.status is not EptStatus.OK or walk.hpa is None:
            raise GuestMemoryError(f"L2-physical {gpa:#x}: {walk.reason} in the guest hypervisor's EPT")
        return walk.hpa

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            n = min(size, 0x1000 - (addr & 0xFFF))
            out += self.l1.read(self.translate(addr), n)
            addr += n
            size -= n
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, 0x1000 - ((addr + pos) & 0xFFF))
            self.l1.write(self.translate(addr + pos), data[pos:pos + n])
            pos += n
