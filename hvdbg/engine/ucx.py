"""Unicorn 2.1.4 internals that the vCPU model depends on, behind one narrow interface.

Unicorn exposes no API for the hidden part of the segment registers (base, limit,
attributes), the mode bits QEMU keeps in ``hflags``, the error code of a pending
exception, or the number of instructions executed.  The hypervisor model needs all
of them (VM entry loads a full guest state, SDM 27.3.1.2; exits report instruction
counts), so this module reads and patches the ``uc_context`` blob and the
``uc_struct`` counter at offsets that are verified by :func:`self_test` when the
first engine is created.  Nothing else in hvdbg touches Unicorn's private state.
"""

from __future__ import annotations

import ctypes
import struct

import unicorn
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")
SEGMENT_SELECTOR_REGS = {
    "es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
    "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS,
}

# Offsets inside the uc_context blob of Unicorn 2.1.4 (x86-64), verified by self_test().
_CTX_HFLAGS = 216
_CTX_SEGS = 224          # es cs ss ds fs gs ldt tr gdt idt, 24 bytes each
_CTX_SEG_SIZE = 24
_CTX_EFER = 632           # env->efer
_CTX_KERNEL_GS_BASE = 4904   # env->kernelgsbase
_CTX_ERROR_CODE = 5424
_CTX_OLD_EXCEPTION = 5536
#: The blob is ``struct uc_context`` (a 40-byte header) followed by a copy of CPUX86State,
#: so the live CPU state has the same layout at ``blob offset - _CTX_DATA``.
_CTX_DATA = 40

# Live CPUX86State fields (target/i386/cpu.h of Unicorn 2.1.4), for hvdbg.engine.intercepts.
ENV_HFLAGS = _CTX_HFLAGS - _CTX_DATA
ENV_HFLAGS2 = ENV_HFLAGS + 4
ENV_ERROR_CODE = _CTX_ERROR_CODE - _CTX_DATA
ENV_EXCEPTION_IS_INT = ENV_ERROR_CODE + 4
ENV_VM_VMCB = _CTX_OLD_EXCEPTION - _CTX_DATA + 8      # uint64 after int old_exception
ENV_INTERCEPT = ENV_VM_VMCB + 16                      # after tsc_offset
ENV_INTERCEPT_CR_READ = ENV_INTERCEPT + 8
ENV_INTERCEPT_CR_WRITE = ENV_INTERCEPT + 10
ENV_INTERCEPT_EXCEPTIONS = ENV_INTERCEPT + 16
# CPUState fields (include/hw/core/cpu.h) and the engine's CPUState pointer (uc_struct.cpu).
CPU_INTERRUPT_REQUEST = 28
CPU_ENV_PTR = 296
CPU_ICOUNT_DECR_PTR = 304
_UC_CPU = 440

# QEMU hflags bits (target/i386/cpu.h)
HF_CPL_MASK = 0x3
HF_GUEST_MASK = 1 << 21      # SVM intercepts are active (hvdbg.engine.intercepts)
HF_INHIBIT_IRQ_MASK = 1 << 3
HF_CS32_MASK = 1 << 4
HF_SS32_MASK = 1 << 5
HF_ADDSEG_MASK = 1 << 6
HF_PE_MASK = 1 << 7
HF_MP_MASK = 1 << 9
HF_EM_MASK = 1 << 10
HF_TS_MASK = 1 << 11
HF_LMA_MASK = 1 << 14
HF_CS64_MASK = 1 << 15
HF_OSFXSR_MASK = 1 << 22
HF2_NMI_MASK = 1 << 2        # hflags2: NMIs blocked until the next IRET
_HF_COMPUTED = (HF_CPL_MASK | HF_CS32_MASK | HF_SS32_MASK | HF_ADDSEG_MASK | HF_PE_MASK
                | HF_MP_MASK | HF_EM_MASK | HF_TS_MASK | HF_LMA_MASK | HF_CS64_MASK | HF_OSFXSR_MASK)

