"""Inspecting a vCPU while it runs (the shell, a per-vCPU gdb stub, the watchdog) must
never change what the guest computes.  Unicorn's ``msr_read`` runs the RDMSR helper on
the live CPU state and restores RAX/RCX/RDX afterwards, so a read racing with the guest
undid the guest's own register writes: the SMP kernel's sums came out wrong under gdb
connection churn (docs/reliability.md #15).  hvdbg reads EFER and KERNEL_GS_BASE from a
saved context instead (hvdbg.engine.ucx.read_efer)."""

from __future__ import annotations

import threading
import time

from hvdbg.arch import regs
from hvdbg.api import diagnosis

from hvdbg.engine import ucx
from hvdbg.config import config_from_dict
from hvdbg.run.executors import make_executor
from hvdbg.hv.machine import Machine


def test_reading_running_vcpus_does_not_disturb_the_guest(guest_kernels):
    vm = Machine(config_from_dict({"kernel": str(guest_kernels / "smp.elf"), "vcpus": 2, "memory": "128M",
                                   "cmdline": "work_mib=24", "budget": {"seconds": 300}}))
    ex = make_executor(vm)
    runner = threading.Thread(target=ex.run)
    runner.start()
    reads = 0
    while runner.is_alive():
        for v in vm.vcpus:
            regs = v.registers()              # GPRs, control registers, EFER
            v.control_regs()
            v.code_bits()
            assert regs["efer"] & ~0xD01 == 0     # SCE/LME/LMA/NXE at most
            reads += 1
        time.sleep(0.0002)
    runner.join()
    res = diagnosis.result(vm, 0)
    assert reads > 100
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    assert "sum ok" in res["serial"]


def test_efer_from_the_saved_context_matches_the_msr():
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    for value in (0, 0x100, 0x501, 0xD01):
        uc.msr_write(regs.IA32_EFER, value)
        assert ucx.read_efer(uc) == uc.msr_read(regs.IA32_EFER)
    uc.msr_write(0xC0000102, 0xFFFF800012345000)
    assert ucx.read_kernel_gs_base(uc) == 0xFFFF800012345000
