"""The end of ``hvdbg run`` as text: outcome, each vCPU, the exits, the diagnosis."""

from __future__ import annotations

from typing import Any


def format_run_report(res: dict[str, Any], wall: float) -> str:
    """The report printed after a run (``res``: :func:`hvdbg.api.diagnosis.result`)."""
    lines = [f"\n--- hvdbg: outcome {res['outcome']}"
             + (f", exit status {res['exit_status']}" if res["exit_status"] is not None else "")
             + f", {res['instructions']} guest instructions in {wall:.2f} s"]
    for v in res["vcpus"]:
        sym = f" <{v['symbol']}>" if v["symbol"] else ""
        lines.append(f"    vCPU {v['id']} (APIC id {v['apic_id']}): {v['state']}, RIP {v['rip']:#x}{sym}, "
                     f"{v['instructions']} instructions, {v['exits']} exits"
                     + (", started by SIPI" if v["started_by_sipi"] else ""))
    lines.append("    exits: " + ", ".join(f"{k} {n}" for k, n in res["exits"].items()))
    lines += [f"    * {line}" for line in res["diagnosis"]]
    return "\n".join(lines)
