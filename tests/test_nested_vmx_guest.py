"""The smp kernel's ``workload=vmx`` (guests/smp/vmx.c) on hvdbg's nested VMX: every CPU at
the same time runs 38 checks of the VMX instructions against the SDM (capability MSRs,
IA32_FEATURE_CONTROL, CR0/CR4 fixed bits, VMXON/VMCLEAR/VMPTRLD/VMPTRST/VMREAD/VMWRITE/
VMLAUNCH/VMRESUME/VMXOFF success and failure paths, #UD and #GP) on its own VMXON and VMCS
regions, between runs of ``lock incq`` on one shared counter, in every executor and
scheduling policy; without ``+vmx`` the kernel sees no VMX."""

from __future__ import annotations

import re

import pytest

from helpers import boot
from test_platform_pit_ioapic import SETUPS


@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_cpu_passes_the_vmx_checks_with_an_exact_shared_counter(guest_kernels, setup):
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), cmdline="workload=vmx",
                    cpu="hvdbg,+vmx", **SETUPS[setup])
    serial = res["serial"]
    assert res["outcome"] == "exited" and res["exit_status"] == 0, (res["outcome"], res["diagnosis"], serial[-800:])
    assert re.findall(r"vmx cpu (\d+): 38 checks ok", serial) == ["0", "1", "2", "3"], serial[-800:]
    assert "vmx counter ok" in serial and "vmx: ok" in serial and "FAILED" not in serial
    assert res["exits"].get("VMXON") == 6 * 4 and res["exits"].get("VMLAUNCH") == 4


def test_without_vmx_the_kernel_sees_none(guest_kernels):
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), cmdline="workload=vmx")
    assert res["outcome"] == "exited" and res["exit_status"] == 0
    assert "vmx: not offered" in res["serial"] and "VMXON" not in res["exits"]


def test_same_config_same_exit_trace(guest_kernels):
    """Determinism: the VMX exits are part of the exit trace, bit for bit."""
    hashes = {boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), cmdline="workload=vmx",
                   cpu="hvdbg,+vmx", deterministic=True)[1]["trace_hash"] for _ in range(2)}
    assert len(hashes) == 1
