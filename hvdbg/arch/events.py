"""Event delivery through the guest IDT (SDM Vol. 3, chapter 6 "Interrupt and Exception
Handling"; 20.1.4 for real-address mode).

Unicorn never uses the guest IDT: hvdbg delivers exceptions and interrupts itself,
in real-address, protected and IA-32e mode, with the double-fault rules of SDM
Table 6-5 and shutdown (a triple fault, VM exit reason 2) when delivering #DF fails.

The CPU is reached through the small :class:`EventCpu` interface so that this module
knows nothing of Unicorn.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from hvdbg.arch.regs import RFLAGS_AC, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, RFLAGS_VM
from hvdbg.arch.segments import Segment

VECTOR_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available", 8: "#DF double fault",
    9: "coprocessor segment overrun", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault", 16: "#MF x87 error",
    17: "#AC alignment check", 18: "#MC machine check", 19: "#XM SIMD exception", 20: "#VE virtualization",
    21: "#CP control protection",
}
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})
DF = 8
PF = 14
GP = 13
NP = 11
SS_FAULT = 12
TS = 10



def vector_name(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector:#x}")


class EventType(IntEnum):
    """Interruption type, as in the VMCS interruption-information field (SDM 25.8.3)."""

    EXTERNAL = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6


@dataclass(frozen=True)
class Event:
    vector: int
    type: EventType
    error_code: int | None = None
    cr2: int | None = None

    @property
    def is_exception(self) -> bool:
        return self.type in (EventType.HARDWARE_EXCEPTION, EventType.SOFTWARE_EXCEPTION,
                             EventType.PRIVILEGED_SOFTWARE_EXCEPTION)

    @property
    def external(self) -> bool:
        """The EXT bit of error codes: the event was not caused by the program."""
        return self.type in (EventType.EXTERNAL, EventType.NMI, EventType.HARDWARE_EXCEPTION)

    def interruption_info(self) -> int:
        """VM-exit / VM-entry interruption-information encoding (SDM 25.8.3, 25.9.2)."""
        info = (self.vector & 0xFF) | int(self.type) << 8 | 1 << 31
        if self.error_code is not None:
            info |= 1 << 11
        return info

    def describe(self) -> str:
        text = vector_name(self.vector)
        if self.error_code is not None:
            text += f" (error code {self.error_code:#x})"
        if self.cr2 is not None:
            text += f" at linear address {self.cr2:#x}"
        return text


def hardware_exception(vector: int, error_code: int | None = None, cr2: int | None = None) -> Event:
    if vector in ERROR_CODE_VECTORS and error_code is None:
        error_code = 0
    return Event(vector, EventType.HARDWARE_EXCEPTION, error_code if vector in ERROR_CODE_VECTORS else None, cr2)


class GuestFault(Exception):
    """An exception raised while delivering an event (it becomes the next event)."""

    def __init__(self, event: Event, why: str) -> None:
        super().__init__(why)
        self.event = event
        self.why = why


class EventCpu(Protocol):
    """What event delivery needs from a vCPU."""

    def get_reg(self, name: str) -> int: ...        # rip rsp rflags cr0 cr4 efer
    def set_reg(self, name: str, value: int) -> None: ...
    def get_segment(self, name: str) -> Segment: ...  # cs ss tr
    def set_segments(self, segs: dict[str, Segment]) -> None: ...
    def get_table(self, name: str) -> tuple[int, int]: ...  # (base, limit) of gdtr/idtr
    def cpl(self) -> int: ...
    def read_linear(self, addr: int, size: int) -> bytes: ...   # raises GuestFault(#PF)
    def write_linear(self, addr: int, data: bytes) -> None: ...  # raises GuestFault(#PF)


class Shutdown(Exception):
    """Triple fault: the processor enters shutdown (SDM 6.15, interrupt 8)."""

    def __init__(self, chain: list[tuple[Event, str]]) -> None:
        super().__init__("triple fault")
        self.chain = chain


@dataclass
class Delivery:
    """Result of a successful delivery: the event that finally ran and the chain before it."""

    event: Event
    handler: int
    chain: list[tuple[Event, str]]


#: Fault-class exceptions (SDM Table 6-1), #DB aside: it is a fault for instruction
#: breakpoints only.  Their saved RFLAGS image has RF set (SDM 18.3.1.1), so that the
#: handler's IRET does not take an instruction breakpoint on the restarted instruction again.
FAULT_VECTORS = frozenset({0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20, 21})


def _saved_flags(ev: Event, flags: int) -> int:
    """The RFLAGS image an event pushes."""
    if ev.type == EventType.HARDWARE_EXCEPTION and ev.vector in FAULT_VECTORS:
        return flags | RFLAGS_RF
    return flags


def _class(vector: int) -> str:
    if vector == PF:
        return "pf"
    if vector in CONTRIBUTORY:
        return "contributory"
    if vector == DF:
        return "df"
    return "benign"


def combine(first: Event, second: Event) -> Event | None:
    """SDM Table 6-5: what happens when ``second`` occurs while delivering ``first``.
    Returns the event to deliver next, or None for shutdown (triple fault)."""
    if not first.is_exception or first.type != EventType.HARDWARE_EXCEPTION:
        return second
    a, b = _class(first.vector), _class(second.vector)
    if a == "df" and b in ("contributory", "pf", "df"):
        return None
    if (a == "contributory" and b == "contributory") or (a == "pf" and b in ("contributory", "pf")):
        return hardware_exception(DF, 0)
    return second


def deliver(cpu: EventCpu, event: Event, return_rip: int | None = None, length: int = 0) -> Delivery:
    """Deliver ``event`` through the guest IDT, escalating to #DF and shutdown.

    ``return_rip`` is the RIP pushed for the handler to return to (the faulting
    instruction for faults, the next instruction for traps and INT n); defaults to RIP.
    ``length`` is the instruction length of a trap-like event (INT n, INT3, INTO): a fault
    while delivering it returns to the instruction itself (SDM 6.5, 6.12.1.1: the #NP of a
    not-present handler segment re-executes the INT).
    """
    chain: list[tuple[Event, str]] = []
    current = event
    rip = cpu.get_reg("rip") if return_rip is None else return_rip
    for _ in range(4):
        try:
            handler = _deliver_once(cpu, current, rip)
            if current.vector == PF and current.cr2 is not None:
                cpu.set_reg("cr2", current.cr2)
            return Delivery(current, handler, chain)
        except GuestFault as fault:
            if current is event:
                rip -= length     # the fault is the instruction's own: it restarts
            chain.append((current, fault.why))
            nxt = combine(current, fault.event)
            if nxt is None:
                chain.append((fault.event, "fault while delivering #DF"))
                raise Shutdown(chain) from None
            if nxt.vector == PF and nxt.cr2 is not None:
                cpu.set_reg("cr2", nxt.cr2)
            current = nxt
    raise Shutdown(chain)


def _deliver_once(cpu: EventCpu, ev: Event, rip: int) -> int:
    cr0 = cpu.get_reg("cr0")
    if not cr0 & 1:
        return _deliver_real(cpu, ev, rip)
    efer = cpu.get_reg("efer")
    # IA-32e mode is EFER.LMA with CR0.PG (SDM 2.2.1); Unicorn reports LMA in 32-bit code too
    if efer & (1 << 10) and cr0 & (1 << 31):
        return _deliver_long(cpu, ev, rip)
    return _deliver_protected(cpu, ev, rip)


def _idt_fault(ev: Event, why: str) -> GuestFault:
    # error code: IDT bit (1) + EXT (0) with the vector as index (SDM 6.13)
    code = (ev.vector << 3) | 2 | (1 if ev.external else 0)
    return GuestFault(hardware_exception(GP, code), why)


def _deliver_real(cpu: EventCpu, ev: Event, rip: int) -> int:
    """Real-address mode: IVT entries are CS:IP pairs (SDM 20.1.4)."""
    base, limit = cpu.get_table("idtr")
    if ev.vector * 4 + 3 > limit:
        raise _idt_fault(ev, f"vector {ev.vector:#x} is beyond the IVT limit {limit:#x}")
    ip, cs_sel = struct.unpack("<HH", cpu.read_linear(base + ev.vector * 4, 4))
    ss = cpu.get_segment("ss")
    sp = cpu.get_reg("rsp") & 0xFFFF
    flags = cpu.get_reg("rflags")
    cs = cpu.get_segment("cs")
    frame = struct.pack("<HHH", rip & 0xFFFF, cs.selector, flags & 0xFFFF)
    sp = (sp - 6) & 0xFFFF
    cpu.write_linear(ss.base + sp, frame)
    cpu.set_reg("rsp", (cpu.get_reg("rsp") & ~0xFFFF) | sp)
    cpu.set_reg("rflags", flags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC))
    cpu.set_segments({"cs": Segment(cs_sel, cs_sel << 4, 0xFFFF, cs.access_rights)})
    cpu.set_reg("rip", ip)
    return (cs_sel << 4) + ip


def _read_descriptor(cpu: EventCpu, selector: int, ev: Event) -> tuple[int, int, int, int]:
    """(base, limit, access_rights, raw_high) of a GDT/LDT descriptor."""
    if selector & 4:
        raise GuestFault(hardware_exception(GP, selector & 0xFFFC), "LDT selectors in gates are not modelled")
    gbase, glimit = cpu.get_table("gdtr")
    index = selector & 0xFFF8
    if index == 0 or index + 7 > glimit:
        raise GuestFault(hardware_exception(GP, selector & 0xFFFC | (1 if ev.external else 0)),
                         f"gate selector {selector:#x} is outside the GDT (limit {glimit:#x})")
    lo, hi = struct.unpack("<II", cpu.read_linear(gbase + index, 8))
    base = (lo >> 16) | (hi & 0xFF) << 16 | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    ar = (hi >> 8) & 0xF0FF
    if ar & (1 << 15):
        limit = (limit << 12) | 0xFFF
    return base, limit, ar, hi


def _handler_code_segment(cpu: EventCpu, selector: int, ev: Event) -> tuple[int, int, int]:
    """(base, limit, access rights) of the code segment an IDT gate names, with the checks
    of SDM 6.12.1.1 in their order: a code segment (else #GP), present (else #NP); the
    error code is the selector with EXT."""
    base, limit, ar, _ = _read_descriptor(cpu, selector, ev)
    ext = 1 if ev.external else 0
    if ar & 0x18 != 0x18:          # S = 1 and type bit 3 (code)
        raise GuestFault(hardware_exception(GP, selector & 0xFFFC | ext),
                         f"gate {ev.vector:#x} selector {selector:#x} is not a code segment")
    if not ar & 0x80:
        raise GuestFault(hardware_exception(NP, selector & 0xFFFC | ext),
                         f"gate {ev.vector:#x} selector {selector:#x}: code segment not present")
    return base, limit, ar


def _gate(cpu: EventCpu, ev: Event, size: int) -> tuple[int, int, int, int]:
    """(offset, selector, type, ist) of the IDT gate for ev (SDM 6.11, 6.14.1)."""
    base, limit = cpu.get_table("idtr")
    off = ev.vector * size
    if off + size - 1 > limit:
        raise _idt_fault(ev, f"vector {ev.vector:#x} is beyond the IDT limit {limit:#x} (no IDT loaded?)")
    raw = cpu.read_linear(base + off, size)
    lo, hi = struct.unpack_from("<II", raw)
    gtype = (hi >> 8) & 0xF
    present = hi & (1 << 15)
    dpl = (hi >> 13) & 3
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
    if size == 16:
        offset |= struct.unpack_from("<I", raw, 8)[0] << 32
    if not present:
        code = (ev.vector << 3) | 2 | (1 if ev.external else 0)
        raise GuestFault(hardware_exception(NP, code), f"IDT gate {ev.vector:#x} is not present")
    if ev.type == EventType.SOFTWARE_INTERRUPT and dpl < cpu.cpl():
        raise _idt_fault(ev, f"INT {ev.vector:#x}: gate DPL {dpl} < CPL {cpu.cpl()}")
    valid = (0xE, 0xF) if size == 16 else (0x6, 0x7, 0xE, 0xF)
    if gtype not in valid:
        if gtype == 0x5:
            raise _idt_fault(ev, "task gates are not modelled")
        raise _idt_fault(ev, f"IDT entry {ev.vector:#x} has invalid gate type {gtype:#x}")
    return offset, lo >> 16, gtype, hi & 7


def _deliver_protected(cpu: EventCpu, ev: Event, rip: int) -> int:
    offset, sel, gtype, _ = _gate(cpu, ev, 8)
    cs_base, cs_limit, cs_ar = _handler_code_segment(cpu, sel, ev)
    new_cpl = (cs_ar >> 5) & 3
    cpl = cpu.cpl()
    flags = cpu.get_reg("rflags")
    old_cs = cpu.get_segment("cs")
    old_ss = cpu.get_segment("ss")
    esp = cpu.get_reg("rsp") & 0xFFFFFFFF
    wide = gtype >= 8
    width = 4 if wide else 2
    fmt = "<I" if wide else "<H"
    items = [_saved_flags(ev, flags), old_cs.selector, rip]
    new_ss = old_ss
    if new_cpl < cpl:
        tr = cpu.get_segment("tr")
        esp0, ss0 = struct.unpack("<II", cpu.read_linear(tr.base + 4 + new_cpl * 8, 8))
        ss0 &= 0xFFFF
        ss_base, ss_limit, ss_ar, _ = _read_descriptor(cpu, ss0, ev)
        new_ss = Segment(ss0, ss_base, ss_limit, ss_ar)
        items = [old_ss.selector, esp] + items
        esp = esp0
    if ev.error_code is not None:
        items.append(ev.error_code)
    data = b"".join(struct.pack(fmt, v & (0xFFFFFFFF if wide else 0xFFFF)) for v in reversed(items))
    esp = (esp - len(data)) & 0xFFFFFFFF
    cpu.write_linear(new_ss.base + esp, data)
    new_flags = flags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    if gtype in (0x6, 0xE):
        new_flags &= ~RFLAGS_IF
    segs = {"cs": Segment(sel & 0xFFFC | new_cpl, cs_base, cs_limit, cs_ar)}
    if new_ss is not old_ss:
        segs["ss"] = Segment(new_ss.selector, new_ss.base, new_ss.limit, new_ss.access_rights)
    cpu.set_reg("rflags", new_flags)
    cpu.set_segments(segs)
    cpu.set_reg("rsp", (cpu.get_reg("rsp") & ~0xFFFFFFFF) | esp)
    cpu.set_reg("rip", offset)
    return cs_base + offset


def _deliver_long(cpu: EventCpu, ev: Event, rip: int) -> int:
    """IA-32e mode: 16-byte gates, 64-bit frame SS:RSP:RFLAGS:CS:RIP, IST (SDM 6.14)."""
    offset, sel, gtype, ist = _gate(cpu, ev, 16)
    cs_base, cs_limit, cs_ar = _handler_code_segment(cpu, sel, ev)
    if not (cs_ar & (1 << 13)):
        raise GuestFault(hardware_exception(GP, sel & 0xFFFC), f"gate {ev.vector:#x} selector {sel:#x} is not a 64-bit code segment")
    new_cpl = (cs_ar >> 5) & 3
    cpl = cpu.cpl()
    flags = cpu.get_reg("rflags")
    old_cs = cpu.get_segment("cs")
    old_ss = cpu.get_segment("ss")
    rsp = cpu.get_reg("rsp")
    new_rsp = rsp
    segs: dict[str, Segment] = {}
    if ist or new_cpl < cpl:
        tr = cpu.get_segment("tr")
        slot = 0x24 + (ist - 1) * 8 if ist else 4 + new_cpl * 8
        new_rsp = struct.unpack("<Q", cpu.read_linear(tr.base + slot, 8))[0]
    if new_cpl < cpl:
        segs["ss"] = Segment(new_cpl, 0, 0, 1 << 16)  # NULL SS with RPL = new CPL
    new_rsp &= ~0xF
    items = [old_ss.selector, rsp, _saved_flags(ev, flags), old_cs.selector, rip]
    if ev.error_code is not None:
        items.append(ev.error_code)
    data = b"".join(struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF) for v in reversed(items))
    new_rsp = (new_rsp - len(data)) & 0xFFFFFFFFFFFFFFFF
    cpu.write_linear(new_rsp, data)
    new_flags = flags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    if gtype == 0xE:
        new_flags &= ~RFLAGS_IF
    segs["cs"] = Segment(sel & 0xFFFC | new_cpl, cs_base, cs_limit, cs_ar)
    cpu.set_reg("rflags", new_flags)
    cpu.set_segments(segs)
    cpu.set_reg("rsp", new_rsp)
    cpu.set_reg("rip", offset)
    return offset
