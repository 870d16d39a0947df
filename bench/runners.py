"""The two sides of every benchmark: a benchmark guest on hvdbg, and the same loop bytes
on bare Unicorn engines set up exactly like an hvdbg vCPU at its multiboot entry
(``Uc(UC_ARCH_X86, UC_MODE_64)`` in 32-bit protected mode with flat segments).

Raw baselines run the loop from ``work`` to ``work_done`` only; hvdbg runs the whole
guest (a few dozen boot instructions more, counted by hvdbg itself).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import threading
import time
from enum import Enum
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from guest_image import DEBUG_EXIT_PORT, XAPIC_BASE, XAPIC_SIZE, GuestImage, build
from harness import Case, Run, Timer
from hvdbg.engine import ucx
from hvdbg.config import config_from_dict
from hvdbg.run.executors import make_executor
from hvdbg.arch.segments import flat_segments_32
from hvdbg.hv.machine import Machine

RAM = 16 << 20
MULTIBOOT_CR0 = 0x11           # PE | ET: protected mode, paging off (Multiboot 0.6.96, 3.2)


class BenchError(RuntimeError):
    """A benchmark run did not do what it was supposed to (never measured silently)."""


class RawMode(Enum):
    """How the raw engine is driven."""

    UNCOUNTED = "one emu_start, no count"
    COUNTED = "one emu_start, count = whole loop"
    SLICED = "emu_start(count=slice) in a loop, like hvdbg"


# -- empty Python callbacks, one per hook kind ------------------------------------------
def _empty_cpuid(uc, user_data):
    return 1


def _empty_out(uc, port, size, value, user_data):
    return None


def _empty_mmio_read(uc, offset, size, user_data):
    return 0


def _empty_mmio_write(uc, offset, size, value, user_data):
    return None


def raw_engine(image: GuestImage, hook: bool) -> Uc:
    """A bare engine holding the guest image, in the state hvdbg gives the BSP at its
    multiboot entry, with RIP at ``work``; with ``hook``, the workload's exiting
    instruction goes to an empty Python callback."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, RAM, UC_PROT_ALL)
    for addr, data in image.segments:
        uc.mem_write(addr, data)
    ucx.set_control_registers(uc, MULTIBOOT_CR0, 0, 0, 0)
    ucx.write_segments(uc, flat_segments_32())
    uc.reg_write(X.UC_X86_REG_RIP, image.work)
    kind = image.workload.hook
    if hook and kind == "cpuid":
        uc.hook_add(UC_HOOK_INSN, _empty_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
    elif hook and kind == "out":
        uc.hook_add(UC_HOOK_INSN, _empty_out, None, 1, 0, X.UC_X86_INS_OUT)
    elif kind == "mmio":
        # the APIC page must exist for the loop to run at all: with or without "hook"
        uc.mmio_map(XAPIC_BASE, XAPIC_SIZE, _empty_mmio_read, None, _empty_mmio_write, None)
    return uc


def _drive(uc: Uc, image: GuestImage, mode: RawMode, slice_len: int) -> int:
    """Run the loop to ``work_done``; returns the number of emu_start calls."""
    end = image.work_done
    if mode is RawMode.UNCOUNTED:
        uc.emu_start(image.work, end)
        slices = 1
    elif mode is RawMode.COUNTED:
        uc.emu_start(image.work, end, count=image.loop_instructions() + 1)
        slices = 1
    else:
        pc, slices = image.work, 0
        while pc != end:
            uc.emu_start(pc, end, count=slice_len)
            pc = uc.reg_read(X.UC_X86_REG_RIP)
            slices += 1
    if uc.reg_read(X.UC_X86_REG_RIP) != end:
        raise BenchError(f"raw engine stopped at {uc.reg_read(X.UC_X86_REG_RIP):#x}, not at work_done {end:#x}")
    return slices


def _raw_exits(image: GuestImage, hook: bool, engines: int) -> int:
    return image.iterations * engines if image.workload.hook and (hook or image.workload.hook == "mmio") else 0


def raw_single(image: GuestImage, mode: RawMode, slice_len: int, hook: bool = False) -> Run:
    uc = raw_engine(image, hook)
    with Timer() as t:
        slices = _drive(uc, image, mode, slice_len)
    return Run(image.loop_instructions(), _raw_exits(image, hook, 1), t.seconds, 1, slices, t.cpu_seconds, t.switches)


def raw_threads(image: GuestImage, engines: int, slice_len: int, hook: bool = False) -> Run:
    """``engines`` engines, one host thread each, count-sliced like hvdbg's pinned executor."""
    ucs = [raw_engine(image, hook) for _ in range(engines)]
    start = threading.Barrier(engines + 1)
    slices = [0] * engines
    errors: list[BaseException] = []

    def body(i: int) -> None:
        start.wait()
        try:
            slices[i] = _drive(ucs[i], image, RawMode.SLICED, slice_len)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(engines)]
    for t in threads:
        t.start()
    with Timer() as timer:
        start.wait()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return Run(image.loop_instructions() * engines, _raw_exits(image, hook, engines), timer.seconds, engines,
               sum(slices), timer.cpu_seconds, timer.switches)


