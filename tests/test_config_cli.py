"""Bad configuration and bad input: one clear line naming the problem, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hvdbg.config import config_from_dict
from hvdbg.errors import ConfigError


@pytest.mark.parametrize("data, needle", [
    ({"kernel": "k", "vcpus": "four"}, "'vcpus': expected an integer"),
    ({"kernel": "k", "vcpus": 0}, "'vcpus': must be between 1 and 64"),
    ({"kernel": "k", "memory": "8M"}, "'memory'"),
    ({"kernel": "k", "cpuid": {"x2apc": True}}, "unknown key 'cpuid.x2apc'"),
    ({"kernel": "k", "cpuid": {"x2apic": "yes"}}, "'cpuid.x2apic': expected true or false"),
    ({"kernel": "k", "loader": {"magic": "grub"}}, "'loader.magic'"),
    ({"kernel": "k", "gpa_hpa_offset": 0x123}, "'gpa_hpa_offset'"),
    ({"kernel": "k", "sched": "lottery"}, "'sched': expected one of"),
    ({}, "'kernel' is required"),
])
def test_config_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_missing_config_file(tmp_path):
    out = run_cli("run", str(tmp_path / "nope.toml"))
    assert out.returncode == 2
    assert out.stderr.strip().startswith("hvdbg: ") and "no such config file" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_bad_toml_and_bad_kernel(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("vcpus = [\n")
    out = run_cli("run", str(bad))
    assert out.returncode == 2 and "not valid TOML" in out.stderr and "Traceback" not in out.stderr
    nok = tmp_path / "nokernel.toml"
    nok.write_text('kernel = "missing.elf"\n')
    out = run_cli("run", str(nok))
    assert out.returncode == 2 and "no such file" in out.stderr and "Traceback" not in out.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x7fELF" + bytes(200))
    cfg = tmp_path / "junk.toml"
    cfg.write_text(f'kernel = "{junk}"\n')
    out = run_cli("run", str(cfg))
    assert out.returncode == 2 and "multiboot" in out.stderr and "Traceback" not in out.stderr


def test_cli_override_validation(make_config):
    out = run_cli("run", str(make_config()), "--vcpus", "99")
    assert out.returncode == 2 and "'vcpus'" in out.stderr and "Traceback" not in out.stderr
