"""``spin_skip``: in deterministic mode, loops without progress run short probes and the
rest of their slice passes as idle virtual time.  The guest must see the same run (same
serial output, same exits, same virtual times), for a fraction of the host work."""

from __future__ import annotations

from fuzz.chaos import flat_kernel
from helpers import boot
from hvdbg.config import config_from_dict
from hvdbg.run.loop import SPIN_PROBE


def test_smp_boot_with_spin_skip_matches_the_full_run(make_config):
    """8 vCPUs on 8 virtual pCPUs: APs poll for the BSP's release while it starts the
    others. With spin_skip the guest prints the same lines and exits the same way at
    the same virtual times; the APs execute far fewer instructions."""
    path = make_config(vcpus=8, pcpus=8, deterministic=True)
    vm_full, full = boot(path)
    vm_skip, skip = boot(path, spin_skip=True)
    assert full["outcome"] == skip["outcome"] == "exited"
    assert full["exit_status"] == skip["exit_status"] == 0
    assert skip["serial"] == full["serial"]
    assert "sum ok" in skip["serial"]
    assert skip["exits"] == full["exits"]
    # every exit happened at the same virtual time (the trace hashes instruction clocks)
    assert skip["trace_hash"] == full["trace_hash"]
    skipped = [v["spin_skipped"] for v in skip["vcpus"]]
    assert all(s == 0 for s in (v["spin_skipped"] for v in full["vcpus"]))
    # APs started early poll for the release longest (the last one hardly waits)
    assert all(s > 0 for s in skipped[1:-1]), skipped
    assert skipped[1] > skipped[-2], skipped
    assert skip["instructions"] < 0.6 * full["instructions"]
    # skipped time is idle virtual time: clocks end where the full run's did
    assert [v.clock() for v in vm_skip.vcpus] == [v.clock() for v in vm_full.vcpus]


def test_spin_skip_is_deterministic(make_config):
    path = make_config(vcpus=6, pcpus=3, sched="cfs", deterministic=True, spin_skip=True)
    hashes = {boot(path)[1]["trace_hash"] for _ in range(3)}
    assert len(hashes) == 1


def test_a_spinning_guest_is_still_a_hang(tmp_path):
    """pause; jmp back: no progress ever. The hang detector counts probes as slices, so
    the verdict is the same, after far fewer executed instructions."""
    kernel = tmp_path / "spin.bin"
    kernel.write_bytes(flat_kernel(b"\xf3\x90\xeb\xfc"))
    results = []
    for skip in (False, True):
        vm, res = boot(config_from_dict({"kernel": str(kernel), "memory": "16M", "deterministic": True,
                                         "spin_skip": skip,
                                         "budget": {"instructions": 100_000_000, "seconds": 60}}))
        results.append((res, vm.vcpus[0]))
    (full, v_full), (skip, v_skip) = results
    assert full["outcome"] == skip["outcome"] == "hang"
    assert "spinning" in " ".join(skip["diagnosis"])
    assert v_skip.spin_skipped > 0
    assert v_skip.instructions <= v_full.instructions // 10
    assert v_skip.instructions >= SPIN_PROBE


def test_progress_is_never_skipped(tmp_path):
    """inc eax; pause; jmp back: EAX changes every iteration, so nothing is skipped and
    the run ends on the instruction budget as without spin_skip."""
    kernel = tmp_path / "count.bin"
    kernel.write_bytes(flat_kernel(b"\x40\xf3\x90\xeb\xfb"))
    vm, res = boot(config_from_dict({"kernel": str(kernel), "memory": "16M", "deterministic": True,
                                     "spin_skip": True, "budget": {"instructions": 3_000_000, "seconds": 60}}))
    assert res["outcome"] == "budget"
    assert vm.vcpus[0].spin_skipped == 0


def test_pinned_threads_yield_while_spinning(make_config):
    """Pinned executor, 8 vCPU threads on this 2-core host: spinning APs skip and yield
    their core; the guest still starts every AP and checks its sum."""
    vm, res = boot(make_config(vcpus=8, pcpus=8, spin_skip=True))
    assert res["outcome"] == "exited" and res["exit_status"] == 0
    assert "sum ok" in res["serial"]
    assert sum(1 for v in res["vcpus"] if v["started_by_sipi"]) == 7
    assert sum(v["spin_skipped"] for v in res["vcpus"]) > 0
