"""The command layer (hvdbg.ui.commands) run non-interactively on the SMP test kernel.

Every value a command prints is checked against something computed here on its own:
symbols from the ELF file (pyelftools), the guest's page tables read from guest memory
and walked by hand, the EPT offset from the configuration, the multiboot information
the loader recorded in its BootInfo, the engine's registers.
"""

from __future__ import annotations

import re
import struct

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from unicorn import x86_const as X

from hvdbg.ui.commands import CommandContext, make_monitor
from hvdbg.config import load_config
from hvdbg.debug.session import DebugSession
from hvdbg.vmx.exits import ExitReason
from hvdbg.hv.machine import Machine

GPA_HPA_OFFSET = 0x4000000  # 64 MiB: HPA != GPA, so the EPT step of a walk is visible


class Elf:
    """Symbols and code bytes of a kernel, straight from the file."""

    def __init__(self, path) -> None:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()
                            if s.name}
            self.loads = [(seg["p_vaddr"], seg["p_paddr"], seg["p_filesz"], seg["p_offset"])
                          for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
            f.seek(0)
            self.image = f.read()

    def phys(self, vaddr: int) -> int:
        for v, p, size, _off in self.loads:
            if v <= vaddr < v + size + 0x1000000:
                return vaddr - v + p
        raise KeyError(hex(vaddr))

    def code(self, vaddr: int, n: int) -> bytes:
        for v, _p, size, off in self.loads:
            if v <= vaddr < v + size:
                return self.image[off + vaddr - v: off + vaddr - v + n]
        raise KeyError(hex(vaddr))


@pytest.fixture(scope="module")
def elf(guest_kernels):
    return Elf(guest_kernels / "smp.elf")


@pytest.fixture
def debugger(make_config):
    """start(**config) -> a CommandContext on a fresh VM held at its entry (scripted mode)."""
    sessions = []

    def start(**values) -> CommandContext:
        values.setdefault("vcpus", 4)
        values.setdefault("memory", "128M")
        cfg = load_config(make_config(**values))
        session = DebugSession(Machine(cfg), start_paused=True)
        ctx = CommandContext(session, wait_timeout=60)
        session.start()
        session.stop()
        sessions.append(session)
        return ctx

    yield start
    for s in sessions:
        s.shutdown()


def ok(ctx: CommandContext, line: str) -> str:
    out = ctx.execute(line)
    assert out.ok, f"{line!r} failed: {out.text}"
    return out.text


def break_at(ctx: CommandContext, symbol: str) -> int:
    """Break on a symbol, continue, and return the vCPU that stopped there."""
    ok(ctx, f"break {symbol}")
    text = ok(ctx, "continue")
    m = re.search(rf"vCPU (\d+) hit breakpoint \d+ at 0x[0-9a-f]+ <{symbol}>", text)
    assert m, text
    return int(m.group(1))


def hexval(pattern: str, text: str) -> int:
    m = re.search(pattern, text, re.M)
    assert m, f"{pattern!r} not in:\n{text}"
    return int(m.group(1), 16)


def read_u64(vm, gpa: int) -> int:
    return struct.unpack("<Q", vm.memory.read(gpa, 8))[0]


# --------------------------------------------------------------------------------------
# vmcs
# --------------------------------------------------------------------------------------

def test_vmcs_guest_state_matches_the_stopped_engine(debugger, elf):
    ctx = debugger()
    i = break_at(ctx, "work_run")
    v = ctx.vm.vcpus[i]
    boot_pml4_phys = elf.phys(elf.symbols["boot_pml4"])
    cr3 = hexval(r"^  = (0x[0-9a-f]+)$", ok(ctx, f"vmcs {i} GUEST_CR3"))
    assert cr3 == v.engine.uc.reg_read(X.UC_X86_REG_CR3) == boot_pml4_phys
    rip = hexval(r"^  = (0x[0-9a-f]+)$", ok(ctx, f"vmcs {i} guest_rip"))  # names are case-insensitive
    assert rip == elf.symbols["work_run"]
    by_encoding = ok(ctx, f"vmcs {i} 0x6802")  # GUEST_CR3 by its Appendix B encoding
    assert by_encoding.splitlines()[1].startswith("GUEST_CR3 (encoding 0x6802")
    full = ok(ctx, f"vmcs {i}")
    for title in ("*** Guest State ***", "*** Host State ***", "*** Control State ***", "*** Exit Information ***"):
        assert title in full
    assert hexval(r"^GUEST_CR3\s+0x6802 = (0x[0-9a-f]+)", full) == boot_pml4_phys
    assert hexval(r"^GUEST_RSP\s+0x681c = (0x[0-9a-f]+)", full) == v.engine.uc.reg_read(X.UC_X86_REG_RSP)
    cs = re.search(r"^CS\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", full, re.M)
    assert int(cs.group(1), 16) == v.engine.uc.reg_read(X.UC_X86_REG_CS)
    assert "code execute/read accessed, DPL=0 P L" in full  # 64-bit code segment, decoded access rights


def test_vmcs_exit_information_is_a_sentence(debugger):
    ctx = debugger()
    i = break_at(ctx, "work_run")
    v = ctx.vm.vcpus[i]
    last = v.last_exit
    text = ok(ctx, f"vmcs {i} exit")
    reason = hexval(r"^VM_EXIT_REASON\s+0x4402 = (0x[0-9a-f]+)", text)
    assert reason == int(last.reason)
    assert hexval(r"^EXIT_QUALIFICATION\s+0x6400 = (0x[0-9a-f]+)", text) == last.qualification
    assert f"last VM exit: {last.reason.name} ({int(last.reason)})" in text
    if last.reason is ExitReason.IO_INSTRUCTION:
        port = last.qualification >> 16
        assert re.search(rf"I/O instruction: (IN|OUT) \d bytes? (to|from) port {port:#x}", text), text


def test_vmcs_control_fields_decoded_bit_by_bit(debugger):
    bitmap = 1 << 14 | 1 << 13  # #PF and #GP exit (set from the config by the machine)
    ctx = debugger(**{"vmx.exception_bitmap": bitmap})
    text = ok(ctx, "vmcs 0 control")
    assert hexval(r"^EXCEPTION_BITMAP\s+0x4004 = (0x[0-9a-f]+)", text) == bitmap
    block = text.split("EXCEPTION_BITMAP", 1)[1].splitlines()[1:3]
    assert [line.split()[:2] for line in block] == [["bit", "13"], ["bit", "14"]]
    assert "#GP" in block[0] and "#PF" in block[1]
    field = ok(ctx, "vmcs 0 EXCEPTION_BITMAP")
    rows = {int(m.group(2)): m.group(1) == "x" for m in re.finditer(r"\[([x ])\] bit\s+(\d+)", field)}
    assert {b for b, on in rows.items() if on} == {13, 14}
    # every architectural exception has a row, set or not; NMI (2) is not in the bitmap (SDM 25.6.3)
    assert {0, 1, 3, 6, 8, 13, 14, 17, 18} <= set(rows) and 2 not in rows
    primary = ok(ctx, "vmcs 0 primary")  # a control set by its short name
    assert "CPU_BASED_VM_EXEC_CONTROL (encoding 0x4002" in primary and "HLT exiting" in primary


# --------------------------------------------------------------------------------------
# ept walk / ept map
# --------------------------------------------------------------------------------------

def test_ept_walk_and_map(debugger):
    ctx = debugger(gpa_hpa_offset=GPA_HPA_OFFSET, memory="64M")
    text = ok(ctx, "ept walk 0x100123")
    assert hexval(r"=> HPA (0x[0-9a-f]+)", text) == 0x100123 + GPA_HPA_OFFSET
    eptp = ctx.vm.memory.ept.eptp
    assert hexval(r"^EPTP (0x[0-9a-f]+):", text) == eptp
    # the PML4 entry the walk shows is really in host memory at EPTP[51:12] + 8 * index 0
    pml4e = hexval(r"PML4E\[  0\] @HPA 0x[0-9a-f]+ = (0x[0-9a-f]+)", text)
    assert pml4e == struct.unpack("<Q", ctx.vm.memory.host.read(eptp & ~0xFFF, 8))[0]
    assert "accesses: read allowed, write allowed, fetch allowed" in text
    beyond = ok(ctx, f"ept walk {64 << 20:#x}")  # first byte past guest RAM
    assert "=> EPT violation" in beyond and "not present" in beyond
    mapped = ok(ctx, "ept map")
    assert f"0x000000000000-0x000003ffffff -> {GPA_HPA_OFFSET:#014x} RWX WB  64M" in mapped


# --------------------------------------------------------------------------------------
# pt walk / pt map
# --------------------------------------------------------------------------------------

def test_pt_walk_high_half_through_boot_pml4_and_ept(debugger, elf):
    ctx = debugger(gpa_hpa_offset=GPA_HPA_OFFSET)
    i = break_at(ctx, "ap_entry")
    vm = ctx.vm
    gva = 0xFFFFFF8000100000 + 0x123
    text = ok(ctx, f"pt walk {gva:#x} {i}")
    cr3 = elf.phys(elf.symbols["boot_pml4"])
    # walk the guest's tables by hand: PML4[511] -> PDPT[0] -> PD[0] (a 2 MiB page)
    pml4e = read_u64(vm, cr3 + 511 * 8)
    pdpte = read_u64(vm, (pml4e & 0xFFFFFFFFFF000) + 0 * 8)
    pde = read_u64(vm, (pdpte & 0xFFFFFFFFFF000) + 0 * 8)
    assert pml4e & 1 and pdpte & 1 and pde & 0x81 == 0x81
    assert (pml4e & ~0xFFF) == elf.phys(elf.symbols["boot_pdpt_high"])
    gpa = (pde & 0xFFFFFFFE00000) | (gva & 0x1FFFFF)
    assert hexval(rf"PML4E\[511\] @GPA {cr3 + 511 * 8:#014x} = (0x[0-9a-f]+)", text) == pml4e
    assert hexval(r"PDPTE\[  0\] @GPA 0x[0-9a-f]+ = (0x[0-9a-f]+)", text) == pdpte
    assert hexval(r"PDE  \[  0\] @GPA 0x[0-9a-f]+ = (0x[0-9a-f]+)", text) == pde
    assert "4-level paging walk" in text and "PS -> 2M page" in text
    assert f"PML4 GPA {cr3:#x} -> HPA {cr3 + GPA_HPA_OFFSET:#x}" in text
    assert re.search(rf"GVA {gva:#x} <[\w.]+\+0x[0-9a-f]+> -> GPA {gpa:#x} -> HPA {gpa + GPA_HPA_OFFSET:#x}$",
                     text, re.M), text


def test_pt_walk_unmapped_address_shows_the_fault(debugger, elf):
    ctx = debugger()
    break_at(ctx, "work_run")
    cr3 = elf.phys(elf.symbols["boot_pml4"])
    assert read_u64(ctx.vm, cr3 + 256 * 8) == 0
    text = ok(ctx, "pt walk 0xffff800000000000 write")
    assert "PML4E[256]" in text and "not present" in text
    assert re.search(r"=> #PF error code 0x2 \[NP W S\]", text), text
    assert "does not translate" in text


def test_pt_map_lists_the_boot_mappings(debugger):
    ctx = debugger()
    i = break_at(ctx, "work_run")
    text = ok(ctx, f"pt map {i}")
    rows = re.findall(r"^(0x[0-9a-f]+)-(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S+)\s+([A-Z ]+?)\s*(<.*>)?$", text, re.M)
    ranges = {(int(a, 16), int(b, 16) + 1): (int(g, 16), size, flags.split()) for a, b, g, size, flags, _ in rows}
    # the guests README: identity first GiB, the same GiB at KERNEL_BASE, the I/O APIC's and
    # the local APIC's pages uncached (two 2 MiB pages, one range)
    assert ranges[(0, 1 << 30)][0] == 0 and ranges[(0, 1 << 30)][1] == "1G"
    assert ranges[(0xFFFFFF8000000000, 0xFFFFFF8040000000)][0] == 0
    apic = ranges[(0xFEC00000, 0xFF000000)]
    assert apic[0] == 0xFEC00000 and {"PCD", "PWT"} <= set(apic[2])


# --------------------------------------------------------------------------------------
# mb
# --------------------------------------------------------------------------------------

def test_mb_shows_header_magic_and_the_info_the_loader_built(debugger):
    ctx = debugger(cmdline="hvdbg-test answer=42")
    boot = ctx.vm.boot
    text = ok(ctx, "mb")
    assert "multiboot 1 header at file offset" in text and "valid" in text
    assert f"entry: EAX {boot.eax:#x} (the spec requires 0x2badb002), EBX {boot.ebx:#x}" in text
    assert "is the multiboot 1 bootloader magic the kernel expects" in text
    assert "cmdline 'hvdbg-test answer=42'" in text
    shown = re.findall(r"mmap (0x[0-9a-f]+)-(0x[0-9a-f]+) (\w+)", text)
    expected = [(r.base, r.base + r.length, r.type_name) for r in boot.memory_map]
    assert [(int(a, 16), int(b, 16), t) for a, b, t in shown][:len(expected)] == expected
    assert f"mem_upper {(128 << 10) - 1024} KiB" in text


def test_mb_reports_the_wrong_magic(debugger):
    ctx = debugger(**{"loader.magic": "header"})
    text = ok(ctx, "mb")
    assert "entry: EAX 0x1badb002 (the spec requires 0x2badb002)" in text
    assert "multiboot 1 *header* magic" in text


# --------------------------------------------------------------------------------------
# regs, x, disas, vcpus, cpuid, apic
# --------------------------------------------------------------------------------------

def test_regs_x_and_disas_at_a_breakpoint(debugger, elf):
    ctx = debugger()
    i = break_at(ctx, "work_run")
    v = ctx.vm.vcpus[i]
    regs = ok(ctx, "regs")  # the stopped vCPU became the default
    assert regs.startswith(f"vCPU {i} ")
    rsp = v.engine.uc.reg_read(X.UC_X86_REG_RSP)
    assert hexval(r"rsp (0x[0-9a-f]+)", regs) == rsp
    assert re.search(rf"rip {elf.symbols['work_run']:#x} <work_run>", regs)
    assert "efer 0x500 [LME LMA]" in regs and "[PE ET PG]" in regs
    # the return address on the stack, through x/1ag, is inside the caller
    ret = struct.unpack("<Q", v.read_linear(rsp, 8))[0]
    stack = ok(ctx, "x/1ag $rsp")
    assert hexval(r": (0x[0-9a-f]+) <", stack) == ret
    # guest-virtual and guest-physical views of boot_pml4 agree with memory
    cr3 = elf.phys(elf.symbols["boot_pml4"])
    want = struct.unpack("<4Q", ctx.vm.memory.read(cr3, 32))
    for line in (f"x/4xg boot_pml4 {i}", f"xp/4xg {cr3:#x}", f"x/4xg -p {cr3:#x}"):
        got = [int(w, 16) for row in ok(ctx, line).splitlines() for w in row.split(": ", 1)[1].split()]
        assert tuple(got) == want, line
    # disassembly = capstone on the bytes of the ELF file, with symbols and the RIP mark
    code = elf.code(elf.symbols["work_run"], 64)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    first = [f"{x.mnemonic} {x.op_str}".rstrip() for x in md.disasm(code, elf.symbols["work_run"], 3)]
    text = ok(ctx, "disas work_run")
    lines = text.splitlines()
    assert lines[0] == f"vCPU {i}, 64-bit code:"
    assert lines[1].startswith(f"=> {elf.symbols['work_run']:#018x} <work_run>:")
    for line, want_insn, insn in zip(lines[1:4], first, md.disasm(code, elf.symbols["work_run"], 3)):
        assert f"{insn.bytes.hex(' ')}" in line and want_insn in line, (line, want_insn)
    assert len(lines) - 1 == len([x for x in md.disasm(elf.code(elf.symbols["work_run"], 224),
                                                       elf.symbols["work_run"])])


def test_vcpus_cpuid_and_apic_after_the_aps_started(debugger):
    ctx = debugger()
    break_at(ctx, "work_run")
    vm = ctx.vm
    text = ok(ctx, "vcpus")
    for v in vm.vcpus:
        row = next(line for line in text.splitlines() if re.match(rf"\s+{v.index}\s+{v.apic_id}\s", line))
        assert v.activity.label in row
        assert ("SIPI 0x08" in row) == (v.index != 0)  # the trampoline at 0x8000
        assert "stopped" in row
    assert "initial APIC ID 2 (EBX[31:24])" in ok(ctx, "cpuid 2 1")
    assert vm.vcpus[2].cpuid.query(1)[1] >> 24 == 2
    assert "vendor 'GenuineIntel'" in ok(ctx, "cpuid 0")
    assert "level 1 type core" in ok(ctx, "cpuid 0xb 1")
    apic1 = ok(ctx, "apic 1")
    assert apic1.startswith("vCPU 1 local APIC: ID 1 (ID register 0x01000000)")
    assert "started by SIPI vector 0x08 (at 0x8000)" in apic1
    apic0 = ok(ctx, "apic 0")
    assert "[BSP enabled]" in apic0
    assert len(re.findall(r"sent INIT IPI to physical destination", apic0)) == 3
    assert len(re.findall(r"sent STARTUP IPI vector 0x08", apic0)) >= 3


def test_step_executes_instructions_on_one_vcpu(debugger, elf):
    ctx = debugger()
    i = break_at(ctx, "work_run")
    v = ctx.vm.vcpus[i]
    others = {x.index: x.instructions for x in ctx.vm.vcpus if x is not v}
    before = v.instructions
    text = ok(ctx, f"step {i} 3")
    assert v.instructions - before == 3
    assert text.startswith(f"vCPU {i}: 3 instructions executed")
    rip = v.engine.uc.reg_read(X.UC_X86_REG_RIP)
    assert f"=> {ctx.vm.symbolize(rip)}:" in text
    assert rip != elf.symbols["work_run"]
    assert {x.index: x.instructions for x in ctx.vm.vcpus if x is not v} == others


# --------------------------------------------------------------------------------------
# exits, break exit, delete, run to the end
# --------------------------------------------------------------------------------------

def test_exits_trace_and_counts_match_the_vm(debugger):
    ctx = debugger()
    break_at(ctx, "work_run")
    trace = ctx.vm.trace
    text = ok(ctx, "exits 0")
    table = {m.group(1): [int(m.group(2))] + [int(x) for x in m.group(3).split()]
             for m in re.finditer(r"^([A-Z_]+|total)\s+(\d+)\s+[\d.]+\s+([\d ]+)$", text, re.M)}
    for name, count in trace.counts.items():
        assert table[name][0] == count
        assert table[name][1:] == [trace.per_vcpu[i].get(name, 0) for i in sorted(trace.per_vcpu)]
    assert table["total"][0] == trace.total
    last = ok(ctx, "exits 5 1 IO_INSTRUCTION")
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\w+)\s", last, re.M)
    want = [r for r in trace.records if r.vcpu == 1 and r.reason_name == "IO_INSTRUCTION"][-5:]
    assert [(int(s), int(c), n) for s, c, n in rows] == [(r.seq, 1, "IO_INSTRUCTION") for r in want]


