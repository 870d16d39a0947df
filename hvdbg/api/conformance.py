"""kvm-unit-tests side by side: every case of x86/unittests.cfg under hvdbg and under
QEMU TCG, with its own smp count, test arguments and -cpu flags, as kvm-unit-tests'
x86/run and scripts/runtime.bash start them (docs/conformance.md).

A case passes when the guest writes 0 to the debug-exit port 0xF4.  hvdbg's exit status is
the raw value written; QEMU's isa-debug-exit reports (value << 1) | 1, so QEMU's 1 is a pass
and 77 is kvm-unit-tests' "all skipped" (the guest wrote 38, lib/report.c).  QEMU's own
errors also exit with 1, so a QEMU run counts only if the guest printed something.  Each run is a child process with a host
timeout, so a wedged case cannot stop the table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from hvdbg.arch.cpuid import ALL_FEATURES, CPU_MODELS, IMPLEMENTED, QEMU_ALIASES
from hvdbg.errors import HvdbgError

KUT_SKIP_STATUS = 77 >> 1         # lib/report.c: 38 written, so that QEMU's (38 << 1) | 1 is 77
DEFAULT_TIMEOUT = 90               # scripts/runtime.bash: TIMEOUT default 90s
QEMU_MEMORY = "128M"               # QEMU's default -m, which kvm-unit-tests does not change
NESTED_GROUPS = {"vmx", "svm"}     # cases that need a nested hypervisor
PASS, FAIL, SKIP, TIMEOUT, ABSENT = "PASS", "FAIL", "SKIP", "TIMEOUT", "-"


class ConformanceError(HvdbgError):
    """The kvm-unit-tests tree cannot be prepared (bad path, build failure)."""


@dataclass(frozen=True)
class KutCase:
    """One section of x86/unittests.cfg."""

    name: str
    file: str
    smp: int = 1
    test_args: str = ""
    qemu_params: str = ""
    arch: str = ""
    groups: tuple[str, ...] = ()
    accel: str = ""
    timeout: int = DEFAULT_TIMEOUT
    check: str = ""

    def not_applicable(self) -> str | None:
        """Why this case is left out of an x86_64, TCG-comparable, non-nested run."""
        if self.arch and self.arch != "x86_64":
            return f"arch = {self.arch}"
        if self.accel == "kvm":
            return "accel = kvm (needs KVM)"
        if NESTED_GROUPS & set(self.groups) or self.file.startswith(("svm", "vmx")) or "+svm" in self.qemu_params:
            return "needs a nested hypervisor (groups = " + " ".join(self.groups) + ")"
        if "nodefault" in self.groups:
            return "groups = nodefault (run_tests.sh leaves it out)"
        return None

    def cpu_flags(self) -> dict[str, bool]:
        """The ``-cpu model,+flag,-flag`` feature flags of ``qemu_params``."""
        flags: dict[str, bool] = {}
        for part in self._cpu_parts()[1:]:
            if part[:1] in "+-":
                flags[part[1:]] = part[0] == "+"
        return flags

    def _cpu_parts(self) -> list[str]:
        m = re.search(r"-cpu\s+(\S+)", self.qemu_params)
        return m.group(1).split(",") if m else []

    def hvdbg_cpu(self) -> tuple[str, list[str]]:
        """hvdbg's ``cpu`` setting for the case's ``-cpu``, and the parts it leaves out: a
        model hvdbg does not have becomes ``max``; properties (``vendor=``, ``phys-bits=``)
        and flags for features hvdbg does not implement are dropped."""
        parts = self._cpu_parts()
        if not parts:
            return "hvdbg", []
        model, dropped = parts[0], []
        if model not in CPU_MODELS:
            model, dropped = "max", [f"model {parts[0]}"]
        kept = [model]
        for part in parts[1:]:
            name = QEMU_ALIASES.get(part[1:], part[1:])
            if part[:1] == "+" and name in IMPLEMENTED or part[:1] == "-" and name in ALL_FEATURES:
                kept.append(part[0] + name)
            else:
                dropped.append(part)
        return ",".join(kept), dropped


def parse_unittests_cfg(text: str) -> list[KutCase]:
    """The sections of a unittests.cfg (scripts/common.bash ``for_each_unittest``):
    ``key = value`` lines, ``qemu_params``/``extra_params`` possibly in triple quotes."""
    cases: list[KutCase] = []
    current: dict[str, str] | None = None
    lines = iter(text.splitlines())

    def close() -> None:
        if current is not None and "file" in current:
            cases.append(_case(current))

    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head = re.fullmatch(r"\[(.*)\]", line)
        if head:
            close()
            current = {"name": head.group(1)}
            continue
        kv = re.fullmatch(r"(\w+)\s*=\s*(.*)", line)
        if current is None or kv is None:
            continue
        key, value = kv.groups()
        if value.startswith('"""'):
            value = value[3:]
            while '"""' not in value:
                value += " " + next(lines, '"""').strip().rstrip("\\")
            value = value.split('"""')[0]
        current[key] = value.strip()
    close()
    return cases


