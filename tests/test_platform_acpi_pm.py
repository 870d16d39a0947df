"""ACPI FADT, FACS, DSDT and the PM timer as a guest finds them: RSDP scan, RSDT, FADT
fields; the PM timer's rate on the VM clock (guest instructions), S5 soft off; the FADT
layout side by side with QEMU's."""

from __future__ import annotations

import re

import pytest

from guest_build import build_guest, run_qemu
from helpers import boot
from hvdbg.config import config_from_dict
from hvdbg.hv.timekeeping import PORT_ACCESS_NS
from hvdbg.platform.devices.acpi_pm import PM_TIMER_HZ, VIRTUAL_HZ

LOOPS = 500_000

ACPI_GUEST = r"""
static u32 rd32(u32 a) { return *(volatile u32 *)a; }
static int sig(u32 a, const char *s) { for (int i = 0; i < 4; i++) if (((u8 *)a)[i] != s[i]) return 0; return 1; }
static int sum(u32 a, u32 n) { u8 s = 0; for (u32 i = 0; i < n; i++) s += ((u8 *)a)[i]; return s; }
static void kv(const char *k, u64 v) { puts(k); puts("="); put_hex(v); puts("\n"); }
void main(void) {
    u32 rsdp = 0;
    for (u32 a = 0xe0000; a < 0x100000; a += 16) if (sig(a, "RSD ") && sig(a + 4, "PTR ")) { rsdp = a; break; }
    if (!rsdp) { puts("no RSDP\n"); exit_status(3); }
    u32 rsdt = rd32(rsdp + 16), fadt = 0;
    for (u32 e = rsdt + 36; e < rsdt + rd32(rsdt + 4); e += 4) if (sig(rd32(e), "FACP")) fadt = rd32(e);
    if (!fadt) { puts("no FADT\n"); exit_status(4); }
    kv("fadt_len", rd32(fadt + 4)); kv("fadt_sum", sum(fadt, rd32(fadt + 4)));
    u32 facs = rd32(fadt + 36), dsdt = rd32(fadt + 40);
    kv("facs_sig", sig(facs, "FACS")); kv("facs_align", facs & 63);
    kv("dsdt_sig", sig(dsdt, "DSDT")); kv("dsdt_sum", sum(dsdt, rd32(dsdt + 4)));
    kv("sci_int", *(u16 *)(fadt + 46)); kv("smi_cmd", rd32(fadt + 48));
    u32 evt = rd32(fadt + 56), cnt = rd32(fadt + 64), tmr = rd32(fadt + 76);
    kv("pm1a_evt", evt); kv("pm1a_cnt", cnt); kv("pm_tmr", tmr); kv("tmr_len", *(u8 *)(fadt + 91));
    kv("sci_en", inw(cnt) & 1);
    u32 t0 = inl(tmr), lo0, hi0, lo1, hi1;
    __asm__ volatile("rdtsc" : "=a"(lo0), "=d"(hi0));
    __asm__ volatile("1: dec %%ecx; jnz 1b" :: "c"(LOOPS) : "cc");
    __asm__ volatile("rdtsc" : "=a"(lo1), "=d"(hi1));
    u32 t1 = inl(tmr);
    kv("ticks", (t1 - t0) & 0xffffff);
    kv("tsc", (((u64)hi1 << 32) | lo1) - (((u64)hi0 << 32) | lo0));
    if (POWER_OFF) outw(cnt, (5 << 10) | (1 << 13));
}
"""


def _fields(serial: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2), 16) for m in re.finditer(r"(\w+)=0x([0-9a-f]+)", serial)}


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    d = tmp_path_factory.mktemp("acpi")
    src = f"#define LOOPS {LOOPS}\n"
    return {off: build_guest(d, src.replace("\n", f"\n#define POWER_OFF {off}\n", 1) + ACPI_GUEST, f"acpi{off}")
            for off in (0, 1)}


def _run(kernel, **cfg):
    data = {"kernel": str(kernel), "memory": "32M", "budget": {"instructions": 50_000_000, "seconds": 60}}
    data.update(cfg)
    return boot(config_from_dict(data))


def test_guest_finds_fadt_and_pm_blocks(guests):
    _, res = _run(guests[0])
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["serial"]
    f = _fields(res["serial"])
    assert f["fadt_len"] == 244 and f["fadt_sum"] == 0 and f["dsdt_sum"] == 0
    assert f["facs_sig"] == 1 and f["facs_align"] == 0 and f["dsdt_sig"] == 1
    assert (f["pm1a_evt"], f["pm1a_cnt"], f["pm_tmr"], f["tmr_len"]) == (0x600, 0x604, 0x608, 4)
    assert f["sci_int"] == 9 and f["smi_cmd"] == 0 and f["sci_en"] == 1


def test_pm_timer_runs_at_3_579545_mhz_of_guest_instructions(guests):
    _, res = _run(guests[0])
    ticks = _fields(res["serial"])["ticks"]
    # dec + jnz per iteration, and the second IN's own 1 us (a port access takes time)
    expected = (2 * LOOPS + PORT_ACCESS_NS) * PM_TIMER_HZ // VIRTUAL_HZ
    assert abs(ticks - expected) <= 2, (ticks, expected)
    _, again = _run(guests[0])                               # the VM clock, not the host's
    assert _fields(again["serial"])["ticks"] == ticks and again["trace_hash"] == res["trace_hash"]


def test_rdtsc_counts_the_same_clock_as_the_pm_timer(guests):
    """RDTSC is the VM clock at 1 GHz (one tick per guest instruction), not the host's TSC:
    a kernel that calibrates its TSC against the PM timer measures 1000 MHz (Xen does)."""
    _, res = _run(guests[0])
    f = _fields(res["serial"])
    assert 2 * LOOPS <= f["tsc"] <= 2 * LOOPS + 8, f["tsc"]     # dec + jnz, the rdtsc itself
    mhz = f["tsc"] / (f["ticks"] / PM_TIMER_HZ) / 1e6
    assert 990 < mhz < 1010, mhz


def test_s5_soft_off_ends_the_run(guests):
    vm, res = _run(guests[1])
    assert res["outcome"] == "exited" and res["exit_status"] is None
    assert "S5" in vm.ending.detail


def test_without_acpi_pm_there_is_no_fadt(guests):
    _, res = _run(guests[0], platform={"acpi_pm": False})
    assert res["exit_status"] == 4 and "no FADT" in res["serial"]


def test_same_pm_blocks_as_qemu(guests):
    status, serial = run_qemu(guests[0], memory="32M")
    assert status == 1, serial
    q = _fields(serial)
    _, res = _run(guests[0])
    h = _fields(res["serial"])
    for key in ("pm1a_evt", "pm1a_cnt", "pm_tmr", "tmr_len", "sci_int", "fadt_sum", "dsdt_sum", "facs_sig"):
        assert h[key] == q[key], key
    # QEMU has an SMI command port (0xB2) and starts in legacy mode (SCI_EN = 0); hvdbg has
    # none, which ACPI 4.8.2.1 defines as "always in ACPI mode" (SCI_EN = 1).
    assert q["smi_cmd"] == 0xB2 and q["sci_en"] == 0 and (h["smi_cmd"], h["sci_en"]) == (0, 1)
