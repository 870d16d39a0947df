"""An ATA disk on the primary channel, PIO only (ATA/ATAPI-6, T13/1410D: the command block at
0x1F0-0x1F7, the control block at 0x3F6), backed by an image file.

Commands: IDENTIFY DEVICE, READ/WRITE SECTORS (LBA28 and CHS as LBA), READ/WRITE SECTORS
EXT (LBA48: each register keeps the byte written before, the "HOB"), FLUSH CACHE (EXT),
SET FEATURES, INITIALIZE DEVICE PARAMETERS; anything else aborts (ERR, ABRT), as does a
command for the absent device 1.  A sector past the end aborts with IDNF.  INTRQ goes to
``on_irq`` (ISA IRQ 14) unless Device Control nIEN is set; reading Status clears it.

Writes stay in memory (copy-on-write over the image) unless ``write_back``: the image is
never changed unless asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

ATA_PRIMARY = 0x1F0
ATA_PRIMARY_CONTROL = 0x3F6
ATA_IRQ = 14
SECTOR = 512

# registers (offsets from 0x1F0)
DATA, ERROR_FEATURES, SECTOR_COUNT, LBA_LOW, LBA_MID, LBA_HIGH, DEVICE, STATUS_COMMAND = range(8)

BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
ABRT, IDNF = 0x04, 0x10
DEV_LBA, DEV_1 = 0x40, 0x10
CTRL_NIEN, CTRL_SRST = 0x02, 0x04

IDENTIFY, READ_SECTORS, READ_SECTORS_EXT, WRITE_SECTORS, WRITE_SECTORS_EXT = 0xEC, 0x20, 0x24, 0x30, 0x34
FLUSH_CACHE, FLUSH_CACHE_EXT, SET_FEATURES, INIT_DEVICE_PARAMS = 0xE7, 0xEA, 0xEF, 0x91
MODEL = "HVDBG ATA DISK"


class DiskImage:
    """An image file's sectors, with writes kept in an overlay (or written back)."""

    def __init__(self, path: Path, write_back: bool = False) -> None:
        self.path = path
        self.write_back = write_back
        self._file = open(path, "r+b" if write_back else "rb")   # OSError: the caller's one line
        self._file.seek(0, 2)
        self.sectors = (self._file.tell() + SECTOR - 1) // SECTOR
        self.overlay: dict[int, bytes] = {}

    def read(self, lba: int) -> bytes:
        if lba in self.overlay:
            return self.overlay[lba]
        self._file.seek(lba * SECTOR)
        return self._file.read(SECTOR).ljust(SECTOR, b"\0")

    def write(self, lba: int, data: bytes) -> None:
        if self.write_back:
            self._file.seek(lba * SECTOR)
            self._file.write(data)
        else:
            self.overlay[lba] = bytes(data)

    def flush(self) -> None:
        if self.write_back:
            self._file.flush()


def _ata_string(text: str, words: int) -> list[int]:
    """An IDENTIFY string: space-padded, two characters per word, the first in the high byte."""
    raw = text.ljust(2 * words).encode("ascii")[:2 * words]
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


