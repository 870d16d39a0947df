"""Probe: what a native (C) UC_HOOK_BLOCK costs on the ALU loop, next to no hook and
to ``emu_start(count=...)`` - the measurement behind the TB-level counting design in
docs/performance.md ("Compute without a per-instruction hook").

A 4-line C block callback (it only increments a counter) is compiled with the system
gcc against the headers shipped in the unicorn wheel and registered with
``uc_hook_add`` directly (no Python on the hook path).  Each mode runs the same
bench/guests/loop.S ALU loop on a bare engine set up as hvdbg's BSP at multiboot entry.

    python bench/block_hook_probe.py [--iterations N] [--repeats N]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import unicorn
from unicorn import UC_HOOK_BLOCK
from unicorn.unicorn_py3.unicorn import uclib

from guest_image import build
from runners import raw_engine

C_SOURCE = r"""
#include <stdint.h>
#include <unicorn/unicorn.h>
void probe_block(uc_engine *uc, uint64_t addr, uint32_t size, void *ud) {
    ++*(uint64_t *)ud;
}
"""


class _Count(ctypes.Structure):
    _fields_ = [("blocks", ctypes.c_uint64)]


def _compile(workdir: Path) -> ctypes.CDLL:
    src = workdir / "probe.c"
    lib = workdir / "probe.so"
    src.write_text(C_SOURCE)
    include = Path(unicorn.__file__).parent / "include"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{include}", str(src), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def _run(image, mode: str, lib: ctypes.CDLL) -> tuple[float, float, int]:
    uc = raw_engine(image, False)
    count = _Count()
    if mode == "c-block-hook":
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK,
                                ctypes.cast(lib.probe_block, ctypes.c_void_p),
                                ctypes.cast(ctypes.byref(count), ctypes.c_void_p),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise RuntimeError(f"uc_hook_add: {err}")
    wall, cpu = time.perf_counter(), time.process_time()
    if mode == "count":
        uc.emu_start(image.work, image.work_done, count=image.loop_instructions() + 1)
    else:
        uc.emu_start(image.work, image.work_done)
    return time.perf_counter() - wall, time.process_time() - cpu, count.blocks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=20_000_000)
    p.add_argument("--repeats", type=int, default=3)
    opts = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        lib = _compile(workdir)
        image = build("alu", opts.iterations, workdir)
        n = image.loop_instructions()
        modes = ("no-hook", "c-block-hook", "count")
        samples: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        blocks = 0
        for _ in range(opts.repeats):          # interleaved rounds
            for m in modes:
                wall, cpu, b = _run(image, m, lib)
                samples[m].append((n / wall, n / cpu))
                blocks = max(blocks, b)
        print(f"ALU loop, {n:,} guest instructions, {blocks:,} blocks seen by the C hook, "
              f"median of {opts.repeats}")
        print("| mode | M instr/s wall | M instr/s CPU | CPU ratio to no-hook |")
        print("|---|---|---|---|")
        base = statistics.median(c for _w, c in samples["no-hook"])
        for m in modes:
            w = statistics.median(x for x, _c in samples[m])
            c = statistics.median(y for _w, y in samples[m])
            print(f"| {m} | {w / 1e6:.0f} | {c / 1e6:.0f} | {c / base:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