# QEMU descriptor flag bits = the high dword of a segment descriptor.
DESC_B_MASK = 1 << 22
DESC_L_MASK = 1 << 21



from hvdbg.arch.regs import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, IA32_EFER  # noqa: E402
from hvdbg.arch.segments import Segment  # noqa: E402


class UnicornLayoutError(RuntimeError):
    """The installed Unicorn does not have the internal layout hvdbg was verified against."""


def ar_to_qemu_flags(ar: int) -> int:
    """VMCS access rights -> QEMU's descriptor-high-dword flags."""
    if ar & (1 << 16):
        return 0
    return (ar & 0xF0FF) << 8


def qemu_flags_to_ar(flags: int, usable: bool = True) -> int:
    ar = (flags >> 8) & 0xF0FF
    if not usable or not (ar & 0x80):
        ar |= 1 << 16
    return ar


def engine_address(uc: Uc) -> int:
    return ctypes.cast(uc._uch, ctypes.c_void_p).value  # type: ignore[attr-defined]


#: attribute of a Uc object holding the address of its live CPUX86State (from
#: :func:`locate_cpu_state`).  Kept on the engine object, not in a table keyed by the
#: engine's address: a closed engine's address is reused by the next one malloc gives,
#: and a stale entry made ucx patch freed memory (seen as a bench engine's unmapped read).
_LIVE_ENV_ATTR = "_hvdbg_live_env"
#: size of a uc_context of Unicorn 2.1.4 x86-64: the header and CPUX86State up to
#: end_reset_fields (verified by self_test)
_CTX_SIZE = 5608
_CTX_ENV_SIZE = _CTX_SIZE - _CTX_DATA


class _Blob:
    """A mutable view of the engine's CPU state at uc_context offsets: the live
    CPUX86State where it has been located (reads cost no context save, writes take
    effect at once), else a saved uc_context that :meth:`restore` writes back."""

    def __init__(self, uc: Uc) -> None:
        env = getattr(uc, _LIVE_ENV_ATTR, None)
        if env is not None:
            self.ctx = None
            self.view = (ctypes.c_char * (_CTX_DATA + _CTX_ENV_SIZE)).from_address(env - _CTX_DATA)
            return
        self.ctx = uc.context_save()
        self.addr = ctypes.cast(self.ctx.context, ctypes.c_void_p).value
        self.view = (ctypes.c_char * self.ctx.size).from_address(self.addr)

    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.view, off)[0]

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.view, off)[0]

    def i32(self, off: int) -> int:
        return struct.unpack_from("<i", self.view, off)[0]

    def put_u32(self, off: int, value: int) -> None:
        struct.pack_into("<I", self.view, off, value & 0xFFFFFFFF)

    def put_i32(self, off: int, value: int) -> None:
        struct.pack_into("<i", self.view, off, value)

    def seg(self, index: int) -> tuple[int, int, int, int]:
        sel, _pad, base, limit, flags = struct.unpack_from("<IIQII", self.view, _CTX_SEGS + index * _CTX_SEG_SIZE)
        return sel, base, limit, flags

    def put_seg(self, index: int, sel: int, base: int, limit: int, flags: int) -> None:
        struct.pack_into("<IIQII", self.view, _CTX_SEGS + index * _CTX_SEG_SIZE, sel & 0xFFFF, 0,
                         base & 0xFFFFFFFFFFFFFFFF, limit & 0xFFFFFFFF, flags & 0xFFFFFFFF)

    def restore(self, uc: Uc) -> None:
        if self.ctx is not None:
            uc.context_restore(self.ctx)


def _segment(blob: _Blob, name: str) -> Segment:
    sel, base, limit, flags = blob.seg(SEGMENT_NAMES.index(name))
    usable = bool(flags & (1 << 15)) or (name == "cs")
    return Segment(sel, base, limit, qemu_flags_to_ar(flags, usable))


