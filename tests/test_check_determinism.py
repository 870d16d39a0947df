"""``hvdbg check-determinism``: two deterministic runs must repeat bit for bit, and a run on
host threads is compared with them (outcome, exit status, serial output)."""

from __future__ import annotations

import subprocess
import sys

from hvdbg.api.determinism import DeterminismReport, ModeRun


def test_cli_reports_repeatable_runs_and_the_same_guest_output(guest_kernels):
    out = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "check-determinism", "examples/smp-4vcpu.toml",
                          "--vcpus", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["deterministic", "deterministic", "host"]
    assert lines[0].split("trace")[1] == lines[1].split("trace")[1]      # the same trace hash
    assert "deterministic runs repeat bit for bit" in out.stdout
    assert "same outcome and serial output" in out.stdout


def test_a_difference_between_the_modes_is_named_with_its_first_line():
    det = ModeRun("deterministic", "exited", 0, "aa", 100, "boot\nlock ok counter 8000\n")
    threads = ModeRun("host threads", "hang", None, "bb", 900, "boot\nlock: cpu 2 waits forever\n")
    report = DeterminismReport((det, det, threads))
    assert report.repeatable
    diffs = report.differences()
    assert diffs[0] == "outcome: deterministic exited (status 0), host threads hang (status None)"
    assert diffs[1].startswith("serial output differs from line 2: deterministic 'lock ok counter 8000'")
    assert any("depends on the interleaving" in line for line in report.lines())
    broken = DeterminismReport((det, ModeRun("deterministic", "exited", 0, "ab", 100, det.serial), det))
    assert not broken.repeatable and any("DETERMINISTIC RUNS DIFFER" in line for line in broken.lines())