def test_break_on_vm_exit_then_delete_and_run_to_the_end(debugger):
    ctx = debugger()
    assert ok(ctx, "break exit hlt 31") == ("breakpoint 1: stop the VM on VM exit HLT (12)\n"
                                            "breakpoint 2: stop the VM on VM exit MSR_READ (31)")
    text = ok(ctx, "continue")
    m = re.match(r"vCPU (\d+) stopped on VM exit (\w+) at (0x[0-9a-f]+) <(\w+)\+0x[0-9a-f]+>: (.*)$", text, re.M)
    assert m, text
    v = ctx.vm.vcpus[int(m.group(1))]
    assert m.group(2) == "MSR_READ" and v.index == 0  # the BSP reads IA32_EFER in _start, before any HLT
    assert v.last_exit.reason is ExitReason.MSR_READ and int(m.group(3), 16) == v.last_exit.rip
    assert v.vmcs.read("VM_EXIT_REASON") == 31
    assert m.group(5).startswith("RDMSR of MSR 0xc0000080"), m.group(5)  # ECX = IA32_EFER
    listing = ok(ctx, "break")
    assert "1  VM exit HLT (12), any vCPU" in listing and "2  VM exit MSR_READ (31), any vCPU" in listing
    assert ok(ctx, "delete") == "deleted breakpoints 1, 2"
    assert ctx.session.exit_break_reasons == set()
    assert ok(ctx, "continue") == "the VM ended: outcome exited, exit status 0 (guest wrote to the debug-exit port)"
    assert "sum ok" in ok(ctx, "serial 2")
    err = ctx.execute("continue")
    assert not err.ok and err.text.startswith("error: the VM ended")


