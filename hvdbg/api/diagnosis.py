"""Turning the end of a run into a classified outcome and sentences a developer can act
on at 2 a.m.: which vCPU, where (ELF symbol), which exit, what the tables say."""

from __future__ import annotations

from hvdbg.platform import multiboot

from hvdbg.arch import paging
from hvdbg.errors import Outcome
from hvdbg.hv.exit import EptFault, ExceptionExit, ExitInfo, TripleFault
from hvdbg.vmx.exits import ExitReason
from hvdbg.hv.vcpu import Vcpu
from hvdbg.vmx.controls import ActivityState
from hvdbg.hv.machine import Machine
from hvdbg.platform.multiboot.spec import BOOTLOADER_MAGIC, MB1_BOOTLOADER_MAGIC, MB1_HEADER_MAGIC, MB2_HEADER_MAGIC



def _where(vm: Machine, v: Vcpu) -> str:
    rip = v.registers()["rip"]
    return vm.symbolize(rip, v) + _level(v)


def _level(v: Vcpu) -> str:
    return " (in L2, the guest hypervisor's guest)" if v.vmx is not None and v.vmx.non_root else ""


def magic_findings(vm: Machine) -> list[str]:
    boot = vm.boot
    want = BOOTLOADER_MAGIC[boot.version]
    if boot.eax == want:
        return []
    text = multiboot.describe_magic(boot.eax, boot.version)
    if boot.eax in (MB1_HEADER_MAGIC, MB2_HEADER_MAGIC):
        text += " The loader passed the magic it found in the kernel's header instead of the bootloader magic; a kernel that checks EAX at entry stops right there."
    return [f"multiboot magic mismatch: EAX was {boot.eax:#x} at entry, the multiboot {boot.version} spec requires {want:#x}. {text}"]


def _hang(vm: Machine) -> list[str]:
    out = []
    for v in vm.vcpus:
        regs = v.registers()
        iflag = "IF=1" if regs["rflags"] & (1 << 9) else "IF=0"
        if v.activity == ActivityState.HLT:
            syms = vm.symbols_for(v)
            fn = syms.function_of(regs["rip"] - 1) or syms.function_of(regs["rip"])
            where = f" in function {fn}" if fn else ""
            out.append(f"vCPU {v.index} is halted{where} at RIP {vm.symbolize(regs['rip'], v)}{_level(v)} with {iflag}"
                       + (" and nothing can wake it (no NMI, INIT or SIPI pending)" if iflag == "IF=0" else ""))
        elif v.activity == ActivityState.WAIT_FOR_SIPI:
            out.append(f"vCPU {v.index} (APIC id {v.apic_id}) is still in wait-for-SIPI: no INIT/SIPI ever reached it")
        elif v.activity == ActivityState.SHUTDOWN:
            out.append(f"vCPU {v.index} is in shutdown state")
        else:
            out.append(f"vCPU {v.index} is spinning at {_where(vm, v)} with {iflag} without VM exits")
    out += magic_findings(vm)
    return out


def _last_exits(vm: Machine, reason: ExitReason) -> list[tuple[Vcpu, ExitInfo]]:
    """The vCPUs whose last VM exit had ``reason``, with that exit."""
    return [(v, v.last_exit) for v in vm.vcpus if v.last_exit is not None and v.last_exit.reason == reason]


