"""P5: how hvdbg's time grows: the bug scenarios and SMP boots of 1 to 64 vCPUs.

Every row is one ``hvdbg run CONFIG --json`` command (a subprocess, as a user runs it):

- ``boot-1`` (the baseline): the SMP test kernel on 1 vCPU, pinned executor;
- ``pinned-N``: ``examples/smp-4vcpu.toml --vcpus N --pcpus N`` (one host thread per vCPU);
- ``det-N``: ``... --vcpus N --deterministic`` (one host thread, instruction-counted slices);
- ``det-N-on-P`` (``--overcommit P``): ``... --vcpus N --pcpus P --deterministic``, N vCPUs
  time-sharing P pCPUs, where spinning vCPUs take PAUSE-loop exits;
- ``pinned-N-skip`` / ``det-N-skip`` (``--spin-skip N``): the same boots with ``--spin-skip``
  (loops without progress skip the rest of their slice; pinned threads also yield their core);
- ``bug-*``: each ``examples/bugs/0N-*.toml`` as it is (4 vCPUs, deterministic).

A boot counts only if the guest exited with status 0 after printing ``smp: N of N CPUs
online`` and ``sum ok`` (every AP up and the shared sum right); a bug scenario must end
with the outcome it was written for (not "budget"). Ratios are taken against ``boot-1``
in the same round (median over rounds): "run" = hvdbg's own wall time of the guest run
(the JSON's wall_seconds), "command" = the whole process (start-up, image load, VM
construction included). The guest is the same binary everywhere; with N CPUs the BSP
starts the APs one by one (INIT-SIPI-SIPI, each waits for the previous one to be online)
while the online APs spin with ``pause`` until released.

    python bench/p5_scale.py [--quick] [--repeats N] [--json FILE] [--max-vcpus N] [--det-max-vcpus N]
                             [--overcommit P] [--spin-skip N] [--no-bugs]
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import harness
from harness import ROOT, median

CONFIG = ROOT / "examples" / "smp-4vcpu.toml"
GUEST = ROOT / "guests" / "build" / "smp.elf"
QEMU = shutil.which("qemu-system-x86_64")
BUGS = ROOT / "examples" / "bugs"
VCPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_MAX_VCPUS = 64
DEFAULT_DET_MAX_VCPUS = 16        # beyond this the deterministic boot grows ~N^2 (PAUSE exits): see docs
QUICK_MAX_VCPUS = 2
DEFAULT_REPEATS = 3
BUDGET_SECONDS = 600
#: smp-4vcpu.toml allows 2 G instructions; 64 spinning vCPUs execute ~1.4 G before the last AP is up
RUN_LIMITS = ("--seconds", str(BUDGET_SECONDS), "--budget", str(50_000_000_000))
_ONLINE = re.compile(r"^smp: (\d+) of (\d+) CPUs online$", re.M)


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Sample:
    """One ``hvdbg run``: ``run_seconds`` from hvdbg's JSON (the executor's run),
    ``command_seconds`` and ``cpu_seconds`` (user + system of the child) measured here."""

    run_seconds: float
    command_seconds: float
    cpu_seconds: float
    instructions: int
    exits: int
    pause_exits: int
    outcome: str
    detail: str


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    args: tuple[str, ...]
    vcpus: int | None = None        # a boot: N of N CPUs must come online
    expect: str | None = None       # a bug scenario: the outcome it was written for
    baselines: tuple[str, ...] = ("boot-1",)
    qemu: bool = False              # args are QEMU's, the row times qemu-system-x86_64


def run_row(row: Row) -> Sample:
    return run_qemu(row) if row.qemu else run_hvdbg(row)


def run_qemu(row: Row) -> Sample:
    """The same kernel under QEMU TCG (as tests/test_guests_qemu.py boots it): command time only."""
    with tempfile.TemporaryDirectory(prefix="hvdbg-p5-") as d:
        serial = Path(d) / "serial.txt"
        cmd = [QEMU, *row.args, "-display", "none", "-monitor", "none", "-no-reboot", "-serial", f"file:{serial}",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUDGET_SECONDS)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = serial.read_text(errors="replace") if serial.exists() else ""
    # isa-debug-exit: QEMU exits with (status << 1) | 1
    status = proc.returncode >> 1 if proc.returncode & 1 else None
    res = {"outcome": "exited" if status is not None else "other", "exit_status": status, "serial": text,
           "diagnosis": []}
    return Sample(seconds, seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                  0, 0, 0, res["outcome"], check(row, res))


def run_hvdbg(row: Row) -> Sample:
    cmd = [sys.executable, "-m", "hvdbg.ui.cli", "run", *row.args, "--json", "--compact"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUDGET_SECONDS + 120)
    command_seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        res = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"{row.key}: no JSON from `{' '.join(cmd)}`: {proc.stderr[-2000:]}") from None
    exits = res.get("exits", {})
    return Sample(res["wall_seconds"], command_seconds,
                  (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                  res["instructions"], sum(exits.values()), exits.get("PAUSE_INSTRUCTION", 0),
                  res["outcome"], check(row, res))


def check(row: Row, res: dict) -> str:
    """Raise unless the run did what the row is about; return a short description."""
    serial = res.get("serial", "")
    if row.vcpus is not None:
        online = _ONLINE.findall(serial)
        ok = (res["outcome"] == "exited" and res["exit_status"] == 0 and online == [(str(row.vcpus),) * 2]
              and re.search(r"^sum ok \d+$", serial, re.M))
        if not ok:
            raise BenchError(f"{row.key}: outcome {res['outcome']}, exit status {res['exit_status']}, "
                             f"online lines {online}, last serial line {serial.splitlines()[-1:]}")
        return f"{row.vcpus} of {row.vcpus} CPUs online, sum ok"
    if res["outcome"] != row.expect:
        raise BenchError(f"{row.key}: outcome {res['outcome']}, expected {row.expect}: {res['diagnosis'][:2]}")
    return res["diagnosis"][0] if res["diagnosis"] else res["outcome"]


def boot_rows(max_vcpus: int, det_max_vcpus: int, overcommit: int = 0, spin_skip_max: int = 0) -> list[Row]:
    rows = [Row("boot-1", "smp.elf, 1 vCPU, pinned", (str(CONFIG), "--vcpus", "1", "--pcpus", "1"), vcpus=1)]
    for n in VCPU_COUNTS:
        if 1 < n <= max_vcpus:
            rows.append(Row(f"pinned-{n}", f"smp.elf, {n} vCPUs on {n} pCPUs (pinned)",
                            (str(CONFIG), "--vcpus", str(n), "--pcpus", str(n)), vcpus=n))
    for n in VCPU_COUNTS:
        if n <= det_max_vcpus:
            rows.append(Row(f"det-{n}", f"smp.elf, {n} vCPU(s), deterministic",
                            (str(CONFIG), "--vcpus", str(n), "--deterministic"), vcpus=n))
    for n in VCPU_COUNTS:
        if 1 < n <= spin_skip_max:
            rows.append(Row(f"pinned-{n}-skip", f"smp.elf, {n} vCPUs on {n} pCPUs (pinned), --spin-skip",
                            (str(CONFIG), "--vcpus", str(n), "--pcpus", str(n), "--spin-skip"), vcpus=n,
                            baselines=("boot-1", f"pinned-{n}")))
            rows.append(Row(f"det-{n}-skip", f"smp.elf, {n} vCPUs, deterministic, --spin-skip",
                            (str(CONFIG), "--vcpus", str(n), "--deterministic", "--spin-skip"), vcpus=n,
                            baselines=("boot-1", f"det-{n}")))
    if overcommit:
        for n in VCPU_COUNTS:
            if overcommit < n <= det_max_vcpus:
                rows.append(Row(f"det-{n}-on-{overcommit}", f"smp.elf, {n} vCPUs on {overcommit} pCPUs, deterministic "
                                f"(overcommitted: PAUSE-loop exiting)", (str(CONFIG), "--vcpus", str(n), "--pcpus",
                                                                         str(overcommit), "--deterministic"), vcpus=n))
    rows = [Row(r.key, r.label, r.args + RUN_LIMITS, r.vcpus, baselines=r.baselines) for r in rows]
    if QEMU is not None:
        for n in VCPU_COUNTS:
            if n <= max_vcpus:
                rows.append(Row(f"qemu-{n}", f"the same kernel under QEMU TCG, -smp {n}",
                                ("-kernel", str(GUEST), "-smp", str(n), "-m", "128"), vcpus=n,
                                baselines=("qemu-1",) + ((f"pinned-{n}",) if n > 1 else ("boot-1",)), qemu=True))
    return rows


def bug_rows() -> list[Row]:
    rows = []
    for path in sorted(BUGS.glob("0*.toml")):
        expect = EXPECTED_BUG_OUTCOMES.get(path.stem)
        if expect is None:
            raise BenchError(f"{path.name}: add its expected outcome to EXPECTED_BUG_OUTCOMES")
        rows.append(Row(f"bug-{path.stem[:2]}" + ("-pf" if path.stem.endswith("pf-exit") else ""),
                        f"examples/bugs/{path.name}", (str(path),), expect=expect))
    return rows


EXPECTED_BUG_OUTCOMES = {          # as tests/test_bug_scenarios.py asserts them
    "01-multiboot-magic": "hang",
    "02-ept-violation-16mib": "ept_violation",
    "03-temporary-pml4": "triple_fault",
    "03-temporary-pml4-pf-exit": "exception",
    "04-sipi-hpa-offset": "ept_violation",
    "05-shared-apic-id": "exited",    # exit status 0x8d: the guest's #GP handler
    # the same bugs inside a guest hypervisor (guests/minivisor): it stops with status 0x70
    "06-nested-multiboot-magic": "hang",
    "07-nested-ept-16mib": "exited",
    "08-nested-temporary-pml4": "exited",
    "09-nested-sipi-hpa": "exited",
    "10-nested-shared-apic-id": "exited",
}


# -- the table -----------------------------------------------------------------------------
def measure(rows: list[Row], repeats: int) -> dict[str, list[Sample]]:
    """One untimed boot-1 (page cache, .pyc), then ``repeats`` rounds of every row."""
    run_row(rows[0])
    samples: dict[str, list[Sample]] = {r.key: [] for r in rows}
    for i in range(repeats):
        for row in rows:
            samples[row.key].append(run_row(row))
            harness.log(f"round {i + 1}/{repeats}: {row.key} {samples[row.key][-1].run_seconds:.2f} s")
    return samples


def ratios(s: list[Sample], samples: dict[str, list[Sample]], baselines: tuple[str, ...], field: str) -> str:
    """'1.23x of boot-1; ...': median over rounds of this row / the baseline in the same round."""
    parts = []
    for b in baselines:
        pairs = [(getattr(x, field), getattr(y, field)) for x, y in zip(s, samples.get(b, []))]
        if pairs and all(y for _, y in pairs):
            parts.append(f"{median([x / y for x, y in pairs]):.2f}x of {b}")
    return "; ".join(parts) or "-"


def render(rows: list[Row], samples: dict[str, list[Sample]]) -> tuple[str, list[dict]]:
    header = ["case", "configuration", "run s (median)", "min .. max", "run ratio", "command s", "command ratio",
              "guest instructions", "instr ratio", "M instr/s", "VM exits (PAUSE)", "CPU/wall", "result"]
    lines = ["### P5 scaling: bug scenarios and SMP boots", "",
             "run = hvdbg's wall time of the guest run (JSON wall_seconds; for QEMU rows the whole command); "
             "command = the whole `hvdbg run` process. Ratios = median over rounds of (this row / the named row in "
             "the same round). CPU/wall = the child's user+system CPU time / its command wall time (the host "
             "cores it got). Instructions: all vCPUs, spin loops included.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out = []
    present = {r.key for r in rows}
    for row in rows:
        s = samples[row.key]
        bases = tuple(b for b in row.baselines if b in present and b != row.key)
        instructions = median([x.instructions for x in s])
        lines.append("| " + " | ".join([
            row.key, row.label, f"{median([x.run_seconds for x in s]):.3g}",
            f"{min(x.run_seconds for x in s):.3g} .. {max(x.run_seconds for x in s):.3g}",
            ratios(s, samples, bases, "run_seconds"), f"{median([x.command_seconds for x in s]):.3g}",
            ratios(s, samples, bases, "command_seconds"),
            f"{instructions:,.0f}" if not row.qemu else "-",
            ratios(s, samples, bases, "instructions") if not row.qemu else "-",
            f"{median([x.instructions / max(x.run_seconds, 1e-3) for x in s]) / 1e6:.3g}" if not row.qemu else "-",
            f"{median([x.exits for x in s]):,.0f} ({median([x.pause_exits for x in s]):,.0f})" if not row.qemu
            else "-",
            f"{median([x.cpu_seconds / x.command_seconds for x in s]):.2f}", s[-1].detail]) + " |")
        shown = [str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in row.args]
        out.append({"key": row.key, "label": row.label,
                    "command": ("qemu-system-x86_64 " if row.qemu else "hvdbg run ") + " ".join(shown),
                    "baselines": list(bases), "samples": [asdict(x) for x in s]})
    return "\n".join(lines), out


def add_arguments(p) -> None:
    p.add_argument("--max-vcpus", type=int, default=None,
                   help=f"largest pinned boot (default {DEFAULT_MAX_VCPUS}; {QUICK_MAX_VCPUS} with --quick)")
    p.add_argument("--det-max-vcpus", type=int, default=None,
                   help=f"largest deterministic boot (default {DEFAULT_DET_MAX_VCPUS}; {QUICK_MAX_VCPUS} with --quick)")
    p.add_argument("--no-bugs", action="store_true", help="boots only")
    p.add_argument("--spin-skip", type=int, default=0, metavar="N",
                   help="also pinned and deterministic boots with --spin-skip, up to N vCPUs")
    p.add_argument("--overcommit", type=int, default=0, metavar="P",
                   help="also deterministic boots of N > P vCPUs on P pCPUs (up to --det-max-vcpus)")


def main() -> None:
    opts = harness.parse_args(__doc__.splitlines()[0], DEFAULT_REPEATS, add_arguments)
    a = opts.args
    max_vcpus = a.max_vcpus or (QUICK_MAX_VCPUS if opts.quick else DEFAULT_MAX_VCPUS)
    det_max = a.det_max_vcpus or (QUICK_MAX_VCPUS if opts.quick else DEFAULT_DET_MAX_VCPUS)
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    rows = boot_rows(max_vcpus, det_max, a.overcommit, a.spin_skip)
    if not a.no_bugs:
        rows += bug_rows()
    harness.print_header("P5: scaling with the number of vCPUs, bug scenarios", opts, {
        "guest": "guests/build/smp.elf (examples/smp-4vcpu.toml with --vcpus/--pcpus/--deterministic), "
                 "and examples/bugs/*.toml",
        "rows": ", ".join(r.key for r in rows),
        "time budget per run": f"{BUDGET_SECONDS} s",
    })
    samples = measure(rows, opts.repeats)
    text, table = render(rows, samples)
    print(text)
    print(flush=True)
    if opts.json is not None:
        # harness.finish writes the machine and the tables; this table has its own columns
        opts.json.write_text(json.dumps({"machine": harness.machine_description(),
                                         "tables": [{"title": "P5 scaling", "rows": table}]}, indent=2))
        opts.json = None
    harness.finish(opts, [])


if __name__ == "__main__":
    main()
