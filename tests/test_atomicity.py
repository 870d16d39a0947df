"""Locked instructions are atomic across vCPUs in the executors that use host threads
(the pinned one and the threaded scheduler), as they are on hardware: only one engine of a
machine executes at any instant (hvdbg.engine.cpu.ExecutionTurns).  Without that, Unicorn
2.1.4 translates ``lock xadd`` / ``xchg`` as plain load-op-store and the guest's own lock
breaks: a ticket lock deadlocks (barrier timeout), updates are lost.  The deterministic
executor's lock runs are in tests/test_sched_lock.py.

Every run is contended: 4 vCPUs take one lock 2000 times each (test-and-set with ``xchg``,
or a ticket lock with ``lock xadd``) around a plain read-modify-write that the guest checks
for overlap, and the BSP checks the exact total."""

from __future__ import annotations

import re

import pytest

from helpers import boot

LOCK_OK = re.compile(r"lock ok counter (\d+) cpus (\d+) spins (\d+)")
ITERS = 2000


def lock_boot(guest_kernels, lock: str, **overrides):
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), deterministic=False,
                    cmdline=f"workload=lock lock={lock} lock_iters={ITERS}", slice=2000, **overrides)
    return res


def assert_exact(res: dict) -> None:
    assert res["outcome"] == "exited" and res["exit_status"] == 0, (res["diagnosis"], res["serial"][-400:])
    m = LOCK_OK.search(res["serial"])
    assert m, res["serial"][-400:]
    assert (int(m.group(1)), int(m.group(2))) == (4 * ITERS, 4)


@pytest.mark.parametrize("run", range(3))
@pytest.mark.parametrize("lock", ["ticket", "tas"])
def test_pinned_threads_keep_the_guests_lock_exact(guest_kernels, lock, run):
    """1 vCPU : 1 pCPU, one host thread per vCPU (the default executor)."""
    assert_exact(lock_boot(guest_kernels, lock))


@pytest.mark.parametrize("lock", ["ticket", "tas"])
@pytest.mark.parametrize("sched", ["fifo", "smp", "cfs", "rr"])
def test_threaded_scheduler_keeps_the_guests_lock_exact(guest_kernels, sched, lock):
    """4 vCPUs on 2 pCPU threads under each policy."""
    assert_exact(lock_boot(guest_kernels, lock, pcpus=2, sched=sched))


def test_default_sum_is_exact_with_host_threads(guest_kernels):
    """The default workload adds with ``lock xadd`` from every vCPU and checks the sum."""
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), deterministic=False,
                    cmdline="work_mib=8")
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    assert "smp: 4 of 4 CPUs online" in res["serial"] and "sum ok" in res["serial"]


def test_code_at_linear_address_zero_runs(guest_kernels):
    """Code at linear (and physical) 0 executes: an AP started by SIPI vector 0 begins at
    CS:IP 0000:0000 (kvm-unit-tests does that).  Before 2026-12-01 every run had the stop
    address 0 and such code never ran; the vCPU looked halted at RIP 0."""
    from hvdbg.api import make_config, run_machine
    from hvdbg.arch.segments import real_mode_segments
    from hvdbg.hv.machine import Machine

    vm = Machine(make_config("examples/hello.toml", kernel=str(guest_kernels / "hello.elf")))
    vm.memory.write(0, bytes.fromhex("b83412" "bb7856" "f4"))     # mov ax,0x1234; mov bx,0x5678; hlt
    vm.vcpus[0].set_guest_state(rip=0, cr0=0x60000010, segments=real_mode_segments(0, 0))
    res = run_machine(vm, include_stats=False)
    regs = vm.vcpus[0].registers()
    assert regs["rax"] & 0xFFFF == 0x1234 and regs["rbx"] & 0xFFFF == 0x5678, res.result["diagnosis"]
    hlt = [e for e in vm.trace.last(5) if e.reason_name == "HLT"]
    assert hlt and hlt[-1].rip == 6          # the HLT at 0000:0006 exited, after both moves ran


ATOMICS_OK = re.compile(r"atomics ok inc (\d+) cmpxchg (\d+) xchg (\d+) cpus (\d+)")


@pytest.mark.parametrize("executor", [
    dict(deterministic=True), dict(deterministic=False),
    dict(deterministic=True, pcpus=2, sched="smp"), dict(deterministic=False, pcpus=2, sched="fifo"),
    dict(deterministic=False, pcpus=2, sched="cfs"), dict(deterministic=True, pcpus=1, sched="rr"),
], ids=["deterministic-1to1", "pinned-threads", "deterministic-smp-2", "threads-fifo-2", "threads-cfs-2",
        "deterministic-rr-1"])
def test_a_million_lock_inc_cmpxchg_and_xchg_updates_per_vcpu_are_exact(guest_kernels, executor):
    """4 vCPUs each do 1 M ``lock incq``, 1 M ``lock cmpxchgq`` increments and 1 M
    increments under an ``xchg`` test-and-set lock, interleaved, on shared counters
    (guests/smp/atomics.c); every total is exactly 4 M.  On 1 or 2 pCPUs fewer iterations
    keep the run short (the spinning under rr/cfs costs more instructions)."""
    iters = 1_000_000 if executor.get("pcpus") is None else 50_000
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"),
                    cmdline=f"workload=atomics atomic_iters={iters}", **executor)
    assert res["outcome"] == "exited" and res["exit_status"] == 0, (res["diagnosis"], res["serial"][-400:])
    m = ATOMICS_OK.search(res["serial"])
    assert m and tuple(map(int, m.groups())) == (4 * iters, 4 * iters, 4 * iters, 4), res["serial"][-400:]


def test_an_ap_started_with_sipi_vector_0_runs_its_trampoline_at_physical_0(guest_kernels):
    """The SMP kernel with ``sipi_vector=0`` copies its AP trampoline to physical 0 and
    sends SIPI vector 0 (as kvm-unit-tests does): every AP starts at CS:IP 0000:0000."""
    vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), cmdline="sipi_vector=0")
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    assert "smp: 4 of 4 CPUs online" in res["serial"] and "sum ok" in res["serial"]
    assert [v.sipi_vector for v in vm.vcpus[1:]] == [0, 0, 0]
    assert all(v.started_by_sipi for v in vm.vcpus[1:])
