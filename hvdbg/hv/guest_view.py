"""The guest as software sees it from outside: linear memory through the guest's own
page tables (SDM Vol. 3A chapter 4), the current code size, instruction decoding, and
the linear address behind a faulting guest-physical address (what a VMM's instruction
emulator computes for the GUEST_LINEAR_ADDRESS field, SDM 28.2.1).

:class:`GuestView` is a base class of :class:`hvdbg.hv.vcpu.Vcpu`; it needs ``engine``
(an EngineCpu) and ``memory`` (guest-physical memory)."""

from __future__ import annotations

import functools

import capstone

from hvdbg.arch import paging
from hvdbg.arch.cpuid import CpuidModel
from hvdbg.arch.events import PF, GuestFault, hardware_exception
from hvdbg.arch.regs import AR_DB, CR0_PE, full_gpr
from hvdbg.arch.segments import Segment
from hvdbg.engine.cpu import EngineCpu, ExecutionTurns
from hvdbg.errors import GuestMemoryError
from hvdbg.platform.memory import GuestMemory

_DISASSEMBLERS: dict[int, capstone.Cs] = {}


def disassembler(bits: int) -> capstone.Cs:
    """capstone for ``bits``-bit code with operand details (one per mode, shared)."""
    md = _DISASSEMBLERS.get(bits)
    if md is None:
        mode = {64: capstone.CS_MODE_64, 32: capstone.CS_MODE_32, 16: capstone.CS_MODE_16}[bits]
        md = _DISASSEMBLERS[bits] = capstone.Cs(capstone.CS_ARCH_X86, mode)
        md.detail = True
    return md


class Translations:
    """The linear -> guest-physical translations a debugger's reads of one vCPU made, by
    4 KiB page and access, kept while nothing could change them: no guest code ran (the
    machine's execution turns), nothing outside the guest wrote memory or changed the
    EPT, and CR0, CR3, CR4 and EFER are the same. Unlike the processor's TLB (SDM 4.10)
    it is never stale; it spares the page walk of each of gdb's many small reads of a
    stopped guest (``x/100000bx``, pwndbg's ``context``)."""

    LIMIT = 4096    # pages kept (then it starts again)

    def __init__(self) -> None:
        self._stamp: tuple[int, ...] = ()
        self._pages: dict[tuple[int, str], tuple[int, int]] = {}

    def lookup(self, stamp: tuple[int, ...], gva: int, access: str) -> tuple[int, int] | None:
        """(GPA, bytes to the end of the mapping page) if ``gva``'s page is known under ``stamp``."""
        if stamp != self._stamp:
            self._stamp = stamp
            self._pages = {}
            return None
        hit = self._pages.get((gva >> 12, access))
        if hit is None:
            return None
        offset = gva & 0xFFF
        return hit[0] + offset, hit[1] - offset

    def add(self, gva: int, access: str, gpa: int, span: int) -> None:
        if len(self._pages) >= self.LIMIT:
            self._pages = {}
        offset = gva & 0xFFF
        self._pages[(gva >> 12, access)] = (gpa - offset, span + offset)


