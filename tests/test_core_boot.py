"""End-to-end: real guest kernels booted under the hypervisor model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import boot


def test_hello_multiboot1(make_config):
    vm, res = boot(make_config("hello.elf", memory="32M"))
    assert res["outcome"] == "exited" and res["exit_status"] == 0
    assert "Hello from hvdbg (multiboot 1)" in res["serial"]
    assert "0x2badb002" in res["serial"]
    assert vm.boot.version == 1 and vm.boot.eax == 0x2BADB002
    assert res["exits"]["IO_INSTRUCTION"] > 10


def test_hello_multiboot2(make_config):
    vm, res = boot(make_config("hello-mb2.elf", memory="32M"))
    assert res["outcome"] == "exited" and res["exit_status"] == 0
    assert "Hello from hvdbg (multiboot 2)" in res["serial"]
    assert vm.boot.version == 2 and vm.boot.eax == 0x36D76289


@pytest.mark.parametrize("deterministic", [False, True])
def test_smp_4vcpu_boot(make_config, deterministic):
    vm, res = boot(make_config(vcpus=4, deterministic=deterministic))
    assert res["outcome"] == "exited", res["diagnosis"]
    assert res["exit_status"] == 0
    serial = res["serial"]
    for cpu in (1, 2, 3):
        assert f"CPU {cpu} (APIC id {cpu}) online" in serial
    assert "smp: 4 of 4 CPUs online" in serial
    assert re.search(r"sum ok \d+", serial)
    vcpus = res["vcpus"]
    assert [v["apic_id"] for v in vcpus] == [0, 1, 2, 3]
    assert not vcpus[0]["started_by_sipi"]
    assert all(v["started_by_sipi"] for v in vcpus[1:])
    assert all(v["instructions"] > 1000 for v in vcpus)
    # each AP was started with INIT then SIPI, as VM exits on the AP itself
    assert res["exits"]["INIT_SIGNAL"] >= 3 and res["exits"]["SIPI"] >= 3
    assert all(v.sipi_vector == 0x08 for v in vm.vcpus[1:])
    # the BSP sent INIT and SIPI IPIs through the xAPIC ICR (APIC-access exits)
    modes = [cmd.mode_name for cmd, _ in vm.vcpus[0].ipi_log]
    assert "INIT" in modes and "STARTUP" in modes


def test_smp_selftest_events_timer_ipi(make_config):
    """int3 through the guest IDT in long mode, LAPIC timer interrupts with sti;hlt, fixed IPIs."""
    _, res = boot(make_config(vcpus=4, cmdline="selftest"))
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    for line in ("selftest: int3 ok", "selftest: timer ok", "selftest: ipi ok"):
        assert line in res["serial"]
    assert res["exits"]["HLT"] >= 3


def test_deterministic_mode_repeats_bit_for_bit(make_config):
    path = make_config(vcpus=4, deterministic=True, cmdline="selftest")
    runs = [boot(path)[1] for _ in range(3)]
    assert len({r["trace_hash"] for r in runs}) == 1
    assert len({r["serial"] for r in runs}) == 1
    assert len({r["instructions"] for r in runs}) == 1


def test_single_vcpu_smp_kernel(make_config):
    _, res = boot(make_config(vcpus=1))
    assert res["outcome"] == "exited" and res["exit_status"] == 0
    assert "smp: 1 of 1 CPUs online" in res["serial"]


def test_cli_run_json(make_config):
    path = make_config(vcpus=2)
    out = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert set(res) >= {"outcome", "exit_status", "serial", "vcpus", "exits", "diagnosis", "trace_hash"}
    assert res["outcome"] == "exited"
    assert {"id", "apic_id", "state", "rip", "started_by_sipi", "instructions"} <= set(res["vcpus"][0])
