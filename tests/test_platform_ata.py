"""The ATA disk (PIO, primary channel): IDENTIFY, LBA28/LBA48 reads and writes through the
registers, aborts, IRQ 14 gating; and the SMP guest's ``workload=disk``, which writes a
pattern with IRQ 14 through the I/O APIC and reads it back, copy-on-write by default and
into the file only when asked."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from hvdbg.platform.devices.ata import (ATA_PRIMARY, ATA_PRIMARY_CONTROL, DATA, DEVICE, ERROR_FEATURES,
                                        LBA_HIGH, LBA_LOW, LBA_MID, SECTOR, SECTOR_COUNT, STATUS_COMMAND, AtaDisk,
                                        DiskImage, identify_words)

BSY_DRQ, ERR, DRQ = 0x88, 0x01, 0x08


def image(tmp_path, sectors=64, fill=b""):
    path = tmp_path / "disk.img"
    path.write_bytes(fill.ljust(sectors * SECTOR, b"\0"))
    return path


def out(d, reg, value, size=1):
    d.io_write(ATA_PRIMARY + reg, size, value)


def inp(d, reg, size=1):
    return d.io_read(ATA_PRIMARY + reg, size)


def sector_of(d) -> bytes:
    return b"".join(inp(d, DATA, 2).to_bytes(2, "little") for _ in range(256))


def test_identify_reports_model_and_both_sizes():
    w = identify_words(1 << 29)
    model = b"".join(x.to_bytes(2, "big") for x in w[27:47]).decode().rstrip()
    assert model == "HVDBG ATA DISK"
    assert w[49] & 1 << 9 and w[83] & 1 << 10                   # LBA, LBA48
    assert w[60] | w[61] << 16 == (1 << 28) - 1                 # LBA28 capped
    assert sum(w[100 + i] << 16 * i for i in range(4)) == 1 << 29


def test_lba28_read_lba48_write_and_copy_on_write(tmp_path):
    path = image(tmp_path, fill=b"first sector")
    d = AtaDisk(DiskImage(path))
    out(d, DEVICE, 0xE0)
    out(d, SECTOR_COUNT, 1)
    out(d, LBA_LOW, 0), out(d, LBA_MID, 0), out(d, LBA_HIGH, 0)
    out(d, STATUS_COMMAND, 0x20)
    assert inp(d, STATUS_COMMAND) & DRQ
    assert sector_of(d).startswith(b"first sector") and not inp(d, STATUS_COMMAND) & DRQ
    # WRITE SECTORS EXT of 2 sectors at LBA 40: the HOB bytes first
    for reg, (hob, low) in {SECTOR_COUNT: (0, 2), LBA_LOW: (0, 40), LBA_MID: (0, 0), LBA_HIGH: (0, 0)}.items():
        out(d, reg, hob)
        out(d, reg, low)
    out(d, DEVICE, 0x40)
    out(d, STATUS_COMMAND, 0x34)
    for s in range(2):
        assert inp(d, STATUS_COMMAND) & DRQ
        for i in range(128):
            out(d, DATA, (s << 24) | i, size=4)                  # 32-bit PIO
    assert not inp(d, STATUS_COMMAND) & DRQ
    assert d.image.read(41)[:8] == (1 << 24).to_bytes(4, "little") + ((1 << 24) | 1).to_bytes(4, "little")
    assert path.read_bytes()[41 * SECTOR:42 * SECTOR] == bytes(SECTOR)   # the file is unchanged


def test_aborts_past_the_end_unknown_commands_and_the_absent_device_1(tmp_path):
    d = AtaDisk(DiskImage(image(tmp_path, sectors=8)))
    out(d, DEVICE, 0xE0)
    out(d, SECTOR_COUNT, 2)
    out(d, LBA_LOW, 7)
    out(d, STATUS_COMMAND, 0x20)                                  # sectors 7 and 8: 8 is past the end
    assert inp(d, STATUS_COMMAND) & ERR and inp(d, ERROR_FEATURES) == 0x10   # IDNF
    out(d, STATUS_COMMAND, 0xA1)                                  # IDENTIFY PACKET: not ATAPI
    assert inp(d, STATUS_COMMAND) & ERR and inp(d, ERROR_FEATURES) == 0x04   # ABRT
    out(d, DEVICE, 0xF0)                                          # device 1
    out(d, STATUS_COMMAND, 0xEC)
    assert inp(d, STATUS_COMMAND) == 0 and d.io_read(ATA_PRIMARY_CONTROL, 1) == 0


def test_intrq_reaches_irq14_unless_nien_and_reading_status_acknowledges(tmp_path):
    d = AtaDisk(DiskImage(image(tmp_path)))
    levels: list[bool] = []
    d.on_irq = levels.append
    d.io_write(ATA_PRIMARY_CONTROL, 1, 0x02)                      # nIEN
    out(d, STATUS_COMMAND, 0xEC)
    assert levels[-1] is False and d.intrq
    d.io_write(ATA_PRIMARY_CONTROL, 1, 0x00)                      # the pending INTRQ shows now
    assert levels[-1] is True
    assert d.io_read(ATA_PRIMARY_CONTROL, 1) & DRQ and levels[-1] is True   # alternate status: no ack
    inp(d, STATUS_COMMAND)
    assert levels[-1] is False


def hvdbg_run(*args):
    return subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", *args], capture_output=True, text=True,
                          timeout=120)


def guest_pattern(lba: int) -> bytes:
    return b"".join(((lba * 0x1021 + i * 7 + 0x5A00) & 0xFFFF).to_bytes(2, "little") for i in range(256))


@pytest.mark.parametrize("executor", [[], ["--no-deterministic"]], ids=["deterministic", "threads-pinned"])
def test_a_guest_writes_sectors_with_irq14_and_reads_them_back(guest_kernels, tmp_path, executor):
    path = image(tmp_path, sectors=2048, fill=b"hvdbg disk test sector 0")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    r = hvdbg_run(str(guest_kernels / "smp.elf"), "--vcpus", "2", "--cmdline", "workload=disk",
                  "--disk", str(path), *executor)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "disk: model 'HVDBG ATA DISK', 2048 sectors, LBA48 yes" in r.stdout
    assert "disk: sector 0: 'hvdbg disk test sector 0'" in r.stdout
    assert "4 sectors written with 4 interrupts, read back with 0 mismatched words; " \
           "read past the end: status 0x51 error 0x10" in r.stdout
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before   # copy-on-write


def test_write_back_puts_the_guests_sectors_in_the_image(guest_kernels, tmp_path):
    path = image(tmp_path, sectors=2048)
    cfg = tmp_path / "vm.toml"
    cfg.write_text(f'kernel = "{guest_kernels / "smp.elf"}"\ncmdline = "workload=disk"\n'
                   f'disk = "disk.img"\ndisk_write_back = true\n')
    r = hvdbg_run(str(cfg))
    assert r.returncode == 0 and "disk ok" in r.stdout, r.stdout[-2000:]
    data = path.read_bytes()
    for lba in range(1, 5):
        assert data[lba * SECTOR:(lba + 1) * SECTOR] == guest_pattern(lba)
    assert data[5 * SECTOR:] == bytes(len(data) - 5 * SECTOR)


def test_a_disk_image_that_cannot_be_opened_is_one_line(guest_kernels, tmp_path):
    cfg = tmp_path / "vm.toml"
    (tmp_path / "adir").mkdir()
    cfg.write_text(f'kernel = "{guest_kernels / "smp.elf"}"\ndisk = "adir"\ndisk_write_back = true\n')
    r = hvdbg_run(str(cfg))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot open for writing: Is a directory" in r.stderr


def test_a_missing_disk_image_is_one_line(guest_kernels, tmp_path):
    r = hvdbg_run(str(guest_kernels / "smp.elf"), "--disk", str(tmp_path / "none.img"))
    assert r.returncode == 2 and r.stderr == f"hvdbg: disk {tmp_path / 'none.img'}: no such file\n"
