"""P3: exit-heavy guests.

One exiting instruction per loop iteration - CPUID, OUT to an unclaimed port, OUT to
the UART, an xAPIC MMIO read of the APIC ID register - on hvdbg (pinned and
deterministic executors, 1 and 4 vCPUs), side by side with bare Unicorn engines whose
hook for the same instruction is an empty Python callback.  The ratio and the note
("+x us per exit") are hvdbg's own cost per exit on top of Unicorn's hook mechanism.

    python bench/p3_exits.py [--quick] [--repeats N] [--json FILE] [--workload NAME]...
"""

from __future__ import annotations

import argparse

import harness
from guest_image import WORKLOADS, build
from harness import EXITS_PER_VCPU, Case, joined, per_unit_overhead, switches_per
from runners import RawMode, default_slice, hv_run, qemu_cases, raw_single, raw_threads

EXIT_WORKLOADS = ("cpuid", "out_unclaimed", "out_uart", "apic_read")
FULL_ITERATIONS = (30_000, 6_000)   # per vCPU, for 1 vCPU and for 4 vCPUs
QUICK_ITERATIONS = (1_000, 300)
DEFAULT_REPEATS = 5
TARGET_EXITS_PER_SECOND = 1_000_000   # issue 16: a million exits per second per vCPU

per_exit = per_unit_overhead("exit", lambda r: r.exits)
per_exit_threads = joined(per_exit, switches_per("exit", lambda r: r.exits))


def cases(workload: str, iterations: tuple[int, int], workdir) -> list[Case]:
    one = build(workload, iterations[0], workdir)
    four = build(workload, iterations[1], workdir)
    s = default_slice()
    qemu, first = qemu_cases(workload, iterations[0], workdir)
    return qemu + [
        Case("raw-hook", "bare Unicorn, empty Python hook, 1 engine",
             lambda: raw_single(one, RawMode.SLICED, s, hook=True), note=per_exit),
        Case("hv-1", "hvdbg, 1 vCPU, pinned",
             lambda: hv_run(one, 1, deterministic=False), first + ("raw-hook",),
             target_rate=TARGET_EXITS_PER_SECOND, note=per_exit),
        Case("det-1", "hvdbg, 1 vCPU, deterministic",
             lambda: hv_run(one, 1, deterministic=True), first + ("raw-hook",),
             target_rate=TARGET_EXITS_PER_SECOND, note=per_exit),
        Case("raw-hook-4t", "4 bare engines, 4 threads, empty Python hook",
             lambda: raw_threads(four, 4, s, hook=True), ("raw-hook",), note=per_exit_threads),
        Case("hv-4", "hvdbg, 4 vCPUs, pinned",
             lambda: hv_run(four, 4, deterministic=False), ("raw-hook-4t", "hv-1"),
             target_rate=TARGET_EXITS_PER_SECOND, note=per_exit_threads),
        Case("det-4", "hvdbg, 4 vCPUs, deterministic",
             lambda: hv_run(four, 4, deterministic=True), ("raw-hook", "det-1"),
             target_rate=TARGET_EXITS_PER_SECOND, note=per_exit),
    ]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", action="append", choices=EXIT_WORKLOADS,
                   help="run only this workload (repeatable; default: all)")


def main() -> None:
    opts = harness.parse_args(__doc__.splitlines()[0], DEFAULT_REPEATS, _add_arguments)
    workloads = opts.args.workload or list(EXIT_WORKLOADS)
    iterations = QUICK_ITERATIONS if opts.quick else FULL_ITERATIONS
    harness.print_header("P3: exit-heavy guests", opts, {
        "guest": f"bench/guests/loop.S, {iterations[0]:,} iterations (1 vCPU) / {iterations[1]:,} per vCPU (4 vCPUs), "
                 "one exit per iteration",
        "hvdbg slice": f"{default_slice()} instructions",
    })
    collected: list[dict] = []
    for w in workloads:
        cs = cases(w, iterations, opts.workdir)
        runs = harness.measure(cs, opts.repeats, log=lambda m, w=w: harness.log(f"{w}: {m}"))
        harness.emit(f"P3 {w}: {WORKLOADS[w].text}", EXITS_PER_VCPU, cs, runs, collected)
    harness.finish(opts, collected)


if __name__ == "__main__":
    main()
