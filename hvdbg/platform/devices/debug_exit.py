"""Debug-exit port (the contract of QEMU's isa-debug-exit): a guest write ends the run
with that value as its exit status."""

from __future__ import annotations

from typing import Callable

DEBUG_EXIT_PORT = 0xF4


class DebugExit:
    name = "debug-exit"

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit
        self.status: int | None = None

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.status = value
        self._on_exit(value)