def raw_round_robin(image: GuestImage, engines: int, slice_len: int, hook: bool = False) -> Run:
    """``engines`` engines on the calling thread, one count-limited slice each in turn
    (what hvdbg's deterministic executor does, without the hypervisor)."""
    ucs = [raw_engine(image, hook) for _ in range(engines)]
    end = image.work_done
    pcs = [image.work] * engines
    slices = 0
    with Timer() as t:
        while any(pc != end for pc in pcs):
            for i, uc in enumerate(ucs):
                if pcs[i] != end:
                    uc.emu_start(pcs[i], end, count=slice_len)
                    pcs[i] = uc.reg_read(X.UC_X86_REG_RIP)
                    slices += 1
    return Run(image.loop_instructions() * engines, _raw_exits(image, hook, engines), t.seconds, engines, slices,
               t.cpu_seconds, t.switches)


# -- hvdbg ------------------------------------------------------------------------------
def hv_machine(image: GuestImage, vcpus: int, deterministic: bool, slice_len: int | None = None) -> Machine:
    data: dict = {"kernel": str(image.path), "memory": RAM, "vcpus": vcpus, "deterministic": deterministic,
                  "budget": {"seconds": 3600}}
    if slice_len is not None:
        data["slice"] = slice_len
    return Machine(config_from_dict(data))


def default_slice() -> int:
    """hvdbg's default slice length (the raw sliced baselines use the same)."""
    from hvdbg.config import SCHEMA
    return next(o.default for o in SCHEMA if o.key == "slice")


