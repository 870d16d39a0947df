"""CPU state as text: registers with decoded flags and control registers (SDM Vol. 1
3.4.3, Vol. 3A 2.5, 2.2.1), CPUID leaves (Vol. 2A CPUID), the local APIC (Vol. 3A 11)."""

from __future__ import annotations

from hvdbg.arch.cpuid import EBX7, ECX1, ECX7, ECX_EXT, EDX1, EDX_EXT
from hvdbg.arch.regs import CR0_BITS, CR4_BITS, EFER_BITS, RFLAGS_BITS
from hvdbg.arch.segments import Segment
from hvdbg.hv.vcpu import Vcpu
from hvdbg.platform.apic import (APIC_BASE_BSP, APIC_BASE_EN, APIC_BASE_EXTD, IA32_APIC_BASE_MSR, LVT_MASKED,
                                 TIMER_MODES, Reg)
from hvdbg.ui.render.text import bit_names, vectors


def format_registers(vm, v: Vcpu, r: dict[str, int], segs: dict[str, Segment]) -> list[str]:
    """``regs``: a vCPU's registers ``r`` and segments ``segs``, read while it is stopped."""
    lines = [f"vCPU {v.index} (APIC id {v.apic_id}): activity {v.activity.label}, {v.code_bits()}-bit code, "
             f"CPL {v.cpl()}"]
    gprs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
    for i in range(0, 16, 4):
        lines.append("  ".join(f"{n:<3} {r[n]:#018x}" for n in gprs[i:i + 4]))
    lines.append(f"rip {vm.symbolize(r['rip'])}")
    lines.append(f"rflags {r['rflags']:#x} [{bit_names(r['rflags'], RFLAGS_BITS)}] IOPL {r['rflags'] >> 12 & 3}")
    lines.append("  ".join(f"{n} {segs[n].selector:#06x}" for n in ("cs", "ss", "ds", "es", "fs", "gs"))
                 + f"  fs_base {r['fs_base']:#x}  gs_base {r['gs_base']:#x}")
    lines.append(f"cr0 {r['cr0']:#x} [{bit_names(r['cr0'], CR0_BITS)}]  cr2 {r['cr2']:#x}  "
                 f"cr3 {r['cr3']:#x}  cr4 {r['cr4']:#x} [{bit_names(r['cr4'], CR4_BITS)}]  cr8 {r['cr8']:#x}")
    lines.append(f"efer {r['efer']:#x} [{bit_names(r['efer'], EFER_BITS)}]")
    gdtr, idtr = v.get_table("gdtr"), v.get_table("idtr")
    lines.append(f"gdtr {gdtr[0]:#x} limit {gdtr[1]:#x}  idtr {idtr[0]:#x} limit {idtr[1]:#x}  "
                 f"tr {segs['tr'].selector:#06x}  ldtr {segs['ldtr'].selector:#06x}")
    return lines


def _text_of(*regs: int) -> str:
    return b"".join(r.to_bytes(4, "little") for r in regs).rstrip(b"\0").decode("latin-1")


def _feature_names(value: int, table: dict[str, int]) -> str:
    return " ".join(n for n, bit in sorted(table.items(), key=lambda kv: kv[1]) if value >> bit & 1) or "none"


def cpuid_notes(leaf: int, sub: int, eax: int, ebx: int, ecx: int, edx: int) -> list[str]:
    """What the registers of one CPUID leaf mean (SDM Vol. 2A, CPUID)."""
    if leaf == 0:
        return [f"max basic leaf {eax:#x}, vendor {_text_of(ebx, edx, ecx)!r}"]
    if leaf == 1:
        family = (eax >> 8 & 0xF) + ((eax >> 20 & 0xFF) if (eax >> 8 & 0xF) == 0xF else 0)
        model = (eax >> 4 & 0xF) | ((eax >> 16 & 0xF) << 4 if (eax >> 8 & 0xF) in (6, 0xF) else 0)
        return [f"family {family:#x} model {model:#x} stepping {eax & 0xF}",
                f"initial APIC ID {ebx >> 24} (EBX[31:24]), {ebx >> 16 & 0xFF} logical processors, "
                f"CLFLUSH line {8 * (ebx >> 8 & 0xFF)} bytes",
                f"ECX: {_feature_names(ecx, ECX1 | {'osxsave': 27})}", f"EDX: {_feature_names(edx, EDX1)}"]
    if leaf == 7:
        if sub:
            return []
        return [f"max subleaf {eax}", f"EBX: {_feature_names(ebx, EBX7)}",
                f"ECX: {_feature_names(ecx, ECX7 | {'ospke': 4})}"]
    if leaf == 0xB:
        kind = {1: "SMT", 2: "core"}.get(ecx >> 8 & 0xFF, "invalid")
        return [f"level {ecx & 0xFF} type {kind}: shift {eax & 0x1F}, {ebx & 0xFFFF} logical processors, "
                f"x2APIC ID {edx}"]
    if leaf == 0x40000000:
        return [f"hypervisor leaves up to {eax:#x}, signature {_text_of(ebx, ecx, edx)!r}"]
    if leaf == 0x80000000:
        return [f"max extended leaf {eax:#x}"]
    if leaf == 0x80000001:
        return [f"ECX: {_feature_names(ecx, ECX_EXT)}", f"EDX: {_feature_names(edx, EDX_EXT)}"]
    if leaf in (0x80000002, 0x80000003, 0x80000004):
        return [f"brand string part {leaf - 0x80000001}: {_text_of(eax, ebx, ecx, edx)!r}"]
    if leaf == 0x80000008:
        return [f"{eax & 0xFF}-bit physical, {eax >> 8 & 0xFF}-bit linear addresses"]
    return []


