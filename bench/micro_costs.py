"""Per-call cost of the building blocks of an hvdbg VM exit and slice, each next to the
cheaper way of doing the same thing (the evidence behind docs/performance.md, "Open
findings").  Every pair is timed side by side with timeit in process CPU time (best of
5 repeats).

    python bench/micro_costs.py [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import struct
import tempfile
import time
import timeit
from collections import Counter
from pathlib import Path
from typing import Callable

from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as binding

from guest_image import build
from hvdbg.arch.cpuid import CpuidModel
from hvdbg.vmx.exits import ExitReason
from hvdbg.hv.trace import ExitTrace
from hvdbg.hv.exit import ExitInfo
from hvdbg.vmx.fields import BY_NAME
from runners import hv_machine

EXIT_FIELDS = ("VM_EXIT_REASON", "EXIT_QUALIFICATION", "GUEST_RIP", "VM_EXIT_INSTRUCTION_LEN")
CPUID_REGS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)


class RegBatch:
    """Preallocated ctypes arrays for uc_reg_read_batch / uc_reg_write_batch on a fixed
    list of 64-bit registers (what the binding rebuilds on every call)."""

    def __init__(self, uc, reg_ids) -> None:
        self._h = uc._uch
        self.n = len(reg_ids)
        self._ids = (ctypes.c_int * self.n)(*reg_ids)
        self.values = (ctypes.c_uint64 * self.n)()
        base = ctypes.addressof(self.values)
        self._ptrs = (ctypes.c_void_p * self.n)(*(base + 8 * i for i in range(self.n)))
        self._read = binding.uclib.uc_reg_read_batch
        self._write = binding.uclib.uc_reg_write_batch

    def read(self) -> tuple[int, ...]:
        self._read(self._h, self._ids, self._ptrs, self.n)
        return tuple(self.values)

    def write(self, values) -> None:
        self.values[:] = values
        self._write(self._h, self._ids, self._ptrs, self.n)


class Reg64:
    """One register through uc_reg_read / uc_reg_write with a preallocated cell."""

    def __init__(self, uc, reg_id: int) -> None:
        self._h = uc._uch
        self._id = reg_id
        self._cell = ctypes.c_uint64()
        self._ref = ctypes.byref(self._cell)
        self._read = binding.uclib.uc_reg_read
        self._write = binding.uclib.uc_reg_write

    def read(self) -> int:
        self._read(self._h, self._id, self._ref)
        return self._cell.value

    def write(self, value: int) -> None:
        self._cell.value = value
        self._write(self._h, self._id, self._ref)


class LeanTrace:
    """What ExitTrace.record could cost: counts by integer reason, one Struct, no
    per-call Counter, names resolved when displayed."""

    _PACK = struct.Struct("<HHQQQ").pack

    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.counts: Counter[int] = Counter()
        self.packed: list[bytes] = []

    def record(self, vcpu: int, reason: int, qualification: int, rip: int, instructions: int) -> None:
        self.records.append((vcpu, reason, qualification, rip, instructions))
        self.counts[reason] += 1
        self.packed.append(self._PACK(vcpu, reason, qualification, rip, instructions))


def per_call_us(fn: Callable[[], object], number: int) -> float:
    """CPU microseconds per call (process time, so other load on the host costs nothing)."""
    return min(timeit.repeat(fn, number=number, repeat=5, timer=time.process_time)) / number * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    number = 2_000 if a.quick else 50_000
    with tempfile.TemporaryDirectory(prefix="hvdbg-micro-") as d:
        vm = hv_machine(build("alu", 10, Path(d)), 1, deterministic=True)
    v = vm.vcpus[0]
    uc = v.engine.uc
    rax = Reg64(uc, X.UC_X86_REG_RAX)
    four = RegBatch(uc, CPUID_REGS)
    spin_ids = list(getattr(v, "_SPIN_IDS", [X.UC_X86_REG_RIP] + list(CPUID_REGS)))
    spin = RegBatch(uc, spin_ids)
    trace, lean = ExitTrace(), LeanTrace()
    cpuid = CpuidModel(apic_id=0, vcpu_count=1)
    table = {leaf: cpuid.query(leaf, 0) for leaf in (0, 1)}
    reason = int(ExitReason.CPUID)
    store = {BY_NAME[f].encoding: 0 for f in EXIT_FIELDS}

    fast = v.regs                                   # hvdbg.engine.regs, as the exit path uses them
    cpuid_out = v.engine.batch(tuple(CPUID_REGS))
    plan = type(v.vmcs).plan(EXIT_FIELDS)
    pairs: list[tuple[str, Callable[[], object], str, Callable[[], object]]] = [
        ("uc.reg_read(RAX) (binding)", lambda: uc.reg_read(X.UC_X86_REG_RAX),
         "hvdbg.engine.regs RegisterFile.read (hvdbg's exit hooks)", lambda: fast.read(X.UC_X86_REG_RAX)),
        ("uc.reg_write(RAX, v) (binding)", lambda: uc.reg_write(X.UC_X86_REG_RAX, 5),
         "RegisterFile.write", lambda: fast.write(X.UC_X86_REG_RAX, 5)),
        ("4 x uc.reg_write (CPUID result, binding)", lambda: [uc.reg_write(r, 5) for r in CPUID_REGS],
         "RegisterBatch.write (hvdbg's CPUID exit)", lambda: cpuid_out.write((5, 5, 5, 5))),
        (f"uc.reg_read_batch of {len(spin_ids)} regs (binding)", lambda: uc.reg_read_batch(spin_ids),
         "Vcpu.progress_state() (RegisterBatch, hang detector)",
         getattr(v, "progress_state", spin.read)),
        ("uclib.uc_reg_read, preallocated cell (argtypes)", rax.read,
         "RegisterFile.read (PyDLL, no argtypes)", lambda: fast.read(X.UC_X86_REG_RAX)),
        ("ExitTrace.record(...)", lambda: trace.record(0, ExitReason.CPUID, 0, 0x100000, 12345, "leaf 0x0.0x0"),
         "list append + Counter[int] + Struct.pack", lambda: lean.record(0, reason, 0, 0x100000, 12345)),
        ("CpuidModel.query(1, 0)", lambda: cpuid.query(1, 0), "precomputed leaf table", lambda: table[1]),
        ("CpuidModel.query(0, 0)", lambda: cpuid.query(0, 0), "precomputed leaf table", lambda: table[0]),
        ("ExitInfo(CPUID, rip=..., instruction_length=2)",
         lambda: ExitInfo(ExitReason.CPUID, rip=0x1000, instruction_length=2),
         "a tuple of the same values", lambda: (reason, 0, 0x1000, 2)),
        ("4 x Vmcs.write(name, value) (exit information)",
         lambda: [v.vmcs.write(f, 1) for f in EXIT_FIELDS],
         "Vmcs.write_planned (hvdbg's exit path)", lambda: v.vmcs.write_planned(plan, (1, 1, 1, 1))),
        ("Vcpu.save_guest_state()", v.save_guest_state, "(reference: one uc.context_save())", uc.context_save),
    ]
    print("## Building blocks of an exit and a slice (CPU us per call, best of 5)")
    print()
    print("| operation | us | what hvdbg does now / a cheaper equivalent | us | ratio |")
    print("|---|---|---|---|---|")
    for name, fn, alt_name, alt in pairs:
        n = max(200, number // 20) if "save_guest_state" in name else number
        t, t_alt = per_call_us(fn, n), per_call_us(alt, n)
        ratio = "-" if alt_name.startswith("(reference") else f"{t / t_alt:.1f}x"
        print(f"| {name} | {t:.2f} | {alt_name} | {t_alt:.2f} | {ratio} |")


def _dict_stores(store: dict[int, int]) -> None:
    for encoding in store:
        store[encoding] = 1


if __name__ == "__main__":
    main()