def read_segments(uc: Uc) -> dict[str, Segment]:
    """Every segment register with its hidden part, plus cpl from hflags."""
    blob = _Blob(uc)
    return {name: _segment(blob, name) for name in SEGMENT_NAMES}


def read_segment(uc: Uc, name: str) -> Segment:
    """One segment register with its hidden part (:func:`read_segments` reads all six)."""
    return _segment(_Blob(uc), name)


def read_efer(uc: Uc) -> int:
    """IA32_EFER without ``uc.msr_read``: Unicorn's MSR read runs the RDMSR helper on the
    live CPU state, saving and restoring RAX/RCX/RDX around it, so on an engine that is
    running on another thread it can undo the guest's own writes to those registers
    (measured: a concurrent msr_read loop made the SMP kernel's sums wrong).  The saved
    context is a copy: reading it never touches the CPU."""
    return _Blob(uc).u64(_CTX_EFER)


def msr_write(uc: Uc, msr: int, value: int) -> None:
    """WRMSR through Unicorn's helper, outside guest execution.  The helper starts with
    QEMU's SVM MSR intercept check, which with hvdbg's intercepts armed would leave
    through a ``longjmp`` into no running emulation: the intercepts are lifted around it."""
    with _intercepts_lifted(uc):
        uc.msr_write(msr, value)


def msr_read(uc: Uc, msr: int) -> int:
    """RDMSR through Unicorn's helper (see :func:`msr_write`); it saves and restores
    RAX/RCX/RDX, so only on an engine that is not running on another thread."""
    with _intercepts_lifted(uc):
        return uc.msr_read(msr)


class _intercepts_lifted:
    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.armed = False

    def __enter__(self) -> None:
        blob = _Blob(self.uc)
        hf = blob.u32(_CTX_HFLAGS)
        self.armed = bool(hf & HF_GUEST_MASK)
        if self.armed:
            blob.put_u32(_CTX_HFLAGS, hf & ~HF_GUEST_MASK)
            blob.restore(self.uc)

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            blob = _Blob(self.uc)
            blob.put_u32(_CTX_HFLAGS, blob.u32(_CTX_HFLAGS) | HF_GUEST_MASK)
            blob.restore(self.uc)


def locate_cpu_state(uc: Uc) -> tuple[int, int]:
    """Addresses of the engine's live CPUState and CPUX86State (``uc->cpu`` and its
    ``env_ptr``), checked against register values written through the API."""
    probe = (0x1122334455667788, 0x99AABBCCDDEEFF00)
    saved = (uc.reg_read(X.UC_X86_REG_RAX), uc.reg_read(X.UC_X86_REG_RCX))
    uc.reg_write(X.UC_X86_REG_RAX, probe[0])
    uc.reg_write(X.UC_X86_REG_RCX, probe[1])
    try:
        cpu = ctypes.c_uint64.from_address(engine_address(uc) + _UC_CPU).value
        env = ctypes.c_uint64.from_address(cpu + CPU_ENV_PTR).value if cpu else 0
        if not env or tuple((ctypes.c_uint64 * 2).from_address(env)) != probe:
            raise UnicornLayoutError("cannot locate Unicorn's CPU state; hvdbg needs unicorn==2.1.4")
    finally:
        uc.reg_write(X.UC_X86_REG_RAX, saved[0])
        uc.reg_write(X.UC_X86_REG_RCX, saved[1])
    return cpu, env


def use_live_state(uc: Uc) -> None:
    """From now on read and patch this engine's CPU state in place (no context copies)."""
    _cpu, env = locate_cpu_state(uc)
    setattr(uc, _LIVE_ENV_ATTR, env)


def read_kernel_gs_base(uc: Uc) -> int:
    """IA32_KERNEL_GS_BASE, like :func:`read_efer` (no RDMSR helper)."""
    return _Blob(uc).u64(_CTX_KERNEL_GS_BASE)


