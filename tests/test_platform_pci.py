"""PCI configuration mechanism #1 with a host bridge: the registers as a kernel reads and
writes them, and the SMP guest's bus-0 scan (``pci_scan=1``) under hvdbg and QEMU."""

from __future__ import annotations

from helpers import boot
from test_guests_qemu import boot_kernel, needs_qemu

from hvdbg.platform.devices.pci import CONFIG_ADDRESS, CONFIG_DATA, PciConfigSpace

HOST_BRIDGE_LINE = "pci: 00:00.0 8086:1237 class 060000"


def select(pci, dev, reg, bus=0, fn=0, enable=True):
    pci.io_write(CONFIG_ADDRESS, 4, (1 << 31 if enable else 0) | bus << 16 | dev << 11 | fn << 8 | reg)


def test_the_host_bridge_answers_and_empty_slots_read_all_ones():
    pci = PciConfigSpace()
    select(pci, 0, 0)
    assert pci.io_read(CONFIG_DATA, 4) == 0x12378086
    assert pci.io_read(CONFIG_DATA + 2, 2) == 0x1237                # word at offset 2
    select(pci, 0, 8)
    assert pci.io_read(CONFIG_DATA, 4) >> 8 == 0x060000              # class: host bridge
    select(pci, 3, 0)
    assert pci.io_read(CONFIG_DATA, 4) == 0xFFFFFFFF                 # no device 3
    select(pci, 0, 0, bus=1)
    assert pci.io_read(CONFIG_DATA, 2) == 0xFFFF                     # no bus 1
    select(pci, 0, 0, enable=False)
    assert pci.io_read(CONFIG_DATA, 4) == 0xFFFFFFFF                 # bit 31 clear: no cycle
    assert pci.io_read(CONFIG_ADDRESS, 4) == 0


def test_only_the_writable_bits_change():
    pci = PciConfigSpace()
    select(pci, 0, 0)
    pci.io_write(CONFIG_DATA, 4, 0)                                  # vendor/device: read-only
    assert pci.io_read(CONFIG_DATA, 4) == 0x12378086
    select(pci, 0, 4)
    pci.io_write(CONFIG_DATA, 2, 0xFFFF)                             # command register
    assert pci.io_read(CONFIG_DATA, 2) == 0x0147
    select(pci, 0, 0xC)
    pci.io_write(CONFIG_DATA + 1, 1, 0x40)                           # latency timer
    assert pci.io_read(CONFIG_DATA, 4) >> 8 & 0xFF == 0x40


def test_the_guest_finds_the_host_bridge(guest_kernels):
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), cmdline="pci_scan=1")
    lines = [line for line in res["serial"].splitlines() if line.startswith("pci: ")]
    assert lines == [HOST_BRIDGE_LINE, "pci: 1 functions on bus 0"]
    assert res["outcome"] == "exited" and res["exit_status"] == 0


@needs_qemu
def test_qemu_has_the_same_host_bridge(guest_kernels, tmp_path):
    run = boot_kernel(tmp_path, guest_kernels / "smp.elf", append="pci_scan=1")
    assert HOST_BRIDGE_LINE in run.lines                             # QEMU pc: i440FX at 00:00.0
