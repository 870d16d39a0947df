"""QEMU's monitor subset that gdb front-ends send over ``monitor`` (qRcmd), with QEMU's
output format (:mod:`hvdbg.ui.render.qemu`): ``info mem``, ``info tlb``, ``info registers
[-a|VCPU]``, ``info cpus``, ``gva2gpa``, ``gpa2hva``, and ``chardev-add file,...`` /
``chardev-remove``.

pwndbg and GEF take hvdbg for QEMU system mode (it answers QEMU's probes) and then rely
on these: GEF's memory layout is ``info mem``; pwndbg reads the GDT/IDT from ``info
registers`` and its ``vmmap`` runs gdb-pt-dump, which finds the emulator's process
(``pgrep qemu-system``; with several, the one holding the file of a ``chardev-add``
open), asks ``gpa2hva`` and reads guest-physical memory from ``/proc/PID/mem`` at that
host address.  So ``gpa2hva`` answers hvdbg's own host address of the guest RAM page.

All of them only inspect: the page-table walks are QEMU's (``mem_info_*`` and
``tlb_info_*`` of target/i386/monitor.c, including how ``info mem`` merges protections
across levels), ``chardev-add`` opens an existing regular file read-only and never reads
or writes it (only so that ``/proc/PID/fd`` shows it), at most :data:`MAX_CHARDEVS` at a
time, and ``chardev-remove`` closes it.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from typing import Callable

from hvdbg.arch.events import GuestFault
from hvdbg.arch.regs import CR0_PE, CR0_PG, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA
from hvdbg.engine import debug_hooks
from hvdbg.errors import GuestMemoryError
from hvdbg.hv.vcpu import Vcpu
from hvdbg.ui.commands.args import CommandError
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.registry import VCPU, Command, Param, register
from hvdbg.ui.render.qemu import (PG_PRESENT, PG_PSE, PG_RW, PG_USER, CpuDump, MemRange, SegmentDump,
                                  TlbEntry, cpus_lines, mem_lines, registers_lines, tlb_lines)
from hvdbg.vmx.controls import ActivityState

ReadPhys = Callable[[int, int], bytes]

_ADDR = 0x3FFFFFFFFF000          # QEMU's physical-address mask of a table entry
_PROT = PG_USER | PG_RW | PG_PRESENT
_U64 = (1 << 64) - 1
#: QEMU's address masks of a leaf for ``info tlb`` (long mode; 32-bit and PAE below)
_LONG_MASKS = {30: 0x3FFFFC0000000, 21: 0x3FFFFFFE00000, 12: 0x3FFFFFFFFF000}


def _table(read: ReadPhys, addr: int, wide: bool, count: int) -> tuple[int, ...]:
    """One paging structure; memory no RAM backs reads as zeros (QEMU reads unassigned
    memory as zeros or ones: either way nothing present gets invented)."""
    size = 8 if wide else 4
    try:
        data = read(addr, size * count)
    except (GuestMemoryError, ValueError):
        return (0,) * count
    return struct.unpack(f"<{count}{'Q' if wide else 'I'}", data)


class _Walk:
    """One pass over the guest's page tables collecting both views: ``info mem``'s merged
    ranges (QEMU's ``mem_print``: a range ends where the protection changes) and ``info
    tlb``'s present leaves."""

    def __init__(self) -> None:
        self.ranges: list[MemRange] = []
        self.leaves: list[TlbEntry] = []
        self._start = -1
        self._last = 0

    def at(self, address: int, prot: int) -> None:
        if prot == self._last:
            return
        if self._start != -1:
            self.ranges.append(MemRange(self._start, address, self._last))
        self._start = address if prot else -1
        self._last = prot

    def leaf(self, address: int, entry: int, mask: int) -> None:
        self.leaves.append(TlbEntry(address, entry, mask))


def walk_page_tables(read: ReadPhys, cr0: int, cr3: int, cr4: int, efer: int) -> _Walk | None:
    """QEMU's walks for the current paging mode; None with paging off ("PG disabled")."""
    if not cr0 & CR0_PG:
        return None
    w = _Walk()
    if cr4 & CR4_PAE and efer & EFER_LMA:
        levels = 5 if cr4 & CR4_LA57 else 4
        shifts = (48, 39, 30, 21, 12)[5 - levels:]

        def walk(table: int, depth: int, base: int, parents: int) -> None:
            shift = shifts[depth]
            last = depth == levels - 1
            for i, e in enumerate(_table(read, table, True, 512)):
                va = base + (i << shift)
                if not e & PG_PRESENT:
                    w.at(va, 0)
                elif last or (shift in (30, 21) and e & PG_PSE):
                    w.at(va, e & _PROT & parents)
                    w.leaf(va, e & ~PG_PSE if last else e, _LONG_MASKS[shift])
                else:
                    walk(e & _ADDR, depth + 1, va, parents & e)

        walk(cr3 & _ADDR, 0, 0, _U64)
        w.at(1 << (57 if levels == 5 else 48), 0)
    elif cr4 & CR4_PAE:
        for l1, pdpe in enumerate(_table(read, cr3 & 0xFFFFFFE0, True, 4)):
            if not pdpe & PG_PRESENT:
                w.at(l1 << 30, 0)
                continue
            for l2, pde in enumerate(_table(read, pdpe & _ADDR, True, 512)):
                va = (l1 << 30) + (l2 << 21)
                if not pde & PG_PRESENT:
                    w.at(va, 0)
                elif pde & PG_PSE:
                    w.at(va, pde & _PROT)
                    w.leaf(va, pde, _U64 & ~((1 << 20) - 1))
                else:
                    for l3, pte in enumerate(_table(read, pde & _ADDR, True, 512)):
                        at = va + (l3 << 12)
                        w.at(at, pte & pde & _PROT if pte & PG_PRESENT else 0)
                        if pte & PG_PRESENT:
                            w.leaf(at, pte & ~PG_PSE, _U64 & ~0xFFF)
        w.at(1 << 32, 0)
    else:
        for l1, pde in enumerate(_table(read, cr3 & 0xFFFFF000, False, 1024)):
            va = l1 << 22
            if not pde & PG_PRESENT:
                w.at(va, 0)
            elif pde & PG_PSE and cr4 & CR4_PSE:
                w.at(va, pde & _PROT)
                w.leaf(va, pde, _U64 & ~((1 << 21) - 1))
            else:
                for l2, pte in enumerate(_table(read, pde & 0xFFFFF000, False, 1024)):
                    at = va + (l2 << 12)
                    w.at(at, pte & pde & _PROT if pte & PG_PRESENT else 0)
                    if pte & PG_PRESENT:
                        w.leaf(at, pte & ~PG_PSE, _U64 & ~0xFFF)
        w.at(1 << 32, 0)
    return w


def _paging_of(call: Call, a: dict) -> tuple[_Walk | None, bool]:
    v = call.vcpu(a.get("vcpu"))
    call.require_stopped(v)
    r = v.control_regs()
    return (walk_page_tables(call.vm.memory.read, r["cr0"], r["cr3"], r["cr4"], r["efer"]),
            bool(r["cr4"] & CR4_LA57))


def cmd_info_mem(call: Call, a: dict) -> str:
    walk, la57 = _paging_of(call, a)
    return "\n".join(mem_lines(None if walk is None else walk.ranges, la57))


def cmd_info_tlb(call: Call, a: dict) -> str:
    walk, la57 = _paging_of(call, a)
    return "\n".join(tlb_lines(None if walk is None else walk.leaves, la57))


# -- info registers -----------------------------------------------------------------------

def _descriptor_flags(access_rights: int, limit: int) -> int:
    """VMX access rights (SDM 25.4.1) -> the descriptor's high dword as QEMU keeps it,
    with limit 19:16 rebuilt from the byte-granular limit."""
    if access_rights & (1 << 16):        # unusable
        return 0
    raw_limit = limit >> 12 if access_rights & (1 << 15) else limit
    return (access_rights & 0xF0FF) << 8 | ((raw_limit >> 16) & 0xF) << 16


def cpu_dump(v: Vcpu) -> CpuDump:
    regs = v.registers()
    g = debug_hooks.GdbRegisters(v.engine).read()
    segs = v.engine.segments()
    dump_segs = {}
    for name, key in (("es", "es"), ("cs", "cs"), ("ss", "ss"), ("ds", "ds"), ("fs", "fs"), ("gs", "gs"),
                      ("ldt", "ldtr"), ("tr", "tr")):
        s = segs[key]
        dump_segs[name] = SegmentDump(s.selector, s.base, s.limit, _descriptor_flags(s.access_rights, s.limit))
    lma = bool(regs["efer"] & EFER_LMA)
    tag = int(g["ftag"])
    # Unicorn may give the full tag word (2 bits per register, 11 = empty) or QEMU's abridged one
    abridged = sum(1 << i for i in range(8) if (tag >> (2 * i)) & 3 != 3) if tag > 0xFF else tag
    fsw = int(g["fstat"])
    top = (fsw >> 11) & 7
    fpregs = []
    for phys in range(8):
        raw = bytes(g[f"st{(phys - top) & 7}"])
        fpregs.append((int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:10], "little")))
    return CpuDump(
        index=v.index, gprs=regs, rip=regs["rip"], rflags=regs["rflags"], cpl=v.cpl(),
        inhibit_irq=v.engine.intercepts.interrupt_shadow(), halted=v.activity == ActivityState.HLT,
        segments=dump_segs, gdt=v.get_table("gdtr"), idt=v.get_table("idtr"),
        cr={0: regs["cr0"], 2: regs["cr2"], 3: regs["cr3"], 4: regs["cr4"]},
        dr={i: v.engine.read(f"dr{i}") for i in (0, 1, 2, 3, 6, 7)}, efer=regs["efer"],
        cs64=v.code_bits() == 64, lma=lma, pe=bool(regs["cr0"] & CR0_PE),
        fcw=int(g["fctrl"]), fsw=fsw, ftw_abridged=abridged, mxcsr=int(g["mxcsr"]), fpregs=fpregs,
        xmm=[int.from_bytes(bytes(g[f"xmm{i}"]), "little") for i in range(16)])


