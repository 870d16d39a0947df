"""Config and CLI hardening: every wrong field, type, value or path gets one clear line
naming it, exit status 2, never a traceback. The cases are generated from
hvdbg.config.SCHEMA, so a new option is covered the day it is added."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from hvdbg.ui import cli
from hvdbg.config import SCHEMA, config_from_dict
from hvdbg.errors import ConfigError

#: Values of every TOML type (and edge values of the numeric ones).
PROBES: dict[str, object] = {
    "string": "text", "empty-string": "", "float": 3.5, "bool": True, "list": [1, "a"],
    "string-list": ["a"], "table": {"a": 1}, "negative": -1, "zero": 0, "huge": 2**70,
    "nan": math.nan, "inf": math.inf,
}


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def write_toml(path: Path, values: dict[str, object]) -> Path:
    """Dotted keys as TOML dotted keys (``budget.seconds = 5``)."""
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path


def rejected_probes() -> list:
    """(key, probe) pairs the option's own parser refuses: each must be a ConfigError."""
    cases = []
    for opt in SCHEMA:
        for name, value in PROBES.items():
            try:
                opt.parse(value)
            except ValueError:
                cases.append(pytest.param(opt.key, value, id=f"{opt.key}-{name}"))
    return cases


def accepted_probes() -> list:
    """(key, probe) pairs the parser accepts: the run must still end well or be refused clearly."""
    cases = []
    for opt in SCHEMA:
        if opt.key in ("kernel", "output.echo_serial"):
            continue
        for name, value in PROBES.items():
            try:
                opt.parse(value)
            except ValueError:
                continue
            cases.append(pytest.param(opt.key, value, id=f"{opt.key}-{name}"))
    return cases


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``hvdbg`` in-process; an exception escaping main() is the traceback a user would see."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_naming(err: str, key: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hvdbg: "), err
    table = key.split(".")[0]
    names = (f"'{key}'", f"'{table}'", key, key.rstrip("s") + " ")  # 'modules' -> "module /path: ..."
    assert any(n in lines[0] for n in names), err
    assert "Traceback" not in err


def small_run(guest_kernels, **extra: object) -> dict[str, object]:
    return {"kernel": str(guest_kernels / "smp.elf"), "vcpus": 2, "budget.instructions": 300_000,
            "budget.seconds": 20, **extra}


# ===================================================================== generated from the schema


def test_schema_cases_are_generated():
    assert len(rejected_probes()) >= 5 * len(SCHEMA)
    assert {c.values[0] for c in rejected_probes()} == {o.key for o in SCHEMA}


@pytest.mark.parametrize("key, value", rejected_probes())
def test_wrong_type_is_one_line_naming_the_key(key, value):
    data: dict[str, object] = {"kernel": "k"}
    table, _, sub = key.partition(".")
    if sub:
        data[table] = {sub: value}
    else:
        data[key] = value
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data, source="vm.toml")
    text = str(exc.value)
    assert f"'{key}'" in text and "\n" not in text and text.startswith("vm.toml: ")


@pytest.mark.parametrize("key, value", rejected_probes()[::3])
def test_wrong_type_through_the_cli(tmp_path, capsys, guest_kernels, key, value):
    values = {"kernel": str(guest_kernels / "smp.elf"), key: value}
    code, out, err = run_main(capsys, "run", str(write_toml(tmp_path / "vm.toml", values)), "--json")
    assert code == 2
    assert_one_line_naming(err, key)


@pytest.mark.parametrize("key, value", accepted_probes())
def test_edge_values_the_parser_accepts_end_well_or_are_refused(tmp_path, capsys, guest_kernels, key, value):
    cfg = write_toml(tmp_path / "vm.toml", small_run(guest_kernels, **{key: value}))
    code, out, err = run_main(capsys, "run", str(cfg), "--json", "--compact")
    if code == 2:
        assert_one_line_naming(err, key)
    else:
        import json

        result = json.loads(out)
        assert result["outcome"] in {"exited", "hang", "budget", "triple_fault", "ept_violation", "exception"}
        assert result["outcome"] != "internal_error"


# ===================================================================== structure of the file