class GuestView:
    engine: EngineCpu
    memory: GuestMemory
    turns: ExecutionTurns
    cpuid: CpuidModel

    _CR_NAMES = ("cr0", "cr3", "cr4")

    _physical = None

    @property
    def physical(self):
        """The guest-physical memory the running software's page tables and linear addresses
        resolve into: the machine's, or while a guest hypervisor's guest runs, its own
        (hvdbg.hv.nested_guest.L2Physical, through the guest hypervisor's EPT)."""
        return self._physical or self.memory

    @physical.setter
    def physical(self, view) -> None:
        self._physical = None if view is self.memory else view

    @functools.cached_property
    def translations(self) -> Translations:
        return Translations()

    @functools.cached_property
    def maxphyaddr(self) -> int:
        """The physical-address width this vCPU's CPUID reports (leaf 80000008H EAX[7:0],
        SDM 4.1.4): paging-structure bits from it up to bit 51 are reserved, so an entry
        with one set faults (#PF with RSVD), as the engine's MMU has it."""
        return self.cpuid.query(0x80000008)[0] & 0xFF

    def control_regs(self) -> dict[str, int]:
        cr0, cr3, cr4 = self.engine.batch_of(self._CR_NAMES).read()
        return {"cr0": cr0, "cr3": cr3, "cr4": cr4, "efer": self.engine.read("efer")}

    def page_walk(self, gva: int, access: str = "read") -> paging.PageWalk:
        return self._walk(self.control_regs(), gva, access)

    def _walk(self, r: dict[str, int], gva: int, access: str) -> paging.PageWalk:
        wide = paging.paging_mode(r["cr0"], r["cr4"], r["efer"]) in (paging.PagingMode.LEVEL4, paging.PagingMode.LEVEL5)
        gva &= 0xFFFFFFFFFFFFFFFF if wide else 0xFFFFFFFF
        return paging.walk(self.physical.read, r["cr0"], r["cr3"], r["cr4"], r["efer"], gva, access,
                           maxphyaddr=self.maxphyaddr)

    def linear_to_physical(self, gva: int, access: str = "read") -> int:
        return self._translate(gva, access)[0]

    def _translate(self, gva: int, access: str) -> tuple[int, int]:
        """(GPA, bytes up to the end of the page that maps ``gva``): a 2 MiB or 1 GiB page
        is translated once for all of its 4 KiB frames, and a page once while nothing
        changes (:class:`Translations`)."""
        r = self.control_regs()
        stamp = (r["cr0"], r["cr3"], r["cr4"], r["efer"], self.turns.taken, self.memory.generation)
        known = self.translations.lookup(stamp, gva, access)
        if known is not None:
            return known
        w = self._walk(r, gva, access)
        if w.gpa is None:
            code = w.error_code or 0
            raise GuestFault(hardware_exception(PF, code, gva), w.reason)
        page = w.page_size or 0x1000
        span = page - (gva & (page - 1))
        self.translations.add(gva, access, w.gpa, span)
        return w.gpa, span

    def read_linear(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            gpa, span = self._translate(addr, "read")
            n = min(size, span)
            try:
                out += self.physical.read(gpa, n)
            except GuestMemoryError as e:
                raise GuestFault(hardware_exception(13, 0), str(e)) from None
            addr += n
            size -= n
        return bytes(out)

    def write_linear(self, addr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            gpa, span = self._translate(addr + pos, "write")
            n = min(len(data) - pos, span)
            try:
                self.physical.write(gpa, data[pos:pos + n])
            except GuestMemoryError as e:
                raise GuestFault(hardware_exception(13, 0), str(e)) from None
            pos += n

    def read_linear_safe(self, addr: int, size: int) -> bytes | None:
        try:
            return self.read_linear(addr, size)
        except (GuestFault, GuestMemoryError):
            return None

    def code_bits(self) -> int:
        """Operand size of the current code segment: 16, 32 or 64 (64-bit mode: IA-32e
        mode with CS.L = 1, SDM 5.2.1)."""
        if self.engine.intercepts.in_64_bit_code():
            return 64
        if not self.engine.read("cr0") & CR0_PE:
            return 16
        return 32 if self.engine.segment("cs").access_rights & AR_DB else 16

    def code_base(self) -> int:
        """CS.base outside 64-bit mode (where linear = CS.base + RIP), else 0."""
        return 0 if self.engine.intercepts.in_64_bit_code() else self.engine.segment("cs").base

    def decode(self, rip: int, count: int = 1) -> list:
        code = self.read_linear_safe(rip, 16 * count)
        if not code:
            return []
        return list(disassembler(self.code_bits()).disasm(code, rip, count))

    def guess_linear_address(self, rip: int, gpa: int, kind: str) -> int | None:
        """The linear address behind a faulting GPA: decode the instruction and compute its
        memory operand's effective address (what a VMM's instruction emulator does), then
        keep it only if the guest's page tables really map it to the faulting page."""
        mask = 0xFFFFFFFFFFFFFFFF if self.code_bits() == 64 else 0xFFFFFFFF
        if kind == "fetch":
            candidates = [(self.code_base() + rip) & mask]
        else:
            candidates = []
            for insn in self.decode(rip):
                for op in insn.operands:
                    if op.type != capstone.x86.X86_OP_MEM:
                        continue
                    ea = op.mem.disp
                    for reg, scale in ((op.mem.base, 1), (op.mem.index, op.mem.scale)):
                        if reg:
                            name = insn.reg_name(reg)
                            if name == "rip":
                                ea += insn.address + insn.size
                            else:
                                ea += self.engine.read(full_gpr(name)) * scale
                    candidates.append(ea & mask)
                if insn.mnemonic.startswith(("stos", "movs")):
                    candidates.append(self.engine.read("rdi"))
                if insn.mnemonic.startswith(("push", "call")):
                    candidates.append(self.engine.read("rsp") - 8)
        for cand in candidates:
            for off in range(0, 16):
                try:
                    w = self.page_walk((cand + off) & mask)
                except ValueError:
                    break
                if w.gpa is not None and (w.gpa >> 12) == (gpa >> 12):
                    return (cand + off) - (((cand + off) & 0xFFF) - (gpa & 0xFFF))
        return None

    # -- the EventCpu interface (hvdbg.arch.events delivers through it) --------------------
    def get_reg(self, name: str) -> int:
        return self.engine.read(name)

    def set_reg(self, name: str, value: int) -> None:
        self.engine.write(name, value)

    def get_segment(self, name: str) -> Segment:
        return self.engine.segments()[name]

    def set_segments(self, segs: dict[str, Segment]) -> None:
        self.engine.set_segments(segs)

    def get_table(self, name: str) -> tuple[int, int]:
        return self.engine.table(name)

    def cpl(self) -> int:
        return self.engine.cpl()
