"""The 16550's diagnostic loopback mode (MCR bit 4), which drivers use to prove a UART is
there before they trust it.

Xen's ``ns16550_init`` sets MCR = LOOP | OUT2 | RTS and expects MSR[7:4] to read back
DCD | CTS (0x90): the modem-control outputs wired to the modem-status inputs.  A UART
without loopback (MSR always 0xB0) makes Xen decide there is no COM1 and run with no
console at all.  In loopback the transmitter feeds the receiver instead of the line
(National Semiconductor PC16550D data sheet, "Modem Control Register", bit 4).
"""

from __future__ import annotations

from hvdbg.platform.devices.uart import MSR, Uart16550

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

# loopback wiring: MCR output bit -> MSR input bit
_LOOPBACK_WIRING = ((MCR_RTS, 0x10),    # RTS  -> CTS
                    (MCR_DTR, 0x20),    # DTR  -> DSR
                    (MCR_OUT1, 0x40),   # OUT1 -> RI
                    (MCR_OUT2, 0x80))   # OUT2 -> DCD


class Uart16550Loopback(Uart16550):
    """A 16550 whose loopback mode works (the rest as :class:`Uart16550`)."""

    @property
    def loopback(self) -> bool:
        return bool(self.mcr & MCR_LOOP)

    def io_read(self, port: int, size: int) -> int:
        if port - self.base == MSR and self.loopback:
            return sum(msr_bit for mcr_bit, msr_bit in _LOOPBACK_WIRING if self.mcr & mcr_bit)
        return super().io_read(port, size)

    def _transmit(self, value: int) -> None:
        if self.loopback:
            self._receive(value)              # transmitted into our own receiver
        else:
            super()._transmit(value)