def _case(d: dict[str, str]) -> KutCase:
    args = d.get("test_args", "").strip()
    if len(args) >= 2 and args[0] == args[-1] and args[0] in "'\"":
        args = args[1:-1]
    params = d.get("qemu_params", d.get("extra_params", ""))
    m = re.search(r"-append\s+(['\"])(.*?)\1", params) or re.search(r"-append\s+(\S+)()", params)
    if m and not args:
        args = m.group(2) or m.group(1)
    return KutCase(name=d["name"], file=d["file"], smp=int(d.get("smp", "1") or 1), test_args=args,
                   qemu_params=params, arch=d.get("arch", ""), groups=tuple(d.get("groups", "").split()),
                   accel=d.get("accel", ""), timeout=int(re.sub(r"\D", "", d.get("timeout", "")) or DEFAULT_TIMEOUT),
                   check=d.get("check", ""))


# -- building the tests ----------------------------------------------------------------------
def prepare(source: Path, build_dir: Path | None = None,
            progress: Callable[[str], None] = lambda s: None) -> Path:
    """A built kvm-unit-tests tree: ``source`` is the tree itself (built if x86/*.flat are
    missing) or a .tar.gz snapshot, unpacked into ``build_dir`` (a temporary folder if None)."""
    source = Path(source)
    if source.is_dir():
        tree = source
    elif source.is_file():
        dest = Path(build_dir) if build_dir else Path(tempfile.mkdtemp(prefix="hvdbg-kut-"))
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(source) as tar:
                tops = {m.name.split("/")[0] for m in tar.getmembers()}
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise ConformanceError(f"{source}: cannot unpack: {e}") from None
        tree = dest / sorted(tops)[0] if len(tops) == 1 else dest
        progress(f"unpacked {source.name} into {tree}")
    else:
        raise ConformanceError(f"{source}: no such kvm-unit-tests tree or tarball")
    if not (tree / "x86" / "unittests.cfg").is_file():
        raise ConformanceError(f"{tree}: not a kvm-unit-tests tree (no x86/unittests.cfg)")
    if not list((tree / "x86").glob("*.flat")):
        progress(f"building kvm-unit-tests in {tree} (./configure --arch=x86_64 && make -j2)")
        for cmd in (["./configure", "--arch=x86_64"], ["make", "-j2"]):
            proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
            if proc.returncode:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                raise ConformanceError(f"{tree}: {' '.join(cmd)} failed: {last[0]}")
    return tree


# -- running one case ------------------------------------------------------------------------
@dataclass
class Run:
    """One case under one hypervisor."""

    verdict: str
    status: int | None = None
    seconds: float = 0.0
    first_fail: str = ""
    skip_reason: str = ""
    diagnosis: str = ""


def verdict_of(raw_status: int | None) -> str:
    """The verdict of the raw value written to port 0xF4 (None: no write)."""
    if raw_status == 0:
        return PASS
    if raw_status == KUT_SKIP_STATUS:
        return SKIP
    return FAIL


def _first(serial: str, prefix: str) -> str:
    for line in serial.splitlines():
        if line.startswith(prefix):
            return line.strip()[:160]
    return ""


def _finish(run: Run, serial: str) -> Run:
    run.first_fail = _first(serial, "FAIL")
    run.skip_reason = _first(serial, "SKIP")
    return run


