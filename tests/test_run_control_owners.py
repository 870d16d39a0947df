"""Run control with owners: a vCPU runs only while nobody holds it (hvdbg/run/control.py).

The race these tests pin down was found by the connection churn (fuzz/churn.py): a gdb on
vCPU 1's stub was SIGKILLed, a debugger attached to the all-vCPU stub and stopped every
vCPU, and then the dead session's cleanup resumed vCPU 1 (and, through the --gdb-wait
release, the whole VM) under the new debugger: its attach waited 10 s for vCPUs that ran.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from gdbstub.target import ResumeAction, ResumeKind
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
