"""Stops and the VM's end as sentences (shared by ``continue``, ``step`` and the shell's
stop notifier)."""

from __future__ import annotations

from hvdbg.debug.session import DebugSession, NumberedBreak, Stop, StopKind
from hvdbg.ui.render.vmcs import exit_sentence
from hvdbg.vmx.exits import ExitReason


def describe_ending(vm) -> str:
    e = vm.ending
    if e is None:
        return "the VM is still running"
    text = f"the VM ended: outcome {e.outcome}"
    if e.status is not None:
        text += f", exit status {e.status}"
    return text + (f" ({e.detail})" if e.detail else "")



def describe_stop(session: DebugSession, stop: Stop) -> str:
    """One line for a stop event (shared by ``continue`` and the shell's notifier)."""
    vm = session.vm
    if stop.kind is StopKind.ENDED:
        return describe_ending(vm)
    if stop.vcpu is None:
        return f"stopped ({stop.kind.value})"
    v = vm.vcpus[stop.vcpu]
    where = vm.symbolize(v.engine.rip())
    if stop.kind is StopKind.BREAKPOINT:
        bp = session.numbered_at(stop.vcpu, stop.address)
        label = f"breakpoint {bp.number}" if bp else "a breakpoint"
        return f"vCPU {v.index} hit {label} at {where}"
    if stop.kind is StopKind.EXIT_BREAK:
        info = v.last_exit
        at = vm.symbolize(info.rip) if info else where
        return f"vCPU {v.index} stopped on VM exit {stop.detail} at {at}: {exit_sentence(v)}"
    if stop.kind is StopKind.WATCHPOINT:
        return (f"vCPU {v.index} hit a {stop.watch} watchpoint on {stop.address:#x} at {where}: "
                f"{stop.access} of {stop.size} bytes at GPA {stop.gpa:#x}")
    if stop.kind is StopKind.STEP:
        return f"vCPU {v.index} stepped to {where}"
    return f"vCPU {v.index} interrupted at {where}"


def describe_break(vm, bp: NumberedBreak) -> str:
    """What a numbered breakpoint stops on."""
    if bp.reason is not None:
        reason = ExitReason(bp.reason)
        return f"VM exit {reason.name} ({int(reason)}), any vCPU"
    who = "all vCPUs" if bp.vcpus is None else "vCPU " + ",".join(map(str, sorted(bp.vcpus)))
    return f"{vm.symbolize(bp.address)}, {who}"
