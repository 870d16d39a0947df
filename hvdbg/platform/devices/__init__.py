"""Platform devices behind the I/O-port bus (the VMM side of I/O-instruction exits)."""

from hvdbg.platform.devices.bus import IoBus, IoDevice
from hvdbg.platform.devices.uart import Uart16550
from hvdbg.platform.devices.debug_exit import DebugExit
from hvdbg.platform.devices.legacy import Cmos, Pit8254, PostPort, SystemControlPortB
from hvdbg.platform.devices.pic8259 import Pic8259

__all__ = ["IoBus", "IoDevice", "Uart16550", "DebugExit", "Cmos", "Pic8259", "Pit8254",
           "PostPort", "SystemControlPortB"]
