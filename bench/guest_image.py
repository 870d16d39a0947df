"""Benchmark guest images: bench/guests/loop.S built with one workload and one iteration
count, plus what the raw-Unicorn baselines need to run the very same bytes (the
PT_LOAD segments and the addresses of the loop's first and last instruction).

The guest is described in bench/guests/loop.S; the data table below mirrors its
``WORKLOAD`` numbers and the instruction counts of each loop.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

GUESTS = Path(__file__).resolve().parent / "guests"
SOURCE = GUESTS / "loop.S"
LINKER_SCRIPT = GUESTS / "linker.ld"

DEBUG_EXIT_PORT = 0xF4
UNCLAIMED_PORT = 0x5F0            # 0x510 is QEMU fw_cfg (in hvdbg too since 79378d7)
UART_THR = 0x3F8
XAPIC_BASE = 0xFEE00000
XAPIC_SIZE = 0x1000


@dataclass(frozen=True)
class Workload:
    """One loop body of loop.S.

    ``setup`` and ``per_iteration`` count the instructions from ``work`` to
    ``work_done`` (checked against hvdbg's instruction counter by the benchmarks);
    ``exit_reason`` is the VM exit each iteration causes under hvdbg (None: no exit);
    ``hook`` is the raw-Unicorn hook kind that sees the same instruction.
    """

    name: str
    number: int
    setup: int
    per_iteration: int
    exit_reason: str | None
    hook: str | None
    text: str


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("alu", 0, 1, 4, None, None, "add; xor; sub; jnz (no exit)"),
    Workload("cpuid", 1, 1, 4, "CPUID", "cpuid", "xor eax,eax; cpuid (leaf 0)"),
    Workload("out_unclaimed", 2, 2, 3, "IO_INSTRUCTION", "out", f"out %al,(%dx) to port {UNCLAIMED_PORT:#x} (no device)"),
    Workload("out_uart", 3, 3, 3, "IO_INSTRUCTION", "out", f"out %al,(%dx) to the UART THR {UART_THR:#x}"),
    Workload("apic_read", 4, 1, 3, "APIC_ACCESS", "mmio", f"mov {XAPIC_BASE + 0x20:#x},%eax (xAPIC ID register)"),
)}


@dataclass(frozen=True)
class GuestImage:
    """A built benchmark guest."""

    path: Path
    workload: Workload
    iterations: int
    segments: tuple[tuple[int, bytes], ...]   # (physical address, bytes) of each PT_LOAD
    symbols: dict[str, int]

    @property
    def work(self) -> int:
        return self.symbols["work"]

    @property
    def work_done(self) -> int:
        return self.symbols["work_done"]

    def loop_instructions(self) -> int:
        """Guest instructions from ``work`` to ``work_done`` on one CPU."""
        return self.workload.setup + self.iterations * self.workload.per_iteration


class BuildError(RuntimeError):
    """gcc/ld are missing or the guest did not assemble."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"{name} not found: the benchmark guests need gcc and binutils (apt-get install gcc binutils)")
    return path


def build(workload: str, iterations: int, outdir: Path, msr_sites: int = 0) -> GuestImage:
    """Assemble and link loop.S for ``workload`` with ``iterations`` per CPU into ``outdir``;
    ``msr_sites`` never-executed RDMSR instructions are placed after the code."""
    w = WORKLOADS[workload]
    if not 1 <= iterations < 2**32:
        raise ValueError("iterations must fit in 32 bits")
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"{workload}-{iterations}-msr{msr_sites}"
    obj = outdir / f"{stem}.o"
    elf = outdir / f"{stem}.elf"
    _run([_tool("gcc"), "-m32", "-c", "-Wall", "-Werror", f"-DITERATIONS={iterations}",
          f"-DWORKLOAD={w.number}", f"-DMSR_SITES={msr_sites}", str(SOURCE), "-o", str(obj)])
    _run([_tool("ld"), "-m", "elf_i386", "-nostdlib", "-static", "-z", "max-page-size=0x1000",
          "-z", "noexecstack", "--no-warn-rwx-segments", "-T", str(LINKER_SCRIPT), "-o", str(elf), str(obj)])
    return load(elf, w, iterations)


def load(elf_path: Path, workload: Workload, iterations: int) -> GuestImage:
    data = elf_path.read_bytes()
    elf = ELFFile(io.BytesIO(data))
    segments = tuple((seg["p_paddr"], seg.data() + bytes(seg["p_memsz"] - seg["p_filesz"]))
                     for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
    symtab = elf.get_section_by_name(".symtab")
    symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
    for needed in ("_start", "work", "work_done"):
        if needed not in symbols:
            raise BuildError(f"{elf_path}: symbol {needed} missing")
    return GuestImage(elf_path, workload, iterations, segments, symbols)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