#: Offsets of the SYSENTER/SYSCALL MSRs in CPUX86State, before kernelgsbase
#: (sysenter_cs is a uint32 padded to 8 bytes; vm_hsave sits between star and lstar).
_SYSTEM_CALL_MSRS = {"sysenter_cs": -64, "sysenter_esp": -56, "sysenter_eip": -48, "star": -40,
                     "lstar": -24, "cstar": -16, "fmask": -8}


def read_system_call_msrs(uc: Uc) -> dict[str, int]:
    """IA32_SYSENTER_CS/ESP/EIP, IA32_STAR/LSTAR/CSTAR/FMASK from one saved context."""
    blob = _Blob(uc)
    out = {name: blob.u64(_CTX_KERNEL_GS_BASE + off) for name, off in _SYSTEM_CALL_MSRS.items()}
    out["sysenter_cs"] &= 0xFFFFFFFF
    return out


def current_cpl(uc: Uc) -> int:
    return _Blob(uc).u32(_CTX_HFLAGS) & HF_CPL_MASK


def write_segments(uc: Uc, segs: dict[str, Segment]) -> None:
    """Load selectors and hidden parts, then recompute the mode bits of hflags.

    CR0, CR4 and EFER must already hold their new values (write them first).
    """
    cr0 = uc.reg_read(X.UC_X86_REG_CR0)
    cr4 = uc.reg_read(X.UC_X86_REG_CR4)
    efer = read_efer(uc)
    eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    blob = _Blob(uc)
    for i, name in enumerate(SEGMENT_NAMES):
        if name in segs:
            s = segs[name]
            blob.put_seg(i, s.selector, s.base, s.limit, ar_to_qemu_flags(s.access_rights))
    blob.put_u32(_CTX_HFLAGS, _compute_hflags(blob, blob.u32(_CTX_HFLAGS), cr0, cr4, efer, eflags))
    blob.restore(uc)


def _compute_hflags(blob: _Blob, old: int, cr0: int, cr4: int, efer: int, eflags: int) -> int:
    """Mirror of QEMU's hflags derivation (cpu_x86_load_seg_cache / cpu_x86_update_cr0)."""
    hf = old & ~_HF_COMPUTED
    _, cs_base, _, cs_flags = blob.seg(1)
    _, ss_base, _, ss_flags = blob.seg(2)
    _, es_base, _, _ = blob.seg(0)
    _, ds_base, _, _ = blob.seg(3)
    pe = cr0 & 1
    if pe:
        hf |= HF_PE_MASK
    hf |= ((cr0 >> 1) & 7) << 9  # MP, EM, TS
    if cr4 & (1 << 9):
        hf |= HF_OSFXSR_MASK
    lma = bool(efer & EFER_LMA) and bool(cr0 & (1 << 31))
    if lma:
        hf |= HF_LMA_MASK
    if pe and not (eflags & (1 << 17)):
        hf |= (ss_flags >> 13) & 3  # CPL = SS.DPL
        if cs_flags & DESC_B_MASK:
            hf |= HF_CS32_MASK
        if ss_flags & DESC_B_MASK:
            hf |= HF_SS32_MASK
        if lma and cs_flags & DESC_L_MASK:
            hf |= HF_CS32_MASK | HF_SS32_MASK | HF_CS64_MASK
    if hf & HF_CS64_MASK:
        pass
    elif not pe or (eflags & (1 << 17)) or not (hf & HF_CS32_MASK):
        hf |= HF_ADDSEG_MASK
    elif (ds_base | es_base | ss_base) != 0:
        hf |= HF_ADDSEG_MASK
    return hf