def run_qemu(tree: Path, case: KutCase, qemu: str = "qemu-system-x86_64") -> Run:
    """The case under QEMU TCG, as x86/run starts it (without the environment initrd)."""
    kernel = tree / "x86" / case.file
    params = re.sub(r"-append\s+(['\"]).*?\1|-append\s+\S+", "", case.qemu_params).split()
    cmd = [qemu, "--no-reboot", "-nodefaults", "-device", "pc-testdev", "-device",
           "isa-debug-exit,iobase=0xf4,iosize=0x4", "-display", "none", "-serial", "stdio",
           "-device", "pci-testdev", "-machine", "accel=tcg", "-kernel", str(kernel),
           "-smp", str(case.smp), *params]
    if case.test_args:
        cmd += ["-append", case.test_args]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=case.timeout, errors="replace")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return _finish(Run(TIMEOUT, None, time.monotonic() - start), out)
    secs = time.monotonic() - start
    rc = proc.returncode
    raw = rc >> 1 if rc & 1 and proc.stdout.strip() else None   # isa-debug-exit: (value << 1) | 1
    run = Run(verdict_of(raw), raw, secs)
    if raw is None:
        run.diagnosis = (proc.stderr.strip().splitlines() or [f"QEMU exited with {rc}"])[-1][:160]
    return _finish(run, proc.stdout)


def hvdbg_config(tree: Path, case: KutCase, *, pcpus: int = 0, vcpus: int | None = None) -> dict:
    """The TOML values of a case under hvdbg: the kernel's path first on the command line
    (QEMU's multiboot convention; kvm-unit-tests takes argv[0] from it), QEMU's 128 MiB."""
    kernel = tree / "x86" / case.file
    cpu, _dropped = case.hvdbg_cpu()
    cfg: dict = {"kernel": str(kernel), "cmdline": f"{kernel} {case.test_args}".strip(),
                 "vcpus": vcpus or case.smp, "memory": QEMU_MEMORY, "pcpus": pcpus,
                 "budget": {"seconds": case.timeout, "instructions": 1 << 40}}
    cfg["cpu"] = cpu
    m = re.search(r"(?:^|\s)-m\s+(\d+)([MGmg]?)", case.qemu_params)
    if m:
        mib = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
        if mib <= 4078:
            cfg["memory"] = f"{mib}M"
    if pcpus:
        cfg["sched"] = "cfs"
    return cfg


