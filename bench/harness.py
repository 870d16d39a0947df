"""Common benchmark harness: interleaved repeats, medians, ratios and Markdown tables.

The machine is noisy, so no figure is an absolute time alone: every table row is run
side by side with its baseline in the same process, the cases are interleaved round
by round (round r runs every case once), and a ratio is the median over rounds of
``metric(case in round r) / metric(baseline in round r)``, so a slow moment of the
host affects both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    """What one timed run did.  ``seconds`` covers only the guest execution (engine
    and VM construction are outside the timed region, for raw Unicorn and hvdbg alike);
    ``cpu_seconds`` is the process CPU time (all threads) in the same region, so
    ``cpu_seconds / seconds`` is the number of host cores the run really got;
    ``switches`` counts the process's context switches (voluntary + involuntary, all
    threads) in the region: GIL hand-offs between vCPU threads show up there."""

    instructions: int
    exits: int
    seconds: float
    vcpus: int = 1
    slices: int = 0
    cpu_seconds: float = 0.0
    switches: int = 0


class Timer:
    """Wall-clock and process CPU time of a region: ``with Timer() as t: ...``."""

    def __enter__(self) -> "Timer":
        self._switches = _context_switches()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
        self.switches = _context_switches() - self._switches


def _context_switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


@dataclass(frozen=True)
class Metric:
    """What a table compares: a rate computed from a :class:`Run`."""

    title: str
    unit: str
    rate: Callable[[Run], float]


GUEST_INSTRUCTIONS = Metric("guest instructions/s (all vCPUs)", "instr/s", lambda r: r.instructions / r.seconds)
EXITS_PER_VCPU = Metric("VM exits (or hook calls)/s per vCPU", "exits/s", lambda r: r.exits / r.seconds / r.vcpus)


@dataclass
class Case:
    """One table row.  ``baselines`` name the cases this row's ratios are taken against
    (the first one also feeds ``target`` and ``note``); ``target`` is the ratio (or, with
    ``target_rate``, the rate) the issue asks for; ``note`` derives an extra column from
    this row's and the first baseline's runs."""

    key: str
    label: str
    run: Callable[[], Run]
    baselines: tuple[str, ...] = ()
    target: float | None = None
    target_rate: float | None = None
    note: Callable[[list[Run], list[Run] | None], str] | None = None


@dataclass
class Row:
    key: str
    label: str
    median: float
    low: float
    high: float
    ratios: dict[str, float]
    cpu_ratios: dict[str, float]
    cores: float
    target: str
    met: bool | None
    note: str
    samples: list[float] = field(default_factory=list)


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(cases: list[Case], repeats: int, warmup: bool = True, log: Callable[[str], None] | None = None
            ) -> dict[str, list[Run]]:
    """Run every case ``repeats`` times, interleaved round by round (plus one untimed
    warm-up round that loads code and fills the host caches)."""
    runs: dict[str, list[Run]] = {c.key: [] for c in cases}
    if warmup:
        for c in cases:
            c.run()
    for r in range(repeats):
        for c in cases:
            runs[c.key].append(c.run())
        if log:
            log(f"round {r + 1}/{repeats} done")
    return runs


def summarize(metric: Metric, cases: list[Case], runs: dict[str, list[Run]]) -> list[Row]:
    rows = []
    for c in cases:
        rates = [metric.rate(r) for r in runs[c.key]]
        ratios = {b: median([metric.rate(x) / metric.rate(y) for x, y in zip(runs[c.key], runs[b])])
                  for b in c.baselines}
        cpu_ratios = {b: median([per_cpu_second(metric, x) / per_cpu_second(metric, y)
                                 for x, y in zip(runs[c.key], runs[b])]) for b in c.baselines}
        base_runs = runs[c.baselines[0]] if c.baselines else None
        target, met = "", None
        if c.target is not None and c.baselines:
            target, met = f">= {c.target:g}x", ratios[c.baselines[0]] >= c.target
        elif c.target_rate is not None:
            target, met = f">= {_si(c.target_rate)}", median(rates) >= c.target_rate
        cores = median([r.cpu_seconds / max(r.seconds, 1e-9) for r in runs[c.key]])
        rows.append(Row(c.key, c.label, median(rates), min(rates), max(rates), ratios, cpu_ratios, cores, target, met,
                        c.note(runs[c.key], base_runs) if c.note else "", rates))
    return rows


def per_cpu_second(metric: Metric, run: Run) -> float:
    """The metric per second of process CPU time (efficiency per host core used)."""
    return metric.rate(run) * run.seconds / max(run.cpu_seconds, 1e-9)


def render(title: str, metric: Metric, rows: list[Row]) -> str:
    """A Markdown table (pasted as is into docs/performance.md)."""
    header = ["case", "configuration", f"{metric.unit} (median)", "min .. max", "ratio", "CPU ratio", "CPU/wall",
              "target", "note"]
    lines = [f"### {title}", "",
             f"Metric: {metric.title}. ratio = median over rounds of (this row's rate / the named row's rate in "
             "the same round). CPU/wall = process CPU time / wall time: the host cores the run really got (other "
             "load on the machine lowers it). CPU ratio = the same ratio per CPU-second (efficiency per core used, "
             "less sensitive to that load).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        ratio = "; ".join(f"{v:.3f}x of {k}" for k, v in r.ratios.items()) or "-"
        cpu_ratio = "; ".join(f"{v:.3f}x" for v in r.cpu_ratios.values()) or "-"
        target = r.target + (" (met)" if r.met else " (NOT met)" if r.met is not None else "")
        lines.append("| " + " | ".join([r.key, r.label, _si(r.median), f"{_si(r.low)} .. {_si(r.high)}",
                                        ratio, cpu_ratio, f"{r.cores:.2f}", target, r.note]) + " |")
    return "\n".join(lines)


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.3g}"


def per_unit_overhead(unit: str, per: Callable[[Run], float], absolute: bool = False
                      ) -> Callable[[list[Run], list[Run] | None], str]:
    """Note column: CPU time per unit (exit, slice), median over rounds; against a
    baseline, the median over rounds of the difference, i.e. what this configuration
    adds to each unit (``absolute``: never against the baseline).  CPU time, not wall
    time: a moment when another process had the core costs no CPU time, so the
    difference is hvdbg's own work."""
    def note(case: list[Run], base: list[Run] | None) -> str:
        if not base or absolute:
            return f"{median([r.cpu_seconds / per(r) for r in case]) * 1e6:.2f} us CPU per {unit}"
        extra = median([a.cpu_seconds / per(a) - b.cpu_seconds / per(b) for a, b in zip(case, base)])
        return f"{extra * 1e6:+.2f} us CPU per {unit}"
    return note