def set_control_registers(uc: Uc, cr0: int, cr3: int, cr4: int, efer: int) -> None:
    """Load CR0/CR3/CR4/EFER so that QEMU's LMA tracking follows EFER (SDM 27.3.2.1).

    QEMU only changes EFER.LMA on a CR0.PG transition (WRMSR cannot write it), so PG is
    toggled through 0. An engine with LMA set while PG is clear (Unicorn's 64-bit engine
    starts so, a state no CPU can be in: SDM Vol. 3A 2.2.1) first leaves long mode for real.
    """
    if read_efer(uc) & EFER_LMA and not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG:
        _leave_long_mode(uc)
    uc.reg_write(X.UC_X86_REG_CR0, cr0 & ~CR0_PG)
    msr_write(uc, IA32_EFER, efer & ~EFER_LMA)
    uc.reg_write(X.UC_X86_REG_CR4, cr4)
    uc.reg_write(X.UC_X86_REG_CR3, cr3)
    if cr0 & CR0_PG:
        uc.reg_write(X.UC_X86_REG_CR0, cr0)


#: Registers whose value after INIT/RESET Unicorn's 64-bit engine does not have (SDM Vol. 3A
#: 9.1.1, Table 9-1); CR0/CR3/CR4/EFER go through :func:`set_control_registers`.
RESET_CONTROL = {"cr0": 0x60000010, "cr3": 0, "cr4": 0, "efer": 0}
#: MXCSR per Table 9-1; the x87 control word 37FH with every tag empty is QEMU's reset
#: (the state FNINIT leaves, SDM Vol. 1 8.1.5), which gdb users compare against
#: (``p $fctrl`` = 895); a new Unicorn engine has FPCW 0 and FPTAG 5555H.
RESET_REGISTERS = {X.UC_X86_REG_MXCSR: 0x1F80, X.UC_X86_REG_FPCW: 0x37F, X.UC_X86_REG_FPTAG: 0xFFFF}


def load_reset_state(uc: Uc) -> None:
    """Give a new engine the processor state after RESET/INIT where Unicorn differs:
    it starts with CR0 = 11H, CR4 = 50200H, EFER = 500H (LMA with paging off) and
    MXCSR = 0; Table 9-1 has CR0 = 60000010H, CR4 = 0, EFER = 0, MXCSR = 1F80H (and
    see :data:`RESET_REGISTERS` for the x87 state)."""
    set_control_registers(uc, **RESET_CONTROL)
    for reg, value in RESET_REGISTERS.items():
        uc.reg_write(reg, value)


def _leave_long_mode(uc: Uc) -> None:
    """Clear a stale EFER.LMA the way the CPU does (SDM Vol. 3A 10.8.5.4): enter IA-32e
    mode (CR4.PAE, EFER.LME, CR0.PE|PG), then clear CR0.PG, the transition on which QEMU
    clears LMA. The caller loads the real CR0/CR3/CR4/EFER (and RIP) afterwards."""
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_PAE)
    msr_write(uc, IA32_EFER, EFER_LME)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_PE | CR0_PG)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_PE)


def reset_pending_exception(uc: Uc) -> int:
    """Clear QEMU's sticky ``old_exception`` (Unicorn bug, see shared notes) and
    return the error code of the exception being raised."""
    blob = _Blob(uc)
    err = blob.u32(_CTX_ERROR_CODE)
    blob.put_i32(_CTX_OLD_EXCEPTION, -1)
    blob.restore(uc)
    return err


class InstructionCounter:
    """Reads Unicorn's per-engine ``emu_counter`` (instructions run by the current
    ``emu_start(count=...)``).  The offset inside ``uc_struct`` is found by calibration."""

    offset: int | None = None

    def __init__(self, uc: Uc) -> None:
        if InstructionCounter.offset is None:
            InstructionCounter.offset = _calibrate_counter()
        self._cell = ctypes.c_uint64.from_address(engine_address(uc) + InstructionCounter.offset)
        self._budget = ctypes.c_uint64.from_address(engine_address(uc) + InstructionCounter.offset + 8)

    def value(self) -> int:
        return self._cell.value

    def end_budget_now(self) -> None:
        """Make the running ``emu_start(count=...)`` stop before the next instruction (the
        budget ``emu_count`` follows ``emu_counter`` in uc_struct)."""
        self._budget.value = self._cell.value

    def end_budget_after(self, more: int) -> bool:
        """Make the running ``emu_start(count=...)`` stop after at most ``more`` further
        instructions; True if that shortened the run."""
        limit = self._cell.value + max(0, more)
        if limit >= self._budget.value:
            return False
        self._budget.value = limit
        return True


