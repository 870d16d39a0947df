"""The five SMP bring-up bugs of examples/bugs/, each replayed 3 times: same outcome, same
key facts, same diagnosis, bit for bit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hvdbg.api import scenario

BUGS = Path(__file__).resolve().parent.parent / "examples" / "bugs"


def three_runs(config: str, **overrides):
    runs = [scenario.run(BUGS / config, **overrides)[1] for _ in range(3)]
    for key in ("outcome", "exit_status", "diagnosis", "trace_hash", "serial"):
        assert len({json.dumps(r[key]) for r in runs}) == 1, f"{key} differs between runs"
    return runs[0]


def text(res) -> str:
    return "\n".join(res["diagnosis"])


def test_bug1_multiboot_magic(guest_kernels):
    res = three_runs("01-multiboot-magic.toml")
    assert res["outcome"] == "hang"
    d = text(res)
    assert "halted in function bad_magic_halt" in d and "IF=0" in d
    assert "EAX was 0x1badb002" in d and "requires 0x2badb002" in d
    assert [v["state"] for v in res["vcpus"]] == ["halted"] + ["wait-for-SIPI"] * 3


def test_bug2_ept_violation_past_16mib(guest_kernels):
    res = three_runs("02-ept-violation-16mib.toml")
    assert res["outcome"] == "ept_violation"
    d = text(res)
    assert "write of the page at GPA 0x1000000 (GLA 0xffffff8001000000)" in d
    assert "16 MiB of RAM" in d
    assert "PDE  [  8]" in d and "not present" in d          # the EPT walk stops at the PDE
    assert "PML4E[511]" in d and "2M page 0x1000000" in d    # the guest walk of the GLA succeeds
    assert res["exits"]["EPT_VIOLATION"] == 1


def test_bug3_temporary_pml4_triple_fault_then_pf_exit(guest_kernels):
    res = three_runs("03-temporary-pml4.toml")
    assert res["outcome"] == "triple_fault"
    d = text(res)
    assert "CR2 = 0xffffff800010009b" in d and "stops at PML4E" in d and "bit 14" in d
    res2 = three_runs("03-temporary-pml4-pf-exit.toml")
    assert res2["outcome"] == "exception"
    assert res2["exits"]["EXCEPTION_NMI"] == 1
    assert "exit qualification = CR2 = 0xffffff800010009b" in text(res2)


def test_bug4_sipi_entry_off_by_the_hpa_offset(guest_kernels):
    res = three_runs("04-sipi-hpa-offset.toml")
    assert res["outcome"] == "ept_violation"
    d = text(res)
    assert "SIPI vector 0x08" in d and "GPA 0x8000" in d and "GPA 0x10008000" in d
    assert "gpa_hpa_offset 0x10000000" in d
    fixed = three_runs("04-sipi-hpa-offset.toml", **{"faults.sipi_uses_hpa": False})
    assert fixed["outcome"] == "exited" and fixed["exit_status"] == 0


def test_bug5_shared_apic_id(guest_kernels):
    res = three_runs("05-shared-apic-id.toml")
    assert res["exit_status"] == 0x8D  # the guest's #GP handler
    d = text(res)
    assert "vCPU 1: CPUID 0 / LAPIC 1" in d and "vCPU 3: CPUID 0 / LAPIC 3" in d
    assert "stack collision" in d and "ap_stacks" in d
    assert re.search(r"took #GP .* at RIP 0x[0-9a-f]+, which is not code", d)
    two = three_runs("05-shared-apic-id.toml", vcpus=2)
    assert two["outcome"] == "exited" and two["exit_status"] == 0
    good = three_runs("05-shared-apic-id.toml", **{"cpuid.apic_ids": "distinct"})
    assert good["outcome"] == "exited" and good["exit_status"] == 0 and "sum ok" in good["serial"]


@pytest.mark.parametrize("name", ["01-multiboot-magic", "02-ept-violation-16mib", "03-temporary-pml4",
                                  "04-sipi-hpa-offset", "05-shared-apic-id"])
def test_script_and_cli_agree(name, guest_kernels):
    script = subprocess.run([sys.executable, str(BUGS / f"{name}.py")], capture_output=True, text=True,
                            timeout=300)
    assert script.returncode == 0, script.stderr
    last = json.loads(script.stdout.strip().splitlines()[-1])
    assert script.stdout.startswith("== ")
    cli = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(BUGS / f"{name}.toml"), "--json"],
                         capture_output=True, text=True, timeout=300)
    res = json.loads(cli.stdout)
    assert res["outcome"] == last["outcome"] and res["trace_hash"] == last["trace_hash"]
    assert res["diagnosis"] == last["diagnosis"]


# -- the same five bugs inside a guest hypervisor (guests/minivisor on nested VMX) ------------

NESTED = {
    "06-nested-multiboot-magic.toml": ("hang", ["halted in function bad_magic_halt",
                                                "(in L2, the guest hypervisor's guest)",
                                                "entered its guest at 0x100020 with EAX = 0x1badb002"]),
    "07-nested-ept-16mib.toml": ("exited", ["last exited to it with: EPT violation: write to GPA 0x1000000",
                                            "it maps L2-physical 0x0-0x1000000"]),
    "08-nested-temporary-pml4.toml": ("exited", ["hardware exception #PF (page fault), error code 0x0, CR2 "
                                                 "0xffffff800010009b", "page walk of 0xffffff800010009b: PML4E not present"]),
    "09-nested-sipi-hpa.toml": ("exited", ["CS base 0x10008000 (selector x 16 = 0x8000): 0x10008000 is where its EPT "
                                           "maps 0x8000"]),
    "10-nested-shared-apic-id.toml": ("exited", ["answers CPUID.1 with initial APIC ID 0 on vCPUs 1, 2, 3"]),
}


@pytest.mark.parametrize("config", list(NESTED))
def test_nested_bug_diagnosed_at_the_guest_hypervisor(guest_kernels, config):
    outcome, wants = NESTED[config]
    res = three_runs(config)
    assert res["outcome"] == outcome
    d = text(res)
    for want in wants:
        assert want in d, d


def test_nested_bugs_are_fixed_by_the_correct_guest_hypervisor(guest_kernels):
    fixed = BUGS.parent.parent / "guests" / "build" / "minivisor.elf"
    for config in ("06-nested-multiboot-magic.toml", "07-nested-ept-16mib.toml", "09-nested-sipi-hpa.toml",
                   "10-nested-shared-apic-id.toml"):
        _, res = scenario.run(BUGS / config, kernel=str(fixed))
        assert res["outcome"] == "exited" and res["exit_status"] == 0, (config, res["diagnosis"])
        assert "sum ok" in res["serial"]
