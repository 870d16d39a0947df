"""EngineCpu: the one object through which the hypervisor model drives a Unicorn engine
(the accelerator role of QEMU's ``accel/tcg``).  Everything above engine/ reaches the
engine only through this class and the other engine/ modules; nothing above imports
unicorn."""

from __future__ import annotations

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

from hvdbg.engine import ucx
from hvdbg.engine.regs import RegisterBatch, RegisterFile


class EngineCpu:
    """One Unicorn engine in 64-bit mode with the SDM reset state (Table 9-1) loaded."""

    def __init__(self) -> None:
        ucx.self_test()
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        ucx.load_reset_state(self.uc)
        self.regs = RegisterFile(self.uc)
        self.counter = ucx.InstructionCounter(self.uc)
        self._batches: dict[tuple[int, ...], RegisterBatch] = {}

    def batch(self, reg_ids: tuple[int, ...]) -> RegisterBatch:
        """A register batch on this engine (built once per register list)."""
        b = self._batches.get(reg_ids)
        if b is None:
            b = self._batches[reg_ids] = RegisterBatch(self.uc, reg_ids)
        return b

    def stop(self) -> None:
        """Make a running engine return from emu_start at the next instruction boundary."""
        self.uc.emu_stop()
