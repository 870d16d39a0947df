"""Shared helpers of the fuzz harnesses: paths, free ports, starting ``hvdbg run --gdb``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
SEEDS = FUZZ / "seeds"
CORPUS = FUZZ / "corpus"
GUEST_BUILD = ROOT / "guests" / "build"
SMP_ELF = GUEST_BUILD / "smp.elf"


def ensure_guests() -> None:
    """Build guests/ once (make is incremental)."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)


def free_port_block(count: int) -> int:
    """A base port with ``count`` consecutive free ports (hvdbg uses PORT..PORT+vcpus)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no block of free ports")


def write_config(path: Path, *, kernel: Path = SMP_ELF, **values: object) -> Path:
    """A flat TOML config (dotted keys become tables) for hvdbg."""
    lines = [f'kernel = "{kernel}"']
    tables: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        if "." in key:
            table, sub = key.split(".", 1)
            tables.setdefault(table, {})[sub] = value
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for table, items in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in items.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def hvdbg_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hvdbg.ui.cli", *args]


def start_hvdbg_gdb(config: Path, port: int, *, wait: bool = True,
                    extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``hvdbg run CONFIG --gdb PORT [--gdb-wait] --json``; returns once the stubs listen."""
    args = ["run", str(config), "--gdb", str(port), "--json", "--compact", *extra]
    if wait:
        args.append("--gdb-wait")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(hvdbg_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "gdb stub for all" not in line:
        proc.kill()
        rest = proc.communicate(timeout=10)[1]
        raise RuntimeError(f"hvdbg did not start its stub: {line}{rest}")
    return proc
