"""The engine operations a debugger needs, as functions over an
:class:`~hvdbg.engine.cpu.EngineCpu`: code hooks for breakpoints, memory hooks for
watchpoints, flushing translated code, and registers by GDB name (the layout of GDB's
``org.gnu.gdb.i386`` 64-bit target description).

hvdbg.debug and hvdbg.ui reach Unicorn only through this module.  Hooks must be added
and removed, and code flushed, only while the engine is not running (Unicorn engines
are not thread-safe).
"""

from __future__ import annotations

import operator
from typing import Callable, Mapping, Sequence

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn import Uc
from unicorn import x86_const as X

from hvdbg.engine import ucx
from hvdbg.engine.cpu import EngineCpu
from hvdbg.engine.regs import SLOT, RawRegisterBatch

#: One past the last linear address (64-bit).
ADDRESS_SPACE_END = 1 << 64

# -- hooks -----------------------------------------------------------------------------

_WATCH_HOOKS = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
                "access": UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ}


def add_code_hook(engine: EngineCpu, address: int, callback: Callable[[int], None]) -> int:
    """Call ``callback(address)`` before the instruction at the linear ``address`` runs;
    translated code there is flushed so that the hook takes effect.  Returns a handle."""
    handle = engine.uc.hook_add(UC_HOOK_CODE, lambda _uc, addr, _size, _ud: callback(addr), None,
                                address, address)
    flush_code(engine, address)
    return handle


def remove_code_hook(engine: EngineCpu, handle: int, address: int) -> None:
    """Undo :func:`add_code_hook` (and flush the code it was translated into)."""
    engine.uc.hook_del(handle)
    flush_code(engine, address)


def add_watch_hooks(engine: EngineCpu, kind: str, ranges: list[tuple[int, int]],
                    callback: Callable[[bool, int, int], None]) -> list[int]:
    """Memory hooks on inclusive guest-physical ranges for a ``kind`` ("write", "read",
    "access") watchpoint: ``callback(is_write, gpa, size)``.  Returns the handles."""
    types = _WATCH_HOOKS[kind]

    def hook(_uc, access: int, address: int, size: int, _value: int, _ud) -> None:
        callback(access == UC_MEM_WRITE, address, size)

    return [engine.uc.hook_add(types, hook, None, lo, hi) for lo, hi in ranges]


def remove_hooks(engine: EngineCpu, handles: list[int]) -> None:
    for handle in handles:
        engine.uc.hook_del(handle)


def flush_code(engine: EngineCpu, address: int, end: int | None = None) -> None:
    """Drop the translated blocks holding ``address`` (up to ``end``, exclusive), so that
    a code hook added or removed there, or new code bytes, take effect (hooks are looked
    up when a block is translated).

    ``ctl_remove_cache`` takes an exclusive end, which cannot name the last byte of the
    64-bit space: a range reaching it flushes the whole translation cache instead.
    """
    end = address + 1 if end is None else end
    if end < ADDRESS_SPACE_END:
        engine.flush_code(address, end)
    else:
        engine.uc.ctl_flush_tb()


# -- registers -------------------------------------------------------------------------

_GPR = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in
        ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
         "r12", "r13", "r14", "r15", "rip")}
_SEG = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in ("cs", "ss", "ds", "es", "fs", "gs")}
_MISC = {"eflags": X.UC_X86_REG_EFLAGS, "fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE,
         "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3,
         "cr4": X.UC_X86_REG_CR4, "cr8": X.UC_X86_REG_CR8, "mxcsr": X.UC_X86_REG_MXCSR,
         "fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW, "ftag": X.UC_X86_REG_FPTAG}
_MSR = {"efer": 0xC0000080, "k_gs_base": 0xC0000102}
_X87 = {f"st{i}": getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)}
_XMM = {f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)}
# what a 'g' reads, as one batch: (name, Unicorn register); st*/xmm* stay bytes
_G_LAYOUT = tuple({**_GPR, **_SEG, **_MISC, **_X87, **_XMM}.items())
_G_BYTES = frozenset(_X87) | frozenset(_XMM)
_READ_ONLY = frozenset(_SEG) | frozenset(_X87) | {"fstat", "ftag"}
# read from the saved context, not with uc.msr_read: its RDMSR helper saves and restores
# RAX/RCX/RDX of the live CPU
_MSR_READERS: dict[str, Callable[[Uc], int]] = {"efer": ucx.read_efer, "k_gs_base": ucx.read_kernel_gs_base}


