"""Determinism, long run: the same deterministic scenario N times, one process per run.

    python -m fuzz.run_determinism --runs 100                 # 4 vCPUs / 2 pCPUs SMP kernel
    python -m fuzz.run_determinism --runs 20 --bugs           # + every examples/bugs script

Each run is a fresh ``hvdbg run --deterministic --json`` process (nothing cached in
memory can hide a difference). Everything but the wall time must be identical:
outcome, exit status, serial output, per-vCPU state, exit counts, diagnosis and the
``trace_hash`` over every VM exit. The bug scripts' whole stdout (report lines and
JSON line, wall time removed) must be identical too.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fuzz.common import ROOT, ensure_guests, hvdbg_command

SMP_CONFIG = ROOT / "examples" / "smp-4vcpu.toml"
BUG_SCRIPTS = sorted((ROOT / "examples" / "bugs").glob("*.py"))
#: What may differ between runs: host timing only.
VOLATILE_KEYS = ("wall_seconds",)
_WALL = re.compile(r'"wall_seconds":\s*[0-9.eE+-]+')


def smp_args(vcpus: int = 4, pcpus: int = 2, sched: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["run", str(SMP_CONFIG), "--deterministic", "--vcpus", str(vcpus), "--pcpus", str(pcpus),
            "--json", "--compact", *extra]
    return hvdbg_command(*args) if sched is None else hvdbg_command(*args)


def run_once(argv: list[str], timeout: float = 600) -> dict:
    """One hvdbg run: its JSON result without the volatile keys."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"hvdbg failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    for key in VOLATILE_KEYS:
        result.pop(key, None)
    return result


def run_script(script: Path, timeout: float = 900) -> str:
    """A bug script's stdout with the wall time blanked."""
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return _WALL.sub('"wall_seconds":0', proc.stdout)


def fingerprint(result: dict) -> str:
    return json.dumps(result, sort_keys=True)


def repeat(make: callable, runs: int, jobs: int) -> tuple[Counter[str], dict[str, object]]:
    """Run ``make()`` ``runs`` times; count distinct fingerprints, keep one example each."""
    seen: Counter[str] = Counter()
    examples: dict[str, object] = {}
    with ThreadPoolExecutor(jobs) as pool:
        for value in pool.map(lambda _i: make(), range(runs)):
            key = value if isinstance(value, str) else fingerprint(value)
            seen[key] += 1
            examples.setdefault(key, value)
    return seen, examples


def first_difference(a: dict, b: dict) -> str:
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {json.dumps(a.get(key))[:300]} != {json.dumps(b.get(key))[:300]}"
    return "no difference"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--vcpus", type=int, default=4)
    parser.add_argument("--pcpus", type=int, default=2)
    parser.add_argument("--bugs", action="store_true", help="also repeat every examples/bugs script")
    parser.add_argument("--bug-runs", type=int, default=10)
    args = parser.parse_args()
    ensure_guests()
    start = time.monotonic()
    report: dict[str, object] = {}
    failed = False

    argv = smp_args(args.vcpus, args.pcpus)
    seen, examples = repeat(lambda: run_once(argv), args.runs, args.jobs)
    results = [json.loads(k) for k in seen]
    report["smp"] = {
        "command": " ".join(argv[2:]), "runs": args.runs, "distinct_results": len(seen),
        "trace_hashes": sorted({r["trace_hash"] for r in results}),
        "outcome": sorted({f"{r['outcome']} {r['exit_status']}" for r in results}),
    }
    if len(seen) > 1:
        failed = True
        report["smp"]["first_difference"] = first_difference(results[0], results[1])

    if args.bugs:
        report["bugs"] = {}
        for script in BUG_SCRIPTS:
            seen, _ = repeat(lambda s=script: run_script(s), args.bug_runs, args.jobs)
            report["bugs"][script.name] = {"runs": args.bug_runs, "distinct_outputs": len(seen)}
            failed |= len(seen) > 1
    report["wall_seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(report, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
