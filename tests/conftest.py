"""Shared fixtures: the guest kernels are built once per test session with make.

The repository root goes on ``sys.path`` once, here, so that tests import ``fuzz`` and
``bench`` as packages (and the shared ``helpers`` of tests/) without path tricks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz.common import write_config  # noqa: E402
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
        path = tmp_path / f"vm-{len(list(tmp_path.iterdir()))}.toml"
        return write_config(path, kernel=guest_kernels / kernel, **values)
    return make