def _ept_violation(vm: Machine) -> list[str]:
    out = []
    for v, ex in _last_exits(vm, ExitReason.EPT_VIOLATION):
        access = ex.payload.access if isinstance(ex.payload, EptFault) else "?"
        gla = f"GLA {ex.guest_linear:#x}" if ex.guest_linear is not None else "no valid GLA"
        kind = "a paging-structure entry" if not (ex.qualification >> 8 & 1) and ex.guest_linear is not None else "the page"
        where = vm.symbolize(ex.rip) if v.code_bits() == 64 else \
            f"CS:IP {v.get_segment('cs').selector:#06x}:{ex.rip & 0xFFFF:04x} ({v.code_bits()}-bit code)"
        out.append(f"vCPU {v.index}: EPT violation: {access} of {kind} at GPA {ex.guest_physical:#x} ({gla}), "
                   f"instruction at {where}; exit qualification {ex.qualification:#x}")
        ram = vm.config["memory"]
        if ex.guest_physical is not None and ex.guest_physical >= ram:
            out.append(f"the guest has {ram >> 20} MiB of RAM (GPA 0..{ram - 1:#x}); GPA {ex.guest_physical:#x} is "
                       f"{(ex.guest_physical - ram) >> 10} KiB past its end, so the EPT has no mapping for it")
        walk = ex.payload.walk if isinstance(ex.payload, EptFault) else None
        if walk is not None:
            from hvdbg.vmx.ept import format_walk as ept_format
            out.append("EPT walk: " + " | ".join(ept_format(walk)))
        if ex.guest_linear is not None:
            w = v.page_walk(ex.guest_linear, access if access in ("read", "write", "fetch") else "read")
            out.append("guest page walk: " + " | ".join(paging.format_walk(w)))
    return out


def _triple_fault(vm: Machine) -> list[str]:
    out = []
    for v, ex in _last_exits(vm, ExitReason.TRIPLE_FAULT):
        regs = v.registers()
        fault = ex.payload if isinstance(ex.payload, TripleFault) else TripleFault()
        if fault.internal is not None:
            out.append(f"vCPU {v.index}: the emulator stopped at {vm.symbolize(ex.rip)}: {fault.internal}")
            continue
        out.append(f"vCPU {v.index}: triple fault at {vm.symbolize(ex.rip)}: {ex.detail}")
        idt_base, idt_limit = v.get_table("idtr")
        if idt_limit < 14 * 16:
            out.append(f"IDTR is {idt_base:#x}/{idt_limit:#x}: no IDT is loaded, so the first exception cannot be delivered, #DF cannot either, and the CPU shuts down")
        chain = fault.chain
        pf = next((e for e, _ in chain if e.vector == 14), None)
        if pf is not None and pf.cr2 is not None:
            out.append(f"the first fault was a #PF with CR2 = {pf.cr2:#x} (error code {pf.error_code:#x})")
            w = v.page_walk(pf.cr2, "fetch" if (pf.error_code or 0) & 0x10 else "read")
            if w.fault is not None:
                out.append(f"guest page walk of CR2 stops at {w.fault.level}: {w.fault.reason}")
            out.append("page walk: " + " | ".join(paging.format_walk(w)))
            if not (v.vmcs.read("EXCEPTION_BITMAP") >> 14 & 1):
                out.append("no VM exit was seen for the #PF because bit 14 of the exception bitmap is clear: "
                           "set vmx.exception_bitmap = 0x4000 to make the #PF itself exit to the hypervisor")
        out.append(f"CR0={regs['cr0']:#x} CR3={regs['cr3']:#x} CR4={regs['cr4']:#x} EFER={regs['efer']:#x}")
    return out


def _exception(vm: Machine) -> list[str]:
    out = []
    for v, ex in _last_exits(vm, ExitReason.EXCEPTION_NMI):
        ev = ex.payload.event if isinstance(ex.payload, ExceptionExit) else None
        out.append(f"vCPU {v.index}: exception VM exit (exception bitmap bit {ev.vector if ev else '?'} set): "
                   f"{ex.detail} at {vm.symbolize(ex.rip)}")
        if ev is not None and ev.vector == 14 and ev.cr2 is not None:
            w = v.page_walk(ev.cr2, "read")
            out.append(f"exit qualification = CR2 = {ex.qualification:#x}; guest page walk: " + " | ".join(paging.format_walk(w)))
    return out


