"""pwndbg and GEF, unchanged, against `hvdbg run --gdb` (real gdb 13 over MI, the SMP kernel).

Both tools take hvdbg for QEMU system mode and then rely on QEMU's monitor: pwndbg's
``vmmap`` runs gdb-pt-dump (``pgrep qemu-system``, ``monitor gpa2hva``, /proc/PID/mem),
GEF's memory layout is ``monitor info mem``.  The tools are installed once per test
session from the snapshots in ../shared/third_party into a venv of the Python gdb embeds
(/usr/bin/python3.11), cached under /tmp by the archives' hash; the tests are skipped
with a reason when the snapshots, gdb or that Python are missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygdbmi.gdbcontroller")
import debugger_tools  # noqa: E402
from helpers import Gdb  # noqa: E402

from fuzz.common import free_port_block as free_port  # noqa: E402

#: What a user must not see in a tool's output.
ERROR_TEXT = re.compile(r"Traceback|Exception|Error|error:|Permission error|Failed to|\[!\]|not supported|"
                        r"Cannot access memory")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

pytestmark = pytest.mark.skipif(debugger_tools.missing() is not None,
                                reason=str(debugger_tools.missing()))


@pytest.fixture(scope="session")
def tools() -> dict[str, Path]:
    """{"pwndbg": gdbinit.py, "gef": gef.py} (tests/debugger_tools.py)."""
    try:
        return debugger_tools.install()
    except debugger_tools.ToolsMissing as e:
        pytest.skip(str(e))


@pytest.fixture
def hvdbg(make_config):
    procs = []

    def start(vcpus: int = 1) -> int:
        port = free_port(vcpus + 1)
        p = subprocess.Popen([sys.executable, "-m", "hvdbg.ui.cli", "run", str(make_config(vcpus=vcpus)),
                              "--gdb", str(port), "--gdb-wait", "--json", "--compact"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        line = p.stderr.readline()
        assert "gdb stub for all" in line, line
        return port

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _gdb_at_kmain(script: Path, port: int, kernels: Path, *before: str) -> Gdb:
    g = Gdb(timeout=120)
    for command in ("-gdb-set confirm off", "-gdb-set pagination off", "-gdb-set width 0"):
        g.mi(command)
    g.console(f"source {script}")
    for command in before:
        g.console(command)
    g.console(f"file {kernels / 'smp.elf'}")
    g.console(f"target remote :{port}", allow_error=True)   # see the GEF note in docs/gdb.md
    g.console("break kmain")
    g.console("continue")
    g.wait_for_stop()
    return g


def _clean(text: str) -> str:
    return ANSI.sub("", text)


def _ranges(text: str, pattern: str) -> list[tuple[int, int]]:
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(pattern, text, re.M)]


def _info_mem(g: Gdb) -> list[tuple[int, int]]:
    return _ranges(g.console("monitor info mem"), r"^([0-9a-f]{16})-([0-9a-f]{16}) ")


def _pt_map(g: Gdb) -> list[tuple[int, int]]:
    """``monitor pt map`` as [start, end) pairs."""
    return [(a, b + 1) for a, b in _ranges(g.console("monitor pt map"), r"^(0x[0-9a-f]+)-(0x[0-9a-f]+) ")]


def test_pwndbg_context_vmmap_telescope_nearpc_regs(tools, hvdbg, guest_kernels):
    port = hvdbg()
    g = _gdb_at_kmain(tools["pwndbg"], port, guest_kernels, "set disable-colors on")
    try:
        expected = _pt_map(g)
        assert expected and expected == _info_mem(g)   # the guest's 3 mapped ranges
        outputs = {}
        for command in ("context", "vmmap", "telescope $rsp 4", "nearpc", "regs"):
            outputs[command] = out = _clean(g.console(command))
            assert not ERROR_TEXT.search(out), f"{command}:\n{out}"
        assert "kmain" in outputs["context"] and "boot_stack" in outputs["context"]
        vmmap = _ranges(outputs["vmmap"], r"^\s*(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+r")
        assert vmmap == expected, outputs["vmmap"]      # from gdb-pt-dump, not <explored> guesses
        assert "boot_stack" in outputs["telescope $rsp 4"]
        assert "<kmain>" in outputs["nearpc"] and "push" in outputs["nearpc"]
        assert "RIP" in outputs["regs"] and "kmain" in outputs["regs"]
        assert "0xffffff80001024c0" in _clean(g.console("monitor info registers")).lower() \
            or "GDT=" in g.console("monitor info registers")
    finally:
        g.close()


def test_gef_context_vmmap_xinfo_registers(tools, hvdbg, guest_kernels):
    port = hvdbg()
    g = _gdb_at_kmain(tools["gef"], port, guest_kernels, "gef config context.clear_screen False",
                      "gef config gef.disable_color True")
    try:
        expected = _info_mem(g)
        assert expected == _pt_map(g)
        outputs = {}
        for command in ("context", "vmmap", "xinfo $rsp", "registers"):
            outputs[command] = out = _clean(g.console(command))
            assert not ERROR_TEXT.search(out), f"{command}:\n{out}"
        assert "kmain" in outputs["context"] and "$rip" in outputs["context"]
        vmmap = _ranges(outputs["vmmap"], r"^(0x[0-9a-f]{16}) (0x[0-9a-f]{16}) ")
        assert vmmap == expected, outputs["vmmap"]
        assert "Page: 0xffffff8000000000" in outputs["xinfo $rsp"]
        assert "boot_stack" in outputs["xinfo $rsp"]
        assert "$rip" in outputs["registers"] and "$rsp" in outputs["registers"]
    finally:
        g.close()


def test_gdb_pt_dump_pt_command(tools, hvdbg, guest_kernels):
    """gdb-pt-dump's own ``pt`` lists the guest's mappings (it reads the page tables from
    hvdbg's memory at ``monitor gpa2hva``'s host address)."""
    port = hvdbg()
    g = _gdb_at_kmain(tools["pwndbg"], port, guest_kernels, "set disable-colors on")
    try:
        out = _clean(g.console("pt"))
        assert not ERROR_TEXT.search(out), out
        starts = [int(a, 16) for a in re.findall(r"^\s*(0x[0-9a-f]+) :", out, re.M)]
        assert starts == [a for a, _ in _pt_map(g)], out
    finally:
        g.close()