class GdbRegisters:
    """Every register of GDB's x86-64 description of one engine, read with one batch
    (gdb sends a ``g`` after every stop and step), plus the EFER and KERNEL_GS_BASE MSRs."""

    def __init__(self, engine: EngineCpu) -> None:
        self.engine = engine
        self._batch = RawRegisterBatch(engine.uc, [r for _n, r in _G_LAYOUT])

    def read(self) -> dict[str, int | bytes]:
        out: dict[str, int | bytes] = {}
        for (name, _reg), raw in zip(_G_LAYOUT, self._batch.read()):
            out[name] = raw if name in _G_BYTES else int.from_bytes(raw, "little")
        for name, reader in _MSR_READERS.items():
            out[name] = reader(self.engine.uc)
        return out


class GdbRegisterImage:
    """A ``g`` reply of one engine for a gdbstub layout, read with one batch and put
    together by a plan made once: no Python value per register (gdb sends ``g`` after
    every stop and step). ``layout`` lists (register name as in :data:`_G_LAYOUT`,
    bytes in the reply); a name this engine cannot read is unavailable (``xx``)."""

    def __init__(self, engine: EngineCpu, layout: Sequence[tuple[str, int]]) -> None:
        self.engine = engine
        batched = dict(_G_LAYOUT)
        ids: list[int] = []
        self._pieces: list[tuple[int, int]] = []      # (offset in the slots, bytes)
        self.offsets: dict[str, tuple[int, int]] = {}  # (byte offset in the reply, bytes), by name
        self._msrs: list[tuple[int, Callable[[Uc], int], int]] = []
        unavailable: list[tuple[int, int]] = []
        slots: list[int | None] = []                 # each register's batch slot (None: zeros)
        at = 0
        for name, size in layout:
            if size > SLOT:
                raise ValueError(f"{name}: {size} bytes do not fit a register slot")
            self.offsets[name] = (at, size)
            if name in batched:
                slots.append(len(ids))
                ids.append(batched[name])
            else:
                slots.append(None)
                if name in _MSR_READERS:
                    self._msrs.append((at, _MSR_READERS[name], size))
                else:
                    unavailable.append((2 * at, 2 * size))
            at += size
        self._batch = RawRegisterBatch(engine.uc, ids)
        self._pad = bytes(SLOT)                      # the zero slot after the batch's
        self._pieces = [(SLOT * (len(ids) if slot is None else slot), size)
                        for slot, (_name, size) in zip(slots, layout)]
        self._gather = operator.itemgetter(*(slice(o, o + n) for o, n in self._pieces))
        self._unavailable = unavailable

    def read(self, patch: Mapping[str, int] | None = None) -> bytes:
        """The reply's ASCII hex; ``patch`` overrides some registers' values."""
        slots = self._batch.read_slots() + self._pad
        image = bytearray(b"".join(self._gather(slots)))
        for at, reader, size in self._msrs:
            image[at:at + size] = (reader(self.engine.uc) & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        for name, value in (patch or {}).items():
            at, size = self.offsets[name]
            image[at:at + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        text = bytearray(image.hex().encode())
        for at, width in self._unavailable:
            text[at:at + width] = b"x" * width
        return bytes(text)


def write_gdb_registers(engine: EngineCpu, values: Mapping[str, int | bytes], order: list[str]) -> None:
    """Write registers by GDB name in ``order``.  Segment selectors and the x87 stack are
    read-only from GDB (their hidden parts would not follow a selector write)."""
    uc = engine.uc
    for name in order:
        value = values[name]
        if name in _READ_ONLY:
            continue
        if name in _GPR:
            uc.reg_write(_GPR[name], value)
        elif name in _MISC:
            uc.reg_write(_MISC[name], value)
        elif name in _MSR:
            ucx.msr_write(uc, _MSR[name], value)
        elif name in _XMM and isinstance(value, bytes):
            uc.reg_write(_XMM[name], int.from_bytes(value, "little"))