def _calibrate_counter() -> int:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
    uc.mem_write(0x1000, b"\x48\xff\xc0" * 64 + b"\xf4")  # inc rax x64; hlt
    words = (ctypes.c_uint64 * 4096).from_address(engine_address(uc))
    candidates: set[int] | None = None
    for count in (7, 13, 29):
        uc.reg_write(X.UC_X86_REG_RAX, 0)
        uc.emu_start(0x1000, 0, count=count)
        # after the count is exhausted: emu_counter == count + 1, emu_count == count
        found = {i for i in range(4095) if words[i] == count + 1 and words[i + 1] == count}
        candidates = found if candidates is None else candidates & found
    if not candidates or len(candidates) != 1:
        raise UnicornLayoutError("cannot locate Unicorn's instruction counter; hvdbg needs unicorn==2.1.4")
    return candidates.pop() * 8


_verified = False


def self_test() -> None:
    """Check every private offset this module uses against the running Unicorn."""
    global _verified
    if _verified:
        return
    if not unicorn.__version__.startswith("2.1."):
        raise UnicornLayoutError(f"hvdbg was verified with unicorn 2.1.4, found {unicorn.__version__}")
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_FS_BASE, 0x1122334455667788)
    uc.reg_write(X.UC_X86_REG_GS_BASE, 0x0102030405060708)
    blob = _Blob(uc)
    if blob.ctx.size != _CTX_SIZE:
        raise UnicornLayoutError("uc_context size differs from Unicorn 2.1.4")
    if blob.seg(4)[1] != 0x1122334455667788 or blob.seg(5)[1] != 0x0102030405060708:
        raise UnicornLayoutError("uc_context segment cache layout differs from Unicorn 2.1.4")
    if blob.i32(_CTX_OLD_EXCEPTION) != -1:
        raise UnicornLayoutError("uc_context old_exception offset differs from Unicorn 2.1.4")
    for value in (0x0D01, 0x0100):
        uc.msr_write(IA32_EFER, value)
        if read_efer(uc) != uc.msr_read(IA32_EFER):
            raise UnicornLayoutError("uc_context EFER offset differs from Unicorn 2.1.4")
    uc.msr_write(0xC0000102, 0x8877665544332211)
    if read_kernel_gs_base(uc) != 0x8877665544332211:
        raise UnicornLayoutError("uc_context KERNEL_GS_BASE offset differs from Unicorn 2.1.4")
    uc.msr_write(IA32_EFER, 0)
    for i, msr in enumerate((0x174, 0x175, 0x176, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084)):
        uc.msr_write(msr, 0x100 + i)
    if list(read_system_call_msrs(uc).values()) != [0x100 + i for i in range(7)]:
        raise UnicornLayoutError("uc_context SYSENTER/SYSCALL MSR offsets differ from Unicorn 2.1.4")
    locate_cpu_state(uc)
    # real-mode load: CS base must follow the blob patch
    set_control_registers(uc, 0x10, 0, 0, 0)
    write_segments(uc, {"cs": Segment(0x0800, 0x8000, 0xFFFF, 0x9B)})
    if read_segments(uc)["cs"].base != 0x8000 or uc.reg_read(X.UC_X86_REG_CS) != 0x0800:
        raise UnicornLayoutError("cannot load hidden segment state into Unicorn")
    InstructionCounter(uc)
    _verified = True
