"""VGA text mode: the CRT controller's index/data ports and the text buffer at 0xB8000.

Kernels that print to the screen (GRUB's ``grub_fatal``, grub-invaders, a Xen panic on
``console=vga``) write character/attribute pairs to 0xB8000 and move the cursor through
CRTC registers 0x0E/0x0F.  hvdbg has no display: the buffer is ordinary guest RAM and
:func:`screen_lines` reads it back as text, so a run that printed to the screen and not to
the serial port can still be read (IBM VGA Technical Reference, CRT controller registers).
"""

from __future__ import annotations

from hvdbg.arch.physmem import PhysicalMemory

TEXT_BUFFER = 0xB8000
COLUMNS = 80
ROWS = 25
CRTC_INDEX = 0x3D4
CRTC_DATA = 0x3D5
CURSOR_HIGH = 0x0E
CURSOR_LOW = 0x0F

# code page 437 -> text for the cells a kernel writes (box drawing etc. as '?')
_PRINTABLE = {i: chr(i) for i in range(0x20, 0x7F)}


class VgaCrtc:
    """CRT controller registers (0x3D4 index, 0x3D5 data); only the state, no scan-out."""

    name = "vga-crtc"

    def __init__(self) -> None:
        self.index = 0
        self.regs = bytearray(0x19)

    def io_read(self, port: int, size: int) -> int:
        if port == CRTC_INDEX:
            value = self.index
            if size > 1:
                value |= self._data() << 8
            return value
        return self._data()

    def _data(self) -> int:
        return self.regs[self.index] if self.index < len(self.regs) else 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == CRTC_INDEX:
            self.index = value & 0xFF
            if size > 1:  # outw 0x3D4: index in the low byte, data in the high byte
                self._store(value >> 8 & 0xFF)
        else:
            self._store(value & 0xFF)

    def _store(self, value: int) -> None:
        if self.index < len(self.regs):
            self.regs[self.index] = value

    @property
    def cursor(self) -> tuple[int, int]:
        """(row, column) of the hardware cursor."""
        pos = self.regs[CURSOR_HIGH] << 8 | self.regs[CURSOR_LOW]
        return divmod(pos, COLUMNS)


def screen_lines(mem: PhysicalMemory) -> list[str]:
    """The 80x25 text screen, one string per row, trailing blanks and empty rows at the
    bottom removed (so an untouched screen is ``[]``)."""
    data = mem.read(TEXT_BUFFER, COLUMNS * ROWS * 2)
    rows = []
    for r in range(ROWS):
        cells = data[r * COLUMNS * 2:(r + 1) * COLUMNS * 2:2]
        rows.append("".join(_PRINTABLE.get(c, " " if c == 0 else "?") for c in cells).rstrip())
    while rows and not rows[-1]:
        rows.pop()
    return rows
