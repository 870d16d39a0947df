"""Shared fixtures: the guest kernels are built once per test session with make."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"
BUILD = GUESTS / "build"


@pytest.fixture(scope="session")
def guest_kernels() -> Path:
    """Build guests/ (make -C guests) and return the build directory."""
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    return BUILD


@pytest.fixture
def make_config(tmp_path, guest_kernels):
    """Write a TOML config for one of the project's guests and return its path."""
    def make(kernel: str = "smp.elf", **values) -> Path:
        lines = [f'kernel = "{guest_kernels / kernel}"']
        tables: dict[str, dict] = {}
        for key, value in values.items():
            if "." in key:
                table, sub = key.split(".", 1)
                tables.setdefault(table, {})[sub] = value
            else:
                lines.append(f"{key} = {_toml(value)}")
        for table, items in tables.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml(v)}" for k, v in items.items()]
        path = tmp_path / f"vm-{len(list(tmp_path.iterdir()))}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path
    return make


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
