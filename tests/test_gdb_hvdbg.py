"""Real gdb (pygdbmi) against `hvdbg run --gdb` on the SMP test kernel."""

from __future__ import annotations

import re
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

    def start(vcpus=4, extra=(), **cfg):
        port = free_port(vcpus + 1)
        path = make_config(vcpus=vcpus, **cfg)
        p = subprocess.Popen([sys.executable, "-m", "hvdbg.ui.cli", "run", str(path), "--gdb", str(port),
                              "--gdb-wait", "--json", "--compact", *extra],
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


def _detach_to_the_end(gdb, proc) -> str:
    """Delete the breakpoints, detach, and return hvdbg's output once the guest has exited 0."""
    gdb.console("delete")
    gdb.console("detach")
    out, _ = proc.communicate(timeout=60)
    assert '"outcome": "exited"' in out and '"exit_status": 0' in out
    return out


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
    # detach: the guest runs to its end; reconnecting afterwards is refused only if it has exited
    _detach_to_the_end(gdb, proc)


def test_watch_stops_once_per_write_after_it(hvdbg_gdb, gdb, guest_kernels):
    """``watch ap_online`` with 3 APs: one stop per increment, reported after the writing
    instruction with gdb's old and new values, and resuming does not execute the write
    again (until 2026-12-02 the stop came before the access and the instruction ran twice:
    "one AP online, counter reads 2").  The guest's own check then sees 4 of 4 CPUs."""
    proc, port = hvdbg_gdb(vcpus=4)
    gdb.connect(port)
    gdb.console("break kmain")
    gdb.console("continue")
    gdb.wait_for_stop()
    gdb.console("delete")
    gdb.console("watch ap_online")
    threads = set()
    for n in range(3):
        gdb.console("continue")
        stop = gdb.wait_for_stop()
        assert stop["reason"] == "watchpoint-trigger", stop
        assert (int(stop["value"]["old"]), int(stop["value"]["new"])) == (n, n + 1)
        assert gdb.value("ap_online") == n + 1
        threads.add(stop["thread-id"])
    assert len(threads) == 3                     # each AP stopped for its own write
    assert "smp: 4 of 4 CPUs online" in _detach_to_the_end(gdb, proc)


def test_hbreak_stops_the_ap_in_its_real_mode_trampoline(hvdbg_gdb, gdb, guest_kernels):
    """``hbreak *0x8000``: the AP started by SIPI vector 8 stops at its first instruction,
    CS:IP 0800:0000, in 16-bit real mode; gdb's $pc is the linear address (CS.base + IP)
    so that the stop matches the breakpoint; stepi goes on from there."""
    proc, port = hvdbg_gdb(vcpus=2)
    gdb.connect(port)
    gdb.console("hbreak *0x8000")
    gdb.console("continue")
    stop = gdb.wait_for_stop()
    assert stop["reason"] == "breakpoint-hit" and stop["thread-id"] == "2", stop
    assert gdb.value("$pc") == 0x8000 and gdb.value("$cs") == 0x800
    assert gdb.value("$cr0") & 1 == 0                       # real mode
    assert "16-bit" in gdb.console("info threads")
    gdb.console("stepi")
    gdb.wait_for_stop()
    assert 0x8000 < gdb.value("$pc") < 0x8010 and gdb.value("$cs") == 0x800
    assert "smp: 2 of 2 CPUs online" in _detach_to_the_end(gdb, proc)


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


def test_a_vcpu_one_debugger_stopped_stays_stopped_when_another_continues(hvdbg_gdb, gdb, guest_kernels):
    """Two real gdbs: one on vCPU 1's stub stops it at ap_entry; one on the all-vCPU stub
    continues and detaches. vCPU 1 stays at ap_entry (the other debugger's hold), the
    shell view names who holds it, and it runs once its own debugger detaches."""
    proc, port = hvdbg_gdb(vcpus=2)
    ap_entry = symbol(guest_kernels / "smp.elf", "ap_entry")
    gdb.connect(port + 2)                      # vCPU 1 alone (held in wait-for-SIPI)
    gdb.console("break ap_entry")
    gdb.console("continue")                    # ends the --gdb-wait hold: the BSP boots
    stop = gdb.wait_for_stop()
    assert stop["frame"]["func"] == "ap_entry"
    gdb.console("delete")
    other = Gdb()
    try:
        other.mi("-gdb-set confirm off")
        other.console(f"file {guest_kernels / 'smp.elf'}")
        other.connect(port)                    # every vCPU
        other.console("continue &")
        time.sleep(1.0)                        # the BSP runs (and waits for its AP)
        other.mi("-exec-interrupt --all")
        other.wait_for_stop()
        vcpus = other.console("monitor vcpus")
        assert "vCPU 1 held stopped by gdb (vCPU 1)" in vcpus, vcpus
        other.console("thread 2")
        assert other.value("$pc") == ap_entry  # it never ran while held
        other.console("detach")                # the BSP runs on; vCPU 1 is still held
        assert gdb.value("$pc") == ap_entry
    finally:
        other.close()
    _detach_to_the_end(gdb, proc)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_gdb_arch_i8086_lets_gdb_disassemble_real_mode_code(hvdbg_gdb, tmp_path):
    """--gdb-arch i8086: the AP's SIPI trampoline (real mode, CS:IP 0800:0000) decodes in
    gdb as objdump -m i8086 decodes the same bytes; set architecture i386 then gives
    32-bit decoding (the x86-64 layout refuses both). No 64-bit ELF is loaded: its
    GNU/Linux OS ABI would make gdb expect i386-linux's orig_eax."""
    proc, port = hvdbg_gdb(vcpus=2, extra=("--gdb-arch", "i8086"))
    gdb = Gdb()
    try:
        _real_mode_session(gdb, port, tmp_path)
    finally:
        gdb.close()
    proc.communicate(timeout=30)


def _real_mode_session(gdb, port, tmp_path) -> None:
    gdb.connect(port + 2)
    assert '"i8086"' in gdb.console("show architecture")
    gdb.console("hbreak *0x8000")
    gdb.console("continue")
    gdb.wait_for_stop()
    assert gdb.value("$pc") == 0x8000 and gdb.value("$cs") == 0x800 and gdb.value("$eip") == 0x8000
    raw = bytes(int(b, 16) for line in gdb.console("x/16xb 0x8000").splitlines()
                for b in line.split(":")[1].split())
    (tmp_path / "code.bin").write_bytes(raw)

    def objdump(machine: str) -> list[str]:
        out = subprocess.run(["objdump", "-D", "-b", "binary", "-m", machine, "--adjust-vma=0x8000",
                              str(tmp_path / "code.bin")], capture_output=True, text=True, check=True).stdout
        return [" ".join(line.split("\t")[2].split()) for line in out.splitlines()
                if re.match(r"^\s+[0-9a-f]+:\t", line) and len(line.split("\t")) > 2][:4]

    def gdb_insns() -> list[str]:
        return [" ".join(line.split(":\t", 1)[1].split()) for line in gdb.console("x/4i $pc").splitlines()]

    assert gdb_insns() == objdump("i8086"), gdb_insns()
    assert gdb_insns()[:3] == ["cli", "cld", "xor %ax,%ax"]
    gdb.console("set architecture i386")
    assert gdb_insns() == objdump("i386") and gdb_insns()[2] == "xor %eax,%eax"
    gdb.console("stepi")
    gdb.wait_for_stop()
    assert gdb.value("$pc") == 0x8001
    gdb.console("set var $ebx = 0x1234")          # written to the vCPU's RBX
    assert gdb.value("$ebx") == 0x1234 and "rbx 0x0000000000001234" in gdb.console("monitor regs 1")
    gdb.console("kill")


def test_paging_off_addresses_are_32_bit_and_beyond_ram_is_an_error(hvdbg_gdb, gdb, guest_kernels):
    """At the multiboot entry (protected mode, paging off) a linear address is a 32-bit
    physical one: 0xdead00000000 is no address (not physical 0 after a cut to 32 bits),
    and RAM ends where the config says (128 MiB), as on QEMU: "Cannot access memory"."""
    proc, port = hvdbg_gdb(vcpus=1, memory="128M")
    gdb.connect(port)
    assert gdb.value("*(unsigned int *)0x100000") == 0x1BADB002     # the multiboot header
    for address in (0xDEAD00000000, 0x100000000, 0x8000000):
        out = gdb.console(f"x/2gx {address:#x}", allow_error=True)
        assert f"Cannot access memory at address {address:#x}" in out, out
    out = gdb.console("x/2gx 0x7fffff8", allow_error=True)       # the last 8 bytes of RAM, then none
    assert "0x7fffff8:\t0x" in out and "Cannot access memory at address 0x8000000" in out, out
    assert "gpa: 0x101070" not in gdb.console("monitor gva2gpa 0xdead00101070")
    gdb.console("kill")
    proc.communicate(timeout=30)


def test_qemu_monitor_subset_as_qemu_prints_it(hvdbg_gdb, gdb, guest_kernels):
    """The lines pwndbg, GEF and gdb-pt-dump parse, in QEMU 7.2's format (compared with
    qemu-system-x86_64 -s -S on the same kernel at kmain)."""
    proc, port = hvdbg_gdb(vcpus=2)
    gdb.connect(port)
    assert gdb.console("monitor info mem").strip() == "PG disabled"
    gdb.console("break kmain")
    gdb.console("continue")
    gdb.wait_for_stop()
    assert gdb.console("monitor info mem").splitlines() == [
        "0000000000000000-0000000040000000 0000000040000000 -rw",
        "00000000fec00000-00000000ff000000 0000000000400000 -rw",
        "ffffff8000000000-ffffff8040000000 0000000040000000 -rw"]
    tlb = gdb.console("monitor info tlb").splitlines()
    assert tlb[0] == "0000000000000000: 0000000000000000 --PDA---W"
    assert "ffffff8000000000: 0000000000000000 --PDA---W" in tlb
    regs = gdb.console("monitor info registers").splitlines()
    assert regs[:2] == ["", "CPU#0"]
    kmain = symbol(guest_kernels / "smp.elf", "kmain")
    assert regs[6].startswith(f"RIP={kmain:016x} RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0")
    assert regs[8] == "CS =0018 0000000000000000 ffffffff 00af9a00 DPL=0 CS64 [-R-]"
    gdt = symbol(guest_kernels / "smp.elf", "boot_gdt")      # the boot GDT, 4 descriptors
    assert f"GDT=     {gdt:016x} 0000001f" in regs
    assert "CPU#1" in gdb.console("monitor info registers -a")
    assert gdb.console("monitor info cpus").splitlines()[0].startswith("* CPU #0: thread_id=")
    assert gdb.console(f"monitor gva2gpa {kmain:#x}").strip() == f"gpa: {kmain - 0xFFFFFF8000000000:#x}"
    assert gdb.console("monitor gva2gpa 0x7000000000").strip() == "Unmapped"
    assert re.fullmatch(r"Host virtual address for 0x100000 \(guest RAM\) is 0x[0-9a-f]+\n",
                        gdb.console("monitor gpa2hva 0x100000"))
    assert gdb.console("monitor gpa2hva 0x100000000").strip() == "No memory is mapped at address 0x100000000"
    gdb.console("kill")
    proc.communicate(timeout=30)


def test_gdb_wait_holds_through_a_bare_connect_and_a_detach_without_continue(hvdbg_gdb, gdb, guest_kernels):
    """--gdb-wait holds until a debugger continues (QEMU -S): a TCP connect/close, or a
    gdb that looks and detaches, does not release the guest."""
    import socket

    proc, port = hvdbg_gdb(vcpus=1)
    socket.create_connection(("127.0.0.1", port)).close()
    time.sleep(0.5)
    stop = gdb.connect(port)
    assert int(stop["frame"]["addr"], 16) == 0x100020
    gdb.console("detach")
    time.sleep(0.5)
    stop = gdb.connect(port)
    assert int(stop["frame"]["addr"], 16) == 0x100020    # still at the multiboot entry
    gdb.console("break kmain")
    gdb.console("continue")
    assert gdb.wait_for_stop()["frame"]["func"] == "kmain"
    gdb.console("kill")
    proc.communicate(timeout=30)


def test_an_ept_violation_is_a_stop_to_inspect_until_kill(hvdbg_gdb, gdb, guest_kernels):
    """A fatal guest event ends the VM but not the gdb session: SIGSEGV at the faulting
    instruction, registers, memory and the VMCS exit fields readable, every continue
    reports it again, kill ends it (was "Program terminated with signal SIGKILL")."""
    proc, port = hvdbg_gdb(vcpus=1, memory="16M", cmdline="work_mib=32")   # its array runs past 16 MiB
    gdb.connect(port)
    gdb.console("continue")
    stop = gdb.wait_for_stop()
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGSEGV", stop
    assert stop["frame"]["func"] == "work_prepare"
    assert "EPT violation: write to GPA 0x1000000" in gdb.console("monitor vmcs 0 VM_EXIT_REASON")
    assert gdb.value("$pc") == int(stop["frame"]["addr"], 16)
    gdb.console("continue")
    assert gdb.wait_for_stop()["signal-name"] == "SIGSEGV"
    gdb.console("kill")
    out, _ = proc.communicate(timeout=30)
    assert '"outcome": "ept_violation"' in out