@pytest.mark.parametrize("text, needle", [
    ("vcpu = 2\n", "unknown key 'vcpu'"),
    ("[cpuid]\nx2apc = true\n", "unknown key 'cpuid.x2apc'"),
    ("[nosuchtable]\na = 1\n", "unknown key 'nosuchtable.a'"),
    ("cpuid = 1\n", "'cpuid'"),
    ("vcpus = { a = 1 }\n", "'vcpus'"),
    ("[[budget]]\nseconds = 1\n", "'budget'"),
    ("vcpus = 2\nvcpus = 3\n", "not valid TOML"),
    ("vcpus = [\n", "not valid TOML"),
    ("= 3\n", "not valid TOML"),
    ("budget.seconds = \"ten\"\n", "'budget.seconds'"),
    ("memory = \"12Q\"\n", "'memory'"),
    ("memory = \"8M\"\n", "'memory'"),
    ("memory = \"5G\"\n", "'memory'"),
    ("vcpus = 65\n", "'vcpus'"),
    ("pcpus = 65\n", "'pcpus'"),
    ("slice = 10\n", "'slice'"),
    ("gpa_hpa_offset = 0x1001\n", "'gpa_hpa_offset'"),
    ("affinity = { 7 = [0] }\n", "'affinity'"),
    ("affinity = [0]\n", "'affinity'"),
    ("loader.magic = \"grub\"\n", "'loader.magic'"),
    ("sched = \"lottery\"\n", "'sched'"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_file_structure_errors(tmp_path, capsys, guest_kernels, text, needle):
    cfg = tmp_path / "vm.toml"
    cfg.write_text(f'kernel = "{guest_kernels / "smp.elf"}"\n' + text)
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ===================================================================== paths


@pytest.mark.parametrize("kernel, needle", [
    ("missing.elf", "no such file"),
    (".", "cannot read"),
    ("/dev/null", "multiboot"),
    ("empty.bin", "multiboot"),
    ("garbage.bin", "multiboot"),
    ("config-as-kernel.toml", "multiboot"),
])
def test_bad_kernel_paths(tmp_path, capsys, kernel, needle):
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "config-as-kernel.toml").write_text("vcpus = 1\n")
    cfg = write_toml(tmp_path / "vm.toml", {"kernel": kernel})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("module, needle", [("missing.bin", "no such file"), (".", "cannot read")])
def test_bad_module_paths(tmp_path, capsys, guest_kernels, module, needle):
    cfg = write_toml(tmp_path / "vm.toml", {"kernel": str(guest_kernels / "smp.elf"), "modules": [module]})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 2 and needle in err and "module" in err, err


def test_relative_paths_are_relative_to_the_config_file(tmp_path, capsys, guest_kernels, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "k.elf").write_bytes((guest_kernels / "hello.elf").read_bytes())
    cfg = write_toml(sub / "vm.toml", {"kernel": "k.elf", "budget.instructions": 5_000_000})
    monkeypatch.chdir(tmp_path)  # not the config's directory
    code, out, err = run_main(capsys, "run", "configs/vm.toml", "--json")
    assert code in (0, 1) and '"outcome"' in out, err


@pytest.mark.parametrize("what", ["missing", "directory", "empty", "dev-null"])
def test_bad_config_paths(tmp_path, capsys, what):
    path = {"missing": tmp_path / "nope.toml", "directory": tmp_path, "empty": tmp_path / "empty.toml",
            "dev-null": Path("/dev/null")}[what]
    if what == "empty":
        path.write_text("")
    code, out, err = run_main(capsys, "run", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "kernel" in err or "config" in err or "cannot read" in err


def test_binary_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "vm.toml"
    cfg.write_bytes(b'kernel = "x"\n\xff\xfe = 1\n')
    proc = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ===================================================================== command-line overrides


@pytest.mark.parametrize("args, needle", [
    (["--vcpus", "0"], "'vcpus'"), (["--vcpus", "65"], "'vcpus'"), (["--vcpus", "-3"], "'vcpus'"),
    (["--pcpus", "-1"], "'pcpus'"), (["--pcpus", "99"], "'pcpus'"),
    (["--memory", "lots"], "'memory'"), (["--memory", "1K"], "'memory'"), (["--memory", "9G"], "'memory'"),
    (["--budget", "0"], "'budget"), (["--budget", "-5"], "'budget"), (["--seconds", "0"], "'budget"),
])
def test_bad_overrides(capsys, guest_kernels, tmp_path, args, needle):
    cfg = write_toml(tmp_path / "vm.toml", {"kernel": str(guest_kernels / "smp.elf")})
    code, out, err = run_main(capsys, "run", str(cfg), *args)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--vcpus", "abc"], ["--budget", "1e9"], ["--gdb", "port"], ["--bogus"]])
def test_malformed_options_are_argparse_errors(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(tmp_path / "x.toml"), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error:" in proc.stderr.strip().splitlines()[-1]
    assert args[0] in proc.stderr or "unrecognized" in proc.stderr


@pytest.mark.parametrize("port", ["70000", "-1", "65535"])
def test_gdb_port_out_of_range_is_one_line(guest_kernels, tmp_path, port):
    cfg = write_toml(tmp_path / "vm.toml", {"kernel": str(guest_kernels / "smp.elf"), "vcpus": 2})
    proc = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(cfg), "--gdb", port, "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-600:]
    assert "port" in proc.stderr or "listen" in proc.stderr


# ===================================================================== values the schema lets through


def test_memory_overlapping_the_apic_page_is_refused(tmp_path, capsys, guest_kernels):
    cfg = write_toml(tmp_path / "vm.toml", small_run(guest_kernels, memory="4080M"))
    code, out, err = run_main(capsys, "run", str(cfg), "--json")
    assert code == 2
    assert_one_line_naming(err, "memory")


def test_gpa_hpa_offset_plus_memory_beyond_46_bits_is_refused(tmp_path, capsys, guest_kernels):
    cfg = write_toml(tmp_path / "vm.toml", small_run(guest_kernels, gpa_hpa_offset=0x3FFFFF000000))
    code, out, err = run_main(capsys, "run", str(cfg), "--json")
    assert code == 2
    assert_one_line_naming(err, "gpa_hpa_offset")


@pytest.mark.parametrize("key, value", [("budget.idle_slices", 0), ("budget.idle_slices", -1),
                                        ("slice", 2**70)])
def test_nonsense_scheduling_values_are_refused(tmp_path, capsys, guest_kernels, key, value):
    cfg = write_toml(tmp_path / "vm.toml", small_run(guest_kernels, **{key: value, "budget.instructions": 10**9}))
    code, out, err = run_main(capsys, "run", str(cfg), "--json")
    assert code == 2
    assert_one_line_naming(err, key)
