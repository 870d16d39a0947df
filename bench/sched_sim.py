"""Benchmark the policies on simulated SMP workloads (docs/scheduling.md, "Results").

    python bench/sched_sim.py [--seeds N] [--policies cfs,smp,...]

Every number is virtual time in guest instructions (or Jain's index for fairness) and
is the same on every machine and every run: the simulator and the policies are
deterministic, and the workloads' jitter comes from a seeded generator.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from hvdbg.run.sched import make_policy
from hvdbg.run.sched.sim import (Op, SimConfig, SimError, Simulator, cpu_bound, jain_index, lock_heavy,
                             shootdowns, sleepy)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    scripts: Callable[[int], list[list[Op]]]     # seed -> scripts
    config: SimConfig
    metric: str                                  # "jain" (higher is better) or "time" (lower)
    ticket_locks: bool = False
    weights: dict[int, int] = field(default_factory=dict)
    seeded: bool = False                         # does the seed change the scripts?


SCENARIOS = [
    Scenario("fair-4on2", "4 CPU-bound vCPUs, 2 pCPUs, Jain's index of run shares",
             lambda seed: cpu_bound(4), SimConfig(pcpus=2, horizon=4_000_000), "jain"),
    Scenario("fair-3on2", "3 CPU-bound vCPUs, 2 pCPUs, Jain's index",
             lambda seed: cpu_bound(3), SimConfig(pcpus=2, horizon=4_000_000), "jain"),
    Scenario("fair-7on3", "7 CPU-bound vCPUs, 3 pCPUs, Jain's index",
             lambda seed: cpu_bound(7), SimConfig(pcpus=3, horizon=4_000_000), "jain"),
    Scenario("lock-tas", "4 vCPUs on 2 pCPUs, 100 x (3000 out, TAS lock, 1000 in), completion",
             lambda seed: lock_heavy(4, 100, 3000, 1000, jitter=0.5, seed=seed), SimConfig(pcpus=2), "time",
             seeded=True),
    Scenario("lock-ticket", "same with a ticket lock, completion",
             lambda seed: lock_heavy(4, 100, 3000, 1000, jitter=0.5, seed=seed), SimConfig(pcpus=2), "time",
             ticket_locks=True, seeded=True),
    Scenario("lock-8on4", "8 vCPUs on 4 pCPUs, 60 x (4000 out, TAS lock, 500 in), completion",
             lambda seed: lock_heavy(8, 60, 4000, 500, jitter=0.5, seed=seed), SimConfig(pcpus=4), "time",
             seeded=True),
    Scenario("lock-4on4", "4 vCPUs on 4 pCPUs (no overcommit), lock-tas loop, completion",
             lambda seed: lock_heavy(4, 100, 3000, 1000, jitter=0.5, seed=seed), SimConfig(pcpus=4), "time",
             seeded=True),
    Scenario("shootdown", "vCPU 0: 100 x (5000 work, IPI all + wait), 3 busy vCPUs, 2 pCPUs; vCPU 0 done",
             lambda seed: shootdowns(4, 100, 5000), SimConfig(pcpus=2, stop_when_done=(0,), max_time=20_000_000),
             "time"),
    Scenario("sleepy", "vCPU 0: 50 x (2000 work, sleep 20000), 3 hogs, 2 pCPUs; vCPU 0 done",
             lambda seed: sleepy(3, 50, 2000, 20_000), SimConfig(pcpus=2, stop_when_done=(0,), max_time=20_000_000),
             "time"),
]

VARIANTS: dict[str, tuple[str, dict]] = {
    "pinned": ("pinned", {}),
    "fifo": ("fifo", {}),
    "rr": ("rr", {}),
    "cfs": ("cfs", {}),
    "smp": ("smp", {}),
    "smp-no-yield": ("smp", {"directed_yield": False}),
    "smp-no-ipi": ("smp", {"ipi_boost": False}),
    "smp-no-lag": ("smp", {"lag_balance": False}),
}
"""Row name -> (policy, parameters); the ``smp-no-*`` rows switch one idea off."""


@dataclass
class Measurement:
    value: float | None            # mean metric; None if a run did not finish
    low: float | None = None
    high: float | None = None
    spin_share: float = 0.0        # spinning / all instructions run
    migrations: float = 0.0
    failure: str = ""


def run_once(variant: str, scenario: Scenario, seed: int) -> tuple[float, float, int]:
    """(metric, spin share, migrations) of one deterministic run."""
    policy_name, params = VARIANTS[variant]
    sim = Simulator(make_policy(policy_name, **params), scenario.scripts(seed), scenario.config,
                    weights=scenario.weights, ticket_locks=scenario.ticket_locks)
    result = sim.run()
    total = sum(result.run.values()) or 1
    spin = sum(result.spin.values()) / total
    migrations = sum(row["migrations"] for row in result.stats["vcpus"].values())
    if scenario.metric == "jain":
        return jain_index(list(result.run.values())), spin, migrations
    watched = scenario.config.stop_when_done or tuple(result.finished_at)
    return max(result.finished_at[i] for i in watched), spin, migrations


def measure(variant: str, scenario: Scenario, seeds: int) -> Measurement:
    values, spins, moves = [], [], []
    for seed in range(seeds if scenario.seeded else 1):
        try:
            value, spin, migrations = run_once(variant, scenario, seed)
        except SimError as e:
            return Measurement(None, failure=str(e).split(":", 1)[-1].strip())
        values.append(value)
        spins.append(spin)
        moves.append(migrations)
    return Measurement(statistics.mean(values), min(values), max(values),
                       statistics.mean(spins), statistics.mean(moves))


def table(scenarios: list[Scenario], variants: list[str], seeds: int) -> str:
    """Markdown table: one row per scenario and variant."""
    lines = ["| scenario | policy | result | min..max | spinning | migrations |",
             "|---|---|---:|---:|---:|---:|"]
    for sc in scenarios:
        for variant in variants:
            m = measure(variant, sc, seeds)
            if m.value is None:
                lines.append(f"| {sc.name} | {variant} | did not finish | {m.failure} | | |")
                continue
            if sc.metric == "jain":
                result, spread = f"{m.value:.4f}", ""
            else:
                result, spread = f"{m.value:,.0f}", f"{m.low:,.0f}..{m.high:,.0f}"
            lines.append(f"| {sc.name} | {variant} | {result} | {spread} | {m.spin_share:.1%} | {m.migrations:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/sched_sim.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="workload variants per seeded scenario")
    parser.add_argument("--policies", default=",".join(VARIANTS), help="comma-separated rows to run")
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    args = parser.parse_args(argv)
    variants = [v for v in args.policies.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    wanted = args.scenarios.split(",")
    scenarios = [s for s in SCENARIOS if s.name in wanted]
    if unknown or len(scenarios) != len(wanted):
        parser.error(f"unknown policy or scenario in {args.policies!r} / {args.scenarios!r}")
    for sc in scenarios:
        print(f"- {sc.name}: {sc.what}")
    print()
    print(table(scenarios, variants, args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