def test_sched_shows_vcpus_and_a_policy_s_statistics(debugger):
    ctx = debugger(deterministic=False)
    text = ok(ctx, "sched")
    v0 = ctx.vm.vcpus[0]
    pcpu = "-" if v0.pcpu is None else str(v0.pcpu)
    assert re.search(rf"^\s+0\s+running\s+{pcpu}\s+stopped\s+yes\s+0\s+0\s+0$", text, re.M), text
    assert re.search(r"^\s+3\s+wait-for-SIPI\s+\S+\s+stopped\s+no\s+0\s+0\s+0$", text, re.M), text
    assert "policy statistics" not in text and "policy Pinned" not in text  # pinned: no scheduler

    ctx = debugger(sched="cfs", pcpus=2, deterministic=False)
    text = ok(ctx, "sched")
    assert text.startswith("executor ThreadedSchedExecutor, policy 'cfs', 2 pCPUs"), text
    assert "policy CfsPolicy:" in text and "policy: cfs" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("vcpu "))
    assert "waiting" in header.split(), text
    assert re.search(r"^\s+3\s.*\swait-for-SIPI\s", text, re.M), text  # the scheduler core's reason

    class Broken:
        def stats(self):
            raise RuntimeError("boom")

    ctx.session.executor.sched.policy = Broken()
    assert "policy statistics unavailable: RuntimeError: boom" in ok(ctx, "sched")


