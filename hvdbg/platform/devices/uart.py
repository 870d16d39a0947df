"""16550A UART (National Semiconductor PC16550D data sheet): the registers, the receive
queue and the interrupt logic; no baud-rate timing (a byte is sent the moment THR is
written, so THR is always empty again).

Interrupts (data sheet table "Interrupt Control Functions"), by priority: receiver line
status, received data available (IER bit 0), transmitter holding register empty (IER bit
1; cleared by reading IIR when it is the source, or by writing THR), modem status.  The
interrupt output reaches the ISA IRQ line through MCR.OUT2, as on every PC serial port:
``on_irq(level)`` is called whenever the line changes.
"""

from __future__ import annotations

from typing import Callable

COM1 = 0x3F8
COM1_IRQ = 4

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
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40
LCR_DLAB = 0x80
MCR_OUT2 = 0x08

IER_RDA = 0x01      # received data available
IER_THRE = 0x02     # transmitter holding register empty
IIR_NONE = 0x01
IIR_THRE = 0x02
IIR_RDA = 0x04
IIR_FIFO = 0xC0     # FIFOs enabled
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
RX_FIFO_SIZE = 16   # beyond it the receiver overruns (LSR.OE), as the chip does


class Uart16550:
    """Transmit side captured into ``output``; received bytes are queued with ``feed``."""

    def __init__(self, base: int = COM1, name: str = "COM1",
                 sink: Callable[[bytes], None] | None = None) -> None:
        self.base = base
        self.name = name
        self.output = bytearray()
        self.sink = sink
        self.rx = bytearray()        # bytes the guest has not read yet
        self.pending_input = bytearray()   # fed beyond what the receiver holds
        self.on_irq: Callable[[bool], None] = lambda level: None
        self.irq_line = False
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.dll = 1
        self.dlm = 0
        self.fcr = 0
        self.overrun = False
        self.thre_pending = False    # the THRE interrupt, until IIR is read or THR written

    # -- input -------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes arriving on the line.  The receiver holds one byte (16 with the FIFO);
        the rest waits in ``pending_input`` and moves in as the guest reads, so input
        typed or sent ahead of a slow reader is not lost."""
        self.pending_input += data
        self._refill()
        self._update_irq()

    def _capacity(self) -> int:
        return RX_FIFO_SIZE if self.fcr & FCR_ENABLE else 1

    def _refill(self) -> None:
        room = self._capacity() - len(self.rx)
        if room > 0 and self.pending_input:
            self.rx += self.pending_input[:room]
            del self.pending_input[:room]

    def _receive(self, value: int) -> None:
        """A byte into the receiver itself (loopback): it overruns when full."""
        if len(self.rx) >= self._capacity():
            self.overrun = True
            return
        self.rx.append(value)

    # -- interrupts --------------------------------------------------------------------
    def interrupt_id(self) -> int:
        """IIR[3:0]: the highest-priority pending interrupt, or 1 for none."""
        if self.ier & IER_RDA and self.rx:
            return IIR_RDA
        if self.ier & IER_THRE and self.thre_pending:
            return IIR_THRE
        return IIR_NONE

    def _update_irq(self) -> None:
        line = bool(self.mcr & MCR_OUT2) and self.interrupt_id() != IIR_NONE
        if line != self.irq_line:
            self.irq_line = line
            self.on_irq(line)

    # -- registers ---------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        value = self._read(port - self.base)
        self._update_irq()
        return value

    def _read(self, off: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if off == RBR_THR_DLL:
            if dlab:
                return self.dll
            if self.rx:
                b = self.rx[0]
                del self.rx[0]
                self._refill()
                return b
            return 0
        if off == IER_DLM:
            return self.dlm if dlab else self.ier
        if off == IIR_FCR:
            iid = self.interrupt_id()
            if iid == IIR_THRE:
                self.thre_pending = False     # reading IIR clears a THRE interrupt
            return iid | (IIR_FIFO if self.fcr & FCR_ENABLE else 0)
        if off == LCR:
            return self.lcr
        if off == MCR:
            return self.mcr
        if off == LSR:
            lsr = LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0) | (LSR_OE if self.overrun else 0)
            self.overrun = False              # reading LSR clears the error bits
            return lsr
        if off == MSR:
            return 0xB0  # CTS, DSR, DCD
        return self.scr

    def io_write(self, port: int, size: int, value: int) -> None:
        self._write(port - self.base, value & 0xFF)
        self._update_irq()

    def _write(self, off: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if off == RBR_THR_DLL:
            if dlab:
                self.dll = value
            else:
                self._transmit(value)
                self.thre_pending = True      # sent at once: THR is empty again
        elif off == IER_DLM:
            if dlab:
                self.dlm = value
            else:
                if value & IER_THRE and not self.ier & IER_THRE:
                    self.thre_pending = True  # enabling it with THR empty interrupts at once
                self.ier = value & 0x0F
        elif off == IIR_FCR:
            if value & FCR_CLEAR_RX:
                self.rx.clear()
            self.fcr = value & ~0x06
            self._refill()
        elif off == LCR:
            self.lcr = value
        elif off == MCR:
            self.mcr = value
        elif off == SCR:
            self.scr = value

    def _transmit(self, value: int) -> None:
        self.output.append(value)
        if self.sink:
            self.sink(bytes((value,)))

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")
