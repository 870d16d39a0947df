"""P6: vCPU scheduling policies on the real SMP kernel (4 vCPUs on 1 and 2 pCPUs).

The SMP test kernel (guests/smp) runs two workloads: the parallel sum (the default:
barrier, every CPU sums a slice of an array, lock add, barrier) and the lock-heavy one
(`workload=lock`: every CPU takes one shared ticket lock `lock_iters` times, see
guests/README.md).  Each runs with 4 vCPUs on 1 and on 2 pCPUs under every policy
(pinned, fifo, rr, cfs, smp), in the deterministic executor (one host thread, M virtual
pCPUs: guest instruction counts are exact and repeat bit for bit) and in the threaded
one (M host threads), against the 4-pCPU pinned run (1 vCPU per pCPU) in the same mode.

Columns: `guest instr` = instructions retired by all vCPUs (work + spinning), and its
ratio to the baseline; `makespan` (deterministic only) = virtual completion time, the
largest pCPU clock in guest instructions (busy + idle), and its ratio; `wall s` and its
ratio; `Jain` = Jain's fairness index over per-vCPU run instructions; `switches` =
vCPU switches on the pCPUs; `PLE` = PAUSE-loop exits (exit reason 40, enabled for
pinned/fifo/smp when the pCPUs are overcommitted); `spins` = PAUSEs the guest counted
while waiting for its lock (lock workload).  A run that does not finish within the
budget shows its outcome instead of figures.

    python bench/p6_sched.py [--quick] [--repeats N] [--json FILE]
        [--policies pinned,fifo,rr,cfs,smp] [--pcpus 1,2] [--modes deterministic,threaded]
        [--slice N] [--lock-iters N] [--lock ticket|tas] [--seconds S]
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "smp-4vcpu.toml"
POLICIES = ("pinned", "fifo", "rr", "cfs", "smp")
MODES = ("deterministic", "threaded")
VCPUS = 4
BASELINE_PCPUS = 4
DEFAULT_SLICE = 2_000          # executor chunk = interleaving granularity of the virtual pCPUs
DEFAULT_LOCK_ITERS = 1_000
QUICK_LOCK_ITERS = 50
INSTRUCTION_BUDGET = 400_000_000
RESULT_LINE = re.compile(r"^(sum ok|lock ok counter (\d+) cpus (\d+) spins (\d+))", re.M)


@dataclass(frozen=True)
class Workload:
    name: str
    cmdline: str


@dataclass
class Result:
    """One run of the kernel: what the table shows."""

    outcome: str
    ok: bool
    instructions: int
    wall: float
    makespan: int | None
    jain: float
    switches: int | None
    ple: int
    spins: int | None


def jain_index(values: list[int]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 = equal shares, 1/n = one takes all."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def run_once(workload: Workload, pcpus: int, policy: str, deterministic: bool, slice_len: int,
             seconds: float) -> Result:
    from hvdbg import api

    r = api.run(CONFIG, vcpus=VCPUS, pcpus=pcpus, sched=policy, deterministic=deterministic,
                cmdline=workload.cmdline, slice=slice_len,
                budget__instructions=INSTRUCTION_BUDGET, budget__seconds=seconds)
    vm, res, stats = r.machine, r.result, r.stats
    match = RESULT_LINE.search(res["serial"])
    ok = res["outcome"] == "exited" and res["exit_status"] == 0 and match is not None
    sched = getattr(r.executor, "sched", None)
    if stats is not None:
        runs = [row["run"] for row in stats["vcpus"].values()]
        switches = sum(row["switches"] for row in stats["pcpus"].values())
    else:   # the pinned executor: vCPU i is pCPU i, no scheduler
        runs = [v.instructions for v in vm.vcpus]
        switches = None
    return Result(res["outcome"], ok, res["instructions"], r.wall_seconds,
                  max(sched.clock) if deterministic and sched is not None else None,
                  jain_index(runs), switches, res["exits"].get("PAUSE_INSTRUCTION", 0),
                  int(match.group(4)) if match and match.group(4) else None)


def run(workload: Workload, pcpus: int, policy: str, mode: str, opts) -> Result:
    """Deterministic runs are exact: once.  Threaded runs: the median-wall run of N."""
    deterministic = mode == "deterministic"
    repeats = 1 if deterministic else opts.repeats
    results = []
    for _ in range(repeats):
        harness.log(f"{workload.name}: {VCPUS} vCPUs on {pcpus} pCPUs, {policy}, {mode}")
        results.append(run_once(workload, pcpus, policy, deterministic, opts.args.slice, opts.args.seconds))
    results.sort(key=lambda r: r.wall)
    return results[len(results) // 2]


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}"


def table(workload: Workload, rows: list[tuple[str, int, str, Result]],
          baselines: dict[str, Result]) -> str:
    head = ("| policy | pCPUs | mode | guest instr | x base | makespan | x base | wall s | x base "
            "| Jain | switches | PLE | spins |")
    lines = [f"### {workload.name} (`cmdline = \"{workload.cmdline}\"`)", "", head,
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for policy, pcpus, mode, r in rows:
        base = baselines[mode]
        label = "pinned (baseline, 1 vCPU per pCPU)" if pcpus == BASELINE_PCPUS else policy
        if not r.ok:
            lines.append(f"| {label} | {pcpus} | {mode} | {r.outcome}: did not finish "
                         f"({r.instructions:,} instr, {r.wall:.1f} s) | | | | | | | | | |")
            continue
        lines.append(
            f"| {label} | {pcpus} | {mode} | {r.instructions:,} | {ratio(r.instructions, base.instructions)} "
            f"| {'-' if r.makespan is None else f'{r.makespan:,}'} | {ratio(r.makespan, base.makespan)} "
            f"| {r.wall:.2f} | {ratio(r.wall, base.wall)} | {r.jain:.3f} "
            f"| {'-' if r.switches is None else f'{r.switches:,}'} | {r.ple:,} "
            f"| {'-' if r.spins is None else f'{r.spins:,}'} |")
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies")
    p.add_argument("--pcpus", default="1,2", help="comma-separated pCPU counts (4 vCPUs)")
    p.add_argument("--modes", default=",".join(MODES), help="deterministic, threaded or both")
    p.add_argument("--slice", type=int, default=DEFAULT_SLICE, help="executor slice (config 'slice')")
    p.add_argument("--lock-iters", type=int, default=None, help="lock_iters of the lock workload")
    p.add_argument("--lock", choices=("ticket", "tas"), default="ticket", help="the guest's lock")
    p.add_argument("--seconds", type=float, default=60.0, help="time budget of one run")


def main() -> None:
    opts = harness.parse_args(__doc__.splitlines()[0], 1, add_arguments)
    a = opts.args
    policies = [p for p in a.policies.split(",") if p]
    pcpu_counts = [int(p) for p in a.pcpus.split(",") if p]
    modes = [m for m in a.modes.split(",") if m]
    for bad in set(policies) - set(POLICIES) | set(modes) - set(MODES):
        raise SystemExit(f"p6_sched: unknown policy or mode {bad!r}")
    iters = a.lock_iters or (QUICK_LOCK_ITERS if opts.quick else DEFAULT_LOCK_ITERS)
    workloads = [Workload("parallel sum", ""),
                 Workload(f"lock-heavy ({a.lock} lock)", f"workload=lock lock={a.lock} lock_iters={iters}")]
    harness.print_header("P6: scheduling policies on the SMP kernel", opts, {
        "guest": f"guests/build/smp.elf, {VCPUS} vCPUs; lock workload: {iters} iterations per CPU, "
                 "inside 20, outside 100 (guest defaults)",
        "hvdbg slice": f"{a.slice} instructions (executor chunk; rr quantum 20 000, cfs latency 40 000)",
        "budget per run": f"{INSTRUCTION_BUDGET:,} instructions or {a.seconds:g} s",
    })
    collected = []
    started = time.perf_counter()
    for w in workloads:
        baselines = {m: run(w, BASELINE_PCPUS, "pinned", m, opts) for m in modes}
        rows = [("pinned", BASELINE_PCPUS, m, baselines[m]) for m in modes]
        for pcpus in pcpu_counts:
            for policy in policies:
                for m in modes:
                    rows.append((policy, pcpus, m, run(w, pcpus, policy, m, opts)))
        print(table(w, rows, baselines))
        print(flush=True)
        collected.append({"workload": w.name, "cmdline": w.cmdline,
                          "rows": [{"policy": p, "pcpus": n, "mode": m, **vars(r)} for p, n, m, r in rows]})
    print(f"- total bench time: {time.perf_counter() - started:.0f} s")
    harness.finish(opts, collected)


if __name__ == "__main__":
    main()
