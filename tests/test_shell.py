"""``hvdbg shell`` as a program (-c scripts, stdin scripts, the interactive prompt on a
pty) and the same commands through ``monitor`` from the real gdb (pygdbmi, MI3)."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest
from elftools.elf.elffile import ELFFile

from fuzz.common import free_port_block as free_port
from hvdbg.config import load_config
from hvdbg.hv.machine import Machine

HVDBG = [sys.executable, "-m", "hvdbg.ui.cli"]


def symbols(path) -> dict[str, int]:
    with open(path, "rb") as f:
        return {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()
                if s.name}


def kernel_phys(path, vaddr: int) -> int:
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
                return vaddr - seg["p_vaddr"] + seg["p_paddr"]
    raise KeyError(hex(vaddr))


def shell(config, *commands: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    args = HVDBG + ["shell", str(config)]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------
# scripts
# --------------------------------------------------------------------------------------

def test_shell_c_commands_stop_at_ap_entry_and_inspect(make_config, guest_kernels):
    elf = guest_kernels / "smp.elf"
    syms = symbols(elf)
    cfg = make_config(vcpus=4, cmdline="console=hvdbg")
    p = shell(cfg, "break ap_entry", "continue", "vmcs GUEST_CR3", "pt walk 0xffffff8000100000", "mb",
              "vcpus", "exits 0")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert p.stderr == ""
    m = re.search(r"^vCPU (\d) hit breakpoint 1 at (0x[0-9a-f]+) <ap_entry>$", out, re.M)
    assert m and int(m.group(2), 16) == syms["ap_entry"] and m.group(1) != "0"
    cr3 = kernel_phys(elf, syms["boot_pml4"])
    assert re.search(rf"^  = {cr3:#018x}$", out, re.M)  # vmcs GUEST_CR3 of the AP that stopped
    assert f"PML4E[511] @GPA {cr3 + 511 * 8:#014x}" in out
    assert f"-> PDPT {kernel_phys(elf, syms['boot_pdpt_high']):#x}" in out
    assert "cmdline 'console=hvdbg'" in out
    assert re.search(rf"^\s+{m.group(1)}\s+{m.group(1)}\s+running\s+\d+\s+stopped\s+64-bit\s+"
                     rf"{syms['ap_entry']:#x} <ap_entry>", out, re.M), out
    assert re.search(r"^SIPI\s+\d+", out, re.M) and re.search(r"^total\s+\d+", out, re.M)


def test_shell_errors_are_one_line_on_stderr_and_set_the_status(make_config):
    cfg = make_config(vcpus=2)
    p = shell(cfg, "vcpus", "vmcs 5", "pt walk nowhere_symbol", "ept walk", "disas 0 0 0 0", "frob")
    assert p.returncode == 1
    errors = p.stderr.splitlines()
    assert errors == ["error: no vCPU 5: the VM has 2 vCPUs (0-1)",
                      "error: no ELF symbol 'nowhere_symbol' in the kernel",
                      "error: missing GPA",
                      "error: unexpected argument '0'",
                      "error: unknown command 'frob'; 'help' lists the commands"]
    assert "Traceback" not in p.stdout + p.stderr
    assert "wait-for-SIPI" in p.stdout  # the commands before and after an error still ran


def test_shell_reads_a_script_on_stdin_and_runs_to_the_end(make_config):
    cfg = make_config(vcpus=4)
    script = "# a comment\n\nbreak exit HLT\ncontinue\ndelete\ncontinue\nserial 1\n"
    p = shell(cfg, stdin=script)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "breakpoint 1: stop the VM on VM exit HLT (12)"
    assert re.match(r"vCPU \d stopped on VM exit HLT at 0x[0-9a-f]+ <\w+\+0x[0-9a-f]+>: ", lines[1])
    assert "the VM ended: outcome exited, exit status 0 (guest wrote to the debug-exit port)" in lines
    assert lines[-1].startswith("sum ok")


def test_shell_config_error_is_one_line(tmp_path):
    p = shell(tmp_path / "missing.toml", "vcpus")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("hvdbg: ") and "Traceback" not in p.stderr


# --------------------------------------------------------------------------------------
# the interactive prompt (prompt_toolkit on a pseudo-terminal)
# --------------------------------------------------------------------------------------

class PtyShell:
    """``hvdbg shell`` on a pty; ``expect`` waits for text in the (ANSI-stripped) output."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            os.environ.update(env)
            os.execvp(args[0], args)
        self.raw = b""
        self.seen = 0

    @property
    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", self.raw.decode("utf-8", "replace"))

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        while True:
            m = rx.search(self.text, self.seen)
            if m:
                self.seen = m.end()
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen; output:\n{self.text[-3000:]}")
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                try:
                    self.raw += os.read(self.fd, 65536)
                except OSError:
                    pass

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                r, _, _ = select.select([self.fd], [], [], 0.1)
                if r:
                    self.raw += os.read(self.fd, 65536)
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        return -9


