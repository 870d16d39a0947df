"""The Intel MP tables (MP spec 1.4) as a kernel finds them: scan the BIOS ROM area for the
``_MP_`` floating pointer on 16-byte boundaries, check both checksums, walk the
configuration table's entries.  The processors and the I/O APIC must match the MADT;
the ISA IRQs must land where the MADT's overrides say (IRQ 0 on pin 2)."""

from __future__ import annotations

import struct

import pytest

from hvdbg.config import load_config
from hvdbg.hv.machine import Machine
from hvdbg.platform.firmware.mptable import isa_irq_pins

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def find_floating_pointer(mem) -> int:
    rom = mem.read(0xF0000, 0x10000)
    for off in range(0, len(rom), 16):
        if rom[off:off + 4] == b"_MP_" and sum(rom[off:off + 16]) & 0xFF == 0:
            return 0xF0000 + off
    raise AssertionError("no _MP_ floating pointer in 0xF0000-0xFFFFF")


def parse(mem):
    fp = find_floating_pointer(mem)
    sig, config, length, rev, _csum, feature1 = struct.unpack_from("<4sIBBBB", mem.read(fp, 16))
    assert (length, rev, feature1) == (1, 4, 0)          # 16 bytes, spec 1.4, a table follows
    header = mem.read(config, 44)
    magic, base_len, rev, _c, oem, product, _oemp, _oems, count, lapic = struct.unpack_from("<4sHBB8s12sIHHI", header)
    table = mem.read(config, base_len)
    assert magic == b"PCMP" and rev == 4 and sum(table) & 0xFF == 0
    entries, off = [], 44
    for _ in range(count):
        kind = table[off]
        entries.append((kind, table[off:off + ENTRY_SIZES[kind]]))
        off += ENTRY_SIZES[kind]
    assert off == base_len
    return lapic, entries


@pytest.mark.parametrize("vcpus", [1, 4, 64])
def test_a_kernel_finds_the_processors_bus_ioapic_and_irqs(make_config, vcpus):
    vm = Machine(load_config(make_config(vcpus=vcpus)))
    lapic, entries = parse(vm.memory)
    assert lapic == 0xFEE00000
    cpus = [e for k, e in entries if k == 0]
    assert [c[1] for c in cpus] == vm.apic_ids                     # the MADT's APIC IDs, in order
    assert [c[3] for c in cpus] == [3] + [1] * (vcpus - 1)         # enabled; the first is the BSP
    signature, features = struct.unpack_from("<II", cpus[0], 4)
    eax, _ebx, _ecx, edx = vm.vcpus[0].cpuid.query(1, 0)
    assert (signature, features) == (eax, edx)
    (bus,) = [e for k, e in entries if k == 1]
    assert bus[2:8] == b"ISA   "
    (ioapic,) = [e for k, e in entries if k == 2]
    assert ioapic[1] == vm.ioapic.id and ioapic[3] & 1 and struct.unpack_from("<I", ioapic, 4)[0] == 0xFEC00000
    io_ints = [struct.unpack("<BBHBBBB", e) for k, e in entries if k == 3]
    int_pins = {irq: pin for _t, kind, _f, _bus, irq, _apic, pin in io_ints if kind == 0}
    assert int_pins == dict(isa_irq_pins()) and int_pins[0] == 2 and 2 not in int_pins
    assert (3, 0) in [(kind, pin) for _t, kind, _f, _b, _irq, _a, pin in io_ints]   # ExtINT on pin 0
    lints = sorted((kind, lint) for _t, kind, _f, _b, _i, dest, lint in
                   (struct.unpack("<BBHBBBB", e) for k, e in entries if k == 4))
    assert lints == [(1, 1), (3, 0)]                               # NMI on LINT1, ExtINT on LINT0


def test_the_tables_stay_inside_the_bios_rom_area_and_off_the_coreboot_table(make_config):
    vm = Machine(load_config(make_config(vcpus=64)))
    layout = vm.mptable
    assert 0xF0000 <= layout.floating < layout.config < layout.end <= 0x100000
    cb_start, cb_end = vm.cbtable
    assert cb_end <= layout.floating or layout.end <= cb_start
    stub = 0xF000 * 16 + 0xFF53                                     # the IVT's "not supported" stub
    assert not layout.floating <= stub < layout.end