def hv_run(image: GuestImage, vcpus: int, deterministic: bool, slice_len: int | None = None) -> Run:
    """Boot the guest on hvdbg and time the executor's run (VM construction excluded)."""
    vm = hv_machine(image, vcpus, deterministic, slice_len)
    executor = make_executor(vm)
    with Timer() as t:
        executor.run()
    check_hv_run(vm, image)
    reason = image.workload.exit_reason
    exits = vm.trace.counts.get(reason, 0) if reason else 0
    slices = sum(-(-v.instructions // vm.config["slice"]) for v in vm.vcpus)
    return Run(vm.total_instructions(), exits, t.seconds, vcpus, slices, t.cpu_seconds, t.switches)


def check_hv_run(vm: Machine, image: GuestImage) -> None:
    """The guest must have exited with status 0 after every vCPU ran the whole loop, and
    hvdbg's instruction counter must agree with loop.S's instruction table."""
    ending = vm.ending
    if ending is None or ending.outcome != "exited" or ending.status != 0:
        raise BenchError(f"hvdbg run of {image.path.name} ended {ending}")
    want = image.loop_instructions()
    for v in vm.vcpus:
        if not want <= v.instructions <= want + 200:
            raise BenchError(f"vCPU {v.index} retired {v.instructions} instructions; the loop alone is {want}")
    reason = image.workload.exit_reason
    if reason and vm.trace.counts.get(reason, 0) < image.iterations * len(vm.vcpus):
        raise BenchError(f"expected {image.iterations * len(vm.vcpus)} {reason} exits, "
                         f"got {vm.trace.counts.get(reason, 0)}")


# -- QEMU TCG on the same guest ------------------------------------------------------------
QEMU = shutil.which("qemu-system-x86_64")
_QEMU_ARGS = ("-m", "16", "-smp", "1", "-accel", "tcg", "-display", "none", "-monitor", "none",
              "-serial", "null", "-no-reboot", "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=4")
#: isa-debug-exit makes QEMU exit with (status << 1) | 1: loop.S writes status 0
_QEMU_EXIT_OK = 1


def _qemu_once(elf: Path, timeout: float) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one whole QEMU process booting ``elf``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.run([QEMU, "-kernel", str(elf), *_QEMU_ARGS], capture_output=True, timeout=timeout)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != _QEMU_EXIT_OK:
        raise BenchError(f"QEMU on {elf.name} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


#: QEMU runs the same loop this many times longer than hvdbg's row, so that its time is well
#: above the jitter of its ~0.1 s start-up; the rows compare rates (per second), not times.
QEMU_SCALE = 100
#: at least ~0.5 s of QEMU per workload (measured rates: ALU 2.9 G instr/s, CPUID ~170 M/s,
#: unclaimed OUT faster still, UART OUT ~30 M/s, xAPIC read ~6 M/s)
_QEMU_MIN_ITERATIONS = {"alu": 400_000_000, "cpuid": 100_000_000, "out_unclaimed": 200_000_000,
                        "out_uart": 20_000_000, "apic_read": 4_000_000}
_QEMU_MIN_EXIT_ITERATIONS = 3_000_000


def qemu_iterations(workload: str, iterations: int) -> int:
    """How many iterations QEMU's image gets for a row whose hvdbg image has ``iterations``."""
    return min(max(iterations * QEMU_SCALE, _QEMU_MIN_ITERATIONS.get(workload, _QEMU_MIN_EXIT_ITERATIONS)),
               2**32 - 1)


def qemu_run(image: GuestImage, startup: GuestImage, timeout: float = 600) -> Run:
    """QEMU TCG (one CPU) running the same guest (built with :func:`qemu_iterations`) to
    its debug-exit write.  QEMU is timed as a whole process, so its
    start-up (measured in the same round on ``startup``, the same guest with one
    iteration) is taken off wall and CPU time alike."""
    if QEMU is None:
        raise BenchError("qemu-system-x86_64 is not installed (scripts/setup.sh installs it)")
    base_wall, base_cpu = _qemu_once(startup.path, timeout)
    wall, cpu = _qemu_once(image.path, timeout)
    exits = image.iterations if image.workload.exit_reason else 0
    return Run(image.loop_instructions(), exits, max(wall - base_wall, 1e-6), 1, 0, max(cpu - base_cpu, 0.0))


def qemu_cases(workload: str, iterations: int, workdir: Path) -> tuple[list[Case], tuple[str, ...]]:
    """The ``qemu`` row for a table whose 1-vCPU hvdbg image has ``iterations``, and the
    baseline names hvdbg's rows put first (both empty without qemu-system-x86_64)."""
    if QEMU is None:
        return [], ()
    big, startup = build(workload, qemu_iterations(workload, iterations), workdir), build(workload, 1, workdir)
    return [Case("qemu", "QEMU TCG, 1 CPU, a longer run of the same loop, process time minus start-up",
                 lambda: qemu_run(big, startup))], ("qemu",)
