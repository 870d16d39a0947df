"""The budget and hang checks shared by the executors (``budget.*`` of the config)."""

from __future__ import annotations

import time

from hvdbg.errors import Outcome
from hvdbg.hv.machine import Machine
from hvdbg.run.loop import VcpuLoop


class Watchdog:
    """Budget and hang checks shared by the executors."""

    def __init__(self, vm: Machine, loop: VcpuLoop) -> None:
        self.vm = vm
        self.loop = loop
        self.last = time.monotonic()
        self.running_seconds = 0.0

    def check(self) -> None:
        """Called while the VM runs (not while a debugger holds it paused)."""
        vm = self.vm
        now = time.monotonic()
        elapsed = min(now - self.last, 0.25)
        self.last = now
        if vm.ended:
            return
        reasons = [self.loop.stuck(v) for v in vm.vcpus]
        if all(reasons) and vm.input_open:
            # every vCPU waits, and input may still come (stdin): a machine at a prompt,
            # not a hang; the time budget does not run meanwhile
            time.sleep(0.002)
            return
        self.running_seconds += elapsed
        if all(reasons):
            # a hang says more than "budget": check it first (the vCPU threads may have used
            # the whole budget between two checks)
            vm.end(Outcome.HANG, detail="; ".join(f"vCPU {v.index}: {r}" for v, r in zip(vm.vcpus, reasons)))
            return
        if vm.total_instructions() >= vm.config["budget.instructions"]:
            vm.end(Outcome.BUDGET, detail=f"instruction budget of {vm.config['budget.instructions']} used up")
            return
        if self.running_seconds >= vm.config["budget.seconds"]:
            vm.end(Outcome.BUDGET, detail=f"time budget of {vm.config['budget.seconds']} s used up")
            return
