"""Run control with owners: a vCPU runs only while nobody holds it (hvdbg/run/control.py).

The race these tests pin down was found by the connection churn (fuzz/churn.py): a gdb on
vCPU 1's stub was SIGKILLed, a debugger attached to the all-vCPU stub and stopped every
vCPU, and then the dead session's cleanup resumed vCPU 1 (and, through the --gdb-wait
release, the whole VM) under the new debugger: its attach waited 10 s for vCPUs that ran.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from gdbstub.target import ResumeAction, ResumeKind, StopReason
from hvdbg import api
from hvdbg.debug.gdb_target import VmTarget
from hvdbg.run.control import SHELL, START_HOLD, STOP_EVENT, RunControl


def fake_vcpus(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(index=i, request_park=lambda: None) for i in range(n)]


def test_a_vcpu_runs_only_when_every_owner_released_it():
    control, (v0, v1) = RunControl(), fake_vcpus(2)
    control.pause([v0, v1], "gdb A")
    control.pause([v1], "gdb B")
    control.release([v0, v1], ("gdb A",))
    assert not control.is_paused(v0) and control.is_paused(v1)
    assert control.holders(v1) == ["gdb B"] and control.held_by("gdb A") == frozenset()
    control.release([v1], ("gdb B",))
    assert not control.any_paused()


def test_the_start_hold_ends_with_release_hold_alone():
    control, vcpus = RunControl(), fake_vcpus(3)
    control.pause(vcpus, START_HOLD)
    control.pause(vcpus[:1], SHELL)
    control.release(vcpus, (SHELL, STOP_EVENT))
    assert control.paused == {0, 1, 2}
    control.release_hold()
    assert not control.any_paused()
    control.pause(vcpus, "x")
    control.release_all()
    assert control.paused == set() and control.holders(vcpus[0]) == []


def test_a_dying_per_vcpu_session_cannot_resume_what_the_all_vcpu_debugger_stopped(make_config):
    session = api.open_debug(make_config(vcpus=2, cmdline="work_mib=64", memory="256M"),
                             start_paused=True)
    per_vcpu = VmTarget(session, frozenset({1}))
    everyone = VmTarget(session)
    try:
        per_vcpu.attach()
        per_vcpu.resume({2: ResumeAction(ResumeKind.CONTINUE)})  # the start hold ends: all run
        time.sleep(0.2)
        everyone.attach()                           # the newcomer stops every vCPU
        per_vcpu.detach()                           # then the old session's cleanup runs
        vcpus = session.vm.vcpus
        assert session.control.paused == {0, 1}, session.control.paused
        assert session.holders(vcpus[1]) == ["gdb (all vCPUs)"]
        assert session.control.wait_parked({0, 1}, 5.0)
        counts = [v.instructions for v in vcpus]
        time.sleep(0.3)
        assert [v.instructions for v in vcpus] == counts   # nothing ran
        everyone.detach()
        assert not session.control.any_paused()
    finally:
        session.shutdown()


LOCK_OK = re.compile(r"lock ok counter (\d+) cpus (\d+)")


@pytest.mark.parametrize("executor", [
    dict(deterministic=False), dict(deterministic=False, pcpus=2, sched="fifo"), dict(deterministic=True),
], ids=["pinned-threads", "threads-fifo-2", "deterministic"])
def test_stepping_one_vcpu_on_the_debuggers_thread_keeps_the_lock_exact(make_config, executor):
    """A per-vCPU debugger single-steps vCPU 2 (on its own thread: RunControl.step_here)
    hundreds of times while the other three take a contended ticket lock; the guest's
    own check of the total still finds every update."""
    iters = 1500
    session = api.open_debug(make_config(vcpus=4, cmdline=f"workload=lock lock=ticket lock_iters={iters}",
                                         slice=2000, **executor))
    stepper = VmTarget(session, frozenset({2}))
    handed_off = []
    queued_step = session.control.request_step
    session.control.request_step = lambda v, count=1: (handed_off.append(v.index), queued_step(v, count))
    session.start()
    stepped = 0
    try:
        deadline = time.monotonic() + 120
        while "smp: 4 of 4 CPUs online" not in session.vm.uart.text() and time.monotonic() < deadline:
            time.sleep(0.01)    # vCPU 2 runs the lock loop (a step of a wait-for-SIPI vCPU runs nothing)
        for _ in range(6):
            if session.vm.ended:
                break
            stepper.attach()
            for _ in range(100):
                before = session.vm.vcpus[2].instructions
                stepper.resume({3: ResumeAction(ResumeKind.STEP)})
                stop = stepper.wait_for_stop(10)
                assert stop is not None
                if stop.reason is not StopReason.STEP_DONE:
                    break   # the VM ended meanwhile
                stepped += session.vm.vcpus[2].instructions - before
            stepper.detach()
            time.sleep(0.05)
        session.join(300)
    finally:
        session.shutdown()
    serial = session.vm.uart.text()
    assert stepped >= 100 and handed_off == [], (stepped, handed_off)   # every step ran here
    ending = session.vm.ending
    assert ending is not None and ending.outcome == "exited" and ending.status == 0, (ending, serial[-300:])
    m = LOCK_OK.search(serial)
    assert m and (int(m.group(1)), int(m.group(2))) == (4 * iters, 4), serial[-300:]
