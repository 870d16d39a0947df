"""P1: guest compute without VM exits.

The ALU loop of bench/guests/loop.S (add; xor; sub; jnz) on hvdbg with 1 vCPU against
the same bytes on a bare Unicorn engine - driven three ways: one emu_start without
count, one emu_start with a count, and count-limited slices as hvdbg drives its vCPUs -
the same with an image holding 8 never-executed RDMSR instructions (hvdbg hooks each
MSR site with a UC_HOOK_CODE hook, as in the SMP test kernel), and 2 / 4 vCPUs on the
pinned executor (one host thread per vCPU, every vCPU runs its
own copy of the loop) against 1 vCPU and against 4 bare engines on 4 threads.

    python bench/p1_compute.py [--quick] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import harness
from guest_image import build
from harness import GUEST_INSTRUCTIONS, Case, per_unit_overhead, switches_per
from runners import RawMode, default_slice, hv_run, qemu_cases, raw_single, raw_threads

SMP_KERNEL_MSR_SITES = 8        # RDMSR/WRMSR sites hvdbg finds in guests/build/smp.elf
FULL_ITERATIONS = 10_000_000     # per vCPU: 40 M guest instructions
QUICK_ITERATIONS = 200_000
DEFAULT_REPEATS = 5

per_slice = per_unit_overhead("slice", lambda r: r.slices)
cpu_per_slice = per_unit_overhead("slice", lambda r: r.slices, absolute=True)
switches = switches_per("slice", lambda r: r.slices)


def cases(iterations: int, workdir) -> list[Case]:
    image = build("alu", iterations, workdir)
    with_msr_sites = build("alu", iterations, workdir, msr_sites=SMP_KERNEL_MSR_SITES)
    s = default_slice()
    # QEMU TCG first: the targets are 0.5x (default) / 0.25x (deterministic) of it
    qemu, first = qemu_cases("alu", iterations, workdir)
    return qemu + [
        Case("raw", "bare Unicorn, 1 emu_start, no count",
             lambda: raw_single(image, RawMode.UNCOUNTED, s)),
        Case("raw-count", "bare Unicorn, 1 emu_start with count",
             lambda: raw_single(image, RawMode.COUNTED, s), ("raw",)),
        Case("raw-sliced", f"bare Unicorn, emu_start(count={s}) slices (as hvdbg)",
             lambda: raw_single(image, RawMode.SLICED, s), ("raw",), note=cpu_per_slice),
        Case("hv-1", "hvdbg, 1 vCPU, pinned executor",
             lambda: hv_run(image, 1, deterministic=False), first + ("raw-sliced", "raw"),
             target=0.5 if qemu else None, note=per_slice if not qemu else None),
        Case("det-1", "hvdbg, 1 vCPU, deterministic executor (the default)",
             lambda: hv_run(image, 1, deterministic=True), first + ("hv-1",),
             target=0.25 if qemu else None),
        Case("hv-1-msr", f"hvdbg, 1 vCPU, same loop, image with {SMP_KERNEL_MSR_SITES} RDMSR sites (as smp.elf)",
             lambda: hv_run(with_msr_sites, 1, deterministic=False), ("raw-sliced", "hv-1"), note=per_slice),
        Case("raw-2t", f"2 bare engines, 2 threads, count={s} slices",
             lambda: raw_threads(image, 2, s), ("raw-sliced",), note=switches),
        Case("raw-4t", f"4 bare engines, 4 threads, count={s} slices",
             lambda: raw_threads(image, 4, s), ("raw-sliced",), note=switches),
        Case("hv-2", "hvdbg, 2 vCPUs, pinned executor",
             lambda: hv_run(image, 2, deterministic=False), ("hv-1", "raw-2t"), note=switches),
        Case("hv-4", "hvdbg, 4 vCPUs on 4 pCPUs (pinned executor)",
             lambda: hv_run(image, 4, deterministic=False), ("hv-1", "raw-4t"), target=1.6,
             note=switches),
    ]


def main() -> None:
    opts = harness.parse_args(__doc__.splitlines()[0], DEFAULT_REPEATS)
    iterations = QUICK_ITERATIONS if opts.quick else FULL_ITERATIONS
    harness.print_header("P1: guest compute, no VM exits", opts, {
        "guest": f"bench/guests/loop.S workload alu, {iterations:,} iterations x 4 instructions per vCPU",
        "hvdbg slice": f"{default_slice()} instructions",
    })
    cs = cases(iterations, opts.workdir)
    runs = harness.measure(cs, opts.repeats, log=harness.log)
    collected: list[dict] = []
    harness.emit("P1 guest compute (ALU loop, no exits)", GUEST_INSTRUCTIONS, cs, runs, collected)
    harness.finish(opts, collected)


if __name__ == "__main__":
    main()
