"""Hardening of the GDB stub: fuzzing (short runs of fuzz/run_rsp.py), closed connections,
interleaved Ctrl-C, connection churn against a running guest, and the one-debugger policy.

Invariants after every input: no crash, no hang, ``qC`` still answered (fuzz/rsp_harness.py).
Bugs found and still open are reproduced by strict xfail tests; their inputs live in
fuzz/corpus/rsp/ and their diagnoses in fuzz/known_bugs.py and docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parent.parent

from gdbstub import GdbServer
from gdbstub.packet import frame
from gdbstub.target import ResumeAction, ResumeKind
from gdbstub_fake_target import FakeMachine, code_base

from fuzz.churn import BUSY, REFUSALS, RawDebugger, churn
from fuzz.common import SEEDS, free_port_block, start_hvdbg_gdb, write_config
from fuzz.known_bugs import KNOWN_BUGS, explaining_bug, known_bug_of
from fuzz.rsp_gen import InputSource, hypothesis_inputs, load_seed_packets
from fuzz.rsp_harness import RSP_CORPUS, FakeTargetStub, RspFuzzer, VmStub

OPEN_BUGS = {b.key for b in KNOWN_BUGS}
needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed")


def fuzz(stub, count: int, seed: int) -> tuple[RspFuzzer, list[str]]:
    """``count`` inputs against ``stub``; returns the fuzzer and the unexplained findings."""
    fuzzer = RspFuzzer(stub, seed=seed, hang_timeout=30)
    source = InputSource(seed, stub.profile, load_seed_packets(sorted(SEEDS.glob("*.client.bin"))),
                         stub.packet_size)
    problems = []
    try:
        for _ in range(count):
            raw = source.next()
            if known_bug_of(raw) is not None:
                continue  # reproduced by its own xfail test below
            finding = fuzzer.run_one(raw)
            if finding is not None and explaining_bug(finding.detail) is None:
                problems.append(f"{finding.signature}\n  input {finding.input[:120]!r}")
                if finding.kind == "hang":
                    break
    finally:
        if not any(p.startswith("hang") for p in problems):
            fuzzer.close()
    return fuzzer, problems


# ===================================================================== fuzzing, short runs


def test_seeds_are_real_gdb_traffic():
    packets = load_seed_packets(sorted(SEEDS.glob("*.client.bin")))
    assert len(packets) > 100
    for expected in (b"qSupported", b"vCont;c", b"qXfer:features:read:target.xml", b"QStartNoAckMode"):
        assert any(p.startswith(expected) for p in packets), expected
    assert any(p.startswith((b"Z0,", b"Z2,", b"qRcmd,")) for p in packets)


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_fake_target_in_process(seed):
    fuzzer, problems = fuzz(FakeTargetStub(), 2500, seed)
    assert not problems, "\n".join(problems)
    assert fuzzer.stats.inputs >= 2400
    assert fuzzer.stats.sessions >= 2  # D / k / vKill in the inputs ended sessions: reconnected


@pytest.fixture(scope="module")
def fake_fuzzer():
    fuzzer = RspFuzzer(FakeTargetStub(), seed=7, hang_timeout=30)
    yield fuzzer
    fuzzer.close()


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=hypothesis_inputs(FakeTargetStub().profile))
def test_hypothesis_fuzz_fake_target(fake_fuzzer, raw):
    if known_bug_of(raw) is not None:
        return
    finding = fake_fuzzer.run_one(raw)
    assert finding is None or explaining_bug(finding.detail) is not None, finding and finding.signature


def test_peer_closing_mid_packet_ends_the_session_cleanly():
    stub = FakeTargetStub()
    fuzzer = RspFuzzer(stub, seed=3, hang_timeout=30)
    source = InputSource(3, stub.profile, [b"m401000,10", b"vCont;c", b"Z0,401020,1", b"qRcmd,6370757300"])
    try:
        for _ in range(40):
            assert fuzzer.close_mid_packet(source.next("grammar")) is None
            assert fuzzer.run_one(frame(b"qAttached")) is None  # a new session works
        # the target was left consistent: no breakpoint of a vanished debugger remains
        stub.after_disconnect(10)
        assert stub.machine.sw_breakpoints == set() and stub.machine.watches == set()
    finally:
        fuzzer.close()


def test_interleaved_ctrl_c_while_running_and_while_stopped():
    machine = FakeMachine((1, 2))
    with GdbServer(machine, packet_size=0x1000) as server:
        dbg = RawDebugger.connect(server.port)
        try:
            assert dbg.handshake()
            for _ in range(10):
                dbg.sock.sendall(frame(b"vCont;c") + b"\x03" * 3 + frame(b"qC") + b"\x03" + frame(b"?"))
                replies = [dbg.reply(), dbg.reply(), dbg.reply()]
                assert replies[0].startswith(b"T02")  # the interrupt's stop
                assert replies[1].startswith(b"QC") and replies[2].startswith(b"T")
                # Ctrl-C inside a packet is part of its data; the packet is then malformed
                dbg.sock.sendall(b"$m40\x03" + b"1000,4#00" + frame(b"qC"))
                assert dbg.reply().startswith(b"QC")
        finally:
            dbg.close()
    machine.shutdown()


# ===================================================================== fuzzing the real hvdbg target


@pytest.mark.parametrize("per_vcpu", [None, 1], ids=["all-vcpus", "vcpu-1"])
def test_fuzz_vm_target_over_tcp(guest_kernels, per_vcpu):
    stub = VmStub(vcpus=2, per_vcpu=per_vcpu)
    fuzzer, problems = fuzz(stub, 300, 11 if per_vcpu is None else 12)
    assert not problems, "\n".join(problems)
    assert fuzzer.stats.inputs >= 250


# ===================================================================== corpus: inputs that once broke something


CORPUS_FILES = sorted(RSP_CORPUS.glob("*.bin"))


def corpus_params():
    for path in CORPUS_FILES:
        meta = json.loads(path.with_suffix(".json").read_text())
        marks = []
        if meta.get("known_bug") in OPEN_BUGS:
            bug = next(b for b in KNOWN_BUGS if b.key == meta["known_bug"])
            marks.append(pytest.mark.xfail(strict=True, reason=f"{bug.key}: {bug.where}"))
        yield pytest.param(path, meta, id=path.stem, marks=marks)


@pytest.mark.parametrize("path, meta", list(corpus_params()))
def test_corpus_input_is_handled(guest_kernels, path, meta):
    """Each saved input, after its recorded history, on a fresh stub in a child process
    (a hang leaves a thread stuck for good): no crash, no hang, qC answered after it."""
    proc = subprocess.run([sys.executable, "-m", "fuzz.run_rsp", "--replay", str(path), "--hang-timeout", "10"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_corpus_has_one_input_per_open_bug():
    keys = {json.loads(p.with_suffix(".json").read_text()).get("known_bug") for p in CORPUS_FILES}
    assert OPEN_BUGS <= keys


# ===================================================================== bugs, one precise test each


def test_huge_register_number_is_einval_not_internal_error():
    fuzzer = RspFuzzer(FakeTargetStub(), seed=0)
    try:
        fuzzer._connect()
        for packet in (b"p" + b"f" * 4000, b"P" + b"1" * 3700 + b"=00"):
            fuzzer.peer.send_raw(frame(packet))
            assert fuzzer.peer.read_packet(time.monotonic() + 10) == b"E16"
        assert fuzzer.errors.take() == []
    finally:
        fuzzer.close()


def test_breakpoint_at_last_address_inserts_and_removes(guest_kernels):
    stub = VmStub(vcpus=1)
    fuzzer = RspFuzzer(stub, seed=0)
    try:
        fuzzer._connect()
        for packet in (b"Z0,ffffffffffffffff,1", b"z0,ffffffffffffffff,1"):
            fuzzer.peer.send_raw(frame(packet))
            assert fuzzer.peer.read_packet(time.monotonic() + 10) == b"OK", packet
        assert stub.session.breakpoints == {}
        assert fuzzer.errors.take() == []
    finally:
        fuzzer.close()


WATCH_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from fuzz.rsp_harness import VmStub, RspPeer
from gdbstub.packet import frame
stub = VmStub(vcpus=1)
peer = RspPeer(stub.connect())
peer.send_raw(frame(b"qSupported"))
peer.read_packet(time.monotonic() + 20)
start = time.monotonic()
peer.send_raw(frame(b"Z2,ffffff8000100000,8000000000000000"))
reply = peer.read_packet(time.monotonic() + 10)
print(repr(reply), round(time.monotonic() - start, 1), flush=True)
import os; os._exit(0)
"""


