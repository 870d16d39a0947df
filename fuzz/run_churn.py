"""Connection churn, long run: hundreds of debugger lifetimes against running guests.

    python -m fuzz.run_churn --cycles 300

Starts ``hvdbg run CONFIG --gdb PORT`` on the SMP kernel with a long workload
(``work_mib``) and churns debuggers over the all-vCPU port and the per-vCPU ports
(fuzz/churn.py): clean detaches, connections dropped mid-packet or while the guest
runs, raw clients and real gdb killed with SIGKILL. When a guest finishes, the next
one starts, until the cycles are done. Each guest must exit with status 0 and print
its checksum line (nothing lost), and a second debugger must be refused clearly.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fuzz.churn import BUSY, REFUSALS, ChurnError, RawDebugger, churn
from fuzz.common import ensure_guests, free_port_block, start_hvdbg_gdb, write_config


def one_guest(cfg: Path, vcpus: int, cycles: int, seed: int, verbose: bool) -> dict:
    port = free_port_block(vcpus + 1)
    proc = start_hvdbg_gdb(cfg, port, wait=False)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else (lambda s: None)
    try:
        first = RawDebugger.session(port)
        second = RawDebugger.connect(port)
        refusal = second.request(b"qSupported")
        second.close()
        first.request(b"D")
        first.close()
        try:
            counts = churn([port] + [port + 1 + i for i in range(vcpus)], cycles, seed, log,
                           alive=lambda: proc.poll() is None)
        except (ChurnError, OSError) as exc:
            counts = {"cycles": 0, "failed": f"{type(exc).__name__}: {exc}"}
        out, err = proc.communicate(timeout=3600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    result = json.loads(out) if out.strip() else {"outcome": f"no result: {err[-500:]}", "exit_status": None,
                                                  "serial": "", "diagnosis": []}
    return {"counts": counts, "refused_clearly": BUSY in refusal, "outcome": result["outcome"],
            "exit_status": result["exit_status"], "sum_ok": "sum ok" in result["serial"],
            "diagnosis": result["diagnosis"], "traceback": "Traceback" in err}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--vcpus", type=int, default=4)
    parser.add_argument("--work-mib", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    ensure_guests()
    start = time.monotonic()
    guests = []
    actions: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp) / "vm.toml", vcpus=args.vcpus, memory="512M",
                           cmdline=f"work_mib={args.work_mib}", **{"budget.seconds": 3600})
        done = 0
        while done < args.cycles:
            g = one_guest(cfg, args.vcpus, args.cycles - done, args.seed + len(guests), args.verbose)
            guests.append(g)
            for k, n in g["counts"].items():
                if isinstance(n, int) and k != "cycles":
                    actions[k] = actions.get(k, 0) + n
            done += g["counts"]["cycles"]
            if "failed" in g["counts"] or g["counts"]["cycles"] == 0:
                break
    bad = [g for g in guests if "failed" in g["counts"] or g["outcome"] != "exited" or g["exit_status"] != 0
           or not g["sum_ok"] or not g["refused_clearly"] or g["traceback"]]
    summary = {
        "cycles": sum(g["counts"]["cycles"] for g in guests), "guests": len(guests), "actions": actions,
        "refused_clearly": all(g["refused_clearly"] for g in guests),
        "busy_refusals_after_previous_debugger_left": sum(REFUSALS.values()),
        "guest_results": [f"{g['outcome']} {g['exit_status']} sum_ok={g['sum_ok']}" for g in guests],
        "problems": bad, "wall_seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps(summary, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
