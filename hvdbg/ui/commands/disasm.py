"""Disassembly shared by ``disas`` and ``x/i``."""

from __future__ import annotations

from hvdbg.hv.vcpu import Vcpu
from hvdbg.ui.commands.args import CommandError
from hvdbg.ui.commands.context import Call
from hvdbg.ui.render.code import format_disassembly


def disassemble(call: Call, v: Vcpu, start: int, count: int, end: int | None = None) -> str:
    """``count`` instructions of a stopped vCPU from ``start`` (those before ``end``)."""
    rip = v.engine.rip()
    if count > 1000:
        raise CommandError("at most 1000 instructions at a time")
    insns = v.decode(start, count)
    if end is not None:
        insns = [i for i in insns if i.address < end]
    if not insns:
        raise CommandError(f"cannot read code at {start:#x} on vCPU {v.index} "
                           f"(not mapped in its page tables, or not an instruction)")
    return "\n".join(format_disassembly(call.vm, v, insns, rip))
