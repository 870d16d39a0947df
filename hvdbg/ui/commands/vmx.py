"""VMX commands: the VMCS (SDM 25) and the EPT (SDM 29.3)."""

from __future__ import annotations

from hvdbg.hv.vcpu import Vcpu
from hvdbg.ui.commands.args import CommandError, VmcsTarget
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.registry import VCPU, Command, Param, register
from hvdbg.ui.render.text import size_text
from hvdbg.ui.render.vmcs import eptp_line, exit_sentence, format_vmcs_field, format_vmcs_sections
from hvdbg.vmx import ept as ept_mod
from hvdbg.vmx.fields import GROUPS, resolve


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
)
