"""Register access to a Unicorn engine for the VM-exit hot path.

The binding's ``Uc.reg_read``/``reg_write`` choose a ctypes class for the register and
allocate a value object on every call (~3.7 us each, docs/performance.md finding 2).
A VM exit reads RIP and, for CPUID, reads two registers and writes four: this module
calls ``uc_reg_read``/``uc_reg_write``/``uc_reg_*_batch`` of the C library directly on
value cells allocated once (~0.9 us per call; a batch of four ~1.4 us).

Only for registers that Unicorn's x86 ``uc_reg_read`` stores as a whole 64-bit value
(:data:`FULL_WIDTH`: the GPRs, RIP, RFLAGS, CR0-CR8, DR0-DR7, FS/GS base); EFLAGS and
the segment selectors are stored as 32 / 16 bits and would leave stale high bytes in a
reused cell, so they are refused, like descriptor-table and vector registers.

Each cell belongs to one :class:`RegisterFile` / :class:`RegisterBatch`; a lock makes
them safe when a debugger thread and the vCPU thread use the same object (the GIL is
kept during the C call, but another thread can run between the call and reading the
cell).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Iterable, Sequence

from unicorn import Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

# The same library without the binding's argtypes (arguments are passed as ready ctypes
# objects, no per-call conversion) and loaded as a PyDLL: these calls are short and never
# call back into Python, so they keep the GIL instead of handing it to another vCPU
# thread and queueing for it again.
_lib = ctypes.PyDLL(uclib._name)
_reg_read = _lib.uc_reg_read
_reg_write = _lib.uc_reg_write
_reg_read_batch = _lib.uc_reg_read_batch
_reg_write_batch = _lib.uc_reg_write_batch

FULL_WIDTH: frozenset[int] = frozenset(
    getattr(X, f"UC_X86_REG_{name}") for name in (
        "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12",
        "R13", "R14", "R15", "RIP", "RFLAGS", "CR0", "CR2", "CR3", "CR4", "CR8",
        "DR0", "DR1", "DR2", "DR3", "DR6", "DR7", "FS_BASE", "GS_BASE"))


def _check(reg_ids: Iterable[int]) -> None:
    bad = [r for r in reg_ids if r not in FULL_WIDTH]
    if bad:
        raise ValueError(f"Unicorn x86 registers {bad} are not 64-bit scalars; use the binding")


class RegisterFile:
    """Single-register reads and writes of one engine through a preallocated cell."""

    __slots__ = ("_uch", "_cell", "_ref", "_lock")

    def __init__(self, uc: Uc) -> None:
        self._uch = uc._uch
        self._cell = ctypes.c_uint64()
        self._ref = ctypes.byref(self._cell)
        self._lock = threading.Lock()

    def read(self, reg_id: int) -> int:
        """The value of ``reg_id`` (one of :data:`FULL_WIDTH`)."""
        if reg_id not in FULL_WIDTH:
            _check((reg_id,))
        with self._lock:
            status = _reg_read(self._uch, reg_id, self._ref)
            if status:
                raise UcError(status, reg_id)
            return self._cell.value

    def write(self, reg_id: int, value: int) -> None:
        if reg_id not in FULL_WIDTH:
            _check((reg_id,))
        with self._lock:
            self._cell.value = value & 0xFFFFFFFFFFFFFFFF
            status = _reg_write(self._uch, reg_id, self._ref)
            if status:
                raise UcError(status, reg_id)


class RegisterBatch:
    """A fixed list of registers read or written with one C call."""

    __slots__ = ("_uch", "_ids", "_values", "_pointers", "_count", "_lock", "reg_ids")

    def __init__(self, uc: Uc, reg_ids: Sequence[int]) -> None:
        _check(reg_ids)
        count = len(reg_ids)
        self.reg_ids = tuple(reg_ids)
        self._uch = uc._uch
        self._count = count
        self._ids = (ctypes.c_int * count)(*reg_ids)
        self._values = (ctypes.c_uint64 * count)()
        base = ctypes.addressof(self._values)
        self._pointers = (ctypes.c_void_p * count)(*(base + 8 * i for i in range(count)))
        self._lock = threading.Lock()

    def read(self) -> tuple[int, ...]:
        with self._lock:
            status = _reg_read_batch(self._uch, self._ids, self._pointers, self._count)
            if status:
                raise UcError(status)
            return tuple(self._values[:])

    def write(self, values: Iterable[int]) -> None:
        with self._lock:
            self._values[:] = [v & 0xFFFFFFFFFFFFFFFF for v in values]
            status = _reg_write_batch(self._uch, self._ids, self._pointers, self._count)
            if status:
                raise UcError(status)


#: Bytes Unicorn 2.1.4's x86 ``uc_reg_read`` stores for each register a debugger reads
#: (measured: a buffer filled with a marker byte, see tests/test_ucregs.py).
STORED_SIZE: dict[int, int] = {
    **{r: 8 for r in FULL_WIDTH},
    X.UC_X86_REG_EFLAGS: 4, X.UC_X86_REG_MXCSR: 4,
    **{getattr(X, f"UC_X86_REG_{n}"): 2 for n in ("CS", "SS", "DS", "ES", "FS", "GS", "FPCW", "FPSW", "FPTAG")},
    **{getattr(X, f"UC_X86_REG_FP{i}"): 10 for i in range(8)},       # 64-bit mantissa, 16-bit exponent
    **{getattr(X, f"UC_X86_REG_XMM{i}"): 16 for i in range(16)},
}
SLOT = _SLOT = 16   # every register gets a 16-byte slot, zeroed before each read


class RawRegisterBatch:
    """Registers of mixed widths (selectors, x87, XMM, ...) read with one C call, each
    into its own zeroed slot: :meth:`read` returns each value's bytes, little-endian,
    exactly as wide as Unicorn stores it (:data:`STORED_SIZE`)."""

    __slots__ = ("_uch", "_ids", "_buffer", "_pointers", "_count", "_sizes", "_lock")

    def __init__(self, uc: Uc, reg_ids: Sequence[int]) -> None:
        unknown = [r for r in reg_ids if r not in STORED_SIZE]
        if unknown:
            raise ValueError(f"no known stored size for Unicorn x86 registers {unknown}")
        count = len(reg_ids)
        self._uch = uc._uch
        self._count = count
        self._sizes = tuple(STORED_SIZE[r] for r in reg_ids)
        self._ids = (ctypes.c_int * count)(*reg_ids)
        self._buffer = (ctypes.c_ubyte * (_SLOT * count))()
        base = ctypes.addressof(self._buffer)
        self._pointers = (ctypes.c_void_p * count)(*(base + _SLOT * i for i in range(count)))
        self._lock = threading.Lock()

    def read(self) -> list[bytes]:
        raw = self.read_slots()
        return [raw[_SLOT * i:_SLOT * i + size] for i, size in enumerate(self._sizes)]

    def read_slots(self) -> bytes:
        """Every register's zero-padded :data:`SLOT`-byte slot, in order, in one string
        (register ``i`` is at ``SLOT * i``, little-endian: a prefix of it is the value
        truncated, a longer prefix zero-extends it)."""
        with self._lock:
            ctypes.memset(self._buffer, 0, _SLOT * self._count)
            status = _reg_read_batch(self._uch, self._ids, self._pointers, self._count)
            if status:
                raise UcError(status)
            return bytes(self._buffer)
