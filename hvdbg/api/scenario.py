"""Run a bug scenario (a config under examples/bugs/) and print what a developer needs:
the outcome, the diagnosis, and the JSON line of ``hvdbg run --json``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hvdbg.api import diagnosis
from hvdbg.config import load_config
from hvdbg.run.executors import make_executor
from hvdbg.hv.machine import Machine


def run(config: str | Path, **overrides) -> tuple[Machine, dict]:
    """Boot a scenario config (overrides use schema keys, e.g. vcpus=2) to its end."""
    cfg = load_config(config)
    for key, value in overrides.items():
        cfg.set(key.replace("__", "."), value)
    vm = Machine(cfg)
    start = time.monotonic()
    make_executor(vm).run()
    return vm, diagnosis.result(vm, time.monotonic() - start)


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
