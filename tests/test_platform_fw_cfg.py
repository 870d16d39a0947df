"""QEMU's fw_cfg as a guest reads it through ports 0x510/0x511: the same guest under
hvdbg and under QEMU TCG (side by side where QEMU is installed)."""

from __future__ import annotations

import re

import pytest

from guest_build import build_guest, run_qemu
from helpers import boot
from hvdbg.config import config_from_dict
from hvdbg.platform.devices.fw_cfg import FW_CFG_FILE_DIR, FwCfg

FW_CFG_GUEST = r"""
static void select(u16 key) { outw(0x510, key); }
static u64 read_le(int n) { u64 v = 0; for (int i = 0; i < n; i++) v |= (u64)inb(0x511) << (8 * i); return v; }
static u32 read_be(int n) { u32 v = 0; for (int i = 0; i < n; i++) v = v << 8 | inb(0x511); return v; }
static void item(const char *name, u16 key, int n) { select(key); puts(name); puts("="); put_hex(read_le(n)); puts("\n"); }
void main(void) {
    select(0); puts("signature="); for (int i = 0; i < 4; i++) putc(inb(0x511)); puts("\n");
    item("id", 1, 4); item("ram_size", 3, 8); item("nb_cpus", 5, 2); item("max_cpus", 0xf, 2);
    item("absent", 0x7ff0, 4);
    select(0); for (int i = 0; i < 4; i++) inb(0x511); puts("past_end="); put_hex(read_le(2)); puts("\n");
    select(0x19); u32 count = read_be(4); u16 e820 = 0; u32 e820_size = 0;
    puts("files="); put_hex(count); puts("\n"); if (count > 32) count = 0;
    for (u32 f = 0; f < count; f++) {
        u32 size = read_be(4); u16 sel = read_be(2); read_be(2);
        char name[56]; for (int i = 0; i < 56; i++) name[i] = inb(0x511);
        puts("file="); puts(name); puts("\n");
        const char *want = "etc/e820"; int same = 1;
        for (int i = 0; i < 9; i++) if (name[i] != want[i]) same = 0;
        if (same) { e820 = sel; e820_size = size; }
    }
    if (e820) {
        select(e820);
        for (u32 k = 0; k < e820_size / 20; k++) {
            u64 base = read_le(8), len = read_le(8); u32 type = read_le(4);
            puts("e820="); put_hex(base); puts(","); put_hex(len); puts(","); put_hex(type); puts("\n");
        }
    }
}
"""


def _fields(serial: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in serial.splitlines():
        m = re.fullmatch(r"(\w+)=(.*)", line.strip())
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    return build_guest(tmp_path_factory.mktemp("fwcfg"), FW_CFG_GUEST, "fwcfg")


def _hvdbg(kernel, **cfg):
    data = {"kernel": str(kernel), "memory": "64M", "budget": {"instructions": 20_000_000, "seconds": 60}}
    data.update(cfg)
    vm, res = boot(config_from_dict(data))
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res
    return vm, _fields(res["serial"])


def test_guest_reads_signature_cpus_ram_and_e820(guest):
    vm, f = _hvdbg(guest, vcpus=3)
    assert f["signature"] == ["QEMU"]
    assert int(f["id"][0], 16) == 1                       # traditional interface, no DMA
    assert int(f["ram_size"][0], 16) == 64 << 20
    assert int(f["nb_cpus"][0], 16) == 3 and int(f["max_cpus"][0], 16) == 3
    assert int(f["absent"][0], 16) == 0 and int(f["past_end"][0], 16) == 0
    assert f["file"] == ["etc/e820"]
    e820 = [tuple(int(x, 16) for x in e.split(",")) for e in f["e820"]]
    assert e820 == [(r.base, r.length, r.type) for r in vm.boot.memory_map]
    assert any(t == 1 and b == 0x100000 for b, _, t in e820)


def test_cpu_count_follows_the_config(guest):
    _, f = _hvdbg(guest, vcpus=1, memory="32M")
    assert int(f["nb_cpus"][0], 16) == 1 and int(f["ram_size"][0], 16) == 32 << 20


def test_fw_cfg_can_be_switched_off(guest):
    vm, f = _hvdbg(guest, platform={"fw_cfg": False})
    assert int(f["files"][0], 16) == 0xFFFFFFFF                  # nothing decodes the port
    assert int(f["nb_cpus"][0], 16) == 0xFFFF                   # what kvm-unit-tests saw before
    assert 0x510 in vm.bus.unhandled


def test_same_answers_as_qemu(guest):
    status, serial = run_qemu(guest, smp=2, memory="64M")
    assert status == 1, serial                             # QEMU: (0 << 1) | 1
    q = _fields(serial)
    _, h = _hvdbg(guest, vcpus=2)
    for key in ("signature", "ram_size", "nb_cpus", "max_cpus", "absent", "past_end"):
        assert h[key] == q[key], key
    assert "etc/e820" in q["file"] and "etc/e820" in h["file"]
    assert int(q["id"][0], 16) & 1 and int(h["id"][0], 16) & 1


def test_directory_layout_is_big_endian_and_sorted():
    dev = FwCfg(ram_size=1 << 24, nb_cpus=1, files={"z/last": b"zz", "a/first": b"a"})
    d = dev.item(FW_CFG_FILE_DIR)
    assert d[:4] == b"\0\0\0\2" and len(d) == 4 + 2 * 64
    assert d[4 + 8:4 + 8 + 7] == b"a/first" and d[4:8] == b"\0\0\0\1"
    assert int.from_bytes(d[8:10], "big") == dev.files[0].select
    with pytest.raises(ValueError):
        dev.add_file("x" * 56, b"")
