"""CPU state commands: registers, disassembly, the vCPUs, CPUID, the local APIC."""

from __future__ import annotations

from hvdbg.arch.events import vector_name
from hvdbg.run.control import SHELL, STOP_EVENT
from hvdbg.ui.commands.args import Addr, CommandError
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.disasm import disassemble
from hvdbg.ui.commands.registry import VCPU, Command, Param, register
from hvdbg.ui.render.cpu import cpuid_notes, format_apic, format_registers
from hvdbg.ui.render.stops import describe_ending
from hvdbg.ui.render.text import table


def cmd_regs(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    return "\n".join(format_registers(call.vm, v, v.registers(), v.engine.segments()))


def cmd_disas(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    rip = v.engine.rip()
    addr: Addr | None = a["addr"]
    start = rip if addr is None else addr.value
    count = a["count"]
    end = None
    if count is None and addr is not None and addr.symbol is not None and addr.symbol.size:
        end = start + addr.symbol.size
        count = min(addr.symbol.size, 1000)
    count = count or 12
    return disassemble(call, v, start, count, end)


def cmd_vcpus(call: Call, a: dict) -> str:
    vm = call.vm
    rows = []
    for v in vm.vcpus:
        s = vm.vcpu_summary(v)
        stopped = call.ctx.is_stopped(v)
        rows.append((v.index, v.apic_id, s["state"], "-" if s["pcpu"] is None else s["pcpu"],
                     "stopped" if stopped else "running",
                     f"{v.code_bits()}-bit" if stopped else "-",
                     vm.symbolize(s["rip"]), s["instructions"], s["exits"],
                     f"SIPI {v.sipi_vector:#04x}" if v.started_by_sipi and v.sipi_vector is not None
                     else ("SIPI" if v.started_by_sipi else ("BSP" if v.bsp else ""))))
    lines = table(rows, ("vCPU", "APIC", "activity", "pCPU", "debugger", "mode", "RIP", "instructions",
                          "exits", "start"), right={0, 1, 3, 7, 8})
    lines += _held_by_others(call)
    if vm.ended:
        lines.append(describe_ending(vm))
    return "\n".join(lines)


def _held_by_others(call: Call) -> list[str]:
    """Lines naming who else holds vCPUs stopped (a gdb session, a hook edit)."""
    if not call.session.running:
        return []
    lines = []
    for v in call.vm.vcpus:
        others = [h for h in call.session.holders(v) if h not in (SHELL, STOP_EVENT)]
        if others:
            lines.append(f"vCPU {v.index} held stopped by {', '.join(others)}")
    return lines


def cmd_events(call: Call, a: dict) -> str:
    """Exceptions and interrupts delivered to each vCPU (or one): counts by vector, the
    first exceptions with where they hit, and the longest run of one exception at one RIP
    (a handler that returns to the faulting instruction)."""
    vm = call.vm
    vcpus = vm.vcpus if a["vcpu"] is None else [call.vcpu(a["vcpu"])]
    lines = []
    for v in vcpus:
        exc, ints = v.exception_counts, v.interrupt_counts
        lines.append(f"vCPU {v.index}: {sum(exc.values())} exceptions, {sum(ints.values())} interrupts")
        if exc:
            lines.append("  exceptions: " + ", ".join(f"{vector_name(n)} x{c}" for n, c in
                                                     sorted(exc.items(), key=lambda kv: (-kv[1], kv[0]))))
        if ints:
            lines.append("  interrupts: " + ", ".join(f"{n:#04x} x{c}" for n, c in
                                                     sorted(ints.items(), key=lambda kv: (-kv[1], kv[0]))))
        for ev, rip in v.delivered[:_FIRST_EXCEPTIONS]:
            lines.append(f"    {ev.describe()} at {vm.symbolize(rip)}")
        if len(v.delivered) > _FIRST_EXCEPTIONS:
            lines.append(f"    ... (the first {len(v.delivered)} are kept)")
        if v.longest_exception_streak > 1:
            lines.append(f"  longest run of one exception at one RIP: {v.longest_exception_streak} "
                         f"(last: {vector_name(v.last_exception_vector)} at {vm.symbolize(v.last_exception_rip)})")
    return "\n".join(lines)


_FIRST_EXCEPTIONS = 8

_CPUID_OVERVIEW = ((0, 0), (1, 0), (7, 0), (0xB, 0), (0xB, 1), (0x40000000, 0), (0x80000000, 0),
                   (0x80000001, 0), (0x80000002, 0), (0x80000003, 0), (0x80000004, 0), (0x80000008, 0))


def cmd_cpuid(call: Call, a: dict) -> str:
    if a["leaf"] is None and a["vcpu"] is not None:   # one number is a LEAF
        a = {**a, "vcpu": None, "leaf": a["vcpu"]}
    v = call.vcpu(a["vcpu"])
    leaves = _CPUID_OVERVIEW if a["leaf"] is None else ((a["leaf"], a["sub"] or 0),)
    lines = [f"vCPU {v.index} CPUID (as the VMM answers CPUID exits):"]
    for leaf, sub in leaves:
        if not 0 <= leaf <= 0xFFFFFFFF:
            raise CommandError(f"CPUID leaf {leaf:#x} does not fit in EAX")
        eax, ebx, ecx, edx = v.cpuid.query(leaf, sub)
        ecx = v.cpuid.with_control_bits(leaf, ecx, v.engine.read("cr4"))
        lines.append(f"{leaf:#010x}.{sub:<2} eax {eax:#010x} ebx {ebx:#010x} ecx {ecx:#010x} edx {edx:#010x}")
        lines += [f"    {n}" for n in cpuid_notes(leaf, sub, eax, ebx, ecx, edx)]
    return "\n".join(lines)


def cmd_apic(call: Call, a: dict) -> str:
    return "\n".join(format_apic(call.vcpu(a["vcpu"])))


register(
    Command("regs", (VCPU,), "registers of a vCPU with decoded flags and control registers", cmd_regs,
            category="CPU state"),
    Command("disas", (Param("addr", "address", optional=True), Param("count", "count", optional=True,
                                                                     metavar="N"), VCPU),
            "disassemble (capstone, in the vCPU's current mode) with ELF symbols", cmd_disas,
            "Default: 12 instructions from RIP.  'disas SYMBOL' disassembles the whole function.\n"
            "The current instruction is marked with =>.", "CPU state"),
    Command("vcpus", (), "every vCPU: activity state, pCPU, debugger state, mode, RIP", cmd_vcpus,
            "'activity' is the guest activity state (SDM 25.4.2: running = active, halted,\n"
            "wait-for-SIPI, shutdown); 'debugger' says whether hvdbg holds the vCPU stopped.",
            "CPU state"),
    Command("cpuid", (VCPU, Param("leaf", "number", optional=True), Param("sub", "number", optional=True)),
            "CPUID leaves as the VMM answers the vCPU's CPUID exits, decoded", cmd_cpuid,
            "One number is a LEAF, two are VCPU LEAF, three VCPU LEAF SUB.  No LEAF: an overview.",
            "CPU state"),
    Command("apic", (VCPU,), "the vCPU's local APIC: ID, SVR, IRR/ISR, LVT, timer, IPIs", cmd_apic,
            category="CPU state"),
    Command("events", (VCPU,), "exceptions and interrupts delivered to each vCPU: counts by vector, "
            "the first exceptions, exception storms", cmd_events,
            "Without VCPU: every vCPU.  Exceptions are counted when hvdbg delivers them through the\n"
            "guest IDT (the first 64 are kept with their RIP); interrupts are external interrupts\n"
            "and IPIs taken.", "CPU state"),
)
