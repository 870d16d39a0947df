"""Determinism: the 4-vCPU / 2-pCPU SMP scenario in deterministic mode gives one result
(trace_hash over every VM exit, serial output, exits, diagnosis) run after run, and the
examples/bugs scripts print identical diagnoses. The long run is
``python -m fuzz.run_determinism --runs 100 --bugs`` (docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fuzz.run_determinism import (
    BUG_SCRIPTS,
    SMP_CONFIG,
    first_difference,
    repeat,
    run_once,
    run_script,
    smp_args,
)
from fuzz.common import hvdbg_command
from hvdbg.api import scenario
from hvdbg.config import SCHED_POLICIES

VOLATILE = ("wall_seconds",)


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def test_smp_4_vcpus_on_2_pcpus_ten_processes_one_result(guest_kernels):
    seen, examples = repeat(lambda: run_once(smp_args(4, 2)), 10, 2)
    results = [json.loads(k) for k in seen]
    assert len(seen) == 1, first_difference(results[0], results[1])
    result = results[0]
    assert result["outcome"] == "exited" and result["exit_status"] == 0, result["diagnosis"]
    assert "smp: 4 of 4 CPUs online" in result["serial"] and "sum ok" in result["serial"]
    assert len(result["trace_hash"]) == 32 and sum(result["exits"].values()) > 100
    assert {v["pcpu"] for v in result["vcpus"]} <= {0, 1}


@pytest.mark.parametrize("sched", SCHED_POLICIES)
def test_every_policy_is_deterministic_in_process(guest_kernels, sched):
    """Same process, two runs: no state left behind changes the next run."""
    runs = [strip(scenario.run(SMP_CONFIG, deterministic=True, vcpus=4, pcpus=2, sched=sched)[1])
            for _ in range(2)]
    assert runs[0] == runs[1], first_difference(runs[0], runs[1])
    assert runs[0]["outcome"] in ("exited", "hang", "budget")


def test_host_load_does_not_change_the_trace(guest_kernels):
    """Busy host processes change timing, not the result. (Busy *threads* in the same
    process would starve the executor of the GIL until the wall-clock budget.seconds ends
    the run - a budget outcome is host-dependent by design; see docs/reliability.md.)"""
    quiet = strip(scenario.run(SMP_CONFIG, deterministic=True, vcpus=4, pcpus=2)[1])
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        loaded = strip(scenario.run(SMP_CONFIG, deterministic=True, vcpus=4, pcpus=2)[1])
    finally:
        for b in burners:
            b.kill()
            b.wait(10)
    assert quiet == loaded, first_difference(quiet, loaded)


def test_non_deterministic_mode_still_ends_the_same_way(guest_kernels):
    """Threaded runs may interleave differently; outcome, status and checksum line may not."""
    argv = hvdbg_command("run", str(SMP_CONFIG), "--json", "--compact")
    seen, _ = repeat(lambda: run_once(argv), 3, 2)
    results = [json.loads(k) for k in seen]
    assert {(r["outcome"], r["exit_status"]) for r in results} == {("exited", 0)}
    assert {r["serial"].splitlines()[-1] for r in results} == {results[0]["serial"].splitlines()[-1]}


@pytest.mark.parametrize("script", BUG_SCRIPTS, ids=[s.stem for s in BUG_SCRIPTS])
def test_bug_script_prints_identical_diagnoses(guest_kernels, script):
    seen, examples = repeat(lambda: run_script(script), 2, 2)
    assert len(seen) == 1, "outputs differ between runs of " + script.name
    out = next(iter(seen))
    assert out.startswith("== ") and "   * " in out  # the report, then the JSON line
    assert json.loads(out.strip().splitlines()[-1])["diagnosis"]