def sipi_findings(vm: Machine) -> list[str]:
    """APs whose SIPI entry is not where hardware puts it (SDM 11.4.4.1: CS.base = V << 12)."""
    out = []
    offset = vm.config["gpa_hpa_offset"]
    for v in vm.vcpus:
        if v.sipi_vector is None or v.sipi_entry is None:
            continue
        expected = v.sipi_vector << 12
        if v.sipi_entry != expected:
            delta = v.sipi_entry - expected
            why = (f" = {expected:#x} + gpa_hpa_offset {offset:#x}: the VMM computed the AP entry from the "
                   "host-physical address instead of the guest-physical one") if delta == offset else ""
            out.append(f"vCPU {v.index} received SIPI vector {v.sipi_vector:#04x}: hardware starts the AP in real "
                       f"mode at CS:IP {v.sipi_vector << 8:#06x}:0000, GPA {expected:#x}; the VMM started it at "
                       f"GPA {v.sipi_entry:#x}{why}")
            ex = v.last_exit
            if ex is not None and ex.guest_physical == v.sipi_entry and isinstance(ex.payload, EptFault) and ex.payload.access == "fetch":
                out.append(f"vCPU {v.index}'s very first instruction fetch, at GPA {v.sipi_entry:#x}, is the EPT violation")
    return out


def apic_id_findings(vm: Machine) -> list[str]:
    """CPUID initial APIC IDs vs the local APICs' IDs, and what sharing one does."""
    out = []
    cpuid_ids = [v.cpuid.apic_id for v in vm.vcpus]
    if len(set(cpuid_ids)) == len(cpuid_ids):
        return out
    table = ", ".join(f"vCPU {v.index}: CPUID {v.cpuid.apic_id} / LAPIC {v.apic_id}" for v in vm.vcpus)
    out.append(f"CPUID.1:EBX[31:24] (initial APIC ID) is not unique: {table}. A kernel that picks its per-CPU "
               "stack or data by the CPUID APIC ID (as ArceOS does) puts these vCPUs on the same stack")
    stacks: dict[int, list[tuple[int, int]]] = {}
    for v in vm.vcpus[1:]:
        if not v.started_by_sipi:
            continue
        rsp = v.registers()["rsp"]
        stacks.setdefault(rsp >> 14, []).append((v.index, rsp))
    for group in stacks.values():
        if len(group) > 1:
            where = vm.symbols.symbolize(group[0][1])
            out.append("stack collision: " + ", ".join(f"vCPU {i} RSP {rsp:#x}" for i, rsp in group)
                       + f" lie in the same 16 KiB stack{f' ({where})' if where else ''}")
    return out


def wild_rip_findings(vm: Machine) -> list[str]:
    """Exceptions taken at an RIP that is not code: a corrupted return address or jump."""
    out = []
    if not len(vm.symbols):
        return out  # a stripped kernel: every RIP is "outside every symbol"
    for v in vm.vcpus:
        for ev, rip in v.delivered:
            if ev.vector in (3, 4) or vm.symbols.symbolize(rip) is not None:
                continue
            text = "not canonical" if (rip >> 47) not in (0, 0x1FFFF) else "outside every ELF symbol"
            ascii_ = rip.to_bytes(8, "little")
            if all(32 <= b < 127 for b in ascii_):
                text += f", and its bytes are ASCII text {ascii_.decode()!r}: a return address overwritten by a string"
            out.append(f"vCPU {v.index} took {ev.describe()} at RIP {rip:#x}, which is not code ({text})")
            break
    return out


#: thresholds of the machine-trouble findings (a healthy boot of the SMP kernel: no repeated
#: exception, no 1-instruction entries, a few blocked injections)
EXCEPTION_STORM = 1_000
TINY_ENTRIES = 1_000
BLOCKED_INJECTIONS = 100


