"""Chaos guests, long run: thousands of random and mutated kernels, each in a worker
subprocess (one per job) with a wall-clock timeout.

    python -m fuzz.run_chaos --guests 3000 --jobs 2
    python -m fuzz.run_chaos --replay fuzz/corpus/guests

Every guest must end in a classified outcome (or be rejected by the loader with one
message line) within its budget. Bugs (internal_error, Python exception, host hang,
unclassified outcome) are saved under fuzz/corpus/guests/. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fuzz.chaos import GUEST_CORPUS, ChaosGuest, GuestMutator, GuestRunner
from fuzz.common import ensure_guests


def chaos_worker(args: tuple[int, int, float, str]) -> dict:
    seed, count, timeout, corpus = args
    rng = random.Random(seed)
    mutator = GuestMutator(rng)
    runner = GuestRunner(timeout)
    verdicts: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    recipes: Counter[str] = Counter()
    bugs: list[dict] = []
    slowest = 0.0
    try:
        for _ in range(count):
            guest = mutator.make()
            result = runner.run(guest)
            verdicts[result.verdict] += 1
            outcomes[result.outcome or "-"] += 1
            recipes[guest.recipe.split(":")[0]] += 1
            slowest = max(slowest, result.seconds)
            if result.is_bug:
                path = guest.save(result.verdict, result.detail, Path(corpus))
                bugs.append({"verdict": result.verdict, "recipe": guest.recipe, "saved": str(path),
                             "detail": result.detail.strip().splitlines()[-1][:300] if result.detail else ""})
                print(f"[seed {seed}] {result.verdict}: {guest.recipe} -> {path.name}", file=sys.stderr, flush=True)
    finally:
        runner.close()
    return {"guests": count, "verdicts": dict(verdicts), "outcomes": dict(outcomes),
            "recipes": dict(recipes), "bugs": bugs, "restarts": runner.restarts, "slowest": slowest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="wall-clock seconds per guest")
    parser.add_argument("--corpus", type=Path, default=GUEST_CORPUS)
    parser.add_argument("--replay", type=Path, help="re-run the saved guests of this directory")
    args = parser.parse_args()
    ensure_guests()

    if args.replay is not None:
        runner = GuestRunner(args.timeout)
        failing = 0
        try:
            for path in sorted(args.replay.glob("*.json")):
                result = runner.run(ChaosGuest.load(path))
                failing += result.is_bug
                print(f"{path.name}: {result.verdict} ({result.outcome})")
        finally:
            runner.close()
        return 1 if failing else 0

    per_chunk = 100
    work = []
    left, index = args.guests, 0
    while left > 0:
        n = min(per_chunk, left)
        work.append((args.seed * 100_000 + index, n, args.timeout, str(args.corpus)))
        left -= n
        index += 1
    start = time.monotonic()
    results = []
    # threads only wait on their GuestRunner's worker subprocess: the runs are parallel
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(chaos_worker, work):
            results.append(r)
            print(f"... {sum(x['guests'] for x in results)} guests, {time.monotonic() - start:.0f} s",
                  file=sys.stderr, flush=True)
    wall = time.monotonic() - start
    total: dict[str, Counter[str]] = {"verdicts": Counter(), "outcomes": Counter(), "recipes": Counter()}
    for r in results:
        for key in total:
            total[key].update(r[key])
    summary = {
        "guests": sum(r["guests"] for r in results), "jobs": args.jobs, "seed": args.seed,
        "timeout_seconds": args.timeout, "wall_seconds": round(wall, 1),
        "slowest_guest_seconds": round(max(r["slowest"] for r in results), 2),
        "worker_restarts": sum(r["restarts"] for r in results),
        **{k: dict(v.most_common()) for k, v in total.items()},
        "bugs": [b for r in results for b in r["bugs"]],
    }
    print(json.dumps(summary, indent=1))
    return 1 if summary["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
