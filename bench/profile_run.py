"""Profile one benchmark guest on hvdbg, and summarize py-spy profiles.

    # one run under cProfile (deterministic profiler: inflates per-call costs)
    python bench/profile_run.py run cpuid --iterations 30000 --deterministic --cprofile

    # the same run sampled by py-spy (no instrumentation), then summarized
    py-spy record -r 500 -f raw -o /tmp/cpuid.txt -- python bench/profile_run.py run cpuid --deterministic
    python bench/profile_run.py summarize /tmp/cpuid.txt --within Vcpu.run

``summarize`` reads py-spy's raw (collapsed) stacks, keeps the samples whose stack has
a frame containing ``--within`` (to drop import time and the executor's idle
threads), and prints each function's self and inclusive share of them.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import tempfile
from collections import Counter
from pathlib import Path

from guest_image import WORKLOADS, build
from runners import hv_run

_LINE = re.compile(r" \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def run(workload: str, iterations: int, vcpus: int, deterministic: bool, slice_len: int | None, profile: bool,
        top: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hvdbg-prof-") as d:
        image = build(workload, iterations, Path(d))
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        r = hv_run(image, vcpus, deterministic, slice_len)
        if prof:
            prof.disable()
        print(f"{workload}: {r.instructions} instructions, {r.exits} exits in {r.seconds:.3f} s "
              f"({r.exits / r.seconds / vcpus:,.0f} exits/s per vCPU, {r.instructions / r.seconds / 1e6:.1f} M instr/s)")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def function_name(frame: str) -> str:
    """'Vmcs.write (hvdbg/vmx/vmcs.py:171)' -> 'Vmcs.write (hvdbg/vmx/vmcs.py)': one entry per function."""
    return _LINE.sub(lambda m: f" ({m.group('file')})", frame)


def summarize(path: Path, within: str, top: int) -> None:
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = [function_name(f) for f in stack.split(";")]
        if within and not any(within in f for f in frames):
            continue
        n = int(count)
        total += n
        self_samples[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        raise SystemExit(f"no samples with a frame containing {within!r}")
    print(f"{total} samples with a frame containing {within!r}")
    for title, counter in (("self", self_samples), ("inclusive", inclusive)):
        print(f"\n{title}:")
        for name, n in counter.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one benchmark guest on hvdbg")
    r.add_argument("workload", choices=sorted(WORKLOADS))
    r.add_argument("--iterations", type=int, default=30_000)
    r.add_argument("--vcpus", type=int, default=1)
    r.add_argument("--deterministic", action="store_true")
    r.add_argument("--slice", type=int, default=None, help="hvdbg slice length (default: hvdbg's)")
    r.add_argument("--cprofile", action="store_true", help="run under cProfile and print the top functions")
    r.add_argument("--top", type=int, default=30)
    s = sub.add_parser("summarize", help="summarize a py-spy raw profile")
    s.add_argument("file", type=Path)
    s.add_argument("--within", default="Vcpu.run", help="keep only stacks with a frame containing this")
    s.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    if a.command == "run":
        run(a.workload, a.iterations, a.vcpus, a.deterministic, a.slice, a.cprofile, a.top)
    else:
        summarize(a.file, a.within, a.top)


if __name__ == "__main__":
    main()
