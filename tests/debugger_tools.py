"""pwndbg, gdb-pt-dump and GEF, installed from the snapshots in ../shared/third_party into
a venv of the Python gdb 13.1 embeds (/usr/bin/python3.11), once per snapshot hash, cached
under /tmp (a file lock keeps concurrent runs from building it twice). Used by
tests/test_pwndbg_gef.py and bench/p4_gdb.py; neither copies the tools' code."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = ROOT.parent / "shared" / "third_party"
GDB_PYTHON = Path("/usr/bin/python3.11")
CACHE = Path("/tmp/hvdbg-third-party")
#: pwndbg 2024.08.29's dependencies (../shared/third_party/README.md)
PWNDBG_DEPS = ("capstone==5.0.3", "ipython==8.28.0", "psutil==5.9.8", "pwntools==4.14.0b1", "pycparser==2.22",
               "pyelftools==0.29", "pygments==2.18.0", "requests==2.32.3", "ropgadget==7.3", "setuptools==70.3.0",
               "sortedcontainers==2.4.0", "tabulate==0.9.0", "typing-extensions==4.12.2", "unicorn==2.1.1",
               "poetry-core")


class ToolsMissing(Exception):
    """What is missing to install the tools (a snapshot, gdb's Python)."""


def missing() -> str | None:
    """Why the tools cannot be installed here, or None."""
    if shutil.which("gdb") is None:
        return "gdb not installed"
    if not GDB_PYTHON.exists():
        return f"no {GDB_PYTHON} (the Python gdb 13.1 embeds)"
    if not THIRD_PARTY.is_dir():
        return f"{THIRD_PARTY} (the pwndbg/GEF snapshots) is absent"
    for prefix in ("pwndbg", "gdb-pt-dump", "gef"):
        if not sorted(THIRD_PARTY.glob(f"{prefix}-*.tar.gz")):
            return f"no {prefix} snapshot in {THIRD_PARTY}"
    return None


def _archive(prefix: str) -> Path:
    return sorted(THIRD_PARTY.glob(f"{prefix}-*.tar.gz"))[0]


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        tar.extractall(into, filter="data")
    return into / top


def install() -> dict[str, Path]:
    """{"pwndbg": gdbinit.py, "gef": gef.py}; raises ToolsMissing (see :func:`missing`)."""
    why = missing()
    if why is not None:
        raise ToolsMissing(why)
    archives = [_archive("pwndbg"), _archive("gdb-pt-dump"), _archive("gef")]
    key = hashlib.sha256(b"".join(a.read_bytes() for a in archives)).hexdigest()[:16]
    home = CACHE / key
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = home / "ready"
        if not ready.exists():
            for old in ("pwndbg", "gdb-pt-dump", "gef"):
                shutil.rmtree(home / old, ignore_errors=True)
            pwndbg, ptdump, _gef = (_unpack(a, home) for a in archives)
            venv = pwndbg / ".venv"   # where pwndbg's gdbinit.py looks for its venv
            subprocess.run([str(GDB_PYTHON), "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PWNDBG_DEPS, str(ptdump)],
                           check=True, stdout=subprocess.DEVNULL)
            lock_hash = hashlib.sha256((pwndbg / "poetry.lock").read_bytes()).hexdigest()
            (venv / "poetry.lock.hash").write_text(lock_hash)   # silences its poetry check
            ready.write_text("ok\n")
    return {"pwndbg": home / "pwndbg" / "gdbinit.py", "gef": home / "gef" / "gef.py"}
