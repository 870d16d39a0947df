"""Chaos guests: random-byte and mutated guest kernels, each run to a classified end.

A guest is a kernel image (bytes) plus a few config values (vCPUs, deterministic or
not, budgets). :func:`run_guest` boots it in-process and returns a
:class:`ChaosResult`; :class:`GuestRunner` does the same in a worker *subprocess*
with a wall-clock timeout, so a hung host process is detected (and killed) instead of
hanging the fuzzer.

Verdicts: ``ok`` (a known outcome such as ``exited``, ``hang``, ``triple_fault``...),
``rejected`` (the loader refused the image with one GuestLoadError line - a
classified answer too), and the bugs: ``internal_error`` (the VM ended as
internal_error/fatal), ``exception`` (a Python exception escaped), ``host_hang``
(the run did not end within its wall-clock allowance), ``unclassified`` (an
outcome nobody documented).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import struct
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuzz.common import CORPUS, SMP_ELF
from hvdbg.errors import Outcome

#: Outcomes documented in README.md that are a proper end of a run.
BUG_OUTCOMES = frozenset({Outcome.INTERNAL_ERROR, Outcome.FATAL})
CLASSIFIED_OUTCOMES = frozenset(Outcome) - BUG_OUTCOMES
GUEST_CORPUS = CORPUS / "guests"

LOAD = 0x100000
MB1_MAGIC = 0x1BADB002
MB2_MAGIC = 0xE85250D6
ELF_MB_HEADER_OFFSET = 0x1000  # where smp.elf keeps its multiboot 1 header


@dataclass
class ChaosGuest:
    """One guest to run: the image, how it was made, and its config values."""

    image: bytes
    recipe: str
    config: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        import hashlib

        h = hashlib.sha1(self.image)
        h.update(json.dumps(self.config, sort_keys=True).encode())
        return h.hexdigest()[:12]

    def save(self, verdict: str, detail: str, directory: Path = GUEST_CORPUS, known_bug: str | None = None) -> Path:
        """Write ``<verdict>-<key>.json`` (and ``.bin`` unless the image is a small patch of
        smp.elf, which is then stored as byte runs: the base is built from source)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{verdict}-{self.key}.json"
        meta = {"verdict": verdict, "recipe": self.recipe, "config": self.config, "known_bug": known_bug,
                "detail": detail[-4000:]}
        patch = smp_patch(self.image)
        if patch is not None:
            meta["smp_elf_patch"] = patch
        else:
            path.with_suffix(".bin").write_bytes(self.image)
        path.write_text(json.dumps(meta, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> ChaosGuest:
        meta = json.loads(path.with_suffix(".json").read_text())
        if "smp_elf_patch" in meta:
            image = apply_smp_patch(meta["smp_elf_patch"])
        else:
            image = path.with_suffix(".bin").read_bytes()
        return cls(image, meta["recipe"], meta["config"])


def smp_patch(image: bytes, limit: int = 8192) -> dict | None:
    """``image`` as changes to smp.elf (truncation + differing byte runs), if small."""
    base = SMP_ELF.read_bytes()
    if len(image) > len(base):
        return None
    runs: list[list] = []
    i = 0
    while i < len(image):
        if image[i] != base[i]:
            j = i
            while j < len(image) and image[j] != base[j]:
                j += 1
            runs.append([i, image[i:j].hex()])
            i = j
        else:
            i += 1
    if sum(len(h) // 2 for _, h in runs) > limit:
        return None
    return {"length": len(image), "runs": runs}


def apply_smp_patch(patch: dict) -> bytes:
    data = bytearray(SMP_ELF.read_bytes()[: patch["length"]])
    for offset, hexed in patch["runs"]:
        chunk = bytes.fromhex(hexed)
        data[offset : offset + len(chunk)] = chunk
    return bytes(data)


@dataclass
class ChaosResult:
    verdict: str          # ok | rejected | internal_error | exception | host_hang | unclassified
    outcome: str | None
    detail: str
    seconds: float

    @property
    def is_bug(self) -> bool:
        return self.verdict not in ("ok", "rejected")


# ====================================================================== images


def flat_kernel(code: bytes, *, flags: int = 1 << 16, load: int = LOAD, entry_offset: int = 0x20,
                bss: int = 0) -> bytes:
    """Multiboot 1 a.out-kludge image: header then 32-bit code at ``load + 0x20``."""
    m = 0xFFFFFFFF
    header = struct.pack("<8I", MB1_MAGIC, flags & m, (-(MB1_MAGIC + flags)) & m,
                         load & m, load & m, 0, bss & m, (load + entry_offset) & m)
    return header + code


#: The kinds of damage, and how often each is picked.
RECIPE_WEIGHTS: dict[str, int] = {
    "random_code": 3, "random_file": 1, "flip_bytes": 3, "code_bytes": 2, "elf_header": 2,
    "program_header": 2, "multiboot_header": 2, "truncate": 1, "splice": 1, "random_header_fields": 1,
}


class GuestMutator:
    """Makes chaos guests from random bytes and from mutations of smp.elf."""

    def __init__(self, rng: random.Random, base: bytes | None = None) -> None:
        self.rng = rng
        self.base = base if base is not None else SMP_ELF.read_bytes()
        self._code = self._code_range(self.base)
        self._recipes = [(weight, getattr(self, name)) for name, weight in RECIPE_WEIGHTS.items()]

    @staticmethod
    def _code_range(image: bytes) -> tuple[int, int]:
        """File offsets of the loaded code (ELF64 PT_LOAD segment) of the base image."""
        try:
            phoff, = struct.unpack_from("<Q", image, 0x20)
            start = struct.unpack_from("<Q", image, phoff + 8)[0]
            size = struct.unpack_from("<Q", image, phoff + 32)[0]
            return start, min(len(image), start + size)
        except struct.error:
            return 0, len(image)

    def config(self) -> dict:
        rng = self.rng
        return {
            "vcpus": rng.choice((1, 1, 2, 2, 4)),
            "deterministic": rng.random() < 0.5,
            "memory": rng.choice(("16M", "32M", "128M")),
            "cmdline": rng.choice(("", "", "work_mib=1", "max_aps=1", "work_mib=99999", "x" * 300)),
            "budget": {"instructions": rng.choice((200_000, 1_000_000, 3_000_000)), "seconds": 5,
                       "idle_slices": rng.choice((5, 20, 200))},
            "slice": rng.choice((1000, 10_000, 50_000)),
            "vmx": {"exception_bitmap": rng.choice((0, 0, 0x4000, 0xFFFFFFFF))},
        }

    def make(self) -> ChaosGuest:
        _, recipe = self.rng.choices(self._recipes, weights=[w for w, _ in self._recipes])[0]
        image, description = recipe()
        return ChaosGuest(image, f"{recipe.__name__}: {description}", self.config())

    # ---- recipes (each returns (image, description))

    def random_code(self) -> tuple[bytes, str]:
        n = self.rng.choice((16, 256, 4096))
        return flat_kernel(self.rng.randbytes(n)), f"flat kernel, {n} random code bytes"

    def random_file(self) -> tuple[bytes, str]:
        n = self.rng.choice((0, 1, 12, 48, 4096, 65536))
        data = bytearray(self.rng.randbytes(n))
        if n >= 12 and self.rng.random() < 0.5:  # a valid-looking header somewhere
            at = self.rng.randrange(0, min(n - 11, 8192)) & ~3
            struct.pack_into("<3I", data, at, MB1_MAGIC, 0, (-MB1_MAGIC) & 0xFFFFFFFF)
        return bytes(data), f"{n} random bytes"

    def flip_bytes(self) -> tuple[bytes, str]:
        data = bytearray(self.base)
        count = self.rng.choice((1, 4, 16, 256))
        for _ in range(count):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data), f"smp.elf with {count} random bytes changed"

    def code_bytes(self) -> tuple[bytes, str]:
        data = bytearray(self.base)
        start, end = self._code
        at = self.rng.randrange(start, end)
        n = self.rng.choice((1, 2, 8, 64))
        data[at:at + n] = self.rng.randbytes(min(n, len(data) - at))
        return bytes(data), f"smp.elf code bytes at file offset {at:#x} (+{n}) randomised"

    def elf_header(self) -> tuple[bytes, str]:
        data = bytearray(self.base)
        fields = {"e_ident class": (4, "B"), "e_type": (0x10, "H"), "e_machine": (0x12, "H"),
                  "e_entry": (0x18, "Q"), "e_phoff": (0x20, "Q"), "e_shoff": (0x28, "Q"),
                  "e_phentsize": (0x36, "H"), "e_phnum": (0x38, "H"), "e_shnum": (0x3C, "H")}
        name = self.rng.choice(sorted(fields))
        offset, fmt = fields[name]
        struct.pack_into("<" + fmt, data, offset, self._value(fmt))
        return bytes(data), f"smp.elf ELF header {name} changed"

    def program_header(self) -> tuple[bytes, str]:
        data = bytearray(self.base)
        phoff = struct.unpack_from("<Q", data, 0x20)[0]
        fields = {"p_type": (0, "I"), "p_flags": (4, "I"), "p_offset": (8, "Q"), "p_vaddr": (16, "Q"),
                  "p_paddr": (24, "Q"), "p_filesz": (32, "Q"), "p_memsz": (40, "Q"), "p_align": (48, "Q")}
        name = self.rng.choice(sorted(fields))
        offset, fmt = fields[name]
        struct.pack_into("<" + fmt, data, phoff + offset, self._value(fmt))
        return bytes(data), f"smp.elf program header {name} changed"

    def multiboot_header(self) -> tuple[bytes, str]:
        """Change one multiboot 1 header field; keep the checksum valid most of the time."""
        data = bytearray(self.base)
        at = ELF_MB_HEADER_OFFSET
        index = self.rng.randrange(8)  # magic, flags, checksum, header/load/load_end/bss_end/entry
        struct.pack_into("<I", data, at + 4 * index, self._value("I"))
        if index != 2 and self.rng.random() < 0.8:
            magic, flags = struct.unpack_from("<2I", data, at)
            struct.pack_into("<I", data, at + 8, (-(magic + flags)) & 0xFFFFFFFF)
        names = ("magic", "flags", "checksum", "header_addr", "load_addr", "load_end_addr",
                 "bss_end_addr", "entry_addr")
        return bytes(data), f"smp.elf multiboot header {names[index]} changed"

    def random_header_fields(self) -> tuple[bytes, str]:
        flags = self.rng.choice((1 << 16, (1 << 16) | 3, (1 << 16) | 4, self._value("I")))
        load = self.rng.choice((LOAD, 0, 0x1000, 0x7000, 0xFFFFF000, self._value("I")))
        code = self.rng.randbytes(self.rng.choice((0, 16, 4096)))
        return (flat_kernel(code, flags=flags, load=load, entry_offset=self.rng.choice((0x20, 0, 0x100000)),
                            bss=self.rng.choice((0, load + 0x100000, 0xFFFFFFFF))),
                f"flat kernel flags {flags:#x} load {load:#x}")

    def truncate(self) -> tuple[bytes, str]:
        n = self.rng.randrange(len(self.base))
        return self.base[:n], f"smp.elf truncated to {n} bytes"

    def splice(self) -> tuple[bytes, str]:
        a = self.rng.randrange(len(self.base))
        b = self.rng.randrange(len(self.base))
        n = self.rng.choice((16, 256, 4096))
        data = bytearray(self.base)
        data[a:a + n] = self.base[b:b + n]
        return bytes(data), f"smp.elf bytes {b:#x}+{n} copied over {a:#x}"

    def _value(self, fmt: str) -> int:
        bits = struct.calcsize(fmt) * 8
        interesting = (0, 1, 2, 0x40, 0x1000, 0x100000, 0x100020, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                       0xFFFFFF8000100000, (1 << bits) - 1, 1 << (bits - 1))
        if self.rng.random() < 0.6:
            return self.rng.choice(interesting) & ((1 << bits) - 1)
        return self.rng.getrandbits(bits)


# ====================================================================== running


def run_guest(guest: ChaosGuest) -> ChaosResult:
    """Boot ``guest`` in this process to its end and classify what happened."""
    from hvdbg import api
    from hvdbg.config import config_from_dict
    from hvdbg.errors import HvdbgError
    from hvdbg.hv.machine import Machine

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        kernel = Path(tmp) / "kernel.bin"
        kernel.write_bytes(guest.image)
        try:
            vm = Machine(config_from_dict({"kernel": str(kernel), **guest.config}))
        except HvdbgError as exc:
            text = str(exc)
            verdict = "rejected" if text and "\n" not in text else "exception"
            return ChaosResult(verdict, None, f"{type(exc).__name__}: {text}", time.monotonic() - start)
        except Exception:  # noqa: BLE001 - the bug being looked for
            return ChaosResult("exception", None, traceback.format_exc(), time.monotonic() - start)
        try:
            result = api.run_machine(vm, include_stats=False).result
            json.dumps(result)
        except Exception:  # noqa: BLE001
            return ChaosResult("exception", vm.ending.outcome if vm.ending else None, traceback.format_exc(),
                               time.monotonic() - start)
    outcome = result["outcome"]
    detail = (vm.ending.detail if vm.ending else "") + "\n" + "\n".join(result.get("diagnosis", []))
    if outcome in BUG_OUTCOMES:
        verdict = "internal_error"
    elif outcome in CLASSIFIED_OUTCOMES:
        verdict = "ok"
    else:
        verdict = "unclassified"
    return ChaosResult(verdict, outcome, detail.strip(), time.monotonic() - start)


def _worker(conn) -> None:
    while True:
        job = conn.recv()
        if job is None:
            return
        image, recipe, config = job
        result = run_guest(ChaosGuest(image, recipe, config))
        conn.send(asdict(result))


class GuestRunner:
    """Runs guests in a persistent worker subprocess, each with a wall-clock timeout.

    A run that does not answer within ``timeout`` seconds is a ``host_hang``: the
    worker is killed and a new one started for the next guest.
    """

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def run(self, guest: ChaosGuest) -> ChaosResult:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None and self._proc is not None
        start = time.monotonic()
        self._conn.send((guest.image, guest.recipe, guest.config))
        if self._conn.poll(self.timeout):
            try:
                return ChaosResult(**self._conn.recv())
            except EOFError:
                pass
        died = not self._proc.is_alive()
        self.kill()
        self.restarts += 1
        what = f"worker died (exit code {self._proc.exitcode})" if died else \
            f"no result within {self.timeout:.0f} s (budget.seconds is {guest.config.get('budget', {}).get('seconds')})"
        return ChaosResult("host_hang" if not died else "exception", None, what, time.monotonic() - start)

    def kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        self._proc = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            self._conn.send(None)
            self._proc.join(10)
        self.kill()