def cmd_info_registers(call: Call, a: dict) -> str:
    which = a["which"]
    if which is None:
        vcpus = [call.vcpu(None)]
    elif which == "-a":
        vcpus = list(call.vm.vcpus)
    elif which.isdigit():
        if int(which) >= len(call.vm.vcpus):
            return f"CPU#{int(which)} not available"
        vcpus = [call.vm.vcpus[int(which)]]
    else:
        raise CommandError(f"info registers takes -a or a vCPU number, not {which!r}")
    lines: list[str] = []
    for v in vcpus:
        call.require_stopped(v)
        lines += registers_lines(cpu_dump(v))
    return "\n".join(lines)


def cmd_info_cpus(call: Call, a: dict) -> str:
    tid = call.session.executor_thread_id() or os.getpid()
    return "\n".join(cpus_lines([v.index for v in call.vm.vcpus], call.default_vcpu,
                                {v.index: tid for v in call.vm.vcpus}))


# -- addresses ----------------------------------------------------------------------------

def cmd_gva2gpa(call: Call, a: dict) -> str:
    v = call.vcpu(None)
    call.require_stopped(v)
    addr = a["addr"].value
    if not 0 <= addr < 1 << 64 or (addr >> 32 and not v.control_regs()["efer"] & EFER_LMA):
        return "Unmapped"       # outside IA-32e mode linear addresses have 32 bits
    try:
        page = v.linear_to_physical(addr & ~0xFFF & _U64)
    except (GuestFault, GuestMemoryError, ValueError):
        return "Unmapped"
    return f"gpa: {page + (addr & 0xFFF):#x}"


