"""A real guest hypervisor on hvdbg's nested VMX: guests/minivisor (VMXON on every CPU, an
EPT with a GPA -> HPA offset, the guest's INIT/SIPI taken from APIC-access exits, per-vCPU
CPUID) boots the smp kernel as its guest with 4 vCPUs, with a contended lock workload in
every executor setup; each of its five bug builds ends with the diagnosis naming the
guest hypervisor's cause, read from its own VMCS and EPT."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import boot
from test_platform_pit_ioapic import SETUPS

CONFIGS = Path(__file__).resolve().parent.parent / "guests" / "minivisor" / "configs"
NESTED_SETUPS = {name: SETUPS[name] for name in ("det-pinned", "det-rr-2", "threads-pinned", "threads-cfs-2")}


@pytest.mark.parametrize("setup", list(NESTED_SETUPS))
def test_minivisor_boots_the_smp_kernel_as_its_guest(setup):
    _vm, res = boot(CONFIGS / "minivisor-4vcpu.toml", **NESTED_SETUPS[setup])
    serial = res["serial"]
    assert res["outcome"] == "exited" and res["exit_status"] == 0, (res["diagnosis"], serial[-600:])
    assert "smp: 4 of 4 CPUs online" in serial and re.search(r"^sum ok \d+$", serial, re.M), serial[-600:]
    for cpu in (1, 2, 3):      # the guest's APs, started by the guest hypervisor from the guest's SIPI
        assert f"minivisor: vmlaunch cpu {cpu}: vCPU {cpu} (APIC id {cpu}) at cs:rip 0x800:0x0" in serial
    assert res["exits"]["VMLAUNCH"] == 4 and res["exits"]["APIC_ACCESS"] > 0 and res["exits"]["VMRESUME"] > 0


@pytest.mark.parametrize("setup", ["det-pinned", "threads-cfs-2"])
def test_a_contended_lock_in_the_guest_of_the_guest_hypervisor(setup):
    """The guest's ticket lock and its lock incq counter across 4 vCPUs, all in L2."""
    _vm, res = boot(CONFIGS / "minivisor-4vcpu.toml", cmdline="fatal=exit -- workload=lock", **SETUPS[setup])
    assert res["outcome"] == "exited" and res["exit_status"] == 0, (res["diagnosis"], res["serial"][-600:])
    assert re.search(r"^lock ok", res["serial"], re.M), res["serial"][-600:]


BUGS = {
    "bug-magic": ("the guest hypervisor entered its guest at 0x100020 with EAX = 0x1badb002, the multiboot header "
                  "magic",),
    "bug-ept16m": ("last exited to it with: EPT violation: write to GPA 0x1000000", "it maps L2-physical 0x0-0x1000000"),
    "bug-pml4": ("last exited to it with: Exception: hardware exception #PF", "page walk of 0xffffff800010009b: "
                 "PML4E not present"),
    "bug-sipi_hpa": ("CS selector 0x800 but CS base 0x10008000", "it computed the SIPI entry from the host-physical "
                     "address"),
    "bug-apic_id": ("the guest hypervisor answers CPUID.1 with initial APIC ID 0 on vCPUs",),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_each_bug_build_is_diagnosed_at_the_guest_hypervisor(bug):
    _vm, res = boot(CONFIGS / f"{bug}.toml")
    text = "\n".join(res["diagnosis"])
    for want in BUGS[bug]:
        assert want in text, text


def test_real_gdb_stops_in_the_guest_hypervisor_and_in_its_guest():
    """One `hvdbg run --gdb` of the minivisor: gdb stops at the guest hypervisor's VM-exit
    handler (L1 code) and then at the guest's kmain (L2 code); the thread names and
    `monitor vmx` say which level runs, and the L1's current VMCS is readable from gdb."""
    import shutil
    import subprocess
    import sys

    from elftools.elf.elffile import ELFFile

    from fuzz.common import free_port_block
    from helpers import Gdb

    if shutil.which("gdb") is None:
        pytest.skip("gdb not installed")
    build = CONFIGS.parent.parent / "build"

    def symbol(elf: Path, name: str) -> int:
        with open(elf, "rb") as f:
            return next(s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()
                        if s.name == name)

    port = free_port_block(5)
    proc = subprocess.Popen([sys.executable, "-m", "hvdbg.ui.cli", "run", str(CONFIGS / "minivisor-4vcpu.toml"),
                             "--gdb", str(port), "--gdb-wait", "--json", "--compact"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gdb = Gdb()
    try:
        assert "gdb stub for all" in proc.stderr.readline()
        gdb.mi("-gdb-set confirm off")
        gdb.console(f"file {build / 'minivisor.elf'}")
        gdb.console(f"add-symbol-file {build / 'smp.elf'}")
        gdb.connect(port)
        handler, kmain = symbol(build / "minivisor.elf", "vmx_exit_handler"), symbol(build / "smp.elf", "kmain")
        gdb.console(f"break *{kmain:#x}")
        gdb.console("continue")
        stop = gdb.wait_for_stop()       # the guest's C entry, in L2
        assert stop["reason"] == "breakpoint-hit" and gdb.value("$pc") == kmain, stop
        names = {t["id"]: t["name"] for t in gdb.mi("-thread-info")[0]["payload"]["threads"]}
        assert names[stop["thread-id"]].endswith(", L2)"), names
        assert "L2 running" in gdb.console("monitor vmx 0")
        assert gdb.value("$rdi") == 0x2BADB002      # kmain(magic, info): the magic the guest hypervisor passed
        gdb.console("delete")
        gdb.console(f"break *{handler:#x}")
        gdb.console("continue")
        stop = gdb.wait_for_stop()       # the guest hypervisor handling its guest's next exit, in L1
        assert stop["reason"] == "breakpoint-hit" and gdb.value("$pc") == handler, stop
        names = {t["id"]: t["name"] for t in gdb.mi("-thread-info")[0]["payload"]["threads"]}
        assert names[stop["thread-id"]].endswith(", L1)"), names
        reason = gdb.console("monitor vmx vmcs 0 VM_EXIT_REASON")
        assert "guest hypervisor's VMCS" in reason and "VM_EXIT_REASON" in reason, reason
        gdb.console("delete")
        gdb.console("kill")
        out, _ = proc.communicate(timeout=30)
        assert '"outcome": "killed"' in out
    finally:
        gdb.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_shell_shows_the_guest_hypervisors_vmcs_and_ept_after_the_16mib_bug():
    """`vmx vmcs` and `vmx ept` read the minivisor's own VMCS and EPT: the exit it stopped
    on, the missing PDE past 16 MiB, and a mapped address through both EPTs."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "shell", str(CONFIGS / "bug-ept16m.toml"),
                          "-c", "continue", "-c", "vmx vmcs 0 exit", "-c", "vmx ept 0x1000000 0",
                          "-c", "vmx ept 0x200000 0"], capture_output=True, text=True, timeout=300).stdout
    assert "VM_EXIT_REASON                   0x4402 = 0x00000030  EPT violation: write to GPA 0x1000000" in out, out
    assert "PDE  [  8]" in out and "=> EPT violation: PDE not present" in out, out
    assert re.search(r"then hvdbg's EPT: the guest hypervisor's GPA 0x10200000 -> HPA 0x10200000", out), out
