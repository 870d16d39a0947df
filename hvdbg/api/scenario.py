"""Run a bug scenario (a config under examples/bugs/) and print what a developer needs:
the outcome, the diagnosis, and the JSON line of ``hvdbg run --json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hvdbg import api
from hvdbg.hv.machine import Machine


def run(config: str | Path, **overrides) -> tuple[Machine, dict]:
    """Boot a scenario config (overrides use schema keys, e.g. vcpus=2) to its end:
    :func:`hvdbg.api.run` without the scheduler statistics in the result."""
    res = api.run(config, include_stats=False, **overrides)
    return res.machine, res.result


def report(title: str, result: dict, out=sys.stdout) -> None:
    """Human part: outcome and diagnosis sentences."""
    status = f", exit status {result['exit_status']:#x}" if result["exit_status"] is not None else ""
    print(f"== {title}: outcome {result['outcome']}{status}", file=out)
    for line in result["diagnosis"]:
        print(f"   * {line}", file=out)


def json_line(result: dict) -> str:
    return json.dumps(result, separators=(",", ":"))


def main(config: str | Path, title: str, variants: list[tuple[str, dict]] | None = None) -> int:
    """Run the scenario (and optional variants: (title, overrides)), print the reports,
    and end with the JSON line of the main scenario."""
    try:
        _, main_result = run(config)
        report(title, main_result)
        for vtitle, overrides in variants or []:
            _, res = run(config, **overrides)
            report(vtitle, res)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        print(f"hvdbg: {e}", file=sys.stderr)
        return 2
    print(json_line(main_result))
    return 0
