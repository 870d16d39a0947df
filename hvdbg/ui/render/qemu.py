"""QEMU's human monitor as text, byte for byte: ``info mem``, ``info tlb``, ``info
registers`` and ``info cpus`` the way qemu-system-x86_64 prints them (target/i386/monitor.c
``mem_print`` / ``print_pte``, target/i386/cpu-dump.c ``x86_cpu_dump_state`` with
CPU_DUMP_FPU, monitor/hmp-cmds ``hmp_info_cpus``), because pwndbg, GEF and gdb-pt-dump parse
that text.  The values come from :mod:`hvdbg.ui.commands.qemu_monitor`."""

from __future__ import annotations

from dataclasses import dataclass, field

# page-table entry bits (SDM Vol. 3A Table 4-19 and friends; QEMU's PG_*_MASK)
PG_PRESENT, PG_RW, PG_USER, PG_PWT, PG_PCD = 1, 2, 4, 8, 0x10
PG_ACCESSED, PG_DIRTY, PG_PSE, PG_GLOBAL, PG_NX = 0x20, 0x40, 0x80, 0x100, 1 << 63

_U64 = (1 << 64) - 1


def canonical(addr: int, la57: bool) -> int:
    """QEMU's ``addr_canonical``: sign-extend bit 47 (bit 56 with LA57), as 64 bits."""
    bit = 56 if la57 else 47
    if addr & (1 << bit):
        addr |= _U64 & ~((1 << (bit + 1)) - 1)
    return addr & _U64


@dataclass(frozen=True)
class MemRange:
    """One line of ``info mem``: [start, end) with QEMU's merged protection bits."""

    start: int
    end: int
    prot: int


@dataclass(frozen=True)
class TlbEntry:
    """One line of ``info tlb``: a present leaf entry, its linear address and the
    entry with QEMU's per-size address mask applied for the printed frame."""

    address: int
    entry: int
    mask: int


def mem_lines(ranges: list[MemRange] | None, la57: bool) -> list[str]:
    if ranges is None:
        return ["PG disabled"]
    return [f"{canonical(r.start, la57):016x}-{canonical(r.end, la57):016x} "
            f"{canonical(r.end - r.start, la57):016x} "
            f"{'u' if r.prot & PG_USER else '-'}r{'w' if r.prot & PG_RW else '-'}" for r in ranges]


def _pte_flags(pte: int) -> str:
    return "".join(c if pte & bit else "-" for c, bit in (
        ("X", PG_NX), ("G", PG_GLOBAL), ("P", PG_PSE), ("D", PG_DIRTY), ("A", PG_ACCESSED),
        ("C", PG_PCD), ("T", PG_PWT), ("U", PG_USER), ("W", PG_RW)))


def tlb_lines(entries: list[TlbEntry] | None, la57: bool) -> list[str]:
    if entries is None:
        return ["PG disabled"]
    return [f"{canonical(e.address, la57):016x}: {e.entry & e.mask & _U64:016x} {_pte_flags(e.entry)}"
            for e in entries]


# -- info registers ------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentDump:
    """A segment register as QEMU's SegmentCache: ``flags`` is the descriptor's high dword
    (type 11:8, S 12, DPL 14:13, P 15, limit 19:16, AVL 20, L 21, D/B 22, G 23)."""

    selector: int
    base: int
    limit: int
    flags: int


@dataclass
class CpuDump:
    """What ``x86_cpu_dump_state(CPU_DUMP_FPU)`` prints, for one vCPU."""

    index: int
    gprs: dict[str, int]            # rax.. r15
    rip: int
    rflags: int
    cpl: int
    inhibit_irq: bool
    halted: bool
    segments: dict[str, SegmentDump]    # es cs ss ds fs gs ldt tr
    gdt: tuple[int, int]
    idt: tuple[int, int]
    cr: dict[int, int]              # 0 2 3 4
    dr: dict[int, int]              # 0-3 6 7
    efer: int
    cs64: bool                      # HF_CS64: long mode and CS.L
    lma: bool
    pe: bool
    fcw: int = 0x37F
    fsw: int = 0
    ftw_abridged: int = 0
    mxcsr: int = 0x1F80
    fpregs: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)] * 8)  # (mantissa, sign+exp)
    xmm: list[int] = field(default_factory=lambda: [0] * 16)


_DESC_S, _DESC_CS, _DESC_C, _DESC_R, _DESC_E, _DESC_W, _DESC_A = 1 << 12, 1 << 11, 1 << 10, 1 << 9, 1 << 10, 1 << 9, 1 << 8
_DESC_P, _DESC_L, _DESC_B = 1 << 15, 1 << 21, 1 << 22
_SYS_TYPES = (
    ("Reserved", "TSS16-avl", "LDT", "TSS16-busy", "CallGate16", "TaskGate", "IntGate16", "TrapGate16",
     "Reserved", "TSS32-avl", "Reserved", "TSS32-busy", "CallGate32", "Reserved", "IntGate32", "TrapGate32"),
    ("<hiword>", "Reserved", "LDT", "Reserved", "Reserved", "Reserved", "Reserved", "Reserved", "Reserved",
     "TSS64-avl", "Reserved", "TSS64-busy", "CallGate64", "Reserved", "IntGate64", "TrapGate64"),
)


