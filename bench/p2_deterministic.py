"""P2: the deterministic executor against bare Unicorn count-sliced execution.

hvdbg's deterministic mode runs every vCPU on one host thread, round robin, in slices
counted in guest instructions.  The baseline does exactly that with bare engines and
no hypervisor: ``emu_start(count=slice)`` on each engine in turn.  The second table
sweeps the slice length (1 vCPU) and derives hvdbg's fixed cost per slice.

    python bench/p2_deterministic.py [--quick] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import harness
from guest_image import build
from harness import GUEST_INSTRUCTIONS, Case, per_unit_overhead
from runners import default_slice, hv_run, raw_round_robin

FULL_ITERATIONS = 10_000_000    # per vCPU: 40 M guest instructions
QUICK_ITERATIONS = 200_000
SWEEP_ITERATIONS = 2_500_000
QUICK_SWEEP_ITERATIONS = 100_000
DEFAULT_REPEATS = 5

per_slice = per_unit_overhead("slice", lambda r: r.slices)


def main_cases(iterations: int, workdir) -> list[Case]:
    image = build("alu", iterations, workdir)
    s = default_slice()
    return [
        Case("raw-rr1", f"bare Unicorn, 1 engine, count={s} slices",
             lambda: raw_round_robin(image, 1, s), note=per_slice),
        Case("det-1", "hvdbg deterministic, 1 vCPU",
             lambda: hv_run(image, 1, deterministic=True), ("raw-rr1",), target=0.5, note=per_slice),
        Case("raw-rr4", f"bare Unicorn, 4 engines round robin on 1 thread, count={s}",
             lambda: raw_round_robin(image, 4, s), note=per_slice),
        Case("det-4", "hvdbg deterministic, 4 vCPUs",
             lambda: hv_run(image, 4, deterministic=True), ("raw-rr4",), target=0.5, note=per_slice),
    ]


def sweep_cases(iterations: int, workdir) -> list[Case]:
    image = build("alu", iterations, workdir)
    out = []
    for s in (1_000, 10_000, default_slice(), 500_000):
        out.append(Case(f"raw-{s}", f"bare Unicorn, count={s} slices",
                        lambda s=s: raw_round_robin(image, 1, s), note=per_slice))
        out.append(Case(f"det-{s}", f"hvdbg deterministic, 1 vCPU, slice={s}",
                        lambda s=s: hv_run(image, 1, deterministic=True, slice_len=s), (f"raw-{s}",),
                        note=per_slice))
    return out


def main() -> None:
    opts = harness.parse_args(__doc__.splitlines()[0], DEFAULT_REPEATS)
    iterations = QUICK_ITERATIONS if opts.quick else FULL_ITERATIONS
    sweep_iterations = QUICK_SWEEP_ITERATIONS if opts.quick else SWEEP_ITERATIONS
    harness.print_header("P2: deterministic mode", opts, {
        "guest": f"bench/guests/loop.S workload alu, {iterations:,} iterations x 4 instructions per vCPU "
                 f"({sweep_iterations:,} in the slice sweep)",
        "hvdbg slice": f"{default_slice()} instructions",
    })
    collected: list[dict] = []
    cs = main_cases(iterations, opts.workdir)
    runs = harness.measure(cs, opts.repeats, log=harness.log)
    harness.emit("P2 deterministic executor vs bare count-sliced Unicorn (ALU loop)", GUEST_INSTRUCTIONS, cs,
                 runs, collected)
    cs = sweep_cases(sweep_iterations, opts.workdir)
    runs = harness.measure(cs, opts.repeats, log=harness.log)
    harness.emit("P2 slice-length sweep, 1 vCPU (note: cost per slice, hvdbg's is relative to bare Unicorn)",
                 GUEST_INSTRUCTIONS, cs, runs, collected)
    harness.finish(opts, collected)


if __name__ == "__main__":
    main()
