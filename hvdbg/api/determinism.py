"""Does a run depend on host timing?  The same config run twice deterministically (the
exit traces must be identical, bit for bit) and once on host threads (host-timed
interleaving): a difference in outcome, exit status or serial output between the modes
points at a race in the guest that only some interleavings show, or at hvdbg itself.
``hvdbg check-determinism CONFIG`` prints the comparison."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvdbg.config import VmConfig


@dataclass(frozen=True)
class ModeRun:
    """The facts of one run that are compared."""

    mode: str
    outcome: str
    exit_status: int | None
    trace_hash: str
    instructions: int
    serial: str

    @classmethod
    def of(cls, mode: str, result: dict[str, Any]) -> "ModeRun":
        return cls(mode, result["outcome"], result["exit_status"], result["trace_hash"], result["instructions"],
                   result["serial"])


@dataclass(frozen=True)
class DeterminismReport:
    runs: tuple[ModeRun, ...]       # deterministic, deterministic again, threads

    @property
    def repeatable(self) -> bool:
        """Both deterministic runs gave the same exit trace."""
        return self.runs[0].trace_hash == self.runs[1].trace_hash

    def differences(self) -> list[str]:
        """What differs between the deterministic run and the host-threaded one (an empty
        list: the same outcome, status and serial output)."""
        det, _, threads = self.runs
        out = []
        if (det.outcome, det.exit_status) != (threads.outcome, threads.exit_status):
            out.append(f"outcome: deterministic {det.outcome} (status {det.exit_status}), "
                       f"host threads {threads.outcome} (status {threads.exit_status})")
        if det.serial != threads.serial:
            a, b = det.serial.splitlines(), threads.serial.splitlines()
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            line = lambda lines: lines[first] if first < len(lines) else "(end of output)"  # noqa: E731
            out.append(f"serial output differs from line {first + 1}: deterministic {line(a)!r}, "
                       f"host threads {line(b)!r}")
        return out

    def lines(self) -> list[str]:
        out = [f"{r.mode:<16} {r.outcome:<14} status {r.exit_status!s:<5} {r.instructions:>14,} instructions  "
               f"trace {r.trace_hash[:16]}" for r in self.runs]
        out.append("deterministic runs repeat bit for bit" if self.repeatable else
                   "DETERMINISTIC RUNS DIFFER: hvdbg broke its own determinism (please report it)")
        diffs = self.differences()
        out += diffs or ["host threads: same outcome and serial output as the deterministic run"]
        if diffs:
            out.append("the guest's behaviour depends on the interleaving of its vCPUs: look for a race "
                       "(a lock, a flag read without a barrier) near the first difference")
        return out


def check(config: str | Path | VmConfig, **overrides: Any) -> DeterminismReport:
    from hvdbg.api import run

    runs = []
    for mode, deterministic in (("deterministic", True), ("deterministic", True), ("host threads", False)):
        result = run(config, include_stats=False, stop_on_interrupt=True, deterministic=deterministic,
                     **overrides).result
        runs.append(ModeRun.of(mode, result))
    return DeterminismReport(tuple(runs))