def _segment_line(d: CpuDump, name: str, sc: SegmentDump) -> str:
    if d.cs64:
        text = f"{name:<3}={sc.selector:04x} {sc.base & _U64:016x} {sc.limit:08x} {sc.flags & 0x00FFFF00:08x}"
    else:
        text = f"{name:<3}={sc.selector:04x} {sc.base & 0xFFFFFFFF:08x} {sc.limit:08x} {sc.flags & 0x00FFFF00:08x}"
    f = sc.flags
    if not d.pe or not f & _DESC_P:
        return text
    text += f" DPL={(f >> 13) & 3} "
    if f & _DESC_S:
        if f & _DESC_CS:
            text += "CS64" if f & _DESC_L else ("CS32" if f & _DESC_B else "CS16")
            text += f" [{'C' if f & _DESC_C else '-'}{'R' if f & _DESC_R else '-'}"
        else:
            text += "DS  " if f & _DESC_B or d.lma else "DS16"
            text += f" [{'E' if f & _DESC_E else '-'}{'W' if f & _DESC_W else '-'}"
        text += f"{'A' if f & _DESC_A else '-'}]"
    else:
        text += _SYS_TYPES[1 if d.lma else 0][(f >> 8) & 0xF]
    return text


def _flag_chars(rflags: int) -> str:
    return "".join(c if rflags & bit else "-" for c, bit in (
        ("D", 1 << 10), ("O", 1 << 11), ("S", 1 << 7), ("Z", 1 << 6), ("A", 1 << 4), ("P", 1 << 2), ("C", 1)))


def registers_lines(d: CpuDump) -> list[str]:
    """``info registers`` for one vCPU, starting with QEMU's blank line and ``CPU#n``."""
    g = d.gprs
    tail = (f"[{_flag_chars(d.rflags)}] CPL={d.cpl} II={int(d.inhibit_irq)} A20=1 SMM=0 "
            f"HLT={int(d.halted)}")
    lines = ["", f"CPU#{d.index}"]
    if d.cs64:
        names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
        labels = ("RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP",
                  "R8 ", "R9 ", "R10", "R11", "R12", "R13", "R14", "R15")
        for row in range(4):
            lines.append(" ".join(f"{labels[i]}={g[names[i]] & _U64:016x}" for i in range(row * 4, row * 4 + 4)))
        lines.append(f"RIP={d.rip & _U64:016x} RFL={d.rflags & 0xFFFFFFFF:08x} {tail}")
    else:
        e = {n: g["r" + n[1:]] & 0xFFFFFFFF for n in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")}
        lines.append(f"EAX={e['eax']:08x} EBX={e['ebx']:08x} ECX={e['ecx']:08x} EDX={e['edx']:08x}")
        lines.append(f"ESI={e['esi']:08x} EDI={e['edi']:08x} EBP={e['ebp']:08x} ESP={e['esp']:08x}")
        lines.append(f"EIP={d.rip & 0xFFFFFFFF:08x} EFL={d.rflags & 0xFFFFFFFF:08x} {tail}")
    for name, label in (("es", "ES"), ("cs", "CS"), ("ss", "SS"), ("ds", "DS"), ("fs", "FS"), ("gs", "GS"),
                        ("ldt", "LDT"), ("tr", "TR")):
        lines.append(_segment_line(d, label, d.segments[name]))
    if d.lma:
        lines.append(f"GDT=     {d.gdt[0] & _U64:016x} {d.gdt[1]:08x}")
        lines.append(f"IDT=     {d.idt[0] & _U64:016x} {d.idt[1]:08x}")
        lines.append(f"CR0={d.cr[0] & 0xFFFFFFFF:08x} CR2={d.cr[2] & _U64:016x} CR3={d.cr[3] & _U64:016x} "
                     f"CR4={d.cr[4] & 0xFFFFFFFF:08x}")
    else:
        lines.append(f"GDT=     {d.gdt[0] & 0xFFFFFFFF:08x} {d.gdt[1]:08x}")
        lines.append(f"IDT=     {d.idt[0] & 0xFFFFFFFF:08x} {d.idt[1]:08x}")
        lines.append(" ".join(f"CR{n}={d.cr[n] & 0xFFFFFFFF:08x}" for n in (0, 2, 3, 4)))
    lines.append("".join(f"DR{i}={d.dr[i] & _U64:016x} " for i in range(4)))
    lines.append(f"DR6={d.dr[6] & _U64:016x} DR7={d.dr[7] & _U64:016x}")
    lines.append(f"EFER={d.efer & _U64:016x}")
    top = (d.fsw >> 11) & 7
    lines.append(f"FCW={d.fcw:04x} FSW={d.fsw:04x} [ST={top}] FTW={d.ftw_abridged:02x} MXCSR={d.mxcsr:08x}")
    for i in range(0, 8, 2):
        lines.append(" ".join(f"FPR{j}={d.fpregs[j][0]:016x} {d.fpregs[j][1]:04x}" for j in (i, i + 1)))
    count = 16 if d.cs64 else 8
    for i in range(0, count, 2):
        lines.append(" ".join(f"XMM{j:02d}={d.xmm[j] >> 64:016x} {d.xmm[j] & _U64:016x}" for j in (i, i + 1)))
    return lines


def cpus_lines(indexes: list[int], current: int, thread_ids: dict[int, int]) -> list[str]:
    """``info cpus``: ``* CPU #0: thread_id=N`` (``*`` marks the monitor's current CPU)."""
    return [f"{'*' if i == current else ' '} CPU #{i}: thread_id={thread_ids[i]}" for i in indexes]
