"""Real gdb (pygdbmi) against `hvdbg run --gdb` on the SMP test kernel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from elftools.elf.elffile import ELFFile

pytest.importorskip("pygdbmi.gdbcontroller")
from test_gdbstub_gdb import Gdb  # noqa: E402  (the MI driver shared with the gdbstub tests)

from fuzz.common import free_port_block as free_port  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed")


def symbol(elf_path, name) -> int:
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if sym.name == name:
                return sym["st_value"]
    raise KeyError(name)


@pytest.fixture
def hvdbg_gdb(make_config, guest_kernels):
    procs = []

    def start(vcpus=4, **cfg):
        port = free_port(vcpus + 1)
        path = make_config(vcpus=vcpus, **cfg)
        p = subprocess.Popen([sys.executable, "-m", "hvdbg.ui.cli", "run", str(path), "--gdb", str(port),
                              "--gdb-wait", "--json", "--compact"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        # the stubs listen once hvdbg says so on stderr (probing a port would be a client)
        line = p.stderr.readline()
        assert "gdb stub for all" in line, line
        return p, port

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.fixture
def gdb(guest_kernels):
    g = Gdb()
    g.mi("-gdb-set confirm off")
    g.mi("-gdb-set pagination off")
    g.console(f"file {guest_kernels / 'smp.elf'}")
    yield g
    g.close()


def test_threads_break_regs_memory_kill(hvdbg_gdb, gdb, guest_kernels):
    proc, port = hvdbg_gdb()
    stop = gdb.connect(port)
    assert int(stop["frame"]["addr"], 16) == 0x100020  # the multiboot entry, before any instruction
    result, _ = gdb.mi("-thread-info")
    names = [t["name"] for t in result["payload"]["threads"]]
    assert len(names) == 4
    assert names[0].startswith("vCPU 0 (APIC id 0") and names[3].startswith("vCPU 3 (APIC id 3")
    assert gdb.value("$eax") == 0x2BADB002  # the bootloader magic, as the loader set it
    gdb.console("break kmain")
    gdb.console("continue")
    stop = gdb.wait_for_stop()
    assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "kmain"
    assert stop["thread-id"] == "1"
    kmain = symbol(guest_kernels / "smp.elf", "kmain")
    assert gdb.value("$pc") == kmain
    # CR3 is the guest's boot PML4 (physical = virtual - 0xffffff8000000000)
    pml4 = symbol(guest_kernels / "smp.elf", "boot_pml4")
    assert gdb.value("$cr3") == pml4 - 0xFFFFFF8000000000
    # memory through the high-half mapping: PML4E[511] points at the high PDPT
    entry = gdb.value(f"*(unsigned long *){pml4 + 511 * 8:#x}")
    pdpt_high = symbol(guest_kernels / "smp.elf", "boot_pdpt_high") - 0xFFFFFF8000000000
    assert entry & ~0xFFF == pdpt_high and entry & 1
    assert gdb.value("magic") == 0x2BADB002  # the C argument, read via DWARF + stack/regs
    gdb.console("kill")
    out, _ = proc.communicate(timeout=30)
    assert '"outcome": "killed"' in out


def test_stepi_through_the_32_to_64_bit_switch(hvdbg_gdb, gdb, guest_kernels):
    proc, port = hvdbg_gdb(vcpus=1)
    gdb.connect(port)
    seen_modes = set()
    long_mode_entry = symbol(guest_kernels / "smp.elf", "long_mode_entry")
    for _ in range(200):
        gdb.mi("-exec-next-instruction" if False else "-exec-step-instruction")
        gdb.wait_for_stop()
        pc = gdb.value("$pc")
        cs = gdb.value("$cs")
        seen_modes.add(cs)
        if pc == long_mode_entry:
            break
    else:
        pytest.fail("never reached long_mode_entry by stepi")
    assert gdb.value("$efer") & (1 << 10)  # LMA: the guest is in long mode now
    assert gdb.value("$cr0") >> 31  # paging on
    assert len(seen_modes) >= 2  # 32-bit flat CS then the 64-bit code selector
    regs = gdb.console("info registers rip")
    assert "long_mode_entry" in regs
    gdb.console("kill")
    proc.communicate(timeout=30)


def test_watchpoint_fires_on_the_ap_that_writes(hvdbg_gdb, gdb, guest_kernels):
    proc, port = hvdbg_gdb(vcpus=2)
    gdb.connect(port)
    gdb.console("break kmain")
    gdb.console("continue")
    gdb.wait_for_stop()
    gdb.console("delete")
    gdb.console("watch ap_online")
    gdb.console("continue")
    stop = gdb.wait_for_stop()
    assert "watchpoint" in stop["reason"]
    assert stop["thread-id"] == "2"  # vCPU 1, the only AP, increments ap_online
    assert gdb.value("ap_online") == 1
    gdb.console("delete")
    # detach: the guest runs to its end; reconnecting afterwards is refused only if it has exited
    gdb.console("detach")
    out, _ = proc.communicate(timeout=60)
    assert '"outcome": "exited"' in out and '"exit_status": 0' in out


def test_detach_and_reconnect(hvdbg_gdb, gdb, guest_kernels):
    # a bigger workload keeps the guest running for a while after the first detach
    proc, port = hvdbg_gdb(vcpus=2, cmdline="work_mib=48")
    gdb.connect(port)
    gdb.console("break work_run")
    gdb.console("continue")
    gdb.wait_for_stop()
    gdb.console("delete")
    gdb.console("detach")
    time.sleep(0.2)
    # a second session on the all-vCPU port while the guest runs: it is stopped again on attach
    g2 = Gdb()
    try:
        g2.mi("-gdb-set confirm off")
        g2.console(f"file {guest_kernels / 'smp.elf'}")
        g2.connect(port)
        result, _ = g2.mi("-thread-info")
        assert len(result["payload"]["threads"]) == 2
        g2.console("detach")
    finally:
        g2.close()
    out, _ = proc.communicate(timeout=60)
    assert '"outcome": "exited"' in out


def test_per_vcpu_stub_sees_only_its_vcpu(hvdbg_gdb, gdb, guest_kernels):
    proc, port = hvdbg_gdb(vcpus=2)
    gdb.connect(port + 1)  # vCPU 0 alone
    result, _ = gdb.mi("-thread-info")
    threads = result["payload"]["threads"]
    assert len(threads) == 1 and threads[0]["name"].startswith("vCPU 0")
    gdb.console("break ap_entry")  # only vCPU 0's engine gets it: vCPU 1 runs ap_entry freely
    gdb.console("break work_run")
    gdb.console("continue")
    stop = gdb.wait_for_stop()
    assert stop["frame"]["func"] == "work_run"
    gdb.console("kill")
    proc.communicate(timeout=30)