def test_watchpoint_of_absurd_length_is_refused_promptly(guest_kernels):
    out = subprocess.run([sys.executable, "-c", WATCH_CHILD.format(root=str(ROOT))], capture_output=True,
                         text=True, timeout=120).stdout
    assert out.startswith("b'E"), f"reply and seconds: {out.strip()}"


@pytest.mark.parametrize("registers", [
    {"efer": 0x500, "rip": 0xFFFFFF800010F000},
    {"cr0": 0x80000011, "cr3": 0x1000, "rip": 0xB9FA67A05C0EB5C1},
], ids=["lma-without-paging", "rip-above-4g-in-32-bit-paging"])
def test_impossible_register_state_is_refused_or_classified(guest_kernels, registers):
    from gdbstub.arch.x86_64 import X86_64

    stub = VmStub(vcpus=1)
    fuzzer = RspFuzzer(stub, seed=0)
    try:
        fuzzer._connect()
        for name, value in registers.items():
            fuzzer.peer.send_raw(frame(b"P%x=" % X86_64.regnum(name) + value.to_bytes(8, "little").hex().encode()))
            fuzzer.peer.read_packet(time.monotonic() + 10)
        fuzzer.peer.send_raw(frame(b"s"))
        assert fuzzer.peer.read_packet(time.monotonic() + 20) is not None
        ending = stub.session.vm.ending
        assert ending is None or ending.outcome not in ("internal_error", "fatal"), ending
    finally:
        fuzzer.close()


