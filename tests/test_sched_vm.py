"""Several vCPUs per pCPU on the real SMP kernel: every policy finishes, CFS is fair,
halted vCPUs take no slices, IPIs wake vCPUs, deterministic mode repeats bit for bit."""

from __future__ import annotations

import pytest

from hvdbg import api
from hvdbg.run.executors import DeterministicExecutor, ThreadedSchedExecutor


def boot(path, **overrides):
    """The machine, the executor that ran it, the result with scheduler statistics."""
    r = api.run(path, **overrides)
    return r.machine, r.executor, r.result


@pytest.mark.parametrize("policy", ["pinned", "fifo", "rr", "cfs", "smp"])
@pytest.mark.parametrize("pcpus", [1, 2])
def test_every_policy_finishes_4_vcpus(make_config, policy, pcpus):
    vm, ex, res = boot(make_config(vcpus=4, pcpus=pcpus, sched=policy, deterministic=True))
    assert isinstance(ex, DeterministicExecutor)
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    assert "sum ok" in res["serial"]
    st = res["sched"]
    assert st["policy"] == policy
    assert all(v.pcpu is not None and v.pcpu < pcpus for v in vm.vcpus)


@pytest.mark.parametrize("policy", ["rr", "cfs"])
def test_threaded_scheduler_with_2_pcpus(make_config, policy):
    vm, ex, res = boot(make_config(vcpus=4, pcpus=2, sched=policy, deterministic=False))
    assert isinstance(ex, ThreadedSchedExecutor)
    assert res["outcome"] == "exited" and res["exit_status"] == 0
    assert set(res["sched"]["pcpu_utilisation"]) == {"0", "1"}


def _loop_guest(tmp_path):
    """bench/guests/loop.S: every CPU (APs started by INIT-SIPI-SIPI) runs an ALU loop."""
    from bench.guest_image import build
    return build("alu", 5_000_000, tmp_path)


@pytest.mark.parametrize("weights, expect", [({}, (1, 1, 1, 1)), ({1: 2048}, (1, 2, 1, 1))])
def test_cfs_shares_follow_weights(tmp_path, weights, expect):
    """4 CPU-bound vCPUs on 1 pCPU, stopped by an instruction budget in the middle of the
    parallel loop: CFS run shares of the APs follow their weights within 10%."""
    from hvdbg.config import config_from_dict
    image = _loop_guest(tmp_path)
    cfg = config_from_dict({"kernel": str(image.path), "vcpus": 4, "pcpus": 1, "sched": "cfs",
                            "deterministic": True, "weights": weights,
                            "budget": {"instructions": 12_000_000, "seconds": 120}})
    vm, ex, res = boot(cfg)
    assert vm.ending.outcome == "budget"
    st = ex.stats()["vcpus"]
    runs = [st[i]["run"] for i in (1, 2, 3)]  # the APs: all of their run is the loop
    shares = [r / w for r, w in zip(runs, expect[1:])]
    assert max(shares) / min(shares) <= 1.10, runs


def test_halted_vcpu_takes_no_slices(make_config):
    """After the workload the APs halt with IF=0: once blocked they are never picked."""
    vm, ex, res = boot(make_config(vcpus=3, pcpus=1, sched="rr", deterministic=True))
    assert res["outcome"] == "exited"
    st = res["sched"]["vcpus"]
    for ap in ("1", "2"):
        assert st[ap]["state"] == "blocked" and st[ap]["blocks"] >= 1
    # blocked vCPUs (wait-for-SIPI at first) only ran after their SIPI wake-up
    assert all(st[ap]["wakeups"] >= 1 for ap in ("1", "2"))


def test_ipi_wakes_a_halted_vcpu(make_config):
    """selftest: the BSP sends fixed IPIs to APs and the timer wakes sti;hlt."""
    vm, ex, res = boot(make_config(vcpus=2, pcpus=1, sched="cfs", deterministic=True, cmdline="selftest"))
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    assert "selftest: ipi ok" in res["serial"] and "selftest: timer ok" in res["serial"]
    assert res["sched"]["vcpus"]["1"]["wakeups"] >= 1


@pytest.mark.parametrize("policy", ["cfs", "smp"])
def test_deterministic_trace_hash(make_config, policy):
    path = make_config(vcpus=4, pcpus=2, sched=policy, deterministic=True)
    hashes = {boot(path)[2]["trace_hash"] for _ in range(3)}
    assert len(hashes) == 1
