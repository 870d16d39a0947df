"""Smoke runs of the benchmark scripts (bench/): each one, with --quick, must finish and
print its table with a row per configuration and a numeric ratio against its baseline.
Not a timed pass/fail test: the figures of a --quick run are not checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import debugger_tools

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ld") is None,
                                reason="the benchmark guest needs gcc and binutils")

# script -> (table titles, row keys every table of that script must have)
SCRIPTS = {
    "p1_compute.py": (["P1 guest compute"], ["raw", "raw-count", "raw-sliced", "hv-1", "hv-1-msr", "raw-2t", "raw-4t", "hv-2", "hv-4"]),
    "p2_deterministic.py": (["P2 deterministic executor", "P2 slice-length sweep"], ["det-"]),
    "p3_exits.py": (["P3 cpuid", "P3 out_unclaimed", "P3 out_uart", "P3 apic_read"],
                    ["raw-hook", "hv-1", "det-1", "raw-hook-4t", "hv-4", "det-4"]),
    "p4_gdb.py": (["P4 stepi in 32-bit entry code", "P4 stepi in 64-bit code", "P4 dump binary memory",
                   "P4 register reads", "P4 x/Nbx"]
                  + (["P4 pwndbg"] if debugger_tools.missing() is None else [])   # pwndbg installed
                  + ["P4 per-packet round trips"],
                  ["qemu-step32", "hv-step32", "qemu-step64", "hv-step64", "qemu-dump", "hv-dump", "qemu-regs",
                   "hv-regs", "qemu-xbytes", "hv-xbytes", "qemu-g", "hv-g", "qemu-m64", "hv-m64", "qemu-vcont-s",
                   "hv-vcont-s", "floor-qC"]),
}

# what a script needs besides gcc/binutils: P4 drives a real gdb against QEMU and hvdbg
REQUIRES = {
    "p4_gdb.py": {"gdb": shutil.which("gdb"), "qemu-system-x86_64": shutil.which("qemu-system-x86_64")},
}


def run_quick(script: str, tmp_path: Path) -> tuple[str, dict]:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(out.read_text())


def table_rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| case ")]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_quick_run_prints_its_tables(script, tmp_path):
    missing = [tool for tool, path in REQUIRES.get(script, {}).items() if path is None]
    if missing:
        pytest.skip(f"{script} needs {', '.join(missing)} (scripts/setup.sh installs them)")
    stdout, result = run_quick(script, tmp_path)
    titles, keys = SCRIPTS[script]
    for title in titles:
        assert re.search(rf"^### {re.escape(title)}", stdout, re.M), f"table '{title}' missing"
    assert "- nproc:" in stdout and "- python:" in stdout and "Command: `python bench/" in stdout

    rows = table_rows(stdout)
    printed = {r[0] for r in rows}
    for key in keys:
        assert any(p.startswith(key) for p in printed), f"row {key} missing"
    for r in rows:
        assert re.fullmatch(r"[\d.]+ [kMG]?", r[2]) or re.fullmatch(r"[\d.]+", r[2]), r
        if r[4] != "-":
            assert re.match(r"[\d.]+x of \S+", r[4]), r

    # the JSON mirrors the printed tables, with one sample per round and positive rates
    assert len(result["tables"]) == len(titles)
    for table, title in zip(result["tables"], titles):
        assert table["title"].startswith(title)
    for table in result["tables"]:
        for row in table["rows"]:
            assert len(row["samples"]) == 1
            assert row["median"] > 0 and row["cores"] > 0
            for ratio in row["ratios"].values():
                assert ratio > 0


def test_p5_scale_quick_run_boots_and_replays_every_bug(tmp_path):
    stdout, result = run_quick("p5_scale.py", tmp_path)
    assert re.search(r"^### P5 scaling", stdout, re.M)
    rows = {r[0]: r for r in table_rows(stdout)}
    bugs = sorted(p.stem[:2] for p in (ROOT / "examples" / "bugs").glob("0*.toml"))
    expected = {"boot-1", "pinned-2", "det-1", "det-2"} | {f"bug-{b}" for b in set(bugs)}
    if shutil.which("qemu-system-x86_64"):
        expected |= {"qemu-1", "qemu-2"}
    assert expected <= set(rows), sorted(rows)
    for key in ("boot-1", "pinned-2", "det-1", "det-2"):
        n = key.split("-")[1]
        assert rows[key][-1] == f"{n} of {n} CPUs online, sum ok"
    assert re.fullmatch(r"[\d.]+x of boot-1", rows["pinned-2"][4]), rows["pinned-2"]

    samples = {row["key"]: row["samples"] for row in result["tables"][0]["rows"]}
    assert all(len(s) == 1 for s in samples.values())
    # one vCPU executes the same guest instructions on the pinned and the deterministic executor
    assert samples["boot-1"][0]["instructions"] == samples["det-1"][0]["instructions"] > 1_000_000
    # two vCPUs: the AP's instructions come on top
    assert samples["det-2"][0]["instructions"] > samples["det-1"][0]["instructions"]
    outcomes = {key: s[0]["outcome"] for key, s in samples.items() if key.startswith("bug-")}
    assert outcomes["bug-01"] == "hang" and outcomes["bug-02"] == "ept_violation"


def test_micro_costs_prints_each_pair(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "micro_costs.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| operation")]
    names = [r.split("|")[1].strip() for r in rows]
    assert any(n.startswith("uc.reg_read") for n in names) and any(n.startswith("ExitTrace.record") for n in names)
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[3]) > 0


def test_ratio_is_the_median_of_per_round_ratios():
    from bench import harness
    # round 2 is a slow moment of the host for both sides: the per-round ratio stays 0.5
    base = [harness.Run(100, 0, 1.0, cpu_seconds=1.0), harness.Run(100, 0, 4.0, cpu_seconds=1.0),
            harness.Run(100, 0, 1.0, cpu_seconds=1.0)]
    case = [harness.Run(100, 0, 2.0, cpu_seconds=2.0), harness.Run(100, 0, 8.0, cpu_seconds=2.0),
            harness.Run(100, 0, 2.5, cpu_seconds=2.5)]
    runs = {"a": base, "b": case}
    cases = [harness.Case("a", "A", lambda: base[0]), harness.Case("b", "B", lambda: case[0], ("a",), target=0.45)]
    rows = harness.summarize(harness.GUEST_INSTRUCTIONS, cases, runs)
    assert rows[0].median == 100.0 and rows[0].ratios == {}
    assert rows[1].ratios == {"a": 0.5}
    assert rows[1].met is True and rows[1].target == ">= 0.45x"
    # rates 50, 12.5, 40: the median of rates is 40, the median of per-round ratios 0.5
    assert rows[1].median == 40.0 and (rows[1].low, rows[1].high) == (12.5, 50.0)
    assert rows[1].cores == 1.0 and rows[0].cores == 1.0  # round 2 got a quarter of a core
    text = harness.render("T", harness.GUEST_INSTRUCTIONS, rows)
    assert rows[1].cpu_ratios == {"a": 0.5}
    assert "| b | B | 40 | 12.5 .. 50 | 0.500x of a | 0.500x | 1.00 |" in text
    # a run that got half a core: 40 instr/s of wall time is 80 per CPU-second
    assert harness.per_cpu_second(harness.GUEST_INSTRUCTIONS, harness.Run(100, 0, 2.5, cpu_seconds=1.25)) == 80.0