def test_interactive_shell_runs_in_the_background_and_completes(make_config, guest_kernels, tmp_path):
    syms = symbols(guest_kernels / "smp.elf")
    cfg = make_config(vcpus=4)
    sh = PtyShell(HVDBG + ["shell", str(cfg)],
                  {"TERM": "xterm", "HVDBG_HISTORY": str(tmp_path / "history"), "COLUMNS": "200"})
    try:
        sh.expect(r"hvdbg shell: smp\.elf, 4 vCPUs, held at the multiboot entry 0x100020")
        sh.expect(r"hvdbg stopped vCPU0>")
        sh.send("break work_run\r")
        sh.expect(rf"breakpoint 1 at {syms['work_run']:#x} <work_run>, all vCPUs")
        sh.send("continue\r")
        sh.expect(r"\[stop\] vCPU \d hit breakpoint 1 at 0x[0-9a-f]+ <work_run>")
        # the command's answer and the guest's serial output (live, whole lines) may come in
        # either order: both were printed before the stop
        assert "running 4 vCPUs ('stop' or Ctrl-C stops them)" in sh.text
        # (the terminal's prompt redraws share the line once escape sequences are stripped)
        assert re.search(r"hvdbg smp guest$", sh.text, re.M), sh.text
        # (two vCPUs can reach work_run in the same instant: both stops are announced, the
        # last one becomes the default vCPU)
        sh.expect(r"hvdbg stopped vCPU\d>")
        sh.send("vmcs GUEST_C\t")  # completion of VMCS field names
        sh.expect(r"GUEST_CR3")
        sh.send("R3\r")
        sh.expect(r"^  = (0x[0-9a-f]{16})$")
        sh.send("quit\r")
        assert sh.close() == 0
    finally:
        if sh.pid:
            try:
                os.kill(sh.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "vmcs GUEST_CR3" in (tmp_path / "history").read_text()


# --------------------------------------------------------------------------------------
# monitor commands from the real gdb
# --------------------------------------------------------------------------------------

gdb_needed = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed")


def wait_for_stub(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Wait for hvdbg's "gdb stub ... on" line (printed once every stub listens).  No
    probe connection: a connect-and-close is a debugger session too, and its detach
    would release the --gdb-wait hold."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stderr], [], [], 0.2)
        if r:
            line = proc.stderr.readline()
            if "gdb stub for all" in line:
                return
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"hvdbg did not start its gdb stubs: {line!r}")


@pytest.fixture
def gdb(guest_kernels):
    pytest.importorskip("pygdbmi.gdbcontroller")
    from test_gdbstub_gdb import Gdb  # the MI3 driver (pygdbmi GdbController) of the gdbstub tests

    g = Gdb()
    g.mi("-gdb-set confirm off")
    g.mi("-gdb-set pagination off")
    g.console(f"file {guest_kernels / 'smp.elf'}")
    yield g
    g.close()


@gdb_needed
def test_monitor_commands_from_real_gdb(make_config, guest_kernels, gdb):
    elf = guest_kernels / "smp.elf"
    syms = symbols(elf)
    cfg = make_config(vcpus=4)
    port = free_port(5)
    proc = subprocess.Popen(HVDBG + ["run", str(cfg), "--gdb", str(port), "--gdb-wait", "--json", "--compact"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_stub(proc)
        gdb.connect(port)
        # before any instruction: the multiboot entry state
        text = gdb.console("monitor vmcs 0 GUEST_RIP")
        assert f"  = {0x100020:#018x}" in text
        gdb.console("break work_run")
        gdb.console("continue")
        stop = gdb.wait_for_stop()
        assert stop["frame"]["func"] == "work_run"
        tid = int(stop["thread-id"])
        cr3 = gdb.value("$cr3")
        assert cr3 == kernel_phys(elf, syms["boot_pml4"])
        # monitor vmcs: gdb's current thread is the default vCPU; GUEST_CR3 = the engine's CR3
        vmcs = gdb.console("monitor vmcs GUEST_CR3")
        assert vmcs.startswith(f"vCPU {tid - 1} VMCS")
        assert f"  = {cr3:#018x}" in vmcs
        full = gdb.console("monitor vmcs")
        assert "*** Guest State ***" in full and "*** Exit Information ***" in full
        assert re.search(rf"^GUEST_RIP\s+0x681e = {syms['work_run']:#018x}$", full, re.M)
        # monitor pt walk: PML4E[511] of the guest's boot PML4, as gdb reads it from memory
        walk = gdb.console("monitor pt walk 0xffffff8000100000")
        pml4e = gdb.value(f"*(unsigned long *){syms['boot_pml4'] + 511 * 8:#x}")
        assert f"PML4E[511] @GPA {cr3 + 511 * 8:#014x} = {pml4e:#018x}" in walk
        assert re.search(r"GVA 0xffffff8000100000 <\w+> -> GPA 0x100000 -> HPA 0x100000$", walk, re.M), walk
        # monitor exits: per-reason counts; at least the three SIPIs and INITs of the APs
        exits = gdb.console("monitor exits 3")
        counts = dict(re.findall(r"^([A-Z_]+)\s+(\d+)\s", exits, re.M))
        assert int(counts["SIPI"]) == 3 and int(counts["INIT_SIGNAL"]) == 3
        assert int(counts["IO_INSTRUCTION"]) > 0
        seqs = re.findall(r"^\s+(\d+)\s+\d+\s+[A-Z_]+\s", exits, re.M)
        assert len(seqs) == 3 and seqs == sorted(seqs, key=int)
        # run control belongs to gdb; errors are one line
        assert "not available through gdb's monitor" in gdb.console("monitor continue")
        assert gdb.console("monitor vmcs 9").strip() == "error: no vCPU 9: the VM has 4 vCPUs (0-3)"
        # break on a VM exit from gdb: gdb sees a SIGTRAP stop on the vCPU that exited
        assert gdb.console("monitor break exit HLT").strip() == "breakpoint 1: stop the VM on VM exit HLT (12)"
        gdb.console("delete")
        gdb.console("continue")
        stop = gdb.wait_for_stop()
        assert stop.get("signal-name") == "SIGTRAP", stop
        exit_info = gdb.console("monitor vmcs exit")
        assert exit_info.startswith(f"vCPU {int(stop['thread-id']) - 1} VMCS")
        assert re.search(r"^VM_EXIT_REASON\s+0x4402 = 0x0000000c  HLT", exit_info, re.M), exit_info
        assert "last VM exit: HLT (12)" in exit_info
        gdb.console("kill")
        out, _ = proc.communicate(timeout=30)
        assert '"outcome": "killed"' in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@gdb_needed
def test_shell_serves_gdb_while_the_shell_inspects(make_config, guest_kernels, gdb, tmp_path):
    syms = symbols(guest_kernels / "smp.elf")
    cfg = make_config(vcpus=2)
    port = free_port(3)
    sh = PtyShell(HVDBG + ["shell", str(cfg), "--gdb", str(port)],
                  {"TERM": "xterm", "HVDBG_HISTORY": str(tmp_path / "history"), "COLUMNS": "200"})
    try:
        sh.expect(r"hvdbg stopped vCPU0>")
        gdb.connect(port)
        gdb.mi("-gdb-set breakpoint always-inserted on")  # so the shell sees gdb's breakpoint while stopped
        gdb.console("break ap_entry")
        gdb.console("continue")
        stop = gdb.wait_for_stop()
        assert stop["frame"]["func"] == "ap_entry" and stop["thread-id"] == "2"
        sh.expect(r"\[stop\] vCPU 1 hit a breakpoint at 0x[0-9a-f]+ <ap_entry>")  # the shell sees gdb's stop
        sh.send("break\r")
        sh.expect(rf"-  {syms['ap_entry']:#x} <ap_entry> \(set by gdb\)")
        sh.send("regs 1\r")
        sh.expect(rf"rip {syms['ap_entry']:#x} <ap_entry>")
        assert re.search(rf"^\s+1\s+1\s+running\s+1\s+stopped\s+64-bit\s+{syms['ap_entry']:#x} <ap_entry>",
                         gdb.console("monitor vcpus"), re.M)
        assert gdb.value("$rip") == syms["ap_entry"]
        gdb.console("detach")
        sh.send("quit\r")
        assert sh.close() == 0
    finally:
        try:
            os.kill(sh.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_independent_boot_state_matches_the_shell(make_config, guest_kernels):
    """The multiboot information the shell reports is the one hvdbg's loader built."""
    cfg = make_config(vcpus=1, cmdline="a b c", memory="64M")
    vm = Machine(load_config(cfg))
    ebx = vm.boot.ebx
    flags, mem_lower, mem_upper = struct.unpack("<III", vm.memory.read(ebx, 12))
    p = shell(cfg, "mb")
    assert p.returncode == 0, p.stderr
    assert f"flags {flags:#x}:" in p.stdout
    assert f"mem_lower {mem_lower} KiB, mem_upper {mem_upper} KiB" in p.stdout
    assert mem_upper == (64 << 10) - 1024
    assert "cmdline 'a b c'" in p.stdout


def test_every_command_has_a_docs_page_with_an_example():
    """docs/commands/ has a page per registry command, with its usage and an example."""
    from pathlib import Path

    from hvdbg.ui.commands import COMMANDS

    docs = Path(__file__).resolve().parent.parent / "docs" / "commands"
    index = (docs / "README.md").read_text()
    for cmd in COMMANDS:
        page = docs / f"{cmd.name.replace(' ', '-')}.md"
        assert page.exists(), f"no page for {cmd.name!r}"
        text = page.read_text()
        assert text.startswith(f"# {cmd.name}\n"), page
        assert cmd.usage.split(" [")[0].split(" ")[0] in text and "## Example" in text and "```" in text, page
        assert f"]({page.name})" in index, f"{page.name} not linked from README.md"


def test_colourize_marks_errors_headings_symbols_and_the_current_instruction():
    from hvdbg.ui.shell import colourize

    assert colourize("error: no vCPU 9", ok=False) == "\x1b[31merror: no vCPU 9\x1b[0m"
    assert colourize("*** Guest State ***") == "\x1b[1m*** Guest State ***\x1b[0m"
    line = colourize("=> 0xffffff80001021a0 <work_run>:  push rbp")
    assert line.startswith("\x1b[32m=>\x1b[0m")
    assert "\x1b[33m<work_run>\x1b[0m" in line and "\x1b[36m0xffffff80001021a0\x1b[0m" in line
    assert "\x1b[31mnot present" in colourize("  PML4E[256] @GPA 0x103800 = 0x0  not present")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", colourize("GVA 0x1 <a+0x2> -> GPA 0x3"))
    assert plain == "GVA 0x1 <a+0x2> -> GPA 0x3"  # colour never changes the text
