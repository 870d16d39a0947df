"""PAUSE-loop exiting (SDM 25.1.3, exit reason 40), as hvdbg's schedulers use it for
overcommitted pCPUs (KVM's PLE): after ``ple_window`` PAUSEs in one run the vCPU exits, so
that the scheduler can run the vCPU it is probably waiting for.  PAUSE reaches the vCPU
through QEMU's SVM PAUSE intercept (hvdbg.engine.intercepts)."""

from __future__ import annotations

from hvdbg.hv.exit import ExitInfo
from hvdbg.vmx.exits import ExitReason


def enable(vcpu, window: int) -> None:
    """Exit after ``window`` PAUSEs in one run."""
    vcpu.ple_window = window
    vcpu.engine.intercepts.set_pause_exiting(True)


def pause(vcpu) -> None:
    """An intercepted PAUSE (F3 90) of ``vcpu``: it completes; the ``ple_window``-th of the
    run is a PAUSE-instruction VM exit."""
    rip = vcpu.engine.rip()
    vcpu.engine.set_rip(rip + 2)
    vcpu.pauses_in_run += 1
    if vcpu.pauses_in_run == vcpu.ple_window:
        vcpu.spin_exit = True
        vcpu.vm_exit(ExitInfo(ExitReason.PAUSE_INSTRUCTION, rip=rip, instruction_length=2,
                              detail=f"{vcpu.ple_window} PAUSEs in one run: spinning"))