def switches_per(unit: str, per: Callable[[Run], float]) -> Callable[[list[Run], list[Run] | None], str]:
    """Note column: host context switches per unit (exit), median over rounds."""
    def note(case: list[Run], base: list[Run] | None) -> str:
        return f"{median([r.switches / per(r) for r in case]):.2f} context switches per {unit}"
    return note


def joined(*notes: Callable[[list[Run], list[Run] | None], str]) -> Callable[[list[Run], list[Run] | None], str]:
    """Several note columns in one."""
    return lambda case, base: "; ".join(n(case, base) for n in notes)


# -- machine description ------------------------------------------------------------------
def machine_description() -> dict[str, str]:
    import unicorn
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "unicorn": unicorn.__version__,
        "platform": platform.platform(),
        "hvdbg commit": _git_head(),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_head() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "hvdbg"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (hvdbg/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- command line ----------------------------------------------------------------------------
@dataclass
class Options:
    quick: bool
    repeats: int
    json: Path | None
    workdir: Path
    args: argparse.Namespace


def parse_args(description: str, default_repeats: int,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> Options:
    p = argparse.ArgumentParser(description=description)
    if add_arguments is not None:
        add_arguments(p)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny guests, one round (the figures mean nothing)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed rounds (default {default_repeats}; 1 with --quick)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    a = p.parse_args()
    repeats = a.repeats or (1 if a.quick else default_repeats)
    if repeats < 1:
        p.error("--repeats must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="hvdbg-bench-"))
    return Options(a.quick, repeats, a.json, workdir, a)


def print_header(name: str, opts: Options, params: dict[str, object]) -> None:
    print(f"## {name}")
    print()
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    print(f"Command: `{cmd}` ({opts.repeats} timed round(s) after one warm-up round, medians)")
    print()
    for k, v in {**machine_description(), **params}.items():
        print(f"- {k}: {v}")
    print(flush=True)


def emit(title: str, metric: Metric, cases: list[Case], runs: dict[str, list[Run]],
         collected: list[dict]) -> list[Row]:
    rows = summarize(metric, cases, runs)
    print(render(title, metric, rows))
    print(flush=True)
    collected.append({"title": title, "metric": metric.title, "rows": [asdict(r) for r in rows]})
    return rows


def finish(opts: Options, collected: list[dict]) -> None:
    print("- load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if opts.json is not None:
        opts.json.write_text(json.dumps({"machine": machine_description(), "tables": collected}, indent=2))
    shutil.rmtree(opts.workdir, ignore_errors=True)


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