def cmd_gpa2hva(call: Call, a: dict) -> str:
    gpa = a["addr"]
    memory = call.vm.memory
    hpa = memory.translate(gpa) if 0 <= gpa < 1 << 64 else None
    if hpa is None:
        return f"No memory is mapped at address {gpa:#x}"
    try:
        hva = memory.host.pointer(hpa, 1)
    except GuestMemoryError:
        return f"Memory at address {gpa:#x} is not RAM"
    name = next((n for start, size, n in memory.host.regions() if start <= hpa < start + size), "ram")
    return f"Host virtual address for {gpa:#x} ({name}) is {hva:#x}"


# -- chardev-add file,id=ID,path=PATH (only what gdb-pt-dump does with it) ----------------

#: Files a ``chardev-add`` may hold open at once.
MAX_CHARDEVS = 8
_chardevs: dict[str, int] = {}
_chardev_lock = threading.Lock()


def cmd_chardev_add(call: Call, a: dict) -> str:
    backend, _, rest = a["spec"].partition(",")
    opts = dict(item.partition("=")[::2] for item in rest.split(",") if item)
    if backend != "file" or not opts.get("id") or not opts.get("path"):
        return "hvdbg's chardev-add takes only file,id=ID,path=PATH (an existing file, held open read-only)"
    with _chardev_lock:
        if opts["id"] in _chardevs:
            return f"attempt to add duplicate property '{opts['id']}' to object (type 'container')"
        if len(_chardevs) >= MAX_CHARDEVS:
            return f"at most {MAX_CHARDEVS} chardevs at a time"
        try:
            fd = os.open(opts["path"], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            return f"Could not open '{opts['path']}': {e.strerror}"
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return f"'{opts['path']}' is not a regular file"
        _chardevs[opts["id"]] = fd
    return ""


def cmd_chardev_remove(call: Call, a: dict) -> str:
    with _chardev_lock:
        fd = _chardevs.pop(a["id"], None)
    if fd is None:
        return f"Chardev '{a['id']}' not found"
    os.close(fd)
    return ""


_MEM, _CPU = "guest memory and paging", "CPU state"

register(
    Command("info mem", (VCPU,), "the active virtual memory mappings, as QEMU prints them", cmd_info_mem,
            "QEMU's format (pwndbg and GEF parse it): START-END SIZE and u/-, r, w/-, the protection\n"
            "ANDed over every level; consecutive pages with the same protection are one line.\n"
            "'PG disabled' with paging off.  'pt map' shows the same with GPAs and symbols.", _MEM),
    Command("info tlb", (VCPU,), "virtual to physical memory mappings (every present leaf), as QEMU prints them",
            cmd_info_tlb, "LINEAR: FRAME and the flags X(NX) G P(PS) D A C(PCD) T(PWT) U W.", _MEM),
    Command("info registers", (Param("which", "word", optional=True, metavar="-a|VCPU"),),
            "the CPU registers in QEMU's format (-a: every vCPU)", cmd_info_registers, category=_CPU),
    Command("info cpus", (), "every vCPU, * marks gdb's current one (QEMU's format)", cmd_info_cpus,
            category=_CPU),
    Command("gva2gpa", (Param("addr", "address"),), "translate a guest-virtual address of gdb's current vCPU",
            cmd_gva2gpa, category=_MEM),
    Command("gpa2hva", (Param("addr", "number"),),
            "the host virtual address of a guest-physical address inside the hvdbg process", cmd_gpa2hva,
            "The guest RAM is one buffer of the hvdbg process; gdb-pt-dump (pwndbg's vmmap) reads the\n"
            "guest's page tables from /proc/PID/mem at this address.", _MEM),
    Command("chardev-add", (Param("spec", "word", metavar="file,id=ID,path=PATH"),),
            "hold an existing file open read-only (how gdb-pt-dump tells emulator processes apart)",
            cmd_chardev_add, category="other"),
    Command("chardev-remove", (Param("id", "word", metavar="ID"),), "close a file of chardev-add",
            cmd_chardev_remove, category="other"),
)