def trouble_findings(vm: Machine) -> list[str]:
    """Signs that the machine, not only the guest, is in trouble: an exception storm, VM
    entries of one instruction, interrupts held back entry after entry, an SMP VM in
    which no vCPU touched its local APIC."""
    from hvdbg.arch.events import vector_name
    out = []
    for v in vm.vcpus:
        if v.longest_exception_streak >= EXCEPTION_STORM:
            total = sum(v.exception_counts.values())
            top = ", ".join(f"{vector_name(vec)} x{n}" for vec, n in
                            sorted(v.exception_counts.items(), key=lambda kv: -kv[1])[:3])
            out.append(f"vCPU {v.index}: exception storm: {v.longest_exception_streak} times in a row the same "
                       f"exception at the same RIP ({total} exceptions in all: {top}; the last "
                       f"{vector_name(v.last_exception_vector)} at {vm.symbolize(v.last_exception_rip)}): a handler "
                       "returns to the faulting instruction without fixing its cause")
        if v.tiny_entries >= TINY_ENTRIES and v.tiny_entries * 10 >= v.entries:
            out.append(f"vCPU {v.index} ran {v.tiny_entries} of its {v.entries} VM entries for one instruction "
                       "(an event deadline kept expiring): the run loop, not the guest, is slow here")
        if v.blocked_injections >= BLOCKED_INJECTIONS:
            vec = v.apic.pending_vector()
            now = f"; vector {vec:#x} is pending now with RFLAGS.IF={int(v.interrupts_enabled())}" if vec is not None else ""
            out.append(f"vCPU {v.index}: {v.blocked_injections} VM entries found an interrupt pending that the guest "
                       f"could not take (RFLAGS.IF = 0 or an STI/MOV SS shadow){now}")
    counts = vm.trace.counts
    if len(vm.vcpus) > 1 and not counts.get("APIC_ACCESS") and not counts.get("INIT_SIGNAL") \
            and not any(v.started_by_sipi for v in vm.vcpus) and not any(v.apic.x2apic_mode for v in vm.vcpus):
        out.append(f"the VM has {len(vm.vcpus)} vCPUs but no vCPU touched its local APIC (no APIC-access exit, "
                   "x2APIC off): the guest never tried to start its APs (INIT/SIPI go through the ICR)")
    return out


def nested_findings(vm: Machine) -> list[str]:
    """A guest hypervisor's view (nested VMX, docs/nested.md): per vCPU in VMX operation,
    whether it ever ran its guest, and the guest's last exit to it when that exit is the
    kind a hypervisor stops on (an EPT violation past its EPT, a triple fault, an
    exception), read from the guest hypervisor's own VMCS."""
    from hvdbg.hv.nested_guest import vmcs12
    from hvdbg.vmx.ept import walk_ept
    from hvdbg.vmx.exit_text import describe_exit
    from hvdbg.vmx.vmcs_region import OpenBusMemory
    out = []
    in_vmx = [v for v in vm.vcpus if v.vmx is not None and v.vmx.in_vmx_operation]
    launched = [v for v in in_vmx if v.vmx.l2_entries]
    out += _l2_entry_findings(v for v in launched)
    for v in in_vmx:
        state = v.vmx
        if not state.l2_entries:
            if launched:
                out.append(f"vCPU {v.index}: in VMX root operation, but the guest hypervisor never ran a guest on it "
                           f"(no successful VMLAUNCH; vCPUs {', '.join(str(x.index) for x in launched)} did): its "
                           "guest's CPU here was never started - the guest sent no INIT/SIPI for it, or the guest "
                           "hypervisor did not act on them")
            continue
        if state.non_root or not state.current_valid:
            continue
        region = vmcs12(v)
        reason = region.read("VM_EXIT_REASON")
        if reason & 0xFFFF not in (0, 2, 48, 49):
            continue
        gpa, rip = region.read("GUEST_PHYSICAL_ADDRESS"), region.read("GUEST_RIP")
        text = describe_exit(reason, region.read("EXIT_QUALIFICATION"), gpa=gpa, gla=region.read("GUEST_LINEAR_ADDRESS"),
                             intr_info=region.read("VM_EXIT_INTR_INFO"), error_code=region.read("VM_EXIT_INTR_ERROR_CODE"))
        line = (f"vCPU {v.index}: the guest hypervisor's guest (L2) last exited to it with: {text}, "
                f"at L2 RIP {rip:#x} (exit {state.l2_exits} of this vCPU)")
        if reason & 0xFFFF == 0 and region.read("VM_EXIT_INTR_INFO") & 0xFF == 14:
            line += "; " + _l2_page_walk(v, region, region.read("EXIT_QUALIFICATION"))
        if reason & 0xFFFF == 48:
            eptp = region.read("EPT_POINTER")
            walk = walk_ept(OpenBusMemory(v.memory), eptp & 0xFFFFFFFFFF000, gpa)
            top = _ept_top(v, eptp)
            line += (f"; the guest hypervisor's EPT (EPTP {eptp:#x}) {walk.reason or 'maps it'}"
                     + (f" - it maps L2-physical 0x0-{top:#x}" if top else ""))
        out.append(line)
    return out


