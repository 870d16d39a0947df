"""VM exits and breakpoints: the exit trace (kvm_stat-like counts), break on an exit
reason, breakpoints on addresses, deleting them.  The numbered breakpoints live in the
debug session (:meth:`~hvdbg.debug.session.DebugSession.numbered`)."""

from __future__ import annotations

from hvdbg.hv.trace import ExitRecord
from hvdbg.ui.commands.args import CommandError
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.registry import VCPU, Command, Param, register
from hvdbg.ui.render.stops import describe_break
from hvdbg.ui.render.text import table
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.exit_text import describe_exit


def _exit_line(vm, rec: ExitRecord) -> str:
    text = rec.detail or describe_exit(rec.reason, rec.qualification)
    return (f"{rec.seq:>7} {rec.vcpu:>4}  {rec.reason_name:<18} {vm.symbolize(rec.rip):<42} "
            f"{rec.qualification:#10x}  {text}")


def cmd_exits(call: Call, a: dict) -> str:
    vm = call.vm
    trace = vm.trace
    n = 20 if a["count"] is None else a["count"]
    reason: ExitReason | None = a["reason"]
    lines = []
    if n:
        recs = trace.last(n, a["vcpu"], reason.name if reason else None)
        lines.append(f"{'seq':>7} {'vCPU':>4}  {'reason':<18} {'RIP':<42} {'qual':>10}  detail")
        lines += [_exit_line(vm, r) for r in recs]
        if not recs:
            lines.append("  (no matching exits)")
        lines.append("")
    counts = trace.counts.most_common()
    total = trace.total
    ids = sorted(trace.per_vcpu)
    rows = [(name, count, f"{100.0 * count / total:.1f}" if total else "0.0",
             *(trace.per_vcpu[i].get(name, 0) for i in ids)) for name, count in counts]
    rows.append(("total", total, "100.0" if total else "0.0",
                 *(sum(trace.per_vcpu[i].values()) for i in ids)))
    lines += table(rows, ("exit reason", "total", "%", *(f"vCPU{i}" for i in ids)),
                    right=set(range(1, 3 + len(ids))))
    return "\n".join(lines)


def cmd_break_exit(call: Call, a: dict) -> str:
    reasons: list[ExitReason] = a["reasons"]
    if not reasons:
        return _list_breakpoints(call)
    out = []
    for reason in reasons:
        bp = call.session.add_exit_break(int(reason))
        if bp is None:
            out.append(f"already breaking on VM exit {reason.name}")
        else:
            out.append(f"breakpoint {bp.number}: stop the VM on VM exit {reason.name} ({int(reason)})")
    return "\n".join(out)


def cmd_break(call: Call, a: dict) -> str:
    if a["addr"] is None:
        return _list_breakpoints(call)
    scope = None if a["vcpu"] is None else frozenset({a["vcpu"]})
    with call.ctx.parked():
        bp = call.session.add_numbered_breakpoint(a["addr"].value, scope)
    return f"breakpoint {bp.number} at {describe_break(call.vm, bp)}"


def _list_breakpoints(call: Call) -> str:
    vm = call.vm
    lines = [f"{bp.number:>3}  {describe_break(vm, bp)}" for bp in call.session.numbered()]
    lines += [f"  -  {vm.symbolize(address)} (set by gdb)" for address, _scope in call.session.unnumbered_breakpoints()]
    return "\n".join(lines) if lines else "no breakpoints"


def cmd_delete(call: Call, a: dict) -> str:
    numbers: list[int] = a["numbers"]
    known = [bp.number for bp in call.session.numbered()]
    targets = known if not numbers else numbers
    missing = [n for n in targets if n not in known]
    if missing:
        raise CommandError(f"no breakpoint {missing[0]} ('break' lists them)")
    if not targets:
        return "no breakpoints"
    with call.ctx.parked():
        call.session.delete_numbered(targets)
    return f"deleted breakpoint{'s' if len(targets) > 1 else ''} {', '.join(map(str, targets))}"


register(
    Command("exits", (Param("count", "count", optional=True, metavar="N"), VCPU,
                      Param("reason", "reason", optional=True)),
            "the last N VM exits (default 20) and per-reason counts per vCPU (kvm_stat-like)", cmd_exits,
            "Filter by vCPU and exit reason (HLT, IO_INSTRUCTION, 48...).  'exits 0' prints the counts only.",
            "VM exits and breakpoints"),
    Command("break exit", (Param("reasons", "reason", optional=True, many=True, metavar="REASON"),),
            "stop the VM when a VM exit of this reason happens", cmd_break_exit,
            "The exit is handled first (an OUT reaches its device), then every vCPU stops.",
            "VM exits and breakpoints"),
    Command("break", (Param("addr", "address", optional=True, metavar="ADDR|SYMBOL"), VCPU),
            "breakpoint at a guest-linear address (all vCPUs, or one); no argument: list",
            cmd_break, "The breakpoint never modifies guest memory (a code hook, like a hardware\n"
            "breakpoint).  'break' alone lists every breakpoint, also those gdb set.",
            "VM exits and breakpoints", aliases=("b",)),
    Command("delete", (Param("numbers", "count", optional=True, many=True, metavar="N"),),
            "delete breakpoints by number (all if none given)", cmd_delete, category="VM exits and breakpoints"),
)