def test_break_on_sipi_exit_stops_before_the_ap_runs(debugger):
    ctx = debugger(vcpus=2)
    ok(ctx, "break exit SIPI")
    text = ok(ctx, "continue")
    assert text.startswith("vCPU 1 stopped on VM exit SIPI"), text
    v = ctx.vm.vcpus[1]
    assert v.last_exit.reason is ExitReason.SIPI
    assert v.engine.uc.reg_read(X.UC_X86_REG_RIP) == 0 and v.instructions == 0


# --------------------------------------------------------------------------------------
# errors, monitor, completion
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("vmcs 9", "no vCPU 9: the VM has 4 vCPUs (0-3)"),
    ("vmcs 0 GUEST_CR9", "unknown VMCS field or group 'GUEST_CR9'"),
    ("regs 4", "no vCPU 4"),
    ("pt walk", "missing GVA"),
    ("pt walk nosuchsymbol", "no ELF symbol 'nosuchsymbol'"),
    ("pt walk 0x1000 0 execute", "expected read or write or fetch, not 'execute'"),
    ("ept walk", "missing GPA"),
    ("ept walk 0x1 0x2", "unexpected argument '0x2'"),
    ("ept walk 0x10000000000000", "beyond the 52-bit physical address space"),
    ("ept", "'ept' needs a subcommand"),
    ("x/8q 0", "unknown letter 'q'"),
    ("xp 0x90000000", "cannot read 64 bytes at GPA 0x90000000"),
    ("disas kmian", "did you mean kmain"),
    ("exits NOT_A_REASON", "unknown exit reason 'NOT_A_REASON'"),
    ("break exit 99", "99 is not a basic exit reason"),
    ("delete 7", "no breakpoint 7"),
    ("cpuid 0 1 2 3", "unexpected argument '3'"),
    ("x $nosuchreg", "no register $nosuchreg"),
    ("frobnicate", "unknown command 'frobnicate'"),
])
def test_wrong_arguments_give_one_line_errors(debugger, line, message):
    ctx = debugger()
    out = ctx.execute(line)
    assert not out.ok
    assert "\n" not in out.text and "Traceback" not in out.text
    assert out.text.startswith("error: ") and message in out.text, out.text


