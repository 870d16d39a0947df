"""Inspection and control commands shared by the shell and GDB's ``monitor``.
(Placeholder registry; the full command set lives here.)"""

from __future__ import annotations

from typing import Callable


def make_monitor(session) -> Callable[[str, object], str]:
    def monitor(line: str, vcpu) -> str:
        words = line.split()
        if not words or words[0] == "help":
            return "commands: vcpus, exits\n"
        if words[0] == "vcpus":
            vm = session.vm
            return "".join(f"vCPU {v.index} APIC {v.apic_id} {v.activity.label} RIP {vm.symbolize(v.uc.reg_read(35 if False else __import__('unicorn').x86_const.UC_X86_REG_RIP))}\n" for v in vm.vcpus)
        if words[0] == "exits":
            return "".join(f"{k} {n}\n" for k, n in sorted(session.vm.trace.counts.items()))
        return f"error: unknown command '{words[0]}'\n"
    return monitor