_LVTS = (("timer", Reg.LVT_TIMER), ("LINT0", Reg.LVT_LINT0), ("LINT1", Reg.LVT_LINT1),
         ("error", Reg.LVT_ERROR), ("perf", Reg.LVT_PERF), ("thermal", Reg.LVT_THERMAL), ("CMCI", Reg.LVT_CMCI))
_LVT_MODES = {0: "fixed", 2: "SMI", 4: "NMI", 5: "INIT", 7: "ExtINT"}


def _lvt_text(name: str, value: int) -> str:
    """An LVT entry (SDM 11.5.1, Figure 11-8)."""
    parts = [f"vector {value & 0xFF:#04x}", "masked" if value & LVT_MASKED else "unmasked"]
    if name == "timer":
        parts.append(TIMER_MODES.get(value >> 17 & 3, "reserved mode"))
    else:
        parts.append(_LVT_MODES.get(value >> 8 & 7, "reserved mode"))
        if name.startswith("LINT"):
            parts.append("level" if value >> 15 & 1 else "edge")
    return ", ".join(parts)


def format_apic(v: Vcpu) -> list[str]:
    """``apic``: a vCPU's local APIC."""
    ap = v.apic
    base = ap.base_msr
    flags = [n for bit, n in ((APIC_BASE_BSP, "BSP"), (APIC_BASE_EN, "enabled"), (APIC_BASE_EXTD, "x2APIC"))
             if base & bit]
    svr = ap.read(Reg.SVR)
    lines = [f"vCPU {v.index} local APIC: ID {ap.apic_id} (ID register {ap.id_register:#010x}), "
             f"version {ap.read(Reg.VERSION):#010x}, {'x2APIC' if ap.x2apic_mode else 'xAPIC'} mode",
             f"IA32_APIC_BASE (MSR {IA32_APIC_BASE_MSR:#x}) {base:#x} [{' '.join(flags)}], "
             f"SVR {svr:#x}: software {'enabled' if svr & 0x100 else 'disabled'}, spurious vector {svr & 0xFF:#04x}",
             f"TPR {ap.read(Reg.TPR):#04x}  PPR {ap.read(Reg.PPR):#04x}  ESR {ap.read(Reg.ESR):#x}  "
             f"LDR {ap.read(Reg.LDR):#010x}  DFR {ap.read(Reg.DFR):#010x}",
             f"IRR {vectors(ap.irr)}   ISR {vectors(ap.isr)}   TMR {vectors(ap.tmr)}   "
             f"NMI pending: {'yes' if ap.nmi_pending else 'no'}"]
    for name, reg in _LVTS:
        value = ap.read(reg)
        lines.append(f"LVT {name:<8} {value:#010x}  {_lvt_text(name, value)}")
    deadline = ap.timer_deadline
    lines.append(f"timer: {ap.timer_mode()}, initial count {ap.read(Reg.TIMER_INITIAL)}, current count "
                 f"{ap.read(Reg.TIMER_CURRENT)}, divide config {ap.read(Reg.TIMER_DIVIDE):#x}, "
                 f"next expiry " + (f"at virtual time {deadline}" if deadline is not None else "none")
                 + f", fired {ap.timer_fired} times")
    icr = ap.read(Reg.ICR_HIGH) << 32 | ap.read(Reg.ICR_LOW)
    lines.append(f"ICR {icr:#018x}; IPIs sent {ap.ipis_sent}, fixed interrupts received {ap.ipis_received}")
    for cmd, targets in list(v.ipi_log)[-16:]:
        lines.append(f"  sent {cmd.describe()} -> vCPU {', '.join(map(str, targets)) or 'none'}")
    if v.started_by_sipi:
        lines.append(f"started by SIPI vector {v.sipi_vector:#04x} (at {v.sipi_vector << 12:#x})"
                     if v.sipi_vector is not None else "started by SIPI")
    return lines