def _l2_entry_findings(vcpus) -> list[str]:
    """What the guest hypervisor gave its guest against what a kernel expects: the
    multiboot magic in EAX at the first entry, a real-mode AP whose CS base is not its
    selector x 16 (and is where the guest hypervisor's EPT maps it: a host-physical
    entry), one initial APIC ID in its CPUID answers for several vCPUs."""
    from hvdbg.hv.nested_guest import ept_enabled, vmcs12
    from hvdbg.vmx.ept import walk_ept
    from hvdbg.vmx.vmcs_region import OpenBusMemory
    out, apic_ids = [], {}
    for v in vcpus:
        first = v.vmx.first_entry or {}
        if first.get("rax", 0) & 0xFFFFFFFF == MB1_HEADER_MAGIC and first.get("cr0", 0) & 1:
            out.append(f"vCPU {v.index}: the guest hypervisor entered its guest at {first['rip']:#x} with EAX = "
                       f"{MB1_HEADER_MAGIC:#x}, the multiboot header magic; a multiboot kernel checks for the "
                       f"bootloader magic {MB1_BOOTLOADER_MAGIC:#x} (Multiboot 3.2): its loader passed the wrong value")
        if first and not first.get("cr0", 1) & 1 and first["cs_base"] != first["cs_selector"] << 4:
            expected = first["cs_selector"] << 4
            line = (f"vCPU {v.index}: the guest hypervisor started its guest's AP in real mode with CS selector "
                    f"{first['cs_selector']:#x} but CS base {first['cs_base']:#x} (selector x 16 = {expected:#x})")
            region = vmcs12(v) if v.vmx.current_valid else None
            if region is not None and ept_enabled(region):
                walk = walk_ept(OpenBusMemory(v.memory), region.read("EPT_POINTER") & 0xFFFFFFFFFF000, expected)
                if walk.hpa == first["cs_base"]:
                    line += (f": {first['cs_base']:#x} is where its EPT maps {expected:#x} - it computed the SIPI "
                             "entry from the host-physical address")
            out.append(line)
        answer = v.vmx.cpuid_answers.get(1)
        if answer is not None:
            apic_ids.setdefault(answer[1] >> 24 & 0xFF, []).append(v.index)
    for apic_id, indexes in apic_ids.items():
        if len(indexes) > 1:
            out.append(f"the guest hypervisor answers CPUID.1 with initial APIC ID {apic_id} on vCPUs "
                       f"{', '.join(map(str, indexes))}: its guest's CPUs cannot tell themselves apart (a kernel "
                       "that indexes per-CPU data by that ID shares one slot)")
    return out


def _l2_page_walk(v: Vcpu, region, cr2: int) -> str:
    """The guest hypervisor's guest's own page walk of ``cr2`` (its CR3 in the VMCS,
    through the guest hypervisor's EPT when it has one)."""
    from hvdbg.hv.nested_guest import ept_enabled
    from hvdbg.hv.nested_memory import L2Physical
    mem = L2Physical(v, region.read("EPT_POINTER")) if ept_enabled(region) else v.memory
    try:
        w = paging.walk(mem.read, region.read("GUEST_CR0"), region.read("GUEST_CR3"), region.read("GUEST_CR4"),
                        region.read("GUEST_IA32_EFER"), cr2, "fetch" if region.read("GUEST_RIP") == cr2 else "read",
                        maxphyaddr=v.maxphyaddr)
    except Exception as e:  # noqa: BLE001 - tables outside memory
        return f"its page walk of {cr2:#x} could not be made ({e})"
    return f"its guest's page walk of {cr2:#x}: " + (w.reason or f"maps it to {w.gpa:#x}")


