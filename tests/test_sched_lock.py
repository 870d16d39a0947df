"""The lock-heavy workload of the SMP kernel under every policy, the per-vCPU waiting
reasons of the scheduler statistics, and a smoke run of bench/p6_sched.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hvdbg import api
from hvdbg.config import load_config
from hvdbg.run.executors import Executor, make_executor
from hvdbg.run.sched_bridge import WAITING_REASONS
from hvdbg.vmx.controls import ActivityState
from hvdbg.hv.machine import Machine

ROOT = Path(__file__).resolve().parent.parent
LOCK_OK = re.compile(r"^lock ok counter (\d+) cpus (\d+) spins (\d+)$", re.M)
ITERS = 60


def machine(path, **overrides) -> tuple[Machine, Executor]:
    """A machine of the config and its executor, not run yet."""
    vm = Machine(api.make_config(path, **overrides))
    return vm, make_executor(vm)


def run(path, **overrides) -> tuple[Machine, Executor, dict]:
    r = api.run(path, **overrides)
    return r.machine, r.executor, r.result


def lock_config(make_config, pcpus: int, policy: str, lock: str = "ticket", iters: int = ITERS):
    return make_config(vcpus=4, pcpus=pcpus, sched=policy, deterministic=True, slice=2000,
                       cmdline=f"workload=lock lock={lock} lock_iters={iters}")


_RUNS: dict[tuple, tuple] = {}


def lock_run(make_config, pcpus: int, policy: str, lock: str = "ticket"):
    """Deterministic runs repeat bit for bit: each configuration runs once per session."""
    key = (pcpus, policy, lock)
    if key not in _RUNS:
        _RUNS[key] = run(lock_config(make_config, pcpus, policy, lock))
    return _RUNS[key]


@pytest.mark.parametrize("policy", ["pinned", "fifo", "rr", "cfs", "smp"])
@pytest.mark.parametrize("pcpus", [1, 2])
def test_lock_workload_finishes_under_every_policy(make_config, policy, pcpus):
    vm, ex, res = lock_run(make_config, pcpus, policy)
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    m = LOCK_OK.search(res["serial"])
    assert m, res["serial"]
    assert (int(m.group(1)), int(m.group(2))) == (4 * ITERS, 4)
    assert f"lock: ticket lock, {ITERS} iterations per CPU" in res["serial"]
    assert "sum ok" not in res["serial"] and "work:" not in res["serial"]   # not the default workload
    st = res["sched"]
    assert st["policy"] == policy
    # every CPU took the lock ITERS times: each AP did real work after its SIPI
    assert all(st["vcpus"][str(i)]["run"] > ITERS * 100 for i in range(4))


def test_tas_lock_and_lock_statistics(make_config):
    """The test-and-test-and-set variant; 4 vCPUs on 2 pCPUs with the smp policy spin and
    yield: PAUSE-loop exits, the guest counted spins, vCPUs waited after pause yields."""
    vm, ex, res = lock_run(make_config, 2, "smp", lock="tas")
    assert res["exit_status"] == 0 and "lock: test-and-test-and-set lock" in res["serial"]
    assert int(LOCK_OK.search(res["serial"]).group(1)) == 4 * ITERS
    assert res["exits"]["PAUSE_INSTRUCTION"] > 0
    assert sum(row["waited_pause-yield"] for row in res["sched"]["vcpus"].values()) > 0


def test_smp_policy_spins_less_than_cfs_on_the_ticket_lock(make_config):
    """The claim of docs/scheduling.md on the real kernel: 4 vCPUs on 1 and 2 pCPUs,
    ticket lock: far fewer guest spins and guest instructions than cfs."""
    for pcpus in (1, 2):
        (_, _, cfs), (_, _, smp) = (lock_run(make_config, pcpus, p) for p in ("cfs", "smp"))
        spins = {name: int(LOCK_OK.search(r["serial"]).group(3)) for name, r in (("cfs", cfs), ("smp", smp))}
        assert spins["smp"] * 5 < spins["cfs"], (pcpus, spins)
        assert smp["instructions"] < cfs["instructions"], pcpus


def test_lock_options_leave_the_default_workload_alone(make_config):
    vm, ex, res = run(make_config(vcpus=2, pcpus=2, sched="pinned", deterministic=True,
                                  cmdline="lock=tas lock_iters=7"))
    assert res["exit_status"] == 0 and "sum ok" in res["serial"]
    assert not re.search(r"^lock", res["serial"], re.M)


# ------------------------------------------------------------------------------------
# waiting reasons
# ------------------------------------------------------------------------------------

def test_waiting_reasons_before_and_after_a_run(make_config):
    vm, ex = machine(lock_config(make_config, 1, "smp"))
    rows = ex.stats()["vcpus"]
    assert rows[0]["waiting"] == "queued"                     # the BSP: woken at start
    assert [rows[i]["waiting"] for i in (1, 2, 3)] == ["wait-for-SIPI"] * 3
    vm, ex, res = lock_run(make_config, 1, "smp")             # the same configuration, run
    st = ex.stats()["vcpus"]
    assert all(row["waiting"] == "finished" for row in st.values())
    for i in (1, 2, 3):
        assert {f"waited_{r}" for r in WAITING_REASONS if r not in ("running", "debugger")} <= set(st[i])
    # started one after the other: a later AP waited longer for its SIPI
    assert 0 < st[1]["waited_wait-for-SIPI"] < st[2]["waited_wait-for-SIPI"] < st[3]["waited_wait-for-SIPI"]
    assert st[0]["waited_wait-for-SIPI"] == 0
    # on one pCPU every vCPU waits while another runs: queued + pause-yield time is the
    # policy's wait time (runnable but not running)
    for row in st.values():
        assert row["waited_pause-yield"] > 0
        assert row["waited_queued"] + row["waited_pause-yield"] == pytest.approx(row["wait"], rel=0.05)


def test_halted_and_finished_reasons_follow_the_activity_state(make_config):
    vm, ex = machine(make_config(vcpus=2, pcpus=1, sched="cfs", deterministic=True))
    ap = vm.vcpus[1]
    assert ex.sched.blocked_reason(ap) == "wait-for-SIPI"
    ap.activity = ActivityState.HLT
    ap.set_reg("rflags", 0x202)                               # IF=1: an interrupt may wake it
    assert ex.sched.blocked_reason(ap) == "halted"
    ap.set_reg("rflags", 0x2)                                 # cli; hlt: nothing but NMI/INIT
    assert ex.sched.blocked_reason(ap) == "finished"
    ap.activity = ActivityState.SHUTDOWN
    assert ex.sched.blocked_reason(ap) == "finished"


def test_a_slice_ending_in_hlt_shows_halted(make_config):
    """The path of a real slice end: an AP that was running and ends its slice in HLT
    with IF=1 (nothing pending) is blocked with the reason "halted", and its halted time
    grows with the clock."""
    from hvdbg.hv.vcpu import RunEnd

    vm, ex = machine(make_config(vcpus=2, pcpus=1, sched="rr", deterministic=True))
    sched, ap = ex.sched, vm.vcpus[1]
    ap.activity = ActivityState.ACTIVE
    sched._on_kick(ap)                                        # runnable: queued behind the BSP
    assert ex.stats()["vcpus"][1]["waiting"] == "queued"
    while (v := sched.pick(0)) is not ap:
        sched.finish(v, 0, RunEnd.SLICE, 1000, 0, ())
    assert ex.stats()["vcpus"][1]["waiting"] == "running"
    ap.activity = ActivityState.HLT
    ap.set_reg("rflags", 0x202)
    sched.finish(ap, 0, RunEnd.EXIT, 500, 1, ())
    row = ex.stats()["vcpus"][1]
    assert row["waiting"] == "halted" and row["state"] == "blocked"
    v = sched.pick(0)
    sched.finish(v, 0, RunEnd.SLICE, 3000, 0, ())            # the BSP runs on: the AP waits halted
    assert ex.stats()["vcpus"][1]["waited_halted"] == 3000


def test_debugger_stop_shows_as_waiting_reason(make_config):
    vm, ex = machine(make_config(vcpus=2, pcpus=1, sched="rr", deterministic=True))
    ex.control.pause(vm.vcpus, "gdb")
    assert {row["waiting"] for row in ex.stats()["vcpus"].values()} == {"debugger"}
    ex.control.release(vm.vcpus, ("gdb",))
    assert ex.stats()["vcpus"][1]["waiting"] == "wait-for-SIPI"


def test_run_json_has_waiting_reasons(make_config):
    path = lock_config(make_config, 2, "cfs", iters=20)
    proc = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(path), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    res = json.loads(proc.stdout)
    rows = res["sched"]["vcpus"]
    assert {row["waiting"] for row in rows.values()} == {"finished"}
    assert rows["3"]["waited_wait-for-SIPI"] > rows["1"]["waited_wait-for-SIPI"] > 0


def test_shell_sched_command_shows_waiting_column(make_config):
    from types import SimpleNamespace

    from hvdbg.ui import commands

    def sched_text(vm, ex) -> str:
        call = SimpleNamespace(vm=vm, session=SimpleNamespace(executor=ex),
                               ctx=SimpleNamespace(is_stopped=lambda v: True))
        return commands.cmd_sched(call, {})

    text = sched_text(*machine(lock_config(make_config, 1, "smp")))
    header = next(line for line in text.splitlines() if line.strip().startswith("vcpu "))
    assert "waiting" in header.split() and "waited_wait-for-SIPI" in header.split()
    assert re.search(r"^\s+3\s.*\swait-for-SIPI\s", text, re.M), text
    vm, ex, _ = lock_run(make_config, 1, "smp")
    assert len(re.findall(r"\sfinished\s", sched_text(vm, ex))) == 4


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("lock", ["ticket", "tas"])
def test_lock_workload_under_qemu(guest_kernels, lock):
    """QEMU is the reference machine: the same kernel and command line finish there."""
    proc = subprocess.run(["qemu-system-x86_64", "-display", "none", "-monitor", "none", "-no-reboot",
                           "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                           "-kernel", str(guest_kernels / "smp.elf"), "-smp", "4", "-m", "128",
                           "-append", f"workload=lock lock={lock} lock_iters=300"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:]           # (status 0 << 1) | 1
    m = LOCK_OK.search(proc.stdout)
    assert m and (int(m.group(1)), int(m.group(2))) == (1200, 4), proc.stdout[-2000:]


def test_example_config_runs_the_lock_workload():
    cfg = load_config(ROOT / "examples" / "smp-lock.toml")
    assert "workload=lock" in cfg["cmdline"] and cfg["sched"] == "smp" and cfg["deterministic"]


# ------------------------------------------------------------------------------------
# bench/p6_sched.py
# ------------------------------------------------------------------------------------

def test_p6_bench_smoke(tmp_path):
    out = tmp_path / "p6.json"
    proc = subprocess.run([sys.executable, "bench/p6_sched.py", "--quick", "--policies", "cfs",
                           "--pcpus", "2", "--modes", "deterministic", "--lock-iters", "20",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| pinned (baseline, 1 vCPU per pCPU) | 4 | deterministic |") == 2
    data = json.loads(out.read_text())
    tables = {t["workload"]: t["rows"] for t in data["tables"]}
    assert set(tables) == {"parallel sum", "lock-heavy (ticket lock)"}
    for rows in tables.values():
        assert [(r["policy"], r["pcpus"]) for r in rows] == [("pinned", 4), ("cfs", 2)]
        assert all(r["ok"] and 0.25 <= r["jain"] <= 1.0 and r["makespan"] > 0 for r in rows)
        base = rows[0]
        # 4 vCPUs on 2 pCPUs cannot finish sooner than on 4
        assert all(r["makespan"] >= base["makespan"] for r in rows[1:])
