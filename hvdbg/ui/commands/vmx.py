"""VMX commands: the VMCS (SDM 25) and the EPT (SDM 29.3)."""

from __future__ import annotations

from hvdbg.hv.vcpu import Vcpu
from hvdbg.ui.commands.args import CommandError, VmcsTarget
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.registry import VCPU, Command, Param, register
from hvdbg.ui.render.text import size_text
from hvdbg.ui.render.vmcs import eptp_line, exit_sentence, format_vmcs_field, format_vmcs_sections
from hvdbg.vmx import ept as ept_mod
from hvdbg.hv import nested_guest
from hvdbg.hv.nested import VMX_INSTRUCTION_EXITS
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.fields import GROUPS, resolve
from hvdbg.vmx.instructions import VmInstructionError, current_region
from hvdbg.vmx.vmcs_region import OpenBusMemory


def _sync_vmcs(call: Call, v: Vcpu) -> bool:
    """Bring the VMCS guest-state area up to date when the vCPU is stopped."""
    if call.ctx.is_stopped(v):
        v.save_guest_state()
        return True
    return False


def cmd_vmcs(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    fresh = _sync_vmcs(call, v)
    vmcs = v.vmcs
    state = ("guest state saved from the stopped vCPU" if fresh
             else "vCPU running: guest state as of its last VM exit")
    lines = [f"vCPU {v.index} VMCS: revision id {vmcs.revision_id:#x}, launch state "
             f"{vmcs.launch_state.value}; {state}"]
    target: VmcsTarget | None = a["target"]
    show_all = a["all"] is not None
    if target is not None and target.field is not None:
        return "\n".join(lines + format_vmcs_field(vmcs, target.field))
    if target is not None and target.controls is not None:
        return "\n".join(lines + format_vmcs_field(vmcs, resolve(target.controls.field)))
    groups = list(GROUPS) if target is None else [target.group]
    lines += format_vmcs_sections(vmcs, groups, show_all, v.index)
    if "exit" in groups and v.last_exit is not None:
        info = v.last_exit
        lines.append(f"last VM exit: {info.reason.name} ({int(info.reason)}) at "
                     f"{call.vm.symbolize(info.rip)}: {exit_sentence(v)}")
    return "\n".join(lines)


def cmd_vmx(call: Call, a: dict) -> str:
    """The VMX operation of a guest hypervisor on each vCPU (nested VMX, hvdbg.hv.nested)."""
    vcpus = call.vm.vcpus if a["vcpu"] is None else [call.vcpu(a["vcpu"])]
    if all(v.vmx is None for v in vcpus):
        return ("CPUID does not offer VMX to the guest (CPUID.1:ECX.VMX = 0): set cpu = \"hvdbg,+vmx\" "
                "to run a guest hypervisor (docs/nested.md)")
    lines = []
    for v in vcpus:
        lines += _vmx_lines(call, v)
    return "\n".join(lines)


def _vmx_lines(call: Call, v: Vcpu) -> list[str]:
    state = v.vmx
    if state is None:
        return [f"vCPU {v.index}: VMX not offered"]
    if not state.in_vmx_operation:
        mode = "outside VMX operation"
    else:
        mode = ("L2 running: the guest hypervisor's guest, in its VMX non-root operation" if state.non_root
                else "L1 running: the guest hypervisor, in VMX root operation")
    lines = [f"vCPU {v.index}: {mode}; IA32_FEATURE_CONTROL {state.feature_control.value:#x}"]
    if state.pending_exit is not None:
        x = state.pending_exit
        lines.append(f"  VM exit to L1 due at the next run: {x.detail or f'exit reason {x.reason}'} at L2 RIP {x.rip:#x}")
    if state.pending_entry:
        lines.append("  VM entry into L2 due at the next run")
    if state.in_vmx_operation:
        lines.append(f"  VMXON region {state.vmxon_pointer:#x}")
    region = current_region(state, v.memory)
    if region is None:
        lines.append("  current VMCS: none (pointer FFFFFFFF_FFFFFFFF)")
    else:
        error = region.read("VM_INSTRUCTION_ERROR")
        why = f" ({VmInstructionError(error).description})" if error in VmInstructionError._value2member_map_ else ""
        lines.append(f"  current VMCS {state.current_vmcs:#x}: revision {region.revision_id:#x}, launch state "
                     f"{region.launch_state.value}, VM-instruction error {error}{why}")
    if state.l2_entries:
        l2_share = state.time_in_l2 * 100 // max(1, state.time_in_l1 + state.time_in_l2)
        by_reason = ", ".join(f"{ExitReason(r).name if r in ExitReason._value2member_map_ else r} {n}"
                              for r, n in sorted(state.exits_by_reason.items(), key=lambda kv: -kv[1]))
        lines.append(f"  {state.l2_entries} VM entries into L2, {state.l2_exits} exits to L1 ({by_reason or 'none'}); "
                     f"virtual time {state.time_in_l2} ns in L2 ({l2_share}%), {state.time_in_l1} ns in L1 "
                     "between exits and entries")
    names = {r.name for r in VMX_INSTRUCTION_EXITS}
    recent = [r for r in call.vm.trace.last(2000, vcpu=v.index) if r.reason_name in names][-5:]
    if recent:
        lines.append("  last VMX instructions:")
        lines += [f"    {call.vm.symbolize(r.rip)}  {r.detail}" for r in recent]
    return lines


def _guest_hypervisor_vmcs(call: Call, vcpu: int | None):
    """(vCPU, the guest hypervisor's current VMCS on it), or the one-line error why not."""
    v = call.vcpu(vcpu)
    if v.vmx is None:
        raise CommandError(f"vCPU {v.index}: CPUID does not offer VMX (cpu = \"hvdbg,+vmx\" does)")
    region = current_region(v.vmx, v.memory)
    if region is None:
        raise CommandError(f"vCPU {v.index}: the guest hypervisor has no current VMCS (VMPTRLD makes one)")
    return v, region


def cmd_vmx_vmcs(call: Call, a: dict) -> str:
    """The guest hypervisor's current VMCS, read from its own memory, decoded as ``vmcs``."""
    v, region = _guest_hypervisor_vmcs(call, a["vcpu"])
    vmcs = region.to_vmcs()
    lines = [f"vCPU {v.index} guest hypervisor's VMCS at GPA {v.vmx.current_vmcs:#x}: revision id "
             f"{region.revision_id:#x}, launch state {region.launch_state.value}"]
    target: VmcsTarget | None = a["target"]
    if target is not None and target.field is not None:
        return "\n".join(lines + format_vmcs_field(vmcs, target.field))
    if target is not None and target.controls is not None:
        return "\n".join(lines + format_vmcs_field(vmcs, resolve(target.controls.field)))
    groups = list(GROUPS) if target is None else [target.group]
    return "\n".join(lines + format_vmcs_sections(vmcs, groups, a["all"] is not None, v.index, "vmx vmcs"))


def cmd_vmx_ept(call: Call, a: dict) -> str:
    """A GPA of the guest hypervisor's guest through the guest hypervisor's EPT (its
    current VMCS's EPTP, tables in its memory), then hvdbg's EPT for the result."""
    v, region = _guest_hypervisor_vmcs(call, a["vcpu"])
    gpa = a["gpa"]
    if not 0 <= gpa < 1 << 48:
        raise CommandError(f"GPA {gpa:#x} is beyond the 48 bits a 4-level EPT translates")
    eptp = region.read("EPT_POINTER")
    enabled = nested_guest.ept_enabled(region)
    lines = [f"vCPU {v.index} guest hypervisor's EPTP {eptp:#x} (PML4 at its GPA {eptp & ~0xFFF & (1 << 52) - 1:#x}; "
             f"enable EPT {'on' if enabled else 'off: its guest uses these addresses unchanged'})"]
    walk = ept_mod.walk_ept(OpenBusMemory(v.memory), eptp & ept_mod.ADDR_MASK, gpa)
    lines += ept_mod.format_walk(walk)
    if walk.ok and walk.hpa is not None:
        hpa = v.memory.translate(walk.hpa)
        lines.append(f"  then hvdbg's EPT: the guest hypervisor's GPA {walk.hpa:#x} -> HPA "
                     + (f"{hpa:#x}" if hpa is not None else "not mapped (no RAM there)"))
    return "\n".join(lines)


def cmd_ept_walk(call: Call, a: dict) -> str:
    ept = call.vm.memory.ept
    gpa = a["gpa"]
    if not 0 <= gpa < 1 << 52:
        raise CommandError(f"GPA {gpa:#x} is beyond the 52-bit physical address space")
    walk = ept.walk(gpa)
    lines = [eptp_line(ept)] + ept_mod.format_walk(walk)
    if walk.ok:
        verdicts = [f"{acc} {'EPT violation' if walk.is_violation(acc) else 'allowed'}"
                    for acc in ("read", "write", "fetch")]
        lines.append("  accesses: " + ", ".join(verdicts))
    return "\n".join(lines)


def cmd_ept_map(call: Call, a: dict) -> str:
    ept = call.vm.memory.ept
    ranges = ept.mapped_ranges()
    lines = [eptp_line(ept), f"{'GPA range':<29} -> {'HPA':<14} perm type size"]
    lines += ept_mod.format_ranges(ranges)
    lines.append(f"{len(ranges)} mapped run{'s' if len(ranges) != 1 else ''}, "
                 f"{size_text(sum(r.gpa_end - r.gpa_start for r in ranges))} mapped, "
                 f"{len(ept.table_pages())} EPT table pages")
    return "\n".join(lines)


register(
    Command("vmcs", (VCPU, Param("target", "vmcs", optional=True, metavar="FIELD|GROUP"),
                     Param("all", "all", optional=True, metavar="all")),
            "the vCPU's VMCS grouped like KVM's dump_vmcs, or one field", cmd_vmcs,
            "Groups: guest, host, control, exit; a FIELD is a name (GUEST_CR3, EPT_POINTER_HIGH),\n"
            "an encoding (0x6802) or a control set (pin, primary, secondary, entry, exit).\n"
            "Control fields are decoded bit by bit, the exit reason and qualification as a sentence.\n"
            "Zero fields are hidden unless 'all' is given.  The guest-state area is refreshed from\n"
            "the vCPU when it is stopped (SDM 28.3 'Saving Guest State').", "VMX"),
    Command("ept walk", (Param("gpa", "number"), ),
            "translate a GPA through the EPT: every entry, permissions, memory type, HPA", cmd_ept_walk,
            "Shows the EPTP, each level's entry (host-physical address, raw value, R/W/X, memory\n"
            "type, large page), the resulting HPA or the level where the walk stopped and why\n"
            "(SDM 29.3.2 'EPT Translation Mechanism').", "VMX"),
    Command("ept map", (), "the guest-physical ranges the EPT maps, merged", cmd_ept_map, category="VMX"),
    Command("vmx", (VCPU,), "a guest hypervisor's VMX operation on each vCPU (nested VMX)", cmd_vmx,
            "Per vCPU: outside VMX operation, root or non-root; IA32_FEATURE_CONTROL; the VMXON\n"
            "region; the current VMCS (its launch state and VM-instruction error, SDM 31.4) and\n"
            "the last VMX instructions with their outcome (VMsucceed, VMfailValid(n), #UD...).\n"
            "Needs cpu = \"hvdbg,+vmx\" (docs/nested.md).", "VMX"),
    Command("vmx ept", (Param("gpa", "number"), VCPU),
            "a guest-physical address of the guest hypervisor's guest through the guest hypervisor's EPT",
            cmd_vmx_ept,
            "Walks the EPT of the guest hypervisor's current VMCS (its EPTP; the tables in its\n"
            "memory) like 'ept walk' walks hvdbg's: every entry, permissions, memory type, or where\n"
            "the walk stopped; then the result through hvdbg's EPT (SDM 29.3.2).", "VMX"),
    Command("vmx vmcs", (VCPU, Param("target", "vmcs", optional=True, metavar="FIELD|GROUP"),
                         Param("all", "all", optional=True, metavar="all")),
            "the guest hypervisor's current VMCS, decoded like 'vmcs'", cmd_vmx_vmcs,
            "Read from the VMCS region in the guest's memory (the VMPTRLD operand), with the same\n"
            "groups, fields and control decoding as 'vmcs' shows for hvdbg's own VMCS.", "VMX"),
)
