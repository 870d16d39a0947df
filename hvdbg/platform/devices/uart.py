"""16550A UART (the registers a polling kernel uses; no interrupts, no FIFO timing)."""

from __future__ import annotations

from typing import Callable

COM1 = 0x3F8

# register offsets
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40
LCR_DLAB = 0x80


class Uart16550:
    """Transmit side captured into ``output``; received bytes can be queued with ``feed``."""

    def __init__(self, base: int = COM1, name: str = "COM1",
                 sink: Callable[[bytes], None] | None = None) -> None:
        self.base = base
        self.name = name
        self.output = bytearray()
        self.sink = sink
        self.rx = bytearray()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.dll = 1
        self.dlm = 0
        self.fcr = 0

    def feed(self, data: bytes) -> None:
        self.rx += data

    def io_read(self, port: int, size: int) -> int:
        off = port - self.base
        dlab = self.lcr & LCR_DLAB
        if off == RBR_THR_DLL:
            if dlab:
                return self.dll
            if self.rx:
                b = self.rx[0]
                del self.rx[0]
                return b
            return 0
        if off == IER_DLM:
            return self.dlm if dlab else self.ier
        if off == IIR_FCR:
            return 0xC1 if self.fcr & 1 else 0x01  # no interrupt pending
        if off == LCR:
            return self.lcr
        if off == MCR:
            return self.mcr
        if off == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
        if off == MSR:
            return 0xB0  # CTS, DSR, DCD
        return self.scr

    def io_write(self, port: int, size: int, value: int) -> None:
        off = port - self.base
        dlab = self.lcr & LCR_DLAB
        value &= 0xFF
        if off == RBR_THR_DLL:
            if dlab:
                self.dll = value
            else:
                self.output.append(value)
                if self.sink:
                    self.sink(bytes((value,)))
        elif off == IER_DLM:
            if dlab:
                self.dlm = value
            else:
                self.ier = value & 0x0F
        elif off == IIR_FCR:
            self.fcr = value
        elif off == LCR:
            self.lcr = value
        elif off == MCR:
            self.mcr = value
        elif off == SCR:
            self.scr = value

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")
