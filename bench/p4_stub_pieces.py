"""P4 evidence: what each packet of a gdb ``stepi`` costs inside hvdbg's stub.

gdb 13 sends three packets per ``stepi`` (``vCont;s``, ``g``, a 64-byte ``m`` of the
stack). This script boots the SMP test kernel in-process on 1 vCPU, stops it at kmain
through :class:`hvdbg.debug.gdb_target.VmTarget` (as the stub does) and times the target calls
behind those packets, next to cheaper ways to read the same state. Process CPU time,
best of 3; absolute values move with the host's load, the ratios are the point.

    python bench/p4_stub_pieces.py
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
import timeit

from harness import ROOT

sys.path.insert(0, str(ROOT))
os.environ.setdefault("UC_IGNORE_REG_BREAK", "1")

from unicorn import x86_const as X  # noqa: E402
from unicorn.unicorn_py3.unicorn import uclib  # noqa: E402

from gdbstub.arch.x86_64 import X86_64  # noqa: E402
from gdbstub.target import ResumeAction, ResumeKind  # noqa: E402
from hvdbg.config import load_config  # noqa: E402
from hvdbg.debug.session import DebugSession  # noqa: E402
from hvdbg.debug.gdb_target import VmTarget  # noqa: E402
from hvdbg.engine.regs import RegisterBatch  # noqa: E402
from hvdbg.hv.machine import Machine  # noqa: E402

GPRS = tuple(getattr(X, f"UC_X86_REG_{n}") for n in (
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15",
    "RIP"))
XMMS = tuple(getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16))
_lib = ctypes.PyDLL(uclib._name)


def cost(fn, number: int) -> float:
    """Microseconds of process CPU time per call, best of 3."""
    return min(timeit.repeat(fn, number=number, repeat=3, timer=time.process_time)) / number * 1e6


def main() -> None:
    cfg = load_config(ROOT / "examples" / "smp-4vcpu.toml")
    cfg.set("vcpus", 1)
    cfg.set("pcpus", 1)
    vm = Machine(cfg)
    kmain = vm.symbols.lookup("kmain").address
    session = DebugSession(vm, start_paused=True)
    target = VmTarget(session, None)
    session.start()
    target.attach()
    if not target.add_sw_breakpoint(kmain, 1):
        raise SystemExit("cannot set a breakpoint at kmain")
    target.resume({1: ResumeAction(ResumeKind.CONTINUE)})
    stop = target.wait_for_stop(60)
    target.remove_sw_breakpoint(kmain, 1)
    vcpu = vm.vcpus[0]
    if stop is None or vcpu.engine.uc.reg_read(X.UC_X86_REG_RIP) != kmain:
        raise SystemExit(f"did not stop at kmain: {stop}")

    regs = target.read_registers(1)
    stack = vcpu.engine.read("rsp") & ~0x3F     # what gdb reads after each stepi at kmain
    batch = RegisterBatch(vcpu.engine.uc, GPRS)
    cells = [(ctypes.c_ubyte * 16)() for _ in XMMS]

    def xmm_direct() -> list[bytes]:
        for reg, cell in zip(XMMS, cells):
            _lib.uc_reg_read(vcpu.engine.uc._uch, reg, ctypes.byref(cell))
        return [bytes(c) for c in cells]

    assert xmm_direct() == [vcpu.engine.uc.reg_read(r).to_bytes(16, "little") for r in XMMS]
    assert list(batch.read()) == [vcpu.engine.uc.reg_read(r) for r in GPRS]

    def step() -> None:
        target.resume({1: ResumeAction(ResumeKind.STEP)})
        target.wait_for_stop(10)

    rows = [
        ("g", "VmTarget.read_registers (all 61 values)", lambda: target.read_registers(1), 200),
        ("g", "X86_64.encode_registers (the reply's hex)", lambda: X86_64.encode_registers(regs), 200),
        ("g", "17 GPRs + RIP by binding reg_read", lambda: [vcpu.engine.uc.reg_read(r) for r in GPRS], 500),
        ("g", "the same 17 by hvdbg.engine.regs.RegisterBatch.read", batch.read, 2000),
        ("g", "16 XMM by binding reg_read + to_bytes",
         lambda: [vcpu.engine.uc.reg_read(r).to_bytes(16, "little") for r in XMMS], 500),
        ("g", "the same 16 by uc_reg_read into preallocated buffers", xmm_direct, 2000),
        ("m", "Vcpu.read_linear(stack, 64)", lambda: vcpu.read_linear(stack, 64), 500),
        ("m", "Vcpu.page_walk(stack) (4-level walk, 2 MiB page)", lambda: vcpu.page_walk(stack), 500),
        ("m", "Vcpu.control_regs()", vcpu.control_regs, 500),
        ("m", "GuestMemory.read(gpa, 64)", lambda: vcpu.memory.read(stack - 0xFFFFFF8000000000, 64), 2000),
        ("vCont;s", "VmTarget.resume(step) + wait_for_stop", step, 100),
    ]
    print("| packet | operation (1 vCPU stopped at kmain) | us CPU per call |")
    print("|---|---|---|")
    for packet, label, fn, number in rows:
        print(f"| {packet} | {label} | {cost(fn, number):.1f} |")
    print(f"\n(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
    os._exit(0)  # the paused vCPU thread and the session's threads need no orderly shutdown here


if __name__ == "__main__":
    main()
