"""Guest memory and paging commands: page walks and maps (SDM 4), examining memory,
and the multiboot load (Multiboot 0.6.96 / Multiboot2)."""

from __future__ import annotations

from hvdbg.arch import paging
from hvdbg.arch.paging_ranges import mapped_ranges
from hvdbg.errors import GuestMemoryError
from hvdbg.hv.vcpu import Vcpu
from hvdbg.platform import multiboot
from hvdbg.platform.multiboot import spec as mb_spec
from hvdbg.ui.commands.args import CommandError, ExamineFormat
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.disasm import disassemble
from hvdbg.ui.commands.registry import VCPU, Command, Param, register
from hvdbg.ui.render.memory import hexdump, units
from hvdbg.ui.render.text import size_text, table
from hvdbg.vmx import ept as ept_mod


def mode_line(v: Vcpu) -> tuple[str, paging.PagingMode]:
    r = v.control_regs()
    mode = paging.paging_mode(r["cr0"], r["cr4"], r["efer"])
    return (f"vCPU {v.index}: CR0 {r['cr0']:#x} CR3 {r['cr3']:#x} CR4 {r['cr4']:#x} EFER {r['efer']:#x}"
            f" -> {mode.value} paging" + (" (off)" if mode is paging.PagingMode.NONE else ""), mode)


