"""The VMCS guest-state area (SDM 25.4) and the engine: saved at VM exits that leave the
engine (SDM 28.3), loaded at VM entry (SDM 27.3.2).

:class:`GuestStateArea` is a base class of :class:`hvdbg.hv.vcpu.Vcpu`; it needs
``engine`` (an EngineCpu), the VMCS as ``_vmcs``/``vmcs`` and the activity state."""

from __future__ import annotations

from hvdbg.arch.segments import Segment, as_held
from hvdbg.engine.cpu import EngineCpu
from hvdbg.hv import activity as act
from hvdbg.vmx.controls import ActivityState
from hvdbg.vmx.vmcs import Vmcs

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
#: register -> guest-state field (SDM 25.4.1)
GUEST_REG_FIELDS = {"rip": "GUEST_RIP", "rsp": "GUEST_RSP", "rflags": "GUEST_RFLAGS",
                    "cr0": "GUEST_CR0", "cr3": "GUEST_CR3", "cr4": "GUEST_CR4", "dr7": "GUEST_DR7"}
GUEST_SEG_FIELDS = {s: s.upper() for s in ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")}
_SAVE_REGS = ("rip", "rsp", "rflags", "cr0", "cr3", "cr4", "dr7")
_SAVE_FIELDS = [GUEST_REG_FIELDS[n] for n in _SAVE_REGS]
_SEG_FIELDS = {name: tuple(f"GUEST_{fld}_{part}" for part in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES"))
               for name, fld in GUEST_SEG_FIELDS.items()}


def segment_fields(e: EngineCpu) -> dict[str, int]:
    """The segment registers and GDTR/IDTR as guest-state fields (SDM 25.4.1), the hidden
    parts as the processor holds them (accessed / busy, hvdbg.arch.segments.as_held)."""
    values = {}
    for name, seg in e.segments().items():
        seg = as_held(name, seg)
        sel, base, limit, ar = _SEG_FIELDS[name]
        values[sel], values[base], values[limit], values[ar] = seg.selector, seg.base, seg.limit, seg.access_rights
    for name in ("gdtr", "idtr"):
        base, limit = e.table(name)
        values[f"GUEST_{name.upper()}_BASE"], values[f"GUEST_{name.upper()}_LIMIT"] = base, limit
    return values


def load_segment_fields(e: EngineCpu, read) -> None:
    """Load the segment registers and GDTR/IDTR from guest-state fields (``read(name)``:
    a Vmcs's or a guest hypervisor's VMCS region's); CR0/CR4/EFER and RFLAGS first."""
    for name in ("gdtr", "idtr"):
        e.set_table(name, read(f"GUEST_{name.upper()}_BASE"), read(f"GUEST_{name.upper()}_LIMIT"))
    e.set_segments({name: Segment(*(read(f) for f in _SEG_FIELDS[name])) for name in GUEST_SEG_FIELDS})


class GuestStateArea:
    engine: EngineCpu
    _vmcs: Vmcs
    activity: ActivityState

    @property
    def vmcs(self) -> Vmcs: ...

    def save_guest_state(self) -> None:
        """Copy the engine's state into the VMCS guest-state area (SDM 28.3)."""
        e = self.engine
        values = dict(zip(_SAVE_FIELDS, e.batch_of(_SAVE_REGS).read()))
        values["GUEST_IA32_EFER"] = e.read("efer")
        values.update(segment_fields(e))
        values["GUEST_ACTIVITY_STATE"] = int(self.activity)
        self._vmcs.update(values)

    def load_guest_state(self) -> None:
        """Load the engine from the VMCS guest-state area (VM entry, SDM 27.3.2)."""
        v = self.vmcs
        e = self.engine
        e.set_control_registers(v.read("GUEST_CR0"), v.read("GUEST_CR3"), v.read("GUEST_CR4"),
                                v.read("GUEST_IA32_EFER"))
        e.write("rflags", v.read("GUEST_RFLAGS"))
        e.write("rsp", v.read("GUEST_RSP"))
        e.write("dr7", v.read("GUEST_DR7"))
        load_segment_fields(e, v.read)
        e.set_rip(v.read("GUEST_RIP"))
        act.restore(self, v.read("GUEST_ACTIVITY_STATE"))

    def set_guest_state(self, *, rip: int, cr0: int, cr3: int = 0, cr4: int = 0, efer: int = 0,
                        rflags: int = 0x2, rsp: int = 0, segments: dict[str, Segment],
                        gdtr: tuple[int, int] = (0, 0xFFFF), idtr: tuple[int, int] = (0, 0xFFFF),
                        gprs: dict[str, int] | None = None,
                        activity: ActivityState = ActivityState.ACTIVE) -> None:
        """Write a complete guest state into the VMCS and load it (used for the BSP's
        multiboot entry state and the SIPI state of APs)."""
        v = self.vmcs
        for reg, val in (("rip", rip), ("rsp", rsp), ("rflags", rflags), ("cr0", cr0), ("cr3", cr3),
                         ("cr4", cr4), ("dr7", 0x400)):
            v.write(GUEST_REG_FIELDS[reg], val)
        v.write("GUEST_IA32_EFER", efer)
        null = Segment(0, 0, 0, 1 << 16)
        for name, fld in GUEST_SEG_FIELDS.items():
            s = segments.get(name, null if name != "tr" else Segment(0, 0, 0xFFFF, 0x8B))
            pre = f"GUEST_{fld}"
            v.write(f"{pre}_SELECTOR", s.selector)
            v.write(f"{pre}_BASE", s.base)
            v.write(f"{pre}_LIMIT", s.limit)
            v.write(f"{pre}_AR_BYTES", s.access_rights)
        v.write("GUEST_GDTR_BASE", gdtr[0])
        v.write("GUEST_GDTR_LIMIT", gdtr[1])
        v.write("GUEST_IDTR_BASE", idtr[0])
        v.write("GUEST_IDTR_LIMIT", idtr[1])
        v.write("GUEST_ACTIVITY_STATE", int(activity))
        self.load_guest_state()
        for name in GPRS:
            if name != "rsp":
                self.engine.write(name, (gprs or {}).get(name, 0))
