"""What several test files share: booting a config to its end, writing a config, and a
GDB driver (MI3 through pygdbmi).  Test files import from here, never from each other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fuzz.common import write_config
from hvdbg import api
from hvdbg.config import VmConfig
from hvdbg.hv.machine import Machine

GDB_TIMEOUT = 20.0


def boot(config: str | Path | VmConfig, **overrides: Any) -> tuple[Machine, dict]:
    """Load a config, apply overrides (schema keys), run it to its end: the machine and
    the result of ``hvdbg run --json`` (without scheduler statistics)."""
    res = api.run(config, include_stats=False, **overrides)
    return res.machine, res.result


class GdbError(RuntimeError):
    pass


class Gdb:
    """A GDB process spoken to over MI3; keeps every record it has read.  ``timeout``:
    seconds an answer may take; ``poll``: pygdbmi's wait for more output (the benchmark
    bench/p4_gdb.py uses a shorter one)."""

    def __init__(self, *, gdb: str = "gdb", timeout: float = GDB_TIMEOUT, poll: float = 0.02) -> None:
        from pygdbmi.gdbcontroller import GdbController

        self.ctl = GdbController(
            command=[gdb, "--nx", "--quiet", "--interpreter=mi3"],
            time_to_check_for_additional_output_sec=poll,
        )
        self.timeout = timeout
        self.records: list[dict] = []
        self._token = 100
        self._stops_seen = 0

    def close(self) -> None:
        self.ctl.exit()

    def _read_more(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("gdb did not answer in time")
        self.records += self.ctl.get_gdb_response(timeout_sec=0.05, raise_error_on_timeout=False)

    def mi(self, command: str, *, allow_error: bool = False) -> tuple[dict, list[dict]]:
        """Run an MI command; return its result record and the records up to it."""
        self._token += 1
        token = self._token
        start = len(self.records)
        self.ctl.write(f"{token}{command}", read_response=False)
        deadline = time.monotonic() + self.timeout
        while True:
            for i in range(start, len(self.records)):
                rec = self.records[i]
                if rec["type"] == "result" and rec.get("token") == token:
                    if rec["message"] == "error" and not allow_error:
                        raise GdbError(f"{command}: {rec['payload']}")
                    return rec, self.records[start : i + 1]
            self._read_more(deadline)

    def console(self, command: str, *, allow_error: bool = False) -> str:
        """Run a CLI command; return its console, target (monitor) and error output."""
        quoted = command.replace("\\", "\\\\").replace('"', '\\"')
        result, records = self.mi(f'-interpreter-exec console "{quoted}"', allow_error=allow_error)
        text = "".join(
            r["payload"] for r in records if r["type"] in ("console", "target") and r["payload"]
        )
        if result["message"] == "error":
            text += result["payload"].get("msg", "")
        return text

    def wait_for_stop(self) -> dict:
        """Payload of the next ``*stopped`` record not returned before."""
        deadline = time.monotonic() + self.timeout
        while True:
            stops = [r for r in self.records if r["type"] == "notify" and r["message"] == "stopped"]
            if len(stops) > self._stops_seen:
                self._stops_seen += 1
                return stops[self._stops_seen - 1]["payload"]
            self._read_more(deadline)

    def connect(self, port: int) -> dict:
        self.mi(f"-target-select remote 127.0.0.1:{port}")
        return self.wait_for_stop()

    def current_target_id(self) -> str:
        result, _ = self.mi("-thread-info")
        current = result["payload"]["current-thread-id"]
        return next(t["target-id"] for t in result["payload"]["threads"] if t["id"] == current)

    def value(self, expression: str) -> int:
        result, _ = self.mi(f'-data-evaluate-expression "(unsigned long)({expression})"')
        return int(result["payload"]["value"])

