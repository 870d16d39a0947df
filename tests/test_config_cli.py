"""Bad configuration and bad input: one clear line naming the problem, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


# -- a kernel without a TOML, the way qemu-system-x86_64 -kernel runs one -----------------------
def test_run_a_kernel_without_a_toml(guest_kernels):
    """``hvdbg run KERNEL --vcpus 4 --cmdline ...``: the schema's defaults and the options;
    the kernel's path is first on its command line, as QEMU -kernel and GRUB put it. The
    lock workload: 4 vCPUs contend for a ticket lock, the total must be exact."""
    kernel = str(guest_kernels / "smp.elf")
    out = run_cli("run", kernel, "--vcpus", "4", "--cmdline", "workload=lock lock=ticket lock_iters=3000")
    assert out.returncode == 0, out.stderr
    assert f"cmdline '{kernel} workload=lock lock=ticket lock_iters=3000'" in out.stdout
    assert "smp: 4 of 4 CPUs online" in out.stdout
    assert "lock ok counter 12000 cpus 4" in out.stdout
    assert "outcome exited, exit status 0" in out.stdout
    plain = run_cli("run", kernel, "--no-kernel-name", "--cmdline", "workload=lock lock_iters=10")
    assert "cmdline 'workload=lock lock_iters=10'" in plain.stdout


def test_a_toml_gets_its_command_line_as_written(guest_kernels, tmp_path):
    cfg = tmp_path / "vm.toml"
    cfg.write_text(f'kernel = "{guest_kernels / "smp.elf"}"\ncmdline = "workload=lock lock_iters=10"\n')
    out = run_cli("run", str(cfg))
    assert "cmdline 'workload=lock lock_iters=10'" in out.stdout
    named = run_cli("run", str(cfg), "--kernel-name")
    assert f"cmdline '{guest_kernels / 'smp.elf'} workload=lock lock_iters=10'" in named.stdout


@pytest.mark.parametrize("args, needle", [
    (["/nonexistent/k.elf"], "hvdbg: kernel /nonexistent/k.elf: no such file"),
    (["REPO/README.md"], "hvdbg: kernel README.md: no multiboot header in the first 8192 bytes"),
    (["SMP", "--module", "/nonexistent/initrd"], "hvdbg: module /nonexistent/initrd: no such file"),
    (["SMP", "--memory", "16M", "--module", "BIG"], "does not fit in guest RAM"),
    (["SMP", "--cpu", "pentium9"], "'cpu': unknown CPU model 'pentium9'"),
    (["REPO/examples/smp-4vcpu.toml", "--module", "x"], "--module is for a kernel; a TOML lists its 'modules'"),
])
def test_bad_kernel_module_or_cpu_is_one_line(guest_kernels, tmp_path, args, needle):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(20 << 20))
    repo = Path(__file__).resolve().parents[1]
    args = [str(guest_kernels / "smp.elf") if a == "SMP" else str(big) if a == "BIG"
            else a.replace("REPO", str(repo)) for a in args]
    out = run_cli("run", *args)
    assert out.returncode == 2, out
    assert needle in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
