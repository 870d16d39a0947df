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


@pytest.mark.parametrize("sched, lock", [("fifo", "ticket"), ("fifo", "tas"), ("smp", "tas"),
                                         ("cfs", "tas"), ("rr", "tas")])
def test_threaded_scheduler_keeps_the_guests_lock_exact(guest_kernels, sched, lock):
    """4 vCPUs on 2 pCPU threads under each policy."""
    assert_exact(lock_boot(guest_kernels, lock, pcpus=2, sched=sched))


def test_default_sum_is_exact_with_host_threads(guest_kernels):
    """The default workload adds with ``lock xadd`` from every vCPU and checks the sum."""
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"), deterministic=False,
                    cmdline="work_mib=8")
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    assert "smp: 4 of 4 CPUs online" in res["serial"] and "sum ok" in res["serial"]