def identify_words(sectors: int) -> list[int]:
    """IDENTIFY DEVICE data (ATA/ATAPI-6 Table 27), the words a driver reads."""
    w = [0] * 256
    w[0] = 0x0040                              # fixed device, not removable, ATA
    cyl = min(sectors // (16 * 63), 16383)
    w[1], w[3], w[6] = cyl, 16, 63             # default CHS translation
    w[10:20] = _ata_string("HVDBG0001", 10)
    w[23:27] = _ata_string("1.0", 4)
    w[27:47] = _ata_string(MODEL, 20)
    w[47] = 0x8001                             # READ/WRITE MULTIPLE: 1 sector
    w[49] = 1 << 9                             # LBA supported
    w[53] = 0x0001                             # words 54-58 valid
    w[54], w[55], w[56] = cyl, 16, 63
    chs = cyl * 16 * 63
    w[57], w[58] = chs & 0xFFFF, chs >> 16
    lba28 = min(sectors, (1 << 28) - 1)
    w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
    w[80] = 0x007E                             # ATA-1 .. ATA-6
    w[82], w[83], w[84] = 0x4000, 0x4000 | 1 << 10 | 1 << 12, 0x4000   # LBA48, FLUSH CACHE EXT
    w[85], w[86], w[87] = 0x4000, 1 << 10 | 1 << 12, 0x4000
    for i in range(4):
        w[100 + i] = sectors >> (16 * i) & 0xFFFF
    return w


class AtaDisk:
    """Device 0 of the primary channel (device 1 is absent)."""

    name = "ata0"

    def __init__(self, image: DiskImage) -> None:
        self.image = image
        self.on_irq: Callable[[bool], None] = lambda level: None
        self.regs = {r: 0 for r in (ERROR_FEATURES, SECTOR_COUNT, LBA_LOW, LBA_MID, LBA_HIGH)}
        self.hob = dict(self.regs)             # the byte written before (LBA48)
        self.device = 0xA0
        self.control = 0
        self.status = DRDY | DSC
        self.error = 0
        self.buffer = bytearray()              # the sector being transferred
        self.pos = 0
        self.lba = 0
        self.left = 0                          # sectors still to transfer
        self.writing = False
        self.intrq = False
        self.commands = 0

    # -- interrupt ---------------------------------------------------------------------
    def _interrupt(self) -> None:
        self._set_intrq(True)

    def _set_intrq(self, level: bool) -> None:
        self.intrq = level
        self.on_irq(level and not self.control & CTRL_NIEN)

    # -- registers ---------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == ATA_PRIMARY_CONTROL:
            return self._status()              # alternate status: INTRQ stays
        off = port - ATA_PRIMARY
        if off == DATA:
            return self._read_data(size)
        if self.device & DEV_1:
            return 0                           # no device 1: its registers read 0
        if off == STATUS_COMMAND:
            if self.intrq:
                self._set_intrq(False)         # reading Status acknowledges the interrupt
            return self._status()
        if off == ERROR_FEATURES:
            return self.error
        if off == DEVICE:
            return self.device
        return self.regs[off]

    def _status(self) -> int:
        return 0 if self.device & DEV_1 else self.status

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == ATA_PRIMARY_CONTROL:
            self._write_control(value & 0xFF)
            return
        off = port - ATA_PRIMARY
        if off == DATA:
            self._write_data(size, value)
        elif off == DEVICE:
            self.device = value & 0xFF
        elif off == STATUS_COMMAND:
            self._command(value & 0xFF)
        else:
            self.hob[off] = self.regs[off]
            self.regs[off] = value & 0xFF

    def _write_control(self, value: int) -> None:
        if value & CTRL_SRST and not self.control & CTRL_SRST:
            self._reset()
        self.control = value
        self.on_irq(self.intrq and not value & CTRL_NIEN)

    def _reset(self) -> None:
        """Software reset: the signature of an ATA device (sector count/LBA low 1, LBA mid/high 0)."""
        self.regs.update({SECTOR_COUNT: 1, LBA_LOW: 1, LBA_MID: 0, LBA_HIGH: 0})
        self.device &= ~DEV_1
        self.status, self.error, self.left = DRDY | DSC, 0, 0
        self.buffer, self.pos = bytearray(), 0

    # -- commands ----------------------------------------------------------------------
    def _command(self, cmd: int) -> None:
        self.commands += 1
        if self.device & DEV_1:
            return                             # nothing answers for device 1
        self.error = 0
        if cmd == IDENTIFY:
            words = identify_words(self.image.sectors)
            self._start_in(b"".join(w.to_bytes(2, "little") for w in words), 0)
        elif cmd in (READ_SECTORS, READ_SECTORS_EXT, WRITE_SECTORS, WRITE_SECTORS_EXT):
            ext = cmd in (READ_SECTORS_EXT, WRITE_SECTORS_EXT)
            lba, count = self._address(ext)
            if lba + count > self.image.sectors:
                self._abort(IDNF)
                return
            self.lba, self.writing = lba, cmd in (WRITE_SECTORS, WRITE_SECTORS_EXT)
            if self.writing:
                self.left = count
                self.buffer, self.pos = bytearray(SECTOR), 0
                self.status = DRDY | DSC | DRQ   # the first sector goes without an interrupt
            else:
                self._start_in(self.image.read(lba), count - 1)
        elif cmd in (FLUSH_CACHE, FLUSH_CACHE_EXT):
            self.image.flush()
            self._done()
        elif cmd in (SET_FEATURES, INIT_DEVICE_PARAMS):
            self._done()
        else:
            self._abort(ABRT)

    def _address(self, ext: bool) -> tuple[int, int]:
        r, h = self.regs, self.hob
        if ext:
            lba = (r[LBA_LOW] | r[LBA_MID] << 8 | r[LBA_HIGH] << 16
                   | h[LBA_LOW] << 24 | h[LBA_MID] << 32 | h[LBA_HIGH] << 40)
            count = (h[SECTOR_COUNT] << 8 | r[SECTOR_COUNT]) or 65536
        else:
            lba = r[LBA_LOW] | r[LBA_MID] << 8 | r[LBA_HIGH] << 16 | (self.device & 0xF) << 24
            if not self.device & DEV_LBA:      # CHS: C/H/S -> LBA with the default geometry
                cyl, head, sect = r[LBA_MID] | r[LBA_HIGH] << 8, self.device & 0xF, r[LBA_LOW]
                lba = (cyl * 16 + head) * 63 + sect - 1
            count = r[SECTOR_COUNT] or 256
        return lba, count

    def _start_in(self, data: bytes, more: int) -> None:
        self.buffer, self.pos, self.left = bytearray(data), 0, more
        self.status = DRDY | DSC | DRQ
        self._interrupt()

    def _done(self) -> None:
        self.status = DRDY | DSC
        self._interrupt()

    def _abort(self, error: int) -> None:
        self.error = error
        self.status = DRDY | DSC | ERR
        self.left = 0
        self._interrupt()

    # -- data --------------------------------------------------------------------------
    def _read_data(self, size: int) -> int:
        if self.writing or not self.status & DRQ:
            return 0xFFFF if size == 2 else 0xFFFFFFFF if size == 4 else 0xFF
        value = int.from_bytes(self.buffer[self.pos:self.pos + size], "little")
        self.pos += size
        if self.pos >= len(self.buffer):
            if self.left:
                self.left -= 1
                self.lba += 1
                self._start_in(self.image.read(self.lba), self.left)
            else:
                self.status = DRDY | DSC
        return value

    def _write_data(self, size: int, value: int) -> None:
        if not (self.writing and self.status & DRQ):
            return
        self.buffer[self.pos:self.pos + size] = value.to_bytes(size, "little")
        self.pos += size
        if self.pos >= SECTOR:
            self.image.write(self.lba, bytes(self.buffer))
            self.left -= 1
            self.lba += 1
            self.buffer, self.pos = bytearray(SECTOR), 0
            self.status = DRDY | DSC | (DRQ if self.left else 0)
            if not self.left:
                self.writing = False
            self._interrupt()