def _ept_top(v: Vcpu, eptp: int) -> int:
    """The end of the guest hypervisor's EPT mapping that starts at L2-physical 0 (0 if none)."""
    from hvdbg.vmx.ept_tables import Ept
    from hvdbg.vmx.vmcs_region import OpenBusMemory
    try:
        runs = Ept(OpenBusMemory(v.memory), lambda: 0, pml4_hpa=eptp & 0xFFFFFFFFFF000).mapped_ranges()
    except Exception:  # noqa: BLE001 - a wild EPTP: no summary
        return 0
    end = 0
    for r in runs:
        if r.gpa_start != end:
            break
        end = r.gpa_end
    return end


def _common(vm: Machine) -> list[str]:
    out = sipi_findings(vm) + apic_id_findings(vm) + wild_rip_findings(vm) + trouble_findings(vm)
    try:
        out += nested_findings(vm)
    except Exception as e:  # noqa: BLE001 - a diagnosis must never take the report down
        out.append(f"(diagnosis incomplete: hvdbg could not analyse the guest hypervisor's state: "
                   f"{type(e).__name__}: {e})")
    if vm.bus.unhandled:
        ports = ", ".join(f"{p:#x}" for p in sorted(vm.bus.unhandled)[:12])
        out.append(f"the guest used I/O ports no device claims: {ports}")
    out += screen_findings(vm)
    return out


def screen_findings(vm: Machine) -> list[str]:
    """Text a kernel left on the VGA text screen (GRUB's and Xen's fatal errors go there)."""
    from hvdbg.platform.devices.vga import screen_lines
    try:
        lines = [line.strip() for line in screen_lines(vm.memory) if line.strip()]
    except Exception:  # noqa: BLE001 - no RAM at 0xB8000
        return []
    return ["the VGA text screen reads: " + " | ".join(lines[-4:])] if lines else []


_BY_OUTCOME = {
    Outcome.HANG: _hang,
    Outcome.EPT_VIOLATION: _ept_violation,
    Outcome.TRIPLE_FAULT: _triple_fault,
    Outcome.EXCEPTION: _exception,
}


def diagnose(vm: Machine) -> list[str]:
    ending = vm.ending
    if ending is None:
        return ["the VM has not ended"]
    out: list[str] = []
    if ending.detail:
        out.append(ending.detail)
    try:
        out += _BY_OUTCOME.get(ending.outcome, lambda _vm: [])(vm)
    except Exception as e:  # noqa: BLE001 - a diagnosis must never take the report down
        out.append(f"(diagnosis incomplete: hvdbg could not analyse this state: {type(e).__name__}: {e})")
    if ending.outcome == Outcome.EXITED:
        if ending.status is not None and 0x80 <= ending.status < 0xA0:
            from hvdbg.arch.events import vector_name
            out.append(f"exit status {ending.status:#x} = 0x80 + {ending.status - 0x80}: the guest's exception "
                       f"handler reported {vector_name(ending.status - 0x80)} (hvdbg's test kernels use this convention)")
        started = [v.index for v in vm.vcpus if v.started_by_sipi]
        if len(vm.vcpus) > 1:
            out.append(f"{len(started)} of {len(vm.vcpus) - 1} APs were started by INIT-SIPI")
    elif ending.outcome != Outcome.HANG:
        out += magic_findings(vm)
    out += _common(vm)
    return out


def result(vm: Machine, wall_seconds: float, sched: dict | None = None) -> dict:
    """The JSON object of ``hvdbg run --json``; ``sched`` is the executor's statistics."""
    ending = vm.ending
    out = {
        "outcome": ending.outcome if ending else "running",
        "exit_status": ending.status if ending else None,
        "serial": vm.uart.text(),
        "vcpus": [vm.vcpu_summary(v) for v in vm.vcpus],
        "exits": dict(sorted(vm.trace.counts.items())),
        "diagnosis": diagnose(vm),
        "trace_hash": vm.trace.digest(),
        "instructions": vm.total_instructions(),
        "wall_seconds": round(wall_seconds, 3),
    }
    if sched is not None:
        out["sched"] = _jsonable(sched)
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
