"""Long-running RSP fuzzer: mutation/grammar inputs (and Hypothesis) against the stub.

    python -m fuzz.run_rsp --inputs 1000000 --jobs 2              # fake target, in-process
    python -m fuzz.run_rsp --target vm --inputs 20000 --jobs 2    # hvdbg VmTarget over TCP
    python -m fuzz.run_rsp --engine hypothesis --inputs 50000
    python -m fuzz.run_rsp --replay fuzz/corpus/rsp               # re-run saved findings

Inputs are run in chunks, each in a fresh worker process (a hang leaves a thread
stuck forever, so the chunk ends there and the next one starts clean). Findings are
saved under fuzz/corpus/rsp/ (input + JSON with the kind, the diagnosis text and the
inputs that preceded it), at most two per distinct signature. ``--skip-known``
leaves out inputs that trigger an already diagnosed bug (fuzz/known_bugs.py), so a
long run keeps looking for new ones. Prints a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

from fuzz.common import SEEDS
from fuzz.known_bugs import explaining_bug, known_bug_of
from fuzz.rsp_gen import InputSource, hypothesis_inputs, load_seed_packets
from fuzz.rsp_harness import RSP_CORPUS, FakeTargetStub, Finding, RspFuzzer, Stub, VmStub

#: One input in this many drops the connection mid-packet instead ("closed connection").
CLOSE_EVERY = 500
CHUNK = {"fake": 50_000, "vm": 500, "vm-vcpu": 500}
SAVE_PER_SIGNATURE = 2


def make_stub(target: str, worker: int) -> Stub:
    if target == "fake":
        return FakeTargetStub()
    if target == "vm":
        return VmStub(vcpus=2)
    if target == "vm-vcpu":
        return VmStub(vcpus=2, per_vcpu=worker % 2)
    raise ValueError(f"unknown target {target!r}")


def fuzz_worker(args: tuple) -> dict:
    """Run one chunk of ``count`` inputs with ``seed``; return statistics and findings."""
    target, engine, seed, count, corpus, hang_timeout, skip_known = args
    stub = make_stub(target, seed)
    fuzzer = RspFuzzer(stub, seed=seed, hang_timeout=hang_timeout)
    seeds = load_seed_packets(sorted(SEEDS.glob("*.client.bin")))
    source = InputSource(seed, stub.profile, seeds, stub.packet_size)
    signatures: dict[str, int] = {}
    saved: list[str] = []
    skipped = 0
    start = time.monotonic()
    stuck = False

    def record(finding: Finding | None) -> bool:
        """Note a finding; True when the chunk must stop (a thread is stuck for good)."""
        if finding is None:
            return False
        bug = explaining_bug(finding.detail) or known_bug_of(finding.input)
        sig = f"known bug {bug.key}" if bug is not None else finding.signature
        signatures[sig] = signatures.get(sig, 0) + 1
        if corpus is not None and signatures[sig] <= SAVE_PER_SIGNATURE and not (bug and skip_known):
            saved.append(str(finding.save(Path(corpus), target, bug.key if bug else None)))
            print(f"[{target} seed {seed}] {sig}\n    input {finding.input[:100]!r}", file=sys.stderr, flush=True)
        return finding.kind == "hang"

    try:
        if engine == "hypothesis":
            stuck = run_hypothesis(fuzzer, stub, count, seed, record, skip_known)
        else:
            for i in range(count):
                raw = source.next(engine)
                if skip_known and known_bug_of(raw) is not None:
                    skipped += 1
                    continue
                finding = fuzzer.close_mid_packet(raw) if i % CLOSE_EVERY == CLOSE_EVERY - 1 else fuzzer.run_one(raw)
                if record(finding):
                    stuck = True
                    break
    finally:
        if not stuck:
            fuzzer.close()
    stats = fuzzer.stats
    return {"target": target, "engine": engine, "seed": seed, "inputs": stats.inputs,
            "skipped_known": skipped, "bytes": stats.bytes, "sessions": stats.sessions,
            "signatures": signatures, "saved": saved, "stuck": stuck,
            "seconds": round(time.monotonic() - start, 1)}


def run_hypothesis(fuzzer: RspFuzzer, stub: Stub, count: int, seed: int, record, skip_known: bool) -> bool:
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings

    class Stuck(Exception):
        pass

    @hseed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(hypothesis_inputs(stub.profile))
    def one(raw: bytes) -> None:
        if skip_known and known_bug_of(raw) is not None:
            return
        if record(fuzzer.run_one(raw)):
            raise Stuck

    try:
        one()
    except Stuck:
        return True
    return False


def replay(paths: list[Path], target: str, hang_timeout: float, with_history: bool = True
           ) -> list[tuple[Path, Finding | None]]:
    """Feed each saved input (after its recorded history) to a fresh stub."""
    out = []
    for path in paths:
        meta = json.loads(path.with_suffix(".json").read_text())
        stub = make_stub(meta.get("target", target), 0)
        fuzzer = RspFuzzer(stub, seed=0, hang_timeout=hang_timeout)
        history = [bytes.fromhex(h) for h in meta["history"]] if with_history else []
        finding = None
        try:
            for raw in history + [path.read_bytes()]:
                finding = fuzzer.run_one(raw) or finding
        finally:
            if finding is None or finding.kind != "hang":
                fuzzer.close()
        out.append((path, finding))
    return out


def chunks(total: int, size: int, base_seed: int) -> list[tuple[int, int]]:
    out = []
    index = 0
    while total > 0:
        n = min(size, total)
        out.append((base_seed * 100_000 + index, n))
        total -= n
        index += 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--target", choices=("fake", "vm", "vm-vcpu"), default="fake")
    parser.add_argument("--engine", choices=("mixed", "mutation", "grammar", "garbage", "hypothesis"),
                        default="mixed")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, help="inputs per worker process (default by target)")
    parser.add_argument("--hang-timeout", type=float, default=20.0)
    parser.add_argument("--skip-known", action="store_true", help="skip inputs of already diagnosed bugs")
    parser.add_argument("--corpus", type=Path, default=RSP_CORPUS, help="where findings are saved")
    parser.add_argument("--replay", type=Path, help="re-run a saved input, or every one of a directory")
    args = parser.parse_args()

    if args.replay is not None:
        paths = [args.replay] if args.replay.is_file() else sorted(args.replay.glob("*.bin"))
        results = replay(paths, args.target, args.hang_timeout)
        for path, finding in results:
            print(f"{path.name}: {'FAILS: ' + finding.signature if finding else 'ok'}", flush=True)
        # a hang leaves a thread stuck for good: leave without waiting for it
        os._exit(1 if any(f for _, f in results) else 0)

    work = [(args.target, args.engine, seed, n, str(args.corpus), args.hang_timeout, args.skip_known)
            for seed, n in chunks(args.inputs, args.chunk or CHUNK[args.target], args.seed)]
    start = time.monotonic()
    results = []
    with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        for result in pool.imap_unordered(fuzz_worker, work):
            results.append(result)
            done = sum(r["inputs"] for r in results)
            print(f"... {done} inputs, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    wall = time.monotonic() - start
    signatures: dict[str, int] = {}
    for r in results:
        for sig, n in r["signatures"].items():
            signatures[sig] = signatures.get(sig, 0) + n
    inputs = sum(r["inputs"] for r in results)
    summary = {
        "target": args.target, "engine": args.engine, "jobs": args.jobs, "seed": args.seed,
        "inputs": inputs, "skipped_known": sum(r["skipped_known"] for r in results),
        "bytes": sum(r["bytes"] for r in results), "sessions": sum(r["sessions"] for r in results),
        "chunks": len(results), "chunks_stuck": sum(1 for r in results if r["stuck"]),
        "findings": signatures, "wall_seconds": round(wall, 1),
        "inputs_per_second": round(inputs / wall, 1),
        "saved": [s for r in results for s in r["saved"]],
    }
    print(json.dumps(summary, indent=1))
    return 1 if signatures else 0


if __name__ == "__main__":
    sys.exit(main())