def test_monitor_serves_inspection_but_not_run_control(debugger):
    ctx = debugger()
    monitor = make_monitor(ctx.session)
    v0 = ctx.vm.vcpus[0]
    assert monitor("regs", v0).startswith("vCPU 0 (APIC id 0): activity running, 32-bit code")
    assert monitor("vmcs GUEST_RIP", v0).splitlines()[2] == f"  = {ctx.vm.boot.entry:#018x}"
    for line in ("continue", "step", "stop", "quit"):
        text = monitor(line, v0)
        assert text.startswith("error: ") and "not available through gdb's monitor" in text
    assert "continue" not in monitor("help", v0) and "vmcs" in monitor("help", v0)
    for hostile in ("python import os", "shell ls", "source /etc/passwd", "!ls"):
        assert monitor(hostile, v0).startswith("error: unknown command")
    assert ctx.vm_state() == "stopped" and ctx.vm.total_instructions() == 0


def test_completion_of_commands_fields_reasons_and_symbols(debugger):
    ctx = debugger()
    assert ctx.complete("vm") == (["vmcs", "vmx"], 2)
    assert ctx.complete("ept ") == (["map", "walk"], 0)
    names, n = ctx.complete("vmcs 0 GUEST_CR")
    assert n == len("GUEST_CR") and {"GUEST_CR0", "GUEST_CR3", "GUEST_CR4"} <= set(names)
    assert "guest" in ctx.complete("vmcs gu")[0]
    assert ctx.complete("break exit HL")[0] == ["HLT"]
    assert ctx.complete("disas kma")[0] == ["kmain"]
    assert "work_run" in ctx.complete("break work_r")[0]
    assert ctx.complete("pt walk kmain 0 wr")[0] == ["write"]
    assert ctx.complete("regs ")[0] == ["0", "1", "2", "3"]


