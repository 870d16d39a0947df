"""Connection churn, long run: hundreds of debugger lifetimes against one running guest.

    python -m fuzz.run_churn --cycles 300

Starts ``hvdbg run CONFIG --gdb PORT`` on the SMP kernel with a long workload
(``work_mib``), churns debuggers over the all-vCPU port and the per-vCPU ports
(fuzz/churn.py), checks a second debugger is refused with the clear message, then
lets the guest finish: it must exit with status 0 and print its checksum line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fuzz.churn import BUSY, REFUSALS, RawDebugger, churn
from fuzz.common import ensure_guests, free_port_block, start_hvdbg_gdb, write_config


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
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp) / "vm.toml", vcpus=args.vcpus, memory="512M",
                           cmdline=f"work_mib={args.work_mib}", **{"budget.seconds": 3600})
        port = free_port_block(args.vcpus + 1)
        proc = start_hvdbg_gdb(cfg, port, wait=False)
        try:
            first = RawDebugger.connect(port)
            first.handshake()
            second = RawDebugger.connect(port)
            refusal = second.request(b"qSupported")
            second.close()
            first.request(b"D")
            first.close()
            log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else (lambda s: None)
            counts = churn([port] + [port + 1 + i for i in range(args.vcpus)], args.cycles, args.seed, log)
            out, err = proc.communicate(timeout=3600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    result = json.loads(out)
    summary = {
        "cycles": args.cycles, "actions": counts, "refusal_reply": refusal.decode(errors="replace"),
        "refused_clearly": BUSY in refusal, "busy_refusals_after_previous_debugger_left": sum(REFUSALS.values()), "guest_outcome": result["outcome"],
        "guest_exit_status": result["exit_status"], "guest_sum_ok": "sum ok" in result["serial"],
        "wall_seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps(summary, indent=1))
    ok = summary["refused_clearly"] and result["outcome"] == "exited" and result["exit_status"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
