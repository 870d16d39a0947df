"""Run control: continue, stop (all-stop), single step."""

from __future__ import annotations

from hvdbg.debug.session import StopKind
from hvdbg.hv.vcpu import Vcpu
from hvdbg.vmx.controls import ActivityState
from hvdbg.ui.commands.args import CommandError
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.cpu import cmd_vcpus
from hvdbg.ui.commands.registry import VCPU, Command, Param, register
from hvdbg.ui.render.stops import describe_ending, describe_stop


def _require_alive(call: Call) -> None:
    if call.vm.ended:
        raise CommandError(describe_ending(call.vm))


def _where(call: Call, v: Vcpu) -> str:
    rip = v.engine.rip()
    insns = v.decode(rip, 1)
    text = f"{insns[0].mnemonic} {insns[0].op_str}".rstrip() if insns else "(no code)"
    return f"=> {call.vm.symbolize(rip)}:  {text}"


def cmd_continue(call: Call, a: dict) -> str:
    ctx = call.ctx
    _require_alive(call)
    if ctx.vm_state() == "running":
        raise CommandError("the VM is already running ('stop' stops it)")
    ctx.drain_events()
    call.session.resume()
    held = {v.index: holders for v in call.vm.vcpus if (holders := call.session.holders(v))}
    kept = [f"vCPU {i} stays stopped: held by {', '.join(h)}" for i, h in held.items()]
    all_held = bool(held) and call.session.executor.holds_all
    if all_held:
        kept.append("(vCPUs share pCPUs in this executor: a held vCPU stops them all)")
    if all_held or len(held) == len(call.vm.vcpus):
        return "\n".join(["nothing runs:", *kept, "(each debugger's continue or detach releases its hold)"])
    if ctx.background:
        return "\n".join([f"running {len(call.vm.vcpus) - len(held)} vCPUs ('stop' or Ctrl-C stops them)", *kept])
    return "\n".join([*kept, _wait_for_the_stop(call)])


def _wait_for_the_stop(call: Call) -> str:
    """A scripted ``continue``: the next stop (not a step's), described where it happened."""
    ctx = call.ctx
    stop = ctx.wait_for_stop(ctx.wait_timeout, lambda s: s.kind is not StopKind.STEP)
    if stop is None:
        call.session.stop()
        return f"no stop after {ctx.wait_timeout:.0f} s: stopped the VM\n" + cmd_vcpus(call, {})
    if stop.kind is StopKind.ENDED:
        return describe_stop(ctx.session, stop)
    call.session.stop()
    if stop.vcpu is not None:
        ctx.current = stop.vcpu
        return describe_stop(ctx.session, stop) + "\n" + _where(call, call.vm.vcpus[stop.vcpu])
    return describe_stop(ctx.session, stop)


def cmd_stop(call: Call, a: dict) -> str:
    _require_alive(call)
    if call.ctx.vm_state() == "stopped":
        return "the VM is already stopped\n" + cmd_vcpus(call, {})
    if not call.session.stop():
        raise CommandError("the vCPUs did not stop within 10 s")
    return cmd_vcpus(call, {})


def cmd_step(call: Call, a: dict) -> str:
    ctx = call.ctx
    v = call.vcpu(a["vcpu"])
    count = a["count"] or 1
    _require_alive(call)
    call.require_stopped(v)
    ctx.drain_events()
    before = v.instructions
    call.session.step(v, count)
    stop = ctx.wait_for_stop(30, lambda s: s.vcpu == v.index)
    ctx.current = v.index
    if stop is None:
        raise CommandError(f"vCPU {v.index} did not finish the step within 30 s")
    if stop.kind is StopKind.ENDED:
        return describe_stop(ctx.session, stop)
    done = v.instructions - before
    lines = [f"vCPU {v.index}: {done} instruction{'s' if done != 1 else ''} executed, activity {v.activity.label}"]
    if stop.kind is not StopKind.STEP:
        lines.append(describe_stop(ctx.session, stop))
    if v.activity not in (ActivityState.WAIT_FOR_SIPI, ActivityState.SHUTDOWN):  # no meaningful RIP then
        lines.append(_where(call, v))
    return "\n".join(lines)


register(
    Command("continue", (), "let every vCPU run", cmd_continue,
            "In the interactive shell the VM runs in the background; in scripts (-c) the command\n"
            "waits for the next stop (breakpoint, exit breakpoint, end of the run).", "run control",
            monitor=False, aliases=("run", "c")),
    Command("stop", (), "stop every vCPU (all-stop) and show where they are", cmd_stop, category="run control",
            monitor=False),
    Command("step", (VCPU, Param("count", "count", optional=True, metavar="N")),
            "execute N instructions (default 1) on one vCPU; the others stay stopped", cmd_step,
            "A single number names a vCPU if the VM has such a vCPU ('step 0 10': vCPU 0, 10 steps).",
            "run control", monitor=False, aliases=("si", "stepi")),
)
