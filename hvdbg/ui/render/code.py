"""Disassembly as text: addresses with ELF symbols, bytes, the current instruction
marked ``=>``, branch targets and RIP-relative operands annotated."""

from __future__ import annotations

import re

import capstone

from hvdbg.hv.vcpu import Vcpu

MASK64 = (1 << 64) - 1
_HEX_IMM = re.compile(r"0x[0-9a-f]{5,}")


def _annotate(vm, insn) -> str:
    """' <sym>' for a branch target or a RIP-relative operand that has a symbol."""
    notes = []
    for op in insn.operands:
        if op.type == capstone.x86.X86_OP_MEM and op.mem.base == capstone.x86.X86_REG_RIP:
            target = (insn.address + insn.size + op.mem.disp) & MASK64
            notes.append(f"# {vm.symbolize(target)}")
    if not notes:
        for text in _HEX_IMM.findall(insn.op_str):
            sym = vm.symbols.symbolize(int(text, 16))
            if sym:
                notes.append(f"<{sym}>")
    return ("  " + " ".join(notes)) if notes else ""


def format_disassembly(vm, v: Vcpu, insns: list, rip: int) -> list[str]:
    labels = []
    for insn in insns:
        sym = vm.symbols.symbolize(insn.address)
        labels.append(f"{insn.address:#018x}" + (f" <{sym}>:" if sym else ":"))
    width = max(len(label) for label in labels)
    lines = [f"vCPU {v.index}, {v.code_bits()}-bit code:"]
    for insn, label in zip(insns, labels):
        mark = "=>" if insn.address == rip else "  "
        text = f"{insn.mnemonic} {insn.op_str}".rstrip()
        lines.append(f"{mark} {label:<{width}}  {insn.bytes.hex(' '):<30} {text}{_annotate(vm, insn)}")
    return lines