LONG = dict(cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0x500, rip=0xFFFFFF8000100000, cs_long=True)
PROTECTED = dict(cr0=0x11, cr3=0, cr4=0, efer=0, rip=0x100000, cs_long=False)


@pytest.mark.parametrize("start, change, refused", [
    (PROTECTED, {"efer": 0x500}, "LMA is read-only"),
    (PROTECTED, {"rip": 1 << 32}, "RIP"),
    (PROTECTED, {"cr0": 0x80000010}, "PG without PE"),
    (PROTECTED, {"cr0": 0x20000011}, "NW without CD"),
    (PROTECTED, {"cr0": 1 << 32 | 0x11}, "63:32"),
    (PROTECTED, {"cr4": 1 << 15}, "reserved"),
    (PROTECTED, {"efer": 1 << 20}, "reserved"),
    (PROTECTED, {"cr3": 1 << 32}, "wider than 32"),
    (PROTECTED, {"efer": 0x100, "cr0": 0x80000011}, "needs CR4.PAE"),
    (LONG, {"rip": 0x0000800000000000}, "canonical"),
    (LONG, {"cr0": 0x11}, "64-bit code"),
    (LONG, {"cr4": 0}, "PAE"),
    (LONG, {"efer": 0x400}, "LME cannot change"),
    (LONG, {"cr3": 1 << 46}, "wider than 46"),
    (PROTECTED, {"efer": 0x100}, None),                               # LME before paging: fine
    (PROTECTED, {"cr4": 0x20, "efer": 0x500, "cr0": 0x80000011}, None),  # the whole switch at once (G)
    (PROTECTED, {"cr0": 0x80000011, "cr3": 0x1000}, None),             # 32-bit paging
    (LONG, {"rip": 0xFFFF800000000000, "cr3": 0x2000}, None),
    (LONG, {"efer": 0x500, "cr0": 0x80000011, "rip": LONG["rip"]}, None),  # unchanged values
], ids=lambda x: "" if isinstance(x, dict) else str(x))
def test_register_writes_the_cpu_would_refuse(start, change, refused):
    """wide-values-in-narrow-mode: VmTarget.write_registers refuses (E16) what MOV to CR /
    WRMSR / a jump could not produce (SDM Vol. 3A 2.5, 2.2.1, 10.8.5)."""
    from dataclasses import replace

    from hvdbg.debug.gdb_target import ControlState, control_state_problem

    old = ControlState(**start)
    problem = control_state_problem(old, replace(old, **change))
    assert (problem is None) if refused is None else (problem is not None and refused in problem), problem


def test_reconnect_right_after_detach_is_accepted():
    machine = FakeMachine((1, 2))
    refused = 0
    with GdbServer(machine) as server:
        for _ in range(20):
            dbg = RawDebugger.connect(server.port)
            try:
                if BUSY in dbg.request(b"qSupported"):
                    refused += 1
                    time.sleep(0.3)
                else:
                    assert dbg.request(b"D") == b"OK"
            finally:
                dbg.close()
    machine.shutdown()
    assert refused == 0, f"{refused} of 20 immediate reconnects refused"