def cmd_pt_walk(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    gva = a["gva"].value
    header, _mode = mode_line(v)
    try:
        walk = v.page_walk(gva, a["access"] or "read")
    except ValueError as e:
        raise CommandError(str(e)) from None
    lines = [header] + paging.format_walk(walk)
    tables = []
    for lv in walk.levels:
        table_gpa = lv.entry_gpa - lv.index * lv.entry_size
        hpa = call.vm.memory.translate(table_gpa)
        tables.append(f"{paging.TABLE_NAMES[lv.name]} GPA {table_gpa:#x} -> "
                      + (f"HPA {hpa:#x}" if hpa is not None else "not mapped by the EPT"))
    if tables:
        lines.append("  paging structures through the EPT: " + "; ".join(tables))
    sym = call.vm.symbols.symbolize(walk.gva)
    gva_text = f"GVA {walk.gva:#x}" + (f" <{sym}>" if sym else "")
    if walk.gpa is None:
        lines.append(f"{gva_text} does not translate: {walk.reason}")
        return "\n".join(lines)
    ew = call.vm.memory.ept.walk(walk.gpa)
    lines += ept_mod.format_walk(ew)
    lines.append(f"{gva_text} -> GPA {walk.gpa:#x} -> "
                 + (f"HPA {ew.hpa:#x}" if ew.ok else f"no HPA (EPT: {ew.reason})"))
    return "\n".join(lines)


def cmd_pt_map(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    r = v.control_regs()
    limit = a["count"] or 256
    header, _mode = mode_line(v)
    ranges = mapped_ranges(call.vm.memory.read, r["cr0"], r["cr3"], r["cr4"], r["efer"], limit,
                           maxphyaddr=v.maxphyaddr)
    rows = []
    for rg in ranges:
        sym = call.vm.symbols.symbolize(rg.gva_start)
        rows.append((f"{rg.gva_start:#018x}-{rg.gva_end - 1:#018x}", f"{rg.gpa_start:#014x}",
                     size_text(rg.gva_end - rg.gva_start), paging.flag_string(rg.flags),
                     f"<{sym}>" if sym else ""))
    lines = [header] + table(rows, ("GVA range", "-> GPA", "size", "flags", ""), right={2})
    lines.append(f"{len(ranges)} mapped range{'s' if len(ranges) != 1 else ''}"
                 + (f" (first {limit} shown)" if len(ranges) >= limit else ""))
    return "\n".join(lines)


def cmd_mb(call: Call, a: dict) -> str:
    vm = call.vm
    boot = vm.boot
    lines = [f"kernel {vm.kernel_path} ({len(vm.kernel_image)} bytes)"]
    lines += multiboot.format_boot_info(boot)
    expected = mb_spec.BOOTLOADER_MAGIC[boot.version]
    lines.append(f"entry: EAX {boot.eax:#x} (the spec requires {expected:#x}), EBX {boot.ebx:#x}")
    lines.append("  " + multiboot.describe_magic(boot.eax, boot.version))
    before = call.ctx.boot_info_at_attach
    try:
        now = multiboot.parse_info(vm.memory, boot.ebx, boot.version)
    except GuestMemoryError as e:
        now = None
        lines.append(f"boot information at {boot.ebx:#x} is unreadable now: {e}")
    if before is not None and call.ctx.boot_info_attached_early:
        lines.append("boot information as the loader built it:")
        lines += ["  " + s for s in multiboot.format_info(before)]
        if now is not None and now != before:
            lines.append(f"the guest has overwritten it since ({boot.info_range[0]:#x}-"
                         f"{boot.info_range[1]:#x}); what is there now:")
            lines += ["  " + s for s in multiboot.format_info(now)]
    elif now is not None:
        lines.append("boot information as it is now in guest memory:")
        lines += ["  " + s for s in multiboot.format_info(now)]
    return "\n".join(lines)


def cmd_x(call: Call, a: dict, physical: bool = False) -> str:
    physical = physical or a.get("phys") is not None
    v = call.vcpu(a["vcpu"])
    addr = a["addr"].value
    fmt: ExamineFormat | None = a["format"]
    if physical:
        read = call.read_physical
    else:
        call.require_stopped(v)
        read = lambda at, n: call.read_virtual(v, at, n)  # noqa: E731

    def label(at: int) -> str:
        sym = None if physical else call.vm.symbols.symbolize(at)
        return f"{at:#018x}" + (f" <{sym}>" if sym else "")

    if fmt is None:
        return "\n".join(hexdump(addr, read(addr, 64), label))
    if fmt.count > 4096:
        raise CommandError("at most 4096 units at a time")
    if fmt.letter == "i":
        if physical:
            raise CommandError("/i disassembles guest-virtual code: use 'disas' or 'x/i' without -p")
        return disassemble(call, v, addr, fmt.count or 12)
    if fmt.letter == "s":
        lines = []
        at = addr
        for _ in range(fmt.count):
            data = b""
            while len(data) < 4096:
                chunk = read(at + len(data), 1)
                if chunk == b"\0":
                    break
                data += chunk
            lines.append(f"{label(at)}: {data.decode('latin-1')!r}")
            at += len(data) + 1
        return "\n".join(lines)
    data = read(addr, fmt.count * fmt.size)
    return "\n".join(units(addr, data, fmt, label, call.vm))


def cmd_xp(call: Call, a: dict) -> str:
    return cmd_x(call, {**a, "vcpu": None}, physical=True)


register(
    Command("pt walk", (Param("gva", "address"), VCPU, Param("access", "access", optional=True,
                                                           metavar="read|write|fetch")),
            "walk the guest's page tables from CR3, then the EPT: GVA -> GPA -> HPA", cmd_pt_walk,
            "Uses the vCPU's current paging mode (32-bit, PAE, 4-level, 5-level; SDM 4.3-4.5);\n"
            "shows every entry with its flags and reserved bits, the #PF error code if the walk\n"
            "faults, where each paging structure sits in host memory, and the EPT walk of the GPA.",
            "guest memory and paging"),
    Command("pt map", (VCPU, Param("count", "count", optional=True, metavar="LIMIT")),
            "the guest-virtual ranges mapped by the vCPU's page tables, merged", cmd_pt_map,
            category="guest memory and paging"),
    Command("x", (Param("format", "format", optional=True, metavar="/NFU"),
                  Param("phys", "phys", optional=True, metavar="-p"),
                  Param("addr", "address"), VCPU),
            "examine guest memory (guest-virtual; -p for guest-physical)", cmd_x,
            "Without /NFU: a 64-byte hex dump.  /NFU as in gdb: N units, F in x d u o t c a s i,\n"
            "U in b h w g (x/8xg $rsp, x/s 0x191000, x/5i kmain).", "guest memory and paging"),
    Command("xp", (Param("format", "format", optional=True, metavar="/NFU"), Param("addr", "address")),
            "examine guest-physical memory (like QEMU's xp)",
            cmd_xp,
            category="guest memory and paging"),
    Command("mb", (), "multiboot: the header found, the load, the magic in EAX, the boot information",
            cmd_mb, "Compares the EAX the loader passed with what the spec requires (Multiboot 0.6.96\n"
            "3.2 / Multiboot2 3.3) and shows the information structure as the loader built it\n"
            "and, if the guest has changed it since, as it is now.", "guest memory and paging"),
)