def _toml(cfg: dict) -> str:
    """The few value types of :func:`hvdbg_config` as TOML (top-level keys, then tables)."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        return json.dumps(str(v))   # a JSON string is a TOML basic string
    top = [f"{k} = {value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for k, v in cfg.items():
        if isinstance(v, dict):
            top += [f"[{k}]"] + [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    return "\n".join(top) + "\n"


def run_hvdbg(tree: Path, case: KutCase, *, pcpus: int = 0, vcpus: int | None = None) -> Run:
    """The case under hvdbg, in a child ``hvdbg run --json`` with a host timeout."""
    cfg = hvdbg_config(tree, case, pcpus=pcpus, vcpus=vcpus)
    with tempfile.TemporaryDirectory(prefix="hvdbg-kut-case-") as tmp:
        path = Path(tmp) / f"{case.name}.toml"
        path.write_text(_toml(cfg))
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(path), "--json", "--compact"],
                                  capture_output=True, text=True, timeout=case.timeout + 30, errors="replace",
                                  env={**os.environ, "PYTHONHASHSEED": "0"})
        except subprocess.TimeoutExpired:
            return Run(TIMEOUT, None, time.monotonic() - start, diagnosis="the host timeout ended the run")
        secs = time.monotonic() - start
    try:
        res = json.loads(proc.stdout)
    except json.JSONDecodeError:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Run(FAIL, None, secs, diagnosis=f"hvdbg did not report: {err[:160]}")
    raw = res.get("exit_status") if res.get("outcome") == "exited" else None
    run = Run(verdict_of(raw), raw, secs)
    if res.get("outcome") == "budget" and secs >= case.timeout:
        run.verdict = TIMEOUT
    if run.verdict != PASS:
        run.diagnosis = f"{res.get('outcome')}: " + "; ".join(res.get("diagnosis", [])[:2])[:300]
    return _finish(run, res.get("serial", ""))


# -- the table -------------------------------------------------------------------------------
@dataclass
class Row:
    case: KutCase
    qemu: Run | None = None
    hvdbg: Run | None = None
    overcommit: Run | None = None
    left_out: str = ""

    def to_json(self) -> dict:
        d = {"case": self.case.name, "file": self.case.file, "smp": self.case.smp, "left_out": self.left_out}
        for key in ("qemu", "hvdbg", "overcommit"):
            run = getattr(self, key)
            d[key] = asdict(run) if run else None
        return d


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key in ("qemu", "hvdbg", "overcommit"):
            c: dict[str, int] = {}
            for r in self.rows:
                run = getattr(r, key)
                if run is not None:
                    c[run.verdict] = c.get(run.verdict, 0) + 1
            if c:
                out[key] = c
        return out

    def markdown(self) -> str:
        cols = ["qemu", "hvdbg"] + (["overcommit"] if any(r.overcommit for r in self.rows) else [])
        head = {"qemu": "QEMU TCG", "hvdbg": "hvdbg", "overcommit": "hvdbg, 2 pCPUs"}
        lines = ["| case | smp | " + " | ".join(head[c] for c in cols) + " | first FAIL line / hvdbg's diagnosis |",
                 "|---|---|" + "---|" * len(cols) + "---|"]
        for r in self.rows:
            if r.left_out:
                continue
            cells = []
            for c in cols:
                run = getattr(r, c)
                cells.append(f"{run.verdict} ({run.seconds:.1f} s)" if run else ABSENT)
            why = ""
            for run in (r.hvdbg, r.overcommit):
                if run and run.verdict != PASS and not why:
                    why = run.first_fail or run.skip_reason or run.diagnosis
            if not why and r.qemu and r.qemu.verdict != PASS:
                why = "QEMU: " + (r.qemu.first_fail or r.qemu.skip_reason or r.qemu.diagnosis)
            why = why.replace("|", "\\|")
            lines.append(f"| {r.case.name} | {r.case.smp} | " + " | ".join(cells) + f" | {why} |")
        summary = []
        for key, c in self.counts().items():
            summary.append(f"{head[key]}: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())))
        return "\n".join(lines) + "\n\n" + "; ".join(summary) + "\n"

    def to_json(self) -> dict:
        return {"counts": self.counts(), "rows": [r.to_json() for r in self.rows]}


def run_suite(tree: Path, *, cases: list[str] | None = None, qemu: bool = True, overcommit: bool = False,
              max_timeout: int | None = None, progress: Callable[[str], None] = lambda s: None) -> Report:
    """Every applicable case (or the named ones) under QEMU (if installed) and hvdbg."""
    all_cases = parse_unittests_cfg((tree / "x86" / "unittests.cfg").read_text())
    if cases:
        unknown = set(cases) - {c.name for c in all_cases}
        if unknown:
            raise ConformanceError(f"no such case in x86/unittests.cfg: {', '.join(sorted(unknown))}")
        all_cases = [c for c in all_cases if c.name in cases]
    qemu_bin = shutil.which("qemu-system-x86_64") if qemu else None
    report = Report()
    if max_timeout:
        all_cases = [replace(c, timeout=min(c.timeout, max_timeout)) for c in all_cases]
    todo = [c for c in all_cases if cases or not c.not_applicable()]
    for case in all_cases:
        row = Row(case)
        report.rows.append(row)
        if case not in todo:
            row.left_out = case.not_applicable() or ""
            continue
        if not (tree / "x86" / case.file).is_file():
            row.left_out = f"{case.file} was not built"
            continue
        if qemu_bin:
            row.qemu = run_qemu(tree, case, qemu_bin)
        row.hvdbg = run_hvdbg(tree, case)
        if overcommit and case.smp > 2:
            row.overcommit = run_hvdbg(tree, case, pcpus=2)
        n = todo.index(case) + 1
        parts = [f"[{n}/{len(todo)}] {case.name}:"]
        for label, run in (("qemu", row.qemu), ("hvdbg", row.hvdbg), ("2 pCPUs", row.overcommit)):
            if run:
                parts.append(f"{label} {run.verdict} {run.seconds:.1f}s")
        if row.hvdbg and row.hvdbg.verdict != PASS:
            parts.append("- " + (row.hvdbg.first_fail or row.hvdbg.diagnosis)[:120])
        progress(" ".join(parts))
    return report
