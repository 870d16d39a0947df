"""hvdbg.api: run() boots a config to its end with schema-key overrides; RunResult; the
executors' common interface; RunControl.holding_parked."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from hvdbg import api
from hvdbg.config import load_config
from hvdbg.errors import ConfigError, Outcome
from hvdbg.run.control import START_HOLD, RunControl
from hvdbg.run.executors import DeterministicExecutor, Executor, PinnedExecutor


def test_run_applies_overrides_and_returns_a_typed_result(make_config):
    r = api.run(make_config(vcpus=1), vcpus=2, deterministic=True, pcpus=1, sched="rr")
    assert isinstance(r.executor, DeterministicExecutor)
    assert r.outcome == Outcome.EXITED == "exited" and r.exit_status == 0, r.result["diagnosis"]
    assert len(r.machine.vcpus) == 2 and r.machine.config["sched"] == "rr"
    assert r.result["sched"]["policy"] == "rr" and r.stats["policy"] == "rr"
    assert json.loads(json.dumps(r.result))["outcome"] == "exited"
    assert r.wall_seconds > 0


def test_double_underscore_is_the_dot_of_a_section_and_a_config_object_is_copied(make_config):
    cfg = load_config(make_config(vcpus=1))
    r = api.run(cfg, budget__instructions=1000, deterministic=False)
    assert r.outcome == "budget" and r.machine.config["budget.instructions"] == 1000
    assert cfg["budget.instructions"] != 1000 and cfg["deterministic"]   # the caller's config is untouched


def test_without_stats_the_result_has_no_sched_key(make_config):
    r = api.run(make_config(vcpus=2), deterministic=True, include_stats=False)
    assert "sched" not in r.result and r.stats is not None


def test_the_pinned_executor_has_stats_too_none(make_config):
    r = api.run(make_config(vcpus=2), deterministic=False)
    assert isinstance(r.executor, PinnedExecutor) and isinstance(r.executor, Executor)
    assert r.stats is None and "sched" not in r.result
    assert r.outcome == "exited" and "sum ok" in r.result["serial"]


def test_a_bad_override_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match="unknown key 'no.such'"):
        api.run(make_config(), no__such=1)


def test_run_machine_runs_a_machine_changed_before(make_config):
    from hvdbg.hv.machine import Machine

    vm = Machine(api.make_config(make_config(vcpus=1), deterministic=True))
    vm.config.set("budget.instructions", 5000)   # read by the watchdog when the run starts
    r = api.run_machine(vm)
    assert r.machine is vm and r.outcome == "budget"


def test_open_debug_gives_a_paused_session(make_config):
    session = api.open_debug(make_config(vcpus=2), start_paused=True, deterministic=True)
    assert session.control.held_by(START_HOLD) == {v.index for v in session.vm.vcpus} and not session.vm.ended


def test_holding_parked_keeps_parked_vcpus_in_serve():
    """A step request (which unparks its vCPU) waits until the holding block ends."""
    control = RunControl()
    control.parked.update({0, 2})
    vcpu0 = SimpleNamespace(index=0)
    done = threading.Event()

    def request() -> None:
        control.request_step(vcpu0, 1)
        done.set()

    with control.holding_parked() as parked:
        assert parked == frozenset({0, 2})
        t = threading.Thread(target=request)
        t.start()
        assert not done.wait(0.2)
        assert control.parked == {0, 2}
    t.join(5)
    assert done.is_set() and control.parked == {2}
