"""Unicorn hooks for the VM-exit hot path, registered with one callback layer.

``Uc.hook_add`` wraps every callback twice (the binding's exception guard, then a
per-type closure that reorders the arguments) before the callback itself: two extra
Python frames per CPUID, I/O or PAUSE (docs/performance.md finding 7).  These helpers
hand Unicorn a ctypes function that calls the callback directly, with the binding's
argument order ``callback(uc, *args, user_data)``.

The callback must not raise: hvdbg's hooks are wrapped by ``vcpu._guarded``, which
records the error and stops the engine (an exception escaping a ctypes callback would
only be printed).  The ctypes function objects are kept alive by the engine's own
callback table (``Uc._callbacks``), as for hooks added through the binding.
"""

from __future__ import annotations

import ctypes
from typing import Callable

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import (HOOK_INSN_CPUID_CFUNC, HOOK_INSN_IN_CFUNC,
                                            HOOK_INSN_OUT_CFUNC, HOOK_INSN_SYSCALL_CFUNC)
from unicorn.unicorn_py3.unicorn import HOOK_CODE_CFUNC


def _add(uc: Uc, htype: int, fptr, begin: int, end: int, *args: ctypes.c_int) -> int:
    return uc._Uc__do_hook_add(htype, fptr, begin, end, *args)


def add_code_hook(uc: Uc, callback: Callable[[Uc, int, int, None], None], begin: int, end: int) -> int:
    """UC_HOOK_CODE on [begin, end]: ``callback(uc, address, size, None)``."""
    fptr = HOOK_CODE_CFUNC(lambda _h, address, size, _key: callback(uc, address, size, None))
    return _add(uc, UC_HOOK_CODE, fptr, begin, end)


def add_cpuid_hook(uc: Uc, callback: Callable[[Uc, None], int]) -> int:
    """CPUID: ``callback(uc, None)`` returns 1 when it supplied the results (SDM 26.1.2)."""
    fptr = HOOK_INSN_CPUID_CFUNC(lambda _h, _key: callback(uc, None))
    return _add(uc, UC_HOOK_INSN, fptr, 1, 0, ctypes.c_int(X.UC_X86_INS_CPUID))


def add_in_hook(uc: Uc, callback: Callable[[Uc, int, int, None], int]) -> int:
    """IN/INS: ``callback(uc, port, size, None)`` returns the value read."""
    fptr = HOOK_INSN_IN_CFUNC(lambda _h, port, size, _key: callback(uc, port, size, None))
    return _add(uc, UC_HOOK_INSN, fptr, 1, 0, ctypes.c_int(X.UC_X86_INS_IN))


def add_out_hook(uc: Uc, callback: Callable[[Uc, int, int, int, None], None]) -> int:
    """OUT/OUTS: ``callback(uc, port, size, value, None)``."""
    fptr = HOOK_INSN_OUT_CFUNC(lambda _h, port, size, value, _key: callback(uc, port, size, value, None))
    return _add(uc, UC_HOOK_INSN, fptr, 1, 0, ctypes.c_int(X.UC_X86_INS_OUT))


def add_tsc_hook(uc: Uc, insn: int, callback: Callable[[Uc, None], int]) -> int:
    """RDTSC or RDTSCP (``insn`` = UC_X86_INS_RDTSC / RDTSCP): ``callback(uc, None)`` returns
    1 when it wrote EDX:EAX (and ECX) itself.  Unicorn calls it after the CR4.TSD check, with
    RIP at the instruction; without it the guest reads the host's TSC."""
    fptr = HOOK_INSN_CPUID_CFUNC(lambda _h, _key: callback(uc, None))
    return _add(uc, UC_HOOK_INSN, fptr, 1, 0, ctypes.c_int(insn))


def add_system_call_hook(uc: Uc, insn: int, callback: Callable[[Uc, None], None]) -> int:
    """SYSCALL or SYSENTER (``insn`` = UC_X86_INS_SYSCALL / SYSENTER): ``callback(uc, None)``
    instead of Unicorn's no-op helper (src/qemu/target/i386/seg_helper.c)."""
    fptr = HOOK_INSN_SYSCALL_CFUNC(lambda _h, _key: callback(uc, None))
    return _add(uc, UC_HOOK_INSN, fptr, 1, 0, ctypes.c_int(insn))