# --------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------
def test_events_counts_interrupts_per_vcpu_and_lists_the_first_exceptions(debugger):
    ctx = debugger(cmdline="workload=pit pit_cpu=2")
    assert ok(ctx, "continue").startswith("the VM ended: outcome exited, exit status 0")
    text = ok(ctx, "events")
    vcpu2 = text.split("vCPU 2:")[1].split("vCPU 3:")[0]
    assert vcpu2.startswith(" 0 exceptions, 20 interrupts") and "interrupts: 0x42 x20" in vcpu2
    assert "0x42" not in text.split("vCPU 2:")[0] and "0x42" not in text.split("vCPU 3:")[1]
    assert ok(ctx, "events 2").splitlines()[0] == "vCPU 2: 0 exceptions, 20 interrupts"
    ctx = debugger(vcpus=1, cmdline="workload=cpu")
    ok(ctx, "continue")
    text = ok(ctx, "events 0")
    counts = re.search(r"vCPU 0: (\d+) exceptions", text)
    assert counts and int(counts.group(1)) > 0 and "#GP general protection" in text
    assert re.search(r"^    #GP general protection \(error code 0x0\) at 0x[0-9a-f]+ <\w+", text, re.M), text
    assert not ctx.execute("events 9").ok


def test_continue_names_the_vcpus_a_gdb_session_still_holds(debugger):
    """The shell's continue ends its own hold; a vCPU a per-vCPU gdb holds stays stopped,
    and both continue and vcpus say who holds it (docs/gdb.md, "Several stubs")."""
    from hvdbg.debug.gdb_target import VmTarget

    ctx = debugger(vcpus=2, deterministic=False)          # one host thread per vCPU
    gdb = VmTarget(ctx.session, frozenset({1}))
    gdb.attach()
    ok(ctx, "break kmain")
    text = ok(ctx, "continue")
    assert text.startswith("vCPU 1 stays stopped: held by gdb (vCPU 1)\nvCPU 0 hit breakpoint 1"), text
    assert "vCPU 1 held stopped by gdb (vCPU 1)" in ok(ctx, "vcpus")
    ctx.session.stop(owner="probe")
    assert ok(ctx, "continue").startswith("nothing runs:\nvCPU 0 stays stopped: held by probe")
    ctx.session.release(owner="probe")
    gdb.detach()
    assert "held stopped" not in ok(ctx, "vcpus")


def test_continue_says_when_a_held_vcpu_stops_every_vcpu(debugger):
    """In the deterministic executor (the default) the vCPUs share the host thread: one
    held vCPU holds them all, and continue says so instead of waiting for a stop."""
    from hvdbg.debug.gdb_target import VmTarget

    ctx = debugger(vcpus=2)
    VmTarget(ctx.session, frozenset({1})).attach()
    text = ok(ctx, "continue")
    assert text.splitlines() == ["nothing runs:", "vCPU 1 stays stopped: held by gdb (vCPU 1)",
                                 "(vCPUs share pCPUs in this executor: a held vCPU stops them all)",
                                 "(each debugger's continue or detach releases its hold)"], text