def test_fake_machine_attach_discards_stale_stops():
    machine = FakeMachine((1,))
    machine.write_registers(1, {"rip": 0x10})  # unmapped: the run faults at once
    machine.resume({1: ResumeAction(ResumeKind.CONTINUE)})
    time.sleep(0.3)  # the SIGSEGV stop is queued; nobody waits for it (a detached debugger)
    machine.attach()
    machine.write_registers(1, {"rip": code_base(0)})  # an endless loop
    machine.resume({1: ResumeAction(ResumeKind.CONTINUE)})
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(machine.wait_for_stop(0.5)), daemon=True)
    waiter.start()
    waiter.join(2)
    machine.interrupt()  # whatever happened, stop the runner so nothing spins after the test
    waiter.join(5)
    assert got == [None], f"a running machine reported {got}"


# ===================================================================== churn and the one-debugger policy


@pytest.fixture
def running_guest(tmp_path, guest_kernels):
    """``hvdbg run --gdb`` on the SMP kernel with a long workload, running (no --gdb-wait)."""
    procs = []

    def start(vcpus: int = 2, work_mib: int = 64):
        cfg = write_config(tmp_path / "vm.toml", kernel=guest_kernels / "smp.elf", vcpus=vcpus,
                           memory=f"{max(128, 2 * work_mib)}M", cmdline=f"work_mib={work_mib}",
                           **{"budget.seconds": 600})
        port = free_port_block(vcpus + 1)
        proc = start_hvdbg_gdb(cfg, port, wait=False)
        procs.append(proc)
        return proc, port

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


@needs_gdb
def test_churn_while_the_guest_runs_loses_nothing(running_guest):
    # 320 MiB of work: the guest must outlive the 14 debugger lifetimes (160 MiB took ~5 s
    # on a quiet 2-core machine, about as long as the churn itself; once in a full CI run the
    # guest was gone after 2 cycles)
    proc, port = running_guest(vcpus=2, work_mib=320)
    counts = churn([port, port + 1, port + 2], cycles=14, seed=5, alive=lambda: proc.poll() is None)
    cycles = counts.pop("cycles")
    stopped = counts.pop("stopped by", None)
    out, err = proc.communicate(timeout=300)
    assert cycles >= 10 and len(counts) >= 3, (cycles, counts, stopped, out[-600:], err[-1500:])
    result = json.loads(out)
    assert result["outcome"] == "exited" and result["exit_status"] == 0, result["diagnosis"]
    assert "sum ok" in result["serial"] and "smp: 2 of 2 CPUs online" in result["serial"]
    assert "Traceback" not in err


def test_second_debugger_is_refused_with_a_clear_message(running_guest):
    proc, port = running_guest(vcpus=2)
    first = RawDebugger.session(port)
    try:
        second = RawDebugger.connect(port)
        reply = second.request(b"qSupported:swbreak+")
        assert reply == b"E.gdbstub: another debugger is already connected"
        second.sock.settimeout(10)
        assert second.sock.recv(100) in (b"", b"+")  # then disconnected
        second.close()
        # the first session is untouched by the refusal
        assert first.request(b"qC").startswith(b"QC")
        # a per-vCPU port is an independent stub: a second debugger there is welcome
        other = RawDebugger.session(port + 1)
        assert other.request(b"qfThreadInfo") == b"m1"
        other.request(b"D")
        other.close()
    finally:
        first.request(b"D")
        first.close()


@needs_gdb
def test_real_gdb_as_second_debugger_prints_the_refusal(running_guest, guest_kernels):
    proc, port = running_guest(vcpus=2)
    first = RawDebugger.session(port)
    try:
        out = subprocess.run(["gdb", "--nx", "--batch", "-ex", f"target remote 127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=60)
        assert "another debugger is already connected" in out.stdout + out.stderr
    finally:
        first.request(b"D")
        first.close()


def test_packets_after_the_stub_closed_the_connection(running_guest):
    proc, port = running_guest(vcpus=2)
    dbg = RawDebugger.session(port)
    assert dbg.request(b"D") == b"OK"
    dbg.sock.settimeout(10)
    assert dbg.sock.recv(100) in (b"", b"+")  # the stub hung up after the detach
    with pytest.raises(OSError):
        for _ in range(50):  # writing into a closed connection fails on our side only
            dbg.sock.sendall(frame(b"qC") + b"\x03")
            time.sleep(0.02)
    dbg.close()
    again = RawDebugger.session(port)
    assert again.request(b"qC").startswith(b"QC")
    again.request(b"D")
    again.close()
    REFUSALS.clear()
