"""kvm-unit-tests cases that pass under hvdbg, from the snapshot in ../shared/third_party
(unpacked and built at test time, ~10 s; never copied into the project), run the way
``hvdbg conformance kut`` runs them; and the runner against QEMU TCG side by side."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hvdbg.api import conformance

THIRD_PARTY = Path(__file__).resolve().parents[1].parent / "shared" / "third_party"
SNAPSHOT = next(iter(sorted(THIRD_PARTY.glob("kvm-unit-tests-*.tar.gz"))), None) if THIRD_PARTY.is_dir() else None

#: Measured passing under hvdbg in seconds (docs/conformance.md has the whole table).
PASSING = [
    "ioapic", "smptest", "smptest3", "hypercall",
    "eventinj", "idt_test", "memory", "setjmp", "xsave", "rmap_chain", "pcid-enabled", "pcid-disabled", "pcid-asymmetric",
    "rdpru", "umip", "smap", "pku", "tsc", "lam",
]
#: Pass, or time out at kvm-unit-tests' 90 s, depending on the host's speed: each vmexit.flat
#: test repeats until 2^30 TSC cycles pass, which on hvdbg's virtual clock (1 ns per guest
#: instruction, 1 us per VM exit) means 1-2 G instructions or 1-2 M exits (docs/conformance.md).
#: `hvdbg conformance kut` runs them; CI does not.  The two tscdeadline cases "passed" in
#: seconds while hvdbg did not offer TSC-deadline (their test was skipped).
BUDGET_BOUND = [
    "vmexit_tscdeadline", "vmexit_tscdeadline_immed",
    "vmexit_cpuid", "vmexit_vmcall", "vmexit_mov_from_cr8", "vmexit_mov_to_cr8", "vmexit_inl_pmtimer",
    "vmexit_ipi", "vmexit_ipi_halt", "vmexit_ple_round_robin", "vmexit_cr0_wp", "vmexit_cr4_pge",
]

pytestmark = pytest.mark.skipif(SNAPSHOT is None, reason=f"no kvm-unit-tests snapshot in {THIRD_PARTY}")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make and gcc are needed to build kvm-unit-tests")
    return conformance.prepare(SNAPSHOT, tmp_path_factory.mktemp("kut"))


@pytest.fixture(scope="module")
def cases(tree):
    return {c.name: c for c in conformance.parse_unittests_cfg((tree / "x86" / "unittests.cfg").read_text())}


@pytest.mark.parametrize("name", PASSING)
def test_case_passes_under_hvdbg(tree, cases, name):
    run = conformance.run_hvdbg(tree, cases[name])
    assert run.verdict == conformance.PASS, (run.first_fail or run.diagnosis or run.status)
    assert run.status == 0


@pytest.mark.parametrize("setup", [
    {"deterministic": True, "sched": "rr", "pcpus": 2},
    {"deterministic": True, "sched": "cfs", "pcpus": 1},   # (fifo never preempts the spinner)
    {"deterministic": False},                                   # pinned: 4 host threads
    {"deterministic": False, "sched": "cfs", "pcpus": 2},
    {"deterministic": False, "sched": "smp", "pcpus": 2},
], ids=["det-rr-2", "det-cfs-1", "threads-pinned", "threads-cfs-2", "threads-smp-2"])
def test_ioapic_case_under_every_executor(tree, cases, setup, tmp_path):
    """The I/O APIC case in every executor: its logical-destination test delivers one
    level-triggered interrupt to 3 vCPUs whose handlers count under a spinlock (contended,
    exact total), its SMP tests raise the line from vCPU 1 while vCPU 0 spins."""
    from hvdbg import api
    cfg = conformance.hvdbg_config(tree, cases["ioapic"])
    cfg.update(setup)
    path = tmp_path / "ioapic.toml"
    path.write_text(conformance._toml(cfg))
    r = api.run(path, output__echo_serial=False)
    serial = r.result["serial"]
    assert r.outcome == "exited" and r.exit_status == 0, (r.outcome, r.result["diagnosis"], serial[-400:])
    assert "PASS: ioapic logical destination mode" in serial and "FAIL" not in serial
    assert "SUMMARY: 30 tests\r\n" in serial
    assert r.result["exits"]["EPT_VIOLATION"] > 100      # the I/O APIC's MMIO exits


def test_the_tsc_deadline_timer_fires_at_its_deadline(tree, cases, tmp_path):
    """vmexit's tscdeadline test (x2APIC, -cpu qemu64,+tsc-deadline): WRMSR
    IA32_TSC_DEADLINE to RDTSC + 3000, spin with IF=1 and no VM exit until the handler
    runs, x2APIC EOI, repeat.  The interrupt must come at the deadline, inside the run that
    armed it: the WRMSR exit takes 1 us, so ~2000 instructions of spinning and ~100 of
    handler and loop per round.  Fired at the end of the 50000-instruction slice instead,
    a round would be ~25x longer."""
    from hvdbg import api
    cfg = conformance.hvdbg_config(tree, cases["vmexit_tscdeadline"])
    assert cfg["cpu"] == "qemu64,+x2apic,+tsc_deadline"
    rounds = []
    for budget in (4_000_000, 8_000_000):
        cfg["budget"] = {"instructions": budget, "seconds": 120}
        path = tmp_path / f"tscdeadline-{budget}.toml"
        path.write_text(conformance._toml(cfg))
        r = api.run(path, output__echo_serial=False)
        assert r.outcome == "budget", r.result["diagnosis"]
        rounds.append(r.result["exits"]["MSR_WRITE"] // 2)   # the WRMSR and the EOI
    per_round = 4_000_000 / (rounds[1] - rounds[0])          # boot and set-up cancel out
    assert 2000 <= per_round <= 2300, (rounds, per_round)


def test_smp_cases_find_their_cpus_through_fw_cfg(tree, cases):
    """smptest with 3 vCPUs: the CPU count comes from fw_cfg (no NR_CPUS environment)."""
    case = cases["smptest3"]
    assert case.smp == 3
    run = conformance.run_hvdbg(tree, case, vcpus=4)
    assert run.verdict == conformance.PASS


@pytest.mark.parametrize("name", ["smptest", "ioapic"])
@pytest.mark.parametrize("pcpus", [0, 2], ids=["8-on-8", "8-on-2"])
def test_smp_cases_with_8_vcpus(tree, cases, name, pcpus):
    """Issue 15's bar: the SMP cases also with 8 vCPUs, each on its own pCPU and
    overcommitted on 2 (CFS); ioapic's logical-destination test then counts a
    level-triggered interrupt under a spinlock on every CPU."""
    run = conformance.run_hvdbg(tree, cases[name], vcpus=8, pcpus=pcpus)
    assert run.verdict == conformance.PASS, (run.first_fail or run.diagnosis or run.status)


def test_side_by_side_with_qemu(tree):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    report = conformance.run_suite(tree, cases=["smptest", "msr64"])
    rows = {r.case.name: r for r in report.rows}
    assert rows["smptest"].qemu.verdict == rows["smptest"].hvdbg.verdict == conformance.PASS
    # QEMU 7.2 TCG and hvdbg both miss the #GP of a non-canonical FS_BASE write
    assert rows["msr64"].qemu.first_fail.startswith("FAIL: Expected #GP on WRMSR(MSR_FS_BASE")
    table = report.markdown()
    assert "| smptest | 2 | PASS" in table and "QEMU TCG:" in table


def test_the_listed_cases_are_cases_of_the_snapshot(cases):
    assert set(PASSING) | set(BUDGET_BOUND) <= set(cases) and not set(PASSING) & set(BUDGET_BOUND)


def test_unittests_cfg_parsing(cases):
    assert cases["vmexit_ipi"].smp == 2 and cases["vmexit_ipi"].test_args == "ipi"
    assert cases["x2apic"].cpu_flags() == {"x2apic": True, "tsc-deadline": True}
    assert cases["cmpxchg8b"].not_applicable() == "arch = i386"
    assert "nested" in cases["vmx"].not_applicable()
    assert conformance.hvdbg_config(Path("/k"), cases["vmexit_ipi"])["cmdline"] == "/k/x86/vmexit.flat ipi"
    assert conformance.hvdbg_config(Path("/k"), cases["cet"])["memory"] == "2048M"
    # -cpu in hvdbg's spelling: QEMU's names normalised, what hvdbg lacks dropped and said
    assert cases["x2apic"].hvdbg_cpu() == ("qemu64,+x2apic,+tsc_deadline", [])
    assert cases["smap"].hvdbg_cpu() == ("max", [])
    assert cases["pcid-enabled"].hvdbg_cpu() == ("qemu64", ["+pcid", "+invpcid"])
    assert cases["memory"].hvdbg_cpu()[0] == "max"
    assert cases["access"].hvdbg_cpu() == ("max", ["host-phys-bits"])
    assert cases["smptest"].hvdbg_cpu() == ("hvdbg", [])
    assert conformance.hvdbg_config(Path("/k"), cases["pku"])["cpu"] == "max"


def test_bad_source_is_one_line(tmp_path):
    with pytest.raises(conformance.ConformanceError, match="no such kvm-unit-tests tree"):
        conformance.prepare(tmp_path / "absent.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(conformance.ConformanceError, match="cannot unpack"):
        conformance.prepare(tmp_path / "junk.tar.gz", tmp_path / "out")
