"""The hvdbg command layer: one registry of inspection and run-control commands, served
by the interactive shell (:mod:`hvdbg.ui.shell`) and by GDB's ``monitor`` (qRcmd).

A command is data (:class:`Command`: name, parameters, summary, details, handler).  A
handler takes a :class:`Call` (who asks, about which vCPU by default) and the bound
arguments, and returns text.  Every user mistake is a :class:`CommandError` with a
one-line message; :meth:`CommandContext.execute` never lets a traceback out.

Nothing here evaluates Python, reads host files or runs programs: ``monitor`` hands
these commands to whoever can reach the GDB port, so they only look at the VM.

Arguments: numbers are hex (``0x..``) or decimal; addresses also accept ELF symbols,
``symbol+offset`` and ``$register`` of the vCPU in question.  A ``[VCPU]`` argument is a
decimal vCPU index; when a number could be either a vCPU or the next argument, it is
the vCPU if such a vCPU exists (``step 2`` steps vCPU 2 of a 4-vCPU VM).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import capstone
from unicorn import x86_const as X

from hvdbg.vmx import ept as ept_mod
from hvdbg.platform import multiboot
from hvdbg.arch import paging
from hvdbg.engine import ucx
from hvdbg.platform.apic import (APIC_BASE_BSP, APIC_BASE_EN, APIC_BASE_EXTD, IA32_APIC_BASE_MSR, LVT_MASKED,
                        TIMER_MODES, Reg)
from hvdbg.arch.cpuid import ECX1, ECX_EXT, EDX1, EDX_EXT
from hvdbg.debug.session import DebugSession, Stop, StopKind
from hvdbg.errors import GuestMemoryError, HvdbgError
from hvdbg.arch.events import GuestFault
from hvdbg.vmx.exits import ExitReason, describe_exit
from hvdbg.platform.multiboot import spec as mb_spec
from hvdbg.platform.symbols import Symbol
from hvdbg.hv.trace import ExitRecord
from hvdbg.hv.vcpu import Activity, Vcpu
from hvdbg.vmx.vmcs import Vmcs
from hvdbg.vmx.fields import BY_NAME, GROUPS, FieldRef, FieldWidth, UnknownVmcsFieldError, resolve
from hvdbg.vmx.controls import CONTROL_SETS, ControlSet, SegmentAccessRights, control_set

MASK64 = (1 << 64) - 1


class CommandError(HvdbgError):
    """A wrong argument, or a request the VM cannot satisfy in its current state."""


class _Mismatch(CommandError):
    """The word is not of the kind asked for at all (a name where a number goes): when
    binding fails, an error about a right-shaped but wrong value is the better message."""


class Outcome(NamedTuple):
    """What one command line produced: its text, and whether it succeeded."""

    text: str
    ok: bool


# ======================================================================================
# Small formatting helpers
# ======================================================================================

def _size_text(size: int) -> str:
    for unit, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size:#x}"


def _bit_names(value: int, table: Iterable[tuple[int, str]]) -> str:
    return " ".join(name for bit, name in table if value >> bit & 1)


def _table(rows: list[tuple], header: tuple[str, ...], right: set[int] = frozenset()) -> list[str]:
    """Plain text columns; ``right`` holds the indexes of right-aligned columns."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(parts).rstrip())
    return out


def _vectors(bitmap: int) -> str:
    vecs = [f"{v:#04x}" for v in range(256) if bitmap >> v & 1]
    return " ".join(vecs) if vecs else "none"


# Register bit names (SDM Vol. 1 3.4.3 EFLAGS; Vol. 3A 2.5 control registers, 2.2.1 EFER).
RFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
               (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"), (20, "VIP"),
               (21, "ID"))
CR0_BITS = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"), (18, "AM"),
            (29, "NW"), (30, "CD"), (31, "PG"))
CR4_BITS = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"), (7, "PGE"),
            (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"), (12, "LA57"), (13, "VMXE"),
            (14, "SMXE"), (16, "FSGSBASE"), (17, "PCIDE"), (18, "OSXSAVE"), (20, "SMEP"), (21, "SMAP"),
            (22, "PKE"))
EFER_BITS = ((0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE"))


# ======================================================================================
# Argument kinds: how one word becomes a value, and what completes it
# ======================================================================================

def parse_int(text: str) -> int:
    """Hex (0x..), binary (0b..), octal (0o..) or decimal; '_' separators allowed."""
    t = text.strip().replace("_", "")
    try:
        return int(t, 0)
    except ValueError:
        if t.isdigit():
            return int(t, 10)  # "010"
        raise _Mismatch(f"not a number: {text!r}") from None


class Addr(NamedTuple):
    """An evaluated address expression; ``symbol`` is set when it was exactly a symbol."""

    value: int
    symbol: Symbol | None = None


_EXPR = re.compile(r"^(?P<base>[^+\-]+?)(?:(?P<op>[+-])(?P<off>[^+\-]+))?$")
_REG_ALIASES = {"pc": "rip", "sp": "rsp", "eflags": "rflags"}


def eval_address(call: "Call", text: str) -> Addr:
    """``NUMBER``, ``SYMBOL``, ``$reg`` or one of them ``+``/``-`` a number."""
    t = text.strip().lstrip("*").replace(" ", "")
    m = _EXPR.match(t)
    if not m:
        raise CommandError(f"cannot read {text!r} as an address (a number, an ELF symbol or a $register)")
    base, sym = _address_term(call, m["base"])
    if m["op"]:
        off = parse_int(m["off"])
        return Addr((base + off if m["op"] == "+" else base - off) & MASK64)
    return Addr(base & MASK64, sym)


def _address_term(call: "Call", term: str) -> tuple[int, Symbol | None]:
    if term.startswith("/"):
        raise _Mismatch(f"{term!r} is an examine format: it goes right after the command (x/4xg -p ADDR)")
    if term.startswith("$"):
        return call.register(term[1:]), None
    if term[0].isdigit():
        return parse_int(term), None
    sym = call.vm.symbols.lookup(term)
    if sym is None:
        close = difflib.get_close_matches(term, call.vm.symbols.names(), 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CommandError(f"no ELF symbol {term!r} in the kernel{hint}")
    return sym.address, sym


def _parse_vcpu(call: "Call", word: str) -> int:
    if not word.isdigit():
        raise _Mismatch(f"not a vCPU index: {word!r}")
    index = int(word)
    n = len(call.vm.vcpus)
    if index >= n:
        raise CommandError(f"no vCPU {index}: the VM has {n} vCPU{'s' if n > 1 else ''} (0-{n - 1})")
    return index


def _parse_count(call: "Call", word: str) -> int:
    value = parse_int(word)
    if value < 0:
        raise CommandError(f"expected a count >= 0, not {word}")
    return value


class VmcsTarget(NamedTuple):
    """What ``vmcs`` was asked for: a group, one field, or a control set."""

    group: str | None = None
    field: FieldRef | None = None
    controls: ControlSet | None = None


_GROUP_ALIASES = {"guest": "guest", "host": "host", "control": "control", "controls": "control",
                  "ctrl": "control", "exit": "exit", "exit-info": "exit"}


def _parse_vmcs_target(call: "Call", word: str) -> VmcsTarget:
    key = word.lower()
    if key in _GROUP_ALIASES:
        return VmcsTarget(group=_GROUP_ALIASES[key])
    try:
        return VmcsTarget(field=resolve(word))
    except UnknownVmcsFieldError:
        pass
    try:
        return VmcsTarget(controls=control_set(word))
    except KeyError:
        pass
    try:
        return VmcsTarget(field=resolve(parse_int(word)))
    except (UnknownVmcsFieldError, CommandError):
        close = difflib.get_close_matches(word.upper(), list(BY_NAME), 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CommandError(f"unknown VMCS field or group {word!r}{hint}; groups: "
                           f"{', '.join(GROUPS)}") from None


def _parse_reason(call: "Call", word: str) -> ExitReason:
    if word[0].isdigit():
        try:
            return ExitReason(parse_int(word))
        except ValueError:
            raise CommandError(f"{word} is not a basic exit reason of SDM Appendix C") from None
    name = word.upper().replace("-", "_")
    if name in ExitReason.__members__:
        return ExitReason[name]
    close = difflib.get_close_matches(name, list(ExitReason.__members__), 3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CommandError(f"unknown exit reason {word!r}{hint}")


class ExamineFormat(NamedTuple):
    """GDB-style ``/NFU``: count, format letter, unit size in bytes."""

    count: int
    letter: str
    size: int


_UNIT = {"b": 1, "h": 2, "w": 4, "g": 8}
_FORMATS = "xduotcasi"


def _parse_format(call: "Call", word: str) -> ExamineFormat:
    if not word.startswith("/"):
        raise _Mismatch(f"not an examine format: {word!r}")
    m = re.fullmatch(r"/(\d*)([a-z]*)", word)
    if not m:
        raise CommandError(f"not an examine format: {word!r} (expected /NFU, e.g. /8xg)")
    letter, size = "x", None
    for ch in m[2]:
        if ch in _UNIT:
            size = _UNIT[ch]
        elif ch in _FORMATS:
            letter = ch
        else:
            raise CommandError(f"unknown letter {ch!r} in {word!r}: formats {_FORMATS}, sizes bhwg")
    default_size = {"a": 8, "c": 1}.get(letter, 4)
    return ExamineFormat(int(m[1]) if m[1] else 1, letter, size or default_size)


def _choice(*words: str) -> Callable[["Call", str], str]:
    def parse(call: "Call", word: str) -> str:
        if word.lower() in words:
            return word.lower()
        raise _Mismatch(f"expected {' or '.join(words)}, not {word!r}")
    return parse


@dataclass(frozen=True)
class Kind:
    """How a word is read, and the candidates offered for completion."""

    parse: Callable[["Call", str], Any]
    candidates: Callable[["CommandContext"], Iterable[str]] = lambda ctx: ()


KINDS: dict[str, Kind] = {
    "vcpu": Kind(_parse_vcpu, lambda ctx: [str(v.index) for v in ctx.vm.vcpus]),
    "count": Kind(_parse_count),
    "number": Kind(lambda call, w: parse_int(w)),
    "address": Kind(eval_address, lambda ctx: ctx.vm.symbols.names()),
    "vmcs": Kind(_parse_vmcs_target,
                 lambda ctx: list(GROUPS) + [c.name for c in CONTROL_SETS] + list(BY_NAME)),
    "reason": Kind(_parse_reason, lambda ctx: list(ExitReason.__members__)),
    "format": Kind(_parse_format),
    "access": Kind(_choice("read", "write", "fetch"), lambda ctx: ["read", "write", "fetch"]),
    "all": Kind(_choice("all"), lambda ctx: ["all"]),
    "phys": Kind(_choice("-p", "--phys"), lambda ctx: ["-p"]),
    "exit": Kind(_choice("exit"), lambda ctx: ["exit"]),
    "word": Kind(lambda call, w: w),
    "command": Kind(lambda call, w: w, lambda ctx: sorted({c.name.split()[0] for c in COMMANDS})),
}


# ======================================================================================
# The registry's data types and argument binding
# ======================================================================================

@dataclass(frozen=True)
class Param:
    """One argument: its name (key in the handler's dict), kind, and shape."""

    name: str
    kind: str
    optional: bool = False
    many: bool = False          # takes every remaining word (a list)
    metavar: str = ""

    @property
    def usage(self) -> str:
        text = self.metavar or self.name.upper()
        if self.many:
            text += "..."
        return f"[{text}]" if self.optional else text


Handler = Callable[["Call", dict[str, Any]], str]


@dataclass(frozen=True)
class Command:
    """One command of the registry."""

    name: str                       # one or two words: "vmcs", "ept walk"
    params: tuple[Param, ...]
    summary: str
    handler: Handler
    details: str = ""
    category: str = "inspect"
    monitor: bool = True            # also available through gdb's "monitor"
    aliases: tuple[str, ...] = ()

    @property
    def usage(self) -> str:
        return " ".join([self.name, *(p.usage for p in self.params)])


def bind(call: "Call", params: tuple[Param, ...], words: list[str]) -> dict[str, Any]:
    """Match words to parameters, trying each optional parameter before skipping it.
    The error reported is the first of those that got furthest, preferring a wrong value
    ("no vCPU 7") to a wrong kind of word ("not a number") to "unexpected argument"."""
    failures: list[tuple[int, int, str]] = []

    def failed(wi: int, e: CommandError) -> None:
        failures.append((wi, 1 if isinstance(e, _Mismatch) else 2, str(e)))

    def go(pi: int, wi: int, acc: dict[str, Any]) -> dict[str, Any] | None:
        if pi == len(params):
            if wi == len(words):
                return acc
            failures.append((wi, 0, f"unexpected argument {words[wi]!r}"))
            return None
        p = params[pi]
        kind = KINDS[p.kind]
        if p.many:
            rest = words[wi:]
            if not rest and not p.optional:
                failures.append((wi, 0, f"missing {p.metavar or p.name.upper()}"))
                return None
            values = []
            for i, w in enumerate(rest):
                try:
                    values.append(kind.parse(call, w))
                except CommandError as e:
                    failed(wi + i, e)
                    return None
            return {**acc, p.name: values}
        if wi < len(words):
            try:
                value = kind.parse(call, words[wi])
            except CommandError as e:
                failed(wi, e)
            else:
                found = go(pi + 1, wi + 1, {**acc, p.name: value})
                if found is not None:
                    return found
        elif not p.optional:
            failures.append((wi, 0, f"missing {p.metavar or p.name.upper()}"))
        if p.optional:
            return go(pi + 1, wi, {**acc, p.name: None})
        return None

    found = go(0, 0, {})
    if found is None:
        best = max(f[:2] for f in failures)
        raise CommandError(next(f[2] for f in failures if f[:2] == best))
    return found


def _next_params(call: "Call", params: tuple[Param, ...], words: list[str]) -> set[int]:
    """Indexes of the parameters the word after ``words`` could fill (for completion)."""
    out: set[int] = set()

    def go(pi: int, wi: int) -> None:
        if pi == len(params):
            return
        p = params[pi]
        if wi == len(words) or p.many:
            j = pi
            while j < len(params):
                out.add(j)
                if not params[j].optional or params[j].many:
                    break
                j += 1
            return
        try:
            KINDS[p.kind].parse(call, words[wi])
        except Exception:  # noqa: BLE001 - completion must never fail
            pass
        else:
            go(pi + 1, wi + 1)
        if p.optional:
            go(pi + 1, wi)

    go(0, 0)
    return out


def split_line(line: str) -> list[str]:
    """Words of a command line; ``x/8xg ADDR`` is ``x /8xg ADDR``."""
    words = line.split()
    if words and "/" in words[0] and not words[0].startswith("/"):
        head, _, fmt = words[0].partition("/")
        words[0:1] = [head, "/" + fmt]
    return words


# ======================================================================================
# Context: state shared by the commands of one shell (and its gdb monitors)
# ======================================================================================

@dataclass
class Breakpoint:
    """A breakpoint set by a command: on an address (a scope of vCPUs) or on a VM exit."""

    number: int
    address: int | None = None
    scope: frozenset[int] | None = None
    reason: ExitReason | None = None

    def describe(self, vm) -> str:
        if self.reason is not None:
            return f"VM exit {self.reason.name} ({int(self.reason)}), any vCPU"
        who = "all vCPUs" if self.scope is None else "vCPU " + ",".join(map(str, sorted(self.scope)))
        return f"{vm.symbolize(self.address)}, {who}"


@dataclass
class Call:
    """One command invocation: the context, where it comes from, and its default vCPU."""

    ctx: "CommandContext"
    origin: str            # "shell" or "monitor"
    default_vcpu: int

    @property
    def vm(self):
        return self.ctx.vm

    @property
    def session(self) -> DebugSession:
        return self.ctx.session

    def vcpu(self, index: int | None) -> Vcpu:
        return self.vm.vcpus[self.default_vcpu if index is None else index]

    def require_stopped(self, v: Vcpu) -> None:
        if not self.ctx.is_stopped(v):
            raise CommandError(f"vCPU {v.index} is running; 'stop' the VM first")

    def register(self, name: str) -> int:
        v = self.vcpu(None)
        self.require_stopped(v)
        regs = v.registers()
        key = _REG_ALIASES.get(name.lower(), name.lower())
        if key in regs:
            return regs[key]
        wide = "r" + key[1:] if len(key) == 3 and key.startswith("e") else None
        if wide in regs:
            return regs[wide] & 0xFFFFFFFF
        raise CommandError(f"no register ${name}; known: {', '.join(sorted(regs))}")

    def read_virtual(self, v: Vcpu, addr: int, size: int) -> bytes:
        try:
            return v.read_linear(addr, size)
        except GuestFault as e:
            raise CommandError(f"cannot read {size} bytes at GVA {addr:#x} on vCPU {v.index}: {e.why}") from None
        except (GuestMemoryError, ValueError) as e:
            raise CommandError(f"cannot read {size} bytes at GVA {addr:#x} on vCPU {v.index}: {e}") from None

    def read_physical(self, addr: int, size: int) -> bytes:
        try:
            return self.vm.memory.read(addr, size)
        except GuestMemoryError as e:
            raise CommandError(f"cannot read {size} bytes at GPA {addr:#x}: {e}") from None


class CommandContext:
    """The commands' view of one debug session.

    ``background``: ``run``/``continue`` return at once and the VM runs while the user
    types (the interactive shell); otherwise they wait for the next stop (scripts,
    ``-c``).  One context may serve the shell and gdb's monitor at the same time.
    """

    def __init__(self, session: DebugSession, *, background: bool = False,
                 wait_timeout: float | None = None) -> None:
        self.session = session
        self.vm = session.vm
        self.background = background
        self.wait_timeout = wait_timeout if wait_timeout is not None else self.vm.config["budget.seconds"] + 30
        self.current = 0
        self.breakpoints: dict[int, Breakpoint] = {}
        self._next_number = 1
        self.quit_requested = False
        self._lock = threading.RLock()
        self._events: queue.Queue[Stop] | None = None
        self.boot_info_at_attach, self.boot_info_attached_early = _snapshot_boot_info(self.vm)
        self._lookup = _command_lookup()

    # -- state -------------------------------------------------------------------------
    def is_stopped(self, v: Vcpu) -> bool:
        """True when the vCPU's engine is not running (parked by the debugger, never
        started, or the VM is over)."""
        control = self.session.control
        return not self.session.running or (v.index in control.parked and control.is_paused(v))

    def vm_state(self) -> str:
        if self.vm.ended:
            return "ended"
        if all(self.is_stopped(v) for v in self.vm.vcpus):
            return "stopped"
        return "running"

    def events(self) -> "queue.Queue[Stop]":
        """This context's stop-event queue (subscribed on first use)."""
        if self._events is None:
            self._events = self.session.subscribe()
        return self._events

    def drain_events(self) -> None:
        q = self.events()
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                return

    def wait_for_stop(self, timeout: float, want: Callable[[Stop], bool] = lambda s: True) -> Stop | None:
        q = self.events()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                stop = q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if stop.kind is StopKind.ENDED or want(stop):
                return stop

    @contextlib.contextmanager
    def parked(self) -> Iterator[None]:
        """Run a block with every vCPU parked (hooks are edited only then), then let
        the VM run again if it was running."""
        was_running = self.vm_state() == "running"
        if was_running:
            self.session.stop()
        try:
            yield
        finally:
            if was_running:
                self.session.resume()

    def add_breakpoint(self, bp: Breakpoint) -> Breakpoint:
        bp.number = self._next_number
        self._next_number += 1
        self.breakpoints[bp.number] = bp
        return bp

    def exit_reasons(self) -> set[int]:
        return {int(b.reason) for b in self.breakpoints.values() if b.reason is not None}

    def breakpoint_at(self, vcpu: int | None, address: int | None) -> Breakpoint | None:
        for bp in self.breakpoints.values():
            if bp.address == address and (bp.scope is None or vcpu in bp.scope):
                return bp
        return None

    # -- execution ---------------------------------------------------------------------
    def find(self, words: list[str]) -> tuple[Command, list[str]]:
        """The command named by the first one or two words, and the remaining words."""
        if len(words) >= 2:
            cmd = self._lookup.get(f"{words[0]} {words[1]}".lower())
            if cmd is not None:
                return cmd, words[2:]
        cmd = self._lookup.get(words[0].lower())
        if cmd is not None:
            return cmd, words[1:]
        subs = sorted(n for n in self._lookup if n.startswith(words[0].lower() + " "))
        if subs:
            raise CommandError(f"'{words[0]}' needs a subcommand: {', '.join(subs)}")
        close = difflib.get_close_matches(words[0].lower(), list(self._lookup), 3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CommandError(f"unknown command {words[0]!r}{hint}; 'help' lists the commands")

    def execute(self, line: str, *, vcpu: int | None = None, origin: str = "shell") -> Outcome:
        """Run one command line; errors come back as one 'error: ...' line."""
        words = split_line(line)
        if not words:
            return Outcome("", True)
        try:
            cmd, rest = self.find(words)
            if origin == "monitor" and not cmd.monitor:
                raise CommandError(f"'{cmd.name}' is not available through gdb's monitor "
                                   "(gdb controls running and stepping itself)")
            call = Call(self, origin, self.current if vcpu is None else vcpu)
            args = bind(call, cmd.params, rest)
            if args.get("vcpu") is not None and args["vcpu"] != call.default_vcpu:
                call = Call(self, origin, args["vcpu"])   # $registers of the vCPU named
                args = bind(call, cmd.params, rest)
            with self._lock:
                text = cmd.handler(call, args)
            return Outcome(text.rstrip("\n"), True)
        except GuestFault as e:
            return Outcome(f"error: {e.why}", False)
        except HvdbgError as e:
            return Outcome("error: " + " ".join(str(e).split()), False)
        except Exception as e:  # noqa: BLE001 - a command must never show a traceback
            return Outcome(f"error: internal error in {words[0]!r}: {type(e).__name__}: "
                           + " ".join(str(e).split()), False)

    def monitor(self, line: str, vcpu: Vcpu | None) -> str:
        """GDB's ``monitor LINE`` with gdb's current thread as the default vCPU."""
        out = self.execute(line, vcpu=None if vcpu is None else vcpu.index, origin="monitor")
        return out.text + "\n"

    def complete(self, text: str) -> tuple[list[str], int]:
        """Candidates for the word being typed at the end of ``text``, and its length."""
        words = split_line(text)
        partial = "" if not words or text[-1:].isspace() else words.pop()
        try:
            names = self._candidates(words)
        except Exception:  # noqa: BLE001 - completion must never fail
            names = []
        low = partial.lower()
        found = sorted({n for n in names if n.lower().startswith(low)},
                       key=lambda n: (not n.startswith(partial), n))
        return found, len(partial)

    def _candidates(self, words: list[str]) -> list[str]:
        if not words:
            return sorted({n.split()[0] for n in self._lookup})
        if len(words) == 1:
            subs = [n.split()[1] for n in self._lookup if n.startswith(words[0].lower() + " ")]
            if words[0].lower() not in self._lookup:
                return subs
        else:
            subs = []
        cmd, rest = self.find(words)
        call = Call(self, "shell", self.current)
        names = list(subs) if not rest else []
        for index in _next_params(call, cmd.params, rest):
            names += list(KINDS[cmd.params[index].kind].candidates(self))
        return names


def make_monitor(session: DebugSession) -> Callable[[str, Vcpu], str]:
    """The function the GDB stub calls for ``monitor LINE`` (qRcmd)."""
    return CommandContext(session).monitor


def _snapshot_boot_info(vm) -> tuple[dict | None, bool]:
    """The multiboot information as the loader left it (when read before the guest ran)."""
    boot = vm.boot
    try:
        info = multiboot.parse_info(vm.memory, boot.ebx, boot.version)
    except (GuestMemoryError, ValueError):
        info = None
    return info, vm.total_instructions() == 0


# ======================================================================================
# Stops
# ======================================================================================

def describe_ending(vm) -> str:
    e = vm.ending
    if e is None:
        return "the VM is still running"
    text = f"the VM ended: outcome {e.outcome}"
    if e.status is not None:
        text += f", exit status {e.status}"
    return text + (f" ({e.detail})" if e.detail else "")


def _exit_sentence(v: Vcpu) -> str:
    info = v.last_exit
    if info is None:
        return "no VM exit yet"
    extra: dict[str, int] = {}
    for key, value in (("gpa", info.guest_physical), ("gla", info.guest_linear),
                       ("intr_info", info.interruption_info or None), ("error_code", info.interruption_error),
                       ("msr", info.extra.get("msr"))):
        if value is not None:
            extra[key] = value
    return describe_exit(int(info.reason), info.qualification, **extra)


def describe_stop(ctx: CommandContext, stop: Stop) -> str:
    """One line for a stop event (shared by ``continue`` and the shell's notifier)."""
    vm = ctx.vm
    if stop.kind is StopKind.ENDED:
        return describe_ending(vm)
    if stop.vcpu is None:
        return f"stopped ({stop.kind.value})"
    v = vm.vcpus[stop.vcpu]
    where = vm.symbolize(v.uc.reg_read(X.UC_X86_REG_RIP))
    if stop.kind is StopKind.BREAKPOINT:
        bp = ctx.breakpoint_at(stop.vcpu, stop.address)
        label = f"breakpoint {bp.number}" if bp else "a breakpoint"
        return f"vCPU {v.index} hit {label} at {where}"
    if stop.kind is StopKind.EXIT_BREAK:
        info = v.last_exit
        at = vm.symbolize(info.rip) if info else where
        return f"vCPU {v.index} stopped on VM exit {stop.detail} at {at}: {_exit_sentence(v)}"
    if stop.kind is StopKind.WATCHPOINT:
        return f"vCPU {v.index} hit a {stop.watch} watchpoint on {stop.address:#x} at {where}: {stop.detail}"
    if stop.kind is StopKind.STEP:
        return f"vCPU {v.index} stepped to {where}"
    return f"vCPU {v.index} interrupted at {where}"


# ======================================================================================
# Handlers: VMX
# ======================================================================================

_CONTROL_FIELDS = {cs.field: cs for cs in CONTROL_SETS}
_WIDTH_TEXT = {FieldWidth.BIT16: "16-bit", FieldWidth.BIT32: "32-bit", FieldWidth.BIT64: "64-bit",
               FieldWidth.NATURAL: "natural-width"}
_GROUP_TEXT = {"guest": "guest-state", "host": "host-state", "control": "control",
               "exit": "VM-exit information"}


def _sync_vmcs(call: Call, v: Vcpu) -> bool:
    """Bring the VMCS guest-state area up to date when the vCPU is stopped."""
    if call.ctx.is_stopped(v):
        v.save_guest_state()
        return True
    return False


def _opt_hex(value: int | None, digits: int) -> str:
    return "-" if value is None else f"{value:#0{digits + 2}x}"


def _format_vmcs_sections(vmcs: Vmcs, groups: list[str], show_all: bool, vcpu: int) -> list[str]:
    """KVM dump_vmcs-like rendering with encodings; control fields bit by bit."""
    lines: list[str] = []
    for section in vmcs.dump(groups):
        lines.append(f"*** {section.title} ***")
        segs = [s for s in section.segments
                if show_all or any((s.selector, s.access_rights, s.limit, s.base))]
        if segs:
            lines += _table([(s.name, _opt_hex(s.selector, 4), _opt_hex(s.access_rights, 5),
                              _opt_hex(s.limit, 8), _opt_hex(s.base, 16), s.note) for s in segs],
                            ("seg", "selector", "AR", "limit", "base", ""))
        hidden = 0
        for row in section.fields:
            controls = _CONTROL_FIELDS.get(row.name)
            if row.value == 0 and not show_all and controls is None:
                hidden += 1
                continue
            value = f"{row.value:#0{row.bits // 4 + 2}x}"
            note = "" if controls else row.note
            lines.append(f"{row.name:<32} {row.encoding:#06x} = {value}" + (f"  {note}" if note else ""))
            if controls is not None:
                bits = [b for b in controls.decode(row.value) if b.set]
                lines += [f"    bit {b.bit:2d}  {b.name}" for b in bits] or ["    (no control set)"]
        if hidden:
            lines.append(f"    ({hidden} zero fields hidden; 'vmcs {vcpu} {section.group} all' lists them)")
    return lines


def _format_vmcs_field(vmcs: Vmcs, ref: FieldRef) -> list[str]:
    f = ref.field
    encoding = f.high_encoding if ref.high else f.encoding
    value = vmcs.read(encoding)
    bits = 32 if ref.high else f.bits
    name = f.name + ("_HIGH" if ref.high else "")
    lines = [f"{name} (encoding {encoding:#06x}, {_WIDTH_TEXT[f.width]} {_GROUP_TEXT[f.group]} field): "
             f"{f.description}",
             f"  = {value:#0{bits // 4 + 2}x}"]
    controls = _CONTROL_FIELDS.get(f.name)
    if controls is not None and not ref.high:
        lines += [f"  [{'x' if b.set else ' '}] bit {b.bit:2d}  {b.name}" for b in controls.decode(value)]
        return lines
    if f.name.endswith("_AR_BYTES"):
        lines.append("  " + SegmentAccessRights.decode(value).describe())
        return lines
    for section in vmcs.dump([f.group]):
        for row in section.fields:
            if row.name == f.name and row.note and not ref.high:
                lines.append(f"  {row.note}")
    return lines


def cmd_vmcs(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    fresh = _sync_vmcs(call, v)
    vmcs = v.vmcs
    state = ("guest state saved from the stopped vCPU" if fresh
             else "vCPU running: guest state as of its last VM exit")
    lines = [f"vCPU {v.index} VMCS: revision id {vmcs.revision_id:#x}, launch state "
             f"{vmcs.launch_state.value}; {state}"]
    target: VmcsTarget | None = a["target"]
    show_all = a["all"] is not None
    if target is not None and target.field is not None:
        return "\n".join(lines + _format_vmcs_field(vmcs, target.field))
    if target is not None and target.controls is not None:
        return "\n".join(lines + _format_vmcs_field(vmcs, resolve(target.controls.field)))
    groups = list(GROUPS) if target is None else [target.group]
    lines += _format_vmcs_sections(vmcs, groups, show_all, v.index)
    if "exit" in groups and v.last_exit is not None:
        info = v.last_exit
        lines.append(f"last VM exit: {info.reason.name} ({int(info.reason)}) at "
                     f"{call.vm.symbolize(info.rip)}: {_exit_sentence(v)}")
    return "\n".join(lines)


def _eptp_line(ept) -> str:
    p = ept_mod.EptPointer.from_raw(ept.eptp)
    try:
        mt = ept_mod.MemType(p.memtype).name
    except ValueError:
        mt = str(p.memtype)
    problems = ept_mod.eptp_problems(ept.eptp)
    return (f"EPTP {ept.eptp:#x}: PML4 at HPA {p.pml4_hpa:#x}, {p.walk_length}-level walk, "
            f"paging-structure memory type {mt}, accessed/dirty flags {'on' if p.ad_enabled else 'off'}"
            + (f"; INVALID: {'; '.join(problems)}" if problems else ""))


def cmd_ept_walk(call: Call, a: dict) -> str:
    ept = call.vm.memory.ept
    gpa = a["gpa"]
    if not 0 <= gpa < 1 << 52:
        raise CommandError(f"GPA {gpa:#x} is beyond the 52-bit physical address space")
    walk = ept.walk(gpa)
    lines = [_eptp_line(ept)] + ept_mod.format_walk(walk)
    if walk.ok:
        verdicts = [f"{acc} {'EPT violation' if walk.is_violation(acc) else 'allowed'}"
                    for acc in ("read", "write", "fetch")]
        lines.append("  accesses: " + ", ".join(verdicts))
    return "\n".join(lines)


def cmd_ept_map(call: Call, a: dict) -> str:
    ept = call.vm.memory.ept
    ranges = ept.mapped_ranges()
    lines = [_eptp_line(ept), f"{'GPA range':<29} -> {'HPA':<14} perm type size"]
    lines += ept_mod.format_ranges(ranges)
    lines.append(f"{len(ranges)} mapped run{'s' if len(ranges) != 1 else ''}, "
                 f"{_size_text(sum(r.gpa_end - r.gpa_start for r in ranges))} mapped, "
                 f"{len(ept.table_pages())} EPT table pages")
    return "\n".join(lines)


# ======================================================================================
# Handlers: guest paging
# ======================================================================================

def _mode_line(v: Vcpu) -> tuple[str, paging.PagingMode]:
    r = v.control_regs()
    mode = paging.paging_mode(r["cr0"], r["cr4"], r["efer"])
    return (f"vCPU {v.index}: CR0 {r['cr0']:#x} CR3 {r['cr3']:#x} CR4 {r['cr4']:#x} EFER {r['efer']:#x}"
            f" -> {mode.value} paging" + (" (off)" if mode is paging.PagingMode.NONE else ""), mode)


def cmd_pt_walk(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    gva = a["gva"].value
    header, _mode = _mode_line(v)
    try:
        walk = v.page_walk(gva, a["access"] or "read")
    except ValueError as e:
        raise CommandError(str(e)) from None
    lines = [header] + paging.format_walk(walk)
    tables = []
    for lv in walk.levels:
        table_gpa = lv.entry_gpa - lv.index * lv.entry_size
        hpa = call.vm.memory.translate(table_gpa)
        tables.append(f"{paging.TABLE_NAMES[lv.name]} GPA {table_gpa:#x} -> "
                      + (f"HPA {hpa:#x}" if hpa is not None else "not mapped by the EPT"))
    if tables:
        lines.append("  paging structures through the EPT: " + "; ".join(tables))
    sym = call.vm.symbols.symbolize(walk.gva)
    gva_text = f"GVA {walk.gva:#x}" + (f" <{sym}>" if sym else "")
    if walk.gpa is None:
        lines.append(f"{gva_text} does not translate: {walk.reason}")
        return "\n".join(lines)
    ew = call.vm.memory.ept.walk(walk.gpa)
    lines += ept_mod.format_walk(ew)
    lines.append(f"{gva_text} -> GPA {walk.gpa:#x} -> "
                 + (f"HPA {ew.hpa:#x}" if ew.ok else f"no HPA (EPT: {ew.reason})"))
    return "\n".join(lines)


def cmd_pt_map(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    r = v.control_regs()
    limit = a["count"] or 256
    header, _mode = _mode_line(v)
    ranges = paging.mapped_ranges(call.vm.memory.read, r["cr0"], r["cr3"], r["cr4"], r["efer"], limit)
    rows = []
    for rg in ranges:
        sym = call.vm.symbols.symbolize(rg.gva_start)
        rows.append((f"{rg.gva_start:#018x}-{rg.gva_end - 1:#018x}", f"{rg.gpa_start:#014x}",
                     _size_text(rg.gva_end - rg.gva_start), paging.flag_string(rg.flags),
                     f"<{sym}>" if sym else ""))
    lines = [header] + _table(rows, ("GVA range", "-> GPA", "size", "flags", ""), right={2})
    lines.append(f"{len(ranges)} mapped range{'s' if len(ranges) != 1 else ''}"
                 + (f" (first {limit} shown)" if len(ranges) >= limit else ""))
    return "\n".join(lines)


# ======================================================================================
# Handlers: multiboot
# ======================================================================================

def cmd_mb(call: Call, a: dict) -> str:
    vm = call.vm
    boot = vm.boot
    lines = [f"kernel {vm.kernel_path} ({len(vm.kernel_image)} bytes)"]
    lines += multiboot.format_boot_info(boot)
    expected = mb_spec.BOOTLOADER_MAGIC[boot.version]
    lines.append(f"entry: EAX {boot.eax:#x} (the spec requires {expected:#x}), EBX {boot.ebx:#x}")
    lines.append("  " + multiboot.describe_magic(boot.eax, boot.version))
    before = call.ctx.boot_info_at_attach
    try:
        now = multiboot.parse_info(vm.memory, boot.ebx, boot.version)
    except GuestMemoryError as e:
        now = None
        lines.append(f"boot information at {boot.ebx:#x} is unreadable now: {e}")
    if before is not None and call.ctx.boot_info_attached_early:
        lines.append("boot information as the loader built it:")
        lines += ["  " + s for s in multiboot.format_info(before)]
        if now is not None and now != before:
            lines.append(f"the guest has overwritten it since ({boot.info_range[0]:#x}-"
                         f"{boot.info_range[1]:#x}); what is there now:")
            lines += ["  " + s for s in multiboot.format_info(now)]
    elif now is not None:
        lines.append("boot information as it is now in guest memory:")
        lines += ["  " + s for s in multiboot.format_info(now)]
    return "\n".join(lines)


# ======================================================================================
# Handlers: CPU state, memory, code
# ======================================================================================

def cmd_regs(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    r = v.registers()
    segs = ucx.read_segments(v.uc)
    lines = [f"vCPU {v.index} (APIC id {v.apic_id}): activity {v.activity.label}, {v.code_bits()}-bit code, "
             f"CPL {v.cpl()}"]
    gprs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
    for i in range(0, 16, 4):
        lines.append("  ".join(f"{n:<3} {r[n]:#018x}" for n in gprs[i:i + 4]))
    lines.append(f"rip {call.vm.symbolize(r['rip'])}")
    lines.append(f"rflags {r['rflags']:#x} [{_bit_names(r['rflags'], RFLAGS_BITS)}] IOPL {r['rflags'] >> 12 & 3}")
    lines.append("  ".join(f"{n} {segs[n].selector:#06x}" for n in ("cs", "ss", "ds", "es", "fs", "gs"))
                 + f"  fs_base {r['fs_base']:#x}  gs_base {r['gs_base']:#x}")
    lines.append(f"cr0 {r['cr0']:#x} [{_bit_names(r['cr0'], CR0_BITS)}]  cr2 {r['cr2']:#x}  "
                 f"cr3 {r['cr3']:#x}  cr4 {r['cr4']:#x} [{_bit_names(r['cr4'], CR4_BITS)}]  cr8 {r['cr8']:#x}")
    lines.append(f"efer {r['efer']:#x} [{_bit_names(r['efer'], EFER_BITS)}]")
    gdtr, idtr = v.get_table("gdtr"), v.get_table("idtr")
    lines.append(f"gdtr {gdtr[0]:#x} limit {gdtr[1]:#x}  idtr {idtr[0]:#x} limit {idtr[1]:#x}  "
                 f"tr {segs['tr'].selector:#06x}  ldtr {segs['ldtr'].selector:#06x}")
    return "\n".join(lines)


def _hexdump(base: int, data: bytes, label: Callable[[int], str]) -> list[str]:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{label(base + off)}: {hexes:<47}  |{text}|")
    return lines


def _units(base: int, data: bytes, fmt: ExamineFormat, label: Callable[[int], str], vm) -> list[str]:
    size = fmt.size
    per_row = max(1, 16 // size) if fmt.letter not in "ca" else (8 if fmt.letter == "c" else 2)
    values = []
    for off in range(0, len(data) - size + 1, size):
        raw = int.from_bytes(data[off:off + size], "little")
        values.append(_unit_text(raw, size, fmt.letter, vm))
    lines = []
    for i in range(0, len(values), per_row):
        lines.append(f"{label(base + i * size)}: " + "  ".join(values[i:i + per_row]))
    return lines


def _unit_text(raw: int, size: int, letter: str, vm) -> str:
    bits = 8 * size
    if letter == "d":
        return str(raw - (1 << bits) if raw >> (bits - 1) else raw)
    if letter == "u":
        return str(raw)
    if letter == "o":
        return f"{raw:#o}"
    if letter == "t":
        return f"{raw:0{bits}b}"
    if letter == "c":
        return repr(chr(raw & 0xFF)) if 32 <= raw & 0xFF < 127 else f"{raw & 0xFF:#04x}"
    if letter == "a":
        return vm.symbolize(raw)
    return f"{raw:#0{2 + 2 * size}x}"


def cmd_x(call: Call, a: dict, physical: bool = False) -> str:
    physical = physical or a.get("phys") is not None
    v = call.vcpu(a["vcpu"])
    addr = a["addr"].value
    fmt: ExamineFormat | None = a["format"]
    if physical:
        read = call.read_physical
    else:
        call.require_stopped(v)
        read = lambda at, n: call.read_virtual(v, at, n)  # noqa: E731

    def label(at: int) -> str:
        sym = None if physical else call.vm.symbols.symbolize(at)
        return f"{at:#018x}" + (f" <{sym}>" if sym else "")

    if fmt is None:
        return "\n".join(_hexdump(addr, read(addr, 64), label))
    if fmt.count > 4096:
        raise CommandError("at most 4096 units at a time")
    if fmt.letter == "i":
        if physical:
            raise CommandError("/i disassembles guest-virtual code: use 'disas' or 'x/i' without -p")
        return cmd_disas(call, {"addr": Addr(addr), "count": fmt.count, "vcpu": a["vcpu"]})
    if fmt.letter == "s":
        lines = []
        at = addr
        for _ in range(fmt.count):
            data = b""
            while len(data) < 4096:
                chunk = read(at + len(data), 1)
                if chunk == b"\0":
                    break
                data += chunk
            lines.append(f"{label(at)}: {data.decode('latin-1')!r}")
            at += len(data) + 1
        return "\n".join(lines)
    data = read(addr, fmt.count * fmt.size)
    return "\n".join(_units(addr, data, fmt, label, call.vm))


_HEX_IMM = re.compile(r"0x[0-9a-f]{5,}")


def _annotate(vm, insn) -> str:
    """' <sym>' for a branch target or a RIP-relative operand that has a symbol."""
    notes = []
    for op in insn.operands:
        if op.type == capstone.x86.X86_OP_MEM and op.mem.base == capstone.x86.X86_REG_RIP:
            target = (insn.address + insn.size + op.mem.disp) & MASK64
            notes.append(f"# {vm.symbolize(target)}")
    if not notes:
        for text in _HEX_IMM.findall(insn.op_str):
            sym = vm.symbols.symbolize(int(text, 16))
            if sym:
                notes.append(f"<{sym}>")
    return ("  " + " ".join(notes)) if notes else ""


def cmd_disas(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    call.require_stopped(v)
    rip = v.uc.reg_read(X.UC_X86_REG_RIP)
    addr: Addr | None = a["addr"]
    start = rip if addr is None else addr.value
    count = a["count"]
    end = None
    if count is None and addr is not None and addr.symbol is not None and addr.symbol.size:
        end = start + addr.symbol.size
        count = min(addr.symbol.size, 1000)
    count = count or 12
    if count > 1000:
        raise CommandError("at most 1000 instructions at a time")
    insns = v.decode(start, count)
    if end is not None:
        insns = [i for i in insns if i.address < end]
    if not insns:
        raise CommandError(f"cannot read code at {start:#x} on vCPU {v.index} "
                           f"(not mapped in its page tables, or not an instruction)")
    labels = []
    for insn in insns:
        sym = call.vm.symbols.symbolize(insn.address)
        labels.append(f"{insn.address:#018x}" + (f" <{sym}>:" if sym else ":"))
    width = max(len(label) for label in labels)
    lines = [f"vCPU {v.index}, {v.code_bits()}-bit code:"]
    for insn, label in zip(insns, labels):
        mark = "=>" if insn.address == rip else "  "
        text = f"{insn.mnemonic} {insn.op_str}".rstrip()
        lines.append(f"{mark} {label:<{width}}  {insn.bytes.hex(' '):<30} {text}{_annotate(call.vm, insn)}")
    return "\n".join(lines)


def cmd_vcpus(call: Call, a: dict) -> str:
    vm = call.vm
    rows = []
    for v in vm.vcpus:
        s = vm.vcpu_summary(v)
        stopped = call.ctx.is_stopped(v)
        rows.append((v.index, v.apic_id, s["state"], "-" if s["pcpu"] is None else s["pcpu"],
                     "stopped" if stopped else "running",
                     f"{v.code_bits()}-bit" if stopped else "-",
                     vm.symbolize(s["rip"]), s["instructions"], s["exits"],
                     f"SIPI {v.sipi_vector:#04x}" if v.started_by_sipi and v.sipi_vector is not None
                     else ("SIPI" if v.started_by_sipi else ("BSP" if v.bsp else ""))))
    lines = _table(rows, ("vCPU", "APIC", "activity", "pCPU", "debugger", "mode", "RIP", "instructions",
                          "exits", "start"), right={0, 1, 3, 7, 8})
    if vm.ended:
        lines.append(describe_ending(vm))
    return "\n".join(lines)


# ======================================================================================
# Handlers: exits and breakpoints
# ======================================================================================

def _exit_line(vm, rec: ExitRecord) -> str:
    text = rec.detail or describe_exit(rec.reason, rec.qualification)
    return (f"{rec.seq:>7} {rec.vcpu:>4}  {rec.reason_name:<18} {vm.symbolize(rec.rip):<42} "
            f"{rec.qualification:#10x}  {text}")


def cmd_exits(call: Call, a: dict) -> str:
    vm = call.vm
    trace = vm.trace
    n = 20 if a["count"] is None else a["count"]
    reason: ExitReason | None = a["reason"]
    lines = []
    if n:
        recs = trace.last(n, a["vcpu"], reason.name if reason else None)
        lines.append(f"{'seq':>7} {'vCPU':>4}  {'reason':<18} {'RIP':<42} {'qual':>10}  detail")
        lines += [_exit_line(vm, r) for r in recs]
        if not recs:
            lines.append("  (no matching exits)")
        lines.append("")
    counts = trace.counts.most_common()
    total = trace.total
    ids = sorted(trace.per_vcpu)
    rows = [(name, count, f"{100.0 * count / total:.1f}" if total else "0.0",
             *(trace.per_vcpu[i].get(name, 0) for i in ids)) for name, count in counts]
    rows.append(("total", total, "100.0" if total else "0.0",
                 *(sum(trace.per_vcpu[i].values()) for i in ids)))
    lines += _table(rows, ("exit reason", "total", "%", *(f"vCPU{i}" for i in ids)),
                    right=set(range(1, 3 + len(ids))))
    return "\n".join(lines)


def cmd_break_exit(call: Call, a: dict) -> str:
    ctx = call.ctx
    reasons: list[ExitReason] = a["reasons"]
    if not reasons:
        return _list_breakpoints(call)
    out = []
    for reason in reasons:
        if int(reason) in ctx.exit_reasons():
            out.append(f"already breaking on VM exit {reason.name}")
            continue
        bp = ctx.add_breakpoint(Breakpoint(0, reason=reason))
        out.append(f"breakpoint {bp.number}: stop the VM on VM exit {reason.name} ({int(reason)})")
    call.session.set_exit_breakpoints(ctx.exit_reasons())
    return "\n".join(out)


def cmd_break(call: Call, a: dict) -> str:
    if a["addr"] is None:
        return _list_breakpoints(call)
    ctx = call.ctx
    address = a["addr"].value
    scope = None if a["vcpu"] is None else frozenset({a["vcpu"]})
    with ctx.parked():
        call.session.add_breakpoint(address, scope)
    bp = ctx.add_breakpoint(Breakpoint(0, address=address, scope=scope))
    return f"breakpoint {bp.number} at {bp.describe(call.vm)}"


def _list_breakpoints(call: Call) -> str:
    ctx = call.ctx
    lines = [f"{bp.number:>3}  {bp.describe(call.vm)}" for bp in ctx.breakpoints.values()]
    ours = {(bp.address, bp.scope) for bp in ctx.breakpoints.values() if bp.address is not None}
    for (address, scope), _bp in list(call.session.breakpoints.items()):
        full = len(scope) == len(call.vm.vcpus)
        if (address, None if full else scope) not in ours:
            lines.append(f"  -  {call.vm.symbolize(address)} (set by gdb)")
    return "\n".join(lines) if lines else "no breakpoints"


def cmd_delete(call: Call, a: dict) -> str:
    ctx = call.ctx
    numbers: list[int] = a["numbers"]
    targets = list(ctx.breakpoints) if not numbers else numbers
    missing = [n for n in targets if n not in ctx.breakpoints]
    if missing:
        raise CommandError(f"no breakpoint {missing[0]} ('break' lists them)")
    if not targets:
        return "no breakpoints"
    with ctx.parked():
        for n in targets:
            bp = ctx.breakpoints.pop(n)
            if bp.address is not None:
                call.session.remove_breakpoint(bp.address, bp.scope)
    call.session.set_exit_breakpoints(ctx.exit_reasons())
    return f"deleted breakpoint{'s' if len(targets) > 1 else ''} {', '.join(map(str, targets))}"


# ======================================================================================
# Handlers: CPUID, APIC
# ======================================================================================

def _text_of(*regs: int) -> str:
    return b"".join(r.to_bytes(4, "little") for r in regs).rstrip(b"\0").decode("latin-1")


def _feature_names(value: int, table: dict[str, int]) -> str:
    return " ".join(n for n, bit in sorted(table.items(), key=lambda kv: kv[1]) if value >> bit & 1) or "none"


def _cpuid_notes(leaf: int, sub: int, eax: int, ebx: int, ecx: int, edx: int) -> list[str]:
    """What the registers of one CPUID leaf mean (SDM Vol. 2A, CPUID)."""
    if leaf == 0:
        return [f"max basic leaf {eax:#x}, vendor {_text_of(ebx, edx, ecx)!r}"]
    if leaf == 1:
        family = (eax >> 8 & 0xF) + ((eax >> 20 & 0xFF) if (eax >> 8 & 0xF) == 0xF else 0)
        model = (eax >> 4 & 0xF) | ((eax >> 16 & 0xF) << 4 if (eax >> 8 & 0xF) in (6, 0xF) else 0)
        return [f"family {family:#x} model {model:#x} stepping {eax & 0xF}",
                f"initial APIC ID {ebx >> 24} (EBX[31:24]), {ebx >> 16 & 0xFF} logical processors, "
                f"CLFLUSH line {8 * (ebx >> 8 & 0xFF)} bytes",
                f"ECX: {_feature_names(ecx, ECX1)}", f"EDX: {_feature_names(edx, EDX1)}"]
    if leaf == 0xB:
        kind = {1: "SMT", 2: "core"}.get(ecx >> 8 & 0xFF, "invalid")
        return [f"level {ecx & 0xFF} type {kind}: shift {eax & 0x1F}, {ebx & 0xFFFF} logical processors, "
                f"x2APIC ID {edx}"]
    if leaf == 0x40000000:
        return [f"hypervisor leaves up to {eax:#x}, signature {_text_of(ebx, ecx, edx)!r}"]
    if leaf == 0x80000000:
        return [f"max extended leaf {eax:#x}"]
    if leaf == 0x80000001:
        return [f"ECX: {_feature_names(ecx, ECX_EXT)}", f"EDX: {_feature_names(edx, EDX_EXT)}"]
    if leaf in (0x80000002, 0x80000003, 0x80000004):
        return [f"brand string part {leaf - 0x80000001}: {_text_of(eax, ebx, ecx, edx)!r}"]
    if leaf == 0x80000008:
        return [f"{eax & 0xFF}-bit physical, {eax >> 8 & 0xFF}-bit linear addresses"]
    return []


_CPUID_OVERVIEW = ((0, 0), (1, 0), (0xB, 0), (0xB, 1), (0x40000000, 0), (0x80000000, 0),
                   (0x80000001, 0), (0x80000002, 0), (0x80000003, 0), (0x80000004, 0), (0x80000008, 0))


def cmd_cpuid(call: Call, a: dict) -> str:
    if a["leaf"] is None and a["vcpu"] is not None:   # one number is a LEAF
        a = {**a, "vcpu": None, "leaf": a["vcpu"]}
    v = call.vcpu(a["vcpu"])
    leaves = _CPUID_OVERVIEW if a["leaf"] is None else ((a["leaf"], a["sub"] or 0),)
    lines = [f"vCPU {v.index} CPUID (as the VMM answers CPUID exits):"]
    for leaf, sub in leaves:
        if not 0 <= leaf <= 0xFFFFFFFF:
            raise CommandError(f"CPUID leaf {leaf:#x} does not fit in EAX")
        eax, ebx, ecx, edx = v.cpuid.query(leaf, sub)
        lines.append(f"{leaf:#010x}.{sub:<2} eax {eax:#010x} ebx {ebx:#010x} ecx {ecx:#010x} edx {edx:#010x}")
        lines += [f"    {n}" for n in _cpuid_notes(leaf, sub, eax, ebx, ecx, edx)]
    return "\n".join(lines)


_LVTS = (("timer", Reg.LVT_TIMER), ("LINT0", Reg.LVT_LINT0), ("LINT1", Reg.LVT_LINT1),
         ("error", Reg.LVT_ERROR), ("perf", Reg.LVT_PERF), ("thermal", Reg.LVT_THERMAL), ("CMCI", Reg.LVT_CMCI))
_LVT_MODES = {0: "fixed", 2: "SMI", 4: "NMI", 5: "INIT", 7: "ExtINT"}


def _lvt_text(name: str, value: int) -> str:
    """An LVT entry (SDM 11.5.1, Figure 11-8)."""
    parts = [f"vector {value & 0xFF:#04x}", "masked" if value & LVT_MASKED else "unmasked"]
    if name == "timer":
        parts.append(TIMER_MODES.get(value >> 17 & 3, "reserved mode"))
    else:
        parts.append(_LVT_MODES.get(value >> 8 & 7, "reserved mode"))
        if name.startswith("LINT"):
            parts.append("level" if value >> 15 & 1 else "edge")
    return ", ".join(parts)


def cmd_apic(call: Call, a: dict) -> str:
    v = call.vcpu(a["vcpu"])
    ap = v.apic
    base = ap.base_msr
    flags = [n for bit, n in ((APIC_BASE_BSP, "BSP"), (APIC_BASE_EN, "enabled"), (APIC_BASE_EXTD, "x2APIC"))
             if base & bit]
    svr = ap.read(Reg.SVR)
    lines = [f"vCPU {v.index} local APIC: ID {ap.apic_id} (ID register {ap.id_register:#010x}), "
             f"version {ap.read(Reg.VERSION):#010x}, {'x2APIC' if ap.x2apic_mode else 'xAPIC'} mode",
             f"IA32_APIC_BASE (MSR {IA32_APIC_BASE_MSR:#x}) {base:#x} [{' '.join(flags)}], "
             f"SVR {svr:#x}: software {'enabled' if svr & 0x100 else 'disabled'}, spurious vector {svr & 0xFF:#04x}",
             f"TPR {ap.read(Reg.TPR):#04x}  PPR {ap.read(Reg.PPR):#04x}  ESR {ap.read(Reg.ESR):#x}  "
             f"LDR {ap.read(Reg.LDR):#010x}  DFR {ap.read(Reg.DFR):#010x}",
             f"IRR {_vectors(ap.irr)}   ISR {_vectors(ap.isr)}   TMR {_vectors(ap.tmr)}   "
             f"NMI pending: {'yes' if ap.nmi_pending else 'no'}"]
    for name, reg in _LVTS:
        value = ap.read(reg)
        lines.append(f"LVT {name:<8} {value:#010x}  {_lvt_text(name, value)}")
    deadline = ap.timer_deadline
    lines.append(f"timer: {ap.timer_mode()}, initial count {ap.read(Reg.TIMER_INITIAL)}, current count "
                 f"{ap.read(Reg.TIMER_CURRENT)}, divide config {ap.read(Reg.TIMER_DIVIDE):#x}, "
                 f"next expiry " + (f"at virtual time {deadline}" if deadline is not None else "none")
                 + f", fired {ap.timer_fired} times")
    icr = ap.read(Reg.ICR_HIGH) << 32 | ap.read(Reg.ICR_LOW)
    lines.append(f"ICR {icr:#018x}; IPIs sent {ap.ipis_sent}, fixed interrupts received {ap.ipis_received}")
    for cmd, targets in list(v.ipi_log)[-16:]:
        lines.append(f"  sent {cmd.describe()} -> vCPU {', '.join(map(str, targets)) or 'none'}")
    if v.started_by_sipi:
        lines.append(f"started by SIPI vector {v.sipi_vector:#04x} (at {v.sipi_vector << 12:#x})"
                     if v.sipi_vector is not None else "started by SIPI")
    return "\n".join(lines)


# ======================================================================================
# Handlers: run control
# ======================================================================================

def _require_alive(call: Call) -> None:
    if call.vm.ended:
        raise CommandError(describe_ending(call.vm))


def _where(call: Call, v: Vcpu) -> str:
    rip = v.uc.reg_read(X.UC_X86_REG_RIP)
    insns = v.decode(rip, 1)
    text = f"{insns[0].mnemonic} {insns[0].op_str}".rstrip() if insns else "(no code)"
    return f"=> {call.vm.symbolize(rip)}:  {text}"


def cmd_continue(call: Call, a: dict) -> str:
    ctx = call.ctx
    _require_alive(call)
    if ctx.vm_state() == "running":
        raise CommandError("the VM is already running ('stop' stops it)")
    ctx.drain_events()
    call.session.resume()
    if ctx.background:
        return f"running {len(call.vm.vcpus)} vCPUs ('stop' or Ctrl-C stops them)"
    stop = ctx.wait_for_stop(ctx.wait_timeout, lambda s: s.kind is not StopKind.STEP)
    if stop is None:
        call.session.stop()
        return f"no stop after {ctx.wait_timeout:.0f} s: stopped the VM\n" + cmd_vcpus(call, {})
    if stop.kind is StopKind.ENDED:
        return describe_stop(ctx, stop)
    call.session.stop()
    if stop.vcpu is not None:
        ctx.current = stop.vcpu
        return describe_stop(ctx, stop) + "\n" + _where(call, call.vm.vcpus[stop.vcpu])
    return describe_stop(ctx, stop)


def cmd_stop(call: Call, a: dict) -> str:
    _require_alive(call)
    if call.ctx.vm_state() == "stopped":
        return "the VM is already stopped\n" + cmd_vcpus(call, {})
    if not call.session.stop():
        raise CommandError("the vCPUs did not stop within 10 s")
    return cmd_vcpus(call, {})


def cmd_step(call: Call, a: dict) -> str:
    ctx = call.ctx
    v = call.vcpu(a["vcpu"])
    count = a["count"] or 1
    _require_alive(call)
    call.require_stopped(v)
    ctx.drain_events()
    before = v.instructions
    call.session.step(v, count)
    stop = ctx.wait_for_stop(30, lambda s: s.vcpu == v.index)
    ctx.current = v.index
    if stop is None:
        raise CommandError(f"vCPU {v.index} did not finish the step within 30 s")
    if stop.kind is StopKind.ENDED:
        return describe_stop(ctx, stop)
    done = v.instructions - before
    lines = [f"vCPU {v.index}: {done} instruction{'s' if done != 1 else ''} executed, activity {v.activity.label}"]
    if stop.kind is not StopKind.STEP:
        lines.append(describe_stop(ctx, stop))
    if v.activity not in (Activity.WAIT_FOR_SIPI, Activity.SHUTDOWN):  # no meaningful RIP then
        lines.append(_where(call, v))
    return "\n".join(lines)


# ======================================================================================
# Handlers: other
# ======================================================================================

def cmd_serial(call: Call, a: dict) -> str:
    text = call.vm.uart.text()
    n = a["count"]
    lines = text.splitlines()
    if n is not None:
        lines = lines[-n:] if n else []
    return "\n".join(lines) if lines else "(no serial output yet)"


def cmd_sched(call: Call, a: dict) -> str:
    vm = call.vm
    executor = call.session.executor
    cfg = vm.config
    lines = [f"executor {type(executor).__name__}, policy {cfg['sched']!r}, "
             f"{cfg['pcpus'] or len(vm.vcpus)} pCPUs, "
             f"slice {cfg['slice']} instructions" + (", deterministic" if cfg["deterministic"] else "")]
    rows = []
    for v in vm.vcpus:
        rows.append((v.index, v.activity.label, "-" if v.pcpu is None else v.pcpu,
                     "stopped" if call.ctx.is_stopped(v) else "running",
                     "yes" if v.runnable() else "no", v.instructions, v.exit_count, len(v.ipi_log)))
    lines += _table(rows, ("vCPU", "activity", "pCPU", "debugger", "runnable", "instructions", "exits",
                           "IPIs sent"), right={0, 2, 5, 6, 7})
    # the scheduling policy, on the executor or on its scheduler core (hvdbg.run.sched)
    owner = executor if getattr(executor, "policy", None) is not None else getattr(executor, "sched", None)
    policy = getattr(owner, "policy", None)
    # a scheduler core adds per-vCPU waiting reasons and times to the policy's statistics
    stats_fn = getattr(owner, "stats", None) if hasattr(owner, "waiting") else getattr(policy, "stats", None)
    if callable(stats_fn):
        try:
            with getattr(owner, "lock", None) or contextlib.nullcontext():  # policies are not thread-safe
                stats = stats_fn()
        except Exception as e:  # noqa: BLE001 - a scheduler bug must not break the shell
            lines.append(f"policy statistics unavailable: {type(e).__name__}: {e}")
        else:
            lines.append(f"policy {type(policy).__name__}:")
            lines += _format_stats(stats, "  ")
    return "\n".join(lines)


def _format_stats(stats: Any, indent: str) -> list[str]:
    """A policy's statistics: scalars as 'key: value', a dict of rows (per vCPU, per
    pCPU) as a table."""
    if not isinstance(stats, dict):
        return [f"{indent}{stats}"]
    lines = []
    for key, value in stats.items():
        if isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            columns = list(dict.fromkeys(k for r in value.values() for k in r))
            rows = [(name, *(r.get(c, "") for c in columns)) for name, r in value.items()]
            lines.append(f"{indent}{key}:")
            lines += [indent + "  " + line for line in _table(rows, (str(key).rstrip("s"), *columns),
                                                               right=set(range(len(columns) + 1)))]
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += _format_stats(value, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines


def cmd_sym(call: Call, a: dict) -> str:
    vm = call.vm
    query: str = a["query"]
    if query[0].isdigit() or query.startswith("$"):
        addr = eval_address(call, query).value
        sym = vm.symbols.symbolize(addr)
        return f"{addr:#x} is {sym}" if sym else f"no symbol at {addr:#x}"
    names = [n for n in vm.symbols.names() if fnmatch.fnmatchcase(n, query)]
    if not names:
        raise CommandError(f"no ELF symbol matches {query!r}")
    lines = []
    for name in names[:200]:
        s = vm.symbols.lookup(name)
        lines.append(f"{name:<28} {s.address:#018x}" + (f"  size {s.size:#x}" if s.size else ""))
    return "\n".join(lines)


def cmd_help(call: Call, a: dict) -> str:
    words: list[str] = a["topic"]
    origin = call.origin
    if words:
        cmd, _ = call.ctx.find(words)
        lines = [f"usage: {cmd.usage}", f"  {cmd.summary}"]
        if cmd.details:
            lines += [f"  {line}" if line else "" for line in cmd.details.splitlines()]
        if cmd.aliases:
            lines.append(f"  aliases: {', '.join(cmd.aliases)}")
        if not cmd.monitor:
            lines.append("  (shell only: not available through gdb's monitor)")
        return "\n".join(lines)
    lines = []
    for category in CATEGORIES:
        cmds = [c for c in COMMANDS if c.category == category and (origin != "monitor" or c.monitor)]
        if not cmds:
            continue
        lines.append(f"{category}:")
        width = max(len(c.usage) for c in cmds)
        lines += [f"  {c.usage:<{width}}  {c.summary}" for c in cmds]
    lines.append("Numbers are hex (0x..) or decimal; addresses also take ELF symbols, sym+off and $reg.")
    lines.append("'help COMMAND' shows the details of one command.")
    return "\n".join(lines)


def cmd_quit(call: Call, a: dict) -> str:
    call.ctx.quit_requested = True
    return ""


# ======================================================================================
# The registry
# ======================================================================================

CATEGORIES = ("VMX", "guest memory and paging", "CPU state", "VM exits and breakpoints", "run control",
              "other")

_V = Param("vcpu", "vcpu", optional=True)

COMMANDS: tuple[Command, ...] = (
    Command("vmcs", (_V, Param("target", "vmcs", optional=True, metavar="FIELD|GROUP"),
                     Param("all", "all", optional=True, metavar="all")),
            "the vCPU's VMCS grouped like KVM's dump_vmcs, or one field", cmd_vmcs,
            "Groups: guest, host, control, exit; a FIELD is a name (GUEST_CR3, EPT_POINTER_HIGH),\n"
            "an encoding (0x6802) or a control set (pin, primary, secondary, entry, exit).\n"
            "Control fields are decoded bit by bit, the exit reason and qualification as a sentence.\n"
            "Zero fields are hidden unless 'all' is given.  The guest-state area is refreshed from\n"
            "the vCPU when it is stopped (SDM 28.3 'Saving Guest State').", "VMX"),
    Command("ept walk", (Param("gpa", "number"), ),
            "translate a GPA through the EPT: every entry, permissions, memory type, HPA", cmd_ept_walk,
            "Shows the EPTP, each level's entry (host-physical address, raw value, R/W/X, memory\n"
            "type, large page), the resulting HPA or the level where the walk stopped and why\n"
            "(SDM 29.3.2 'EPT Translation Mechanism').", "VMX"),
    Command("ept map", (), "the guest-physical ranges the EPT maps, merged", cmd_ept_map, category="VMX"),
    Command("pt walk", (Param("gva", "address"), _V, Param("access", "access", optional=True,
                                                           metavar="read|write|fetch")),
            "walk the guest's page tables from CR3, then the EPT: GVA -> GPA -> HPA", cmd_pt_walk,
            "Uses the vCPU's current paging mode (32-bit, PAE, 4-level, 5-level; SDM 4.3-4.5);\n"
            "shows every entry with its flags and reserved bits, the #PF error code if the walk\n"
            "faults, where each paging structure sits in host memory, and the EPT walk of the GPA.",
            "guest memory and paging"),
    Command("pt map", (_V, Param("count", "count", optional=True, metavar="LIMIT")),
            "the guest-virtual ranges mapped by the vCPU's page tables, merged", cmd_pt_map,
            category="guest memory and paging"),
    Command("x", (Param("format", "format", optional=True, metavar="/NFU"),
                  Param("phys", "phys", optional=True, metavar="-p"),
                  Param("addr", "address"), _V),
            "examine guest memory (guest-virtual; -p for guest-physical)", cmd_x,
            "Without /NFU: a 64-byte hex dump.  /NFU as in gdb: N units, F in x d u o t c a s i,\n"
            "U in b h w g (x/8xg $rsp, x/s 0x191000, x/5i kmain).", "guest memory and paging"),
    Command("xp", (Param("format", "format", optional=True, metavar="/NFU"), Param("addr", "address")),
            "examine guest-physical memory (like QEMU's xp)",
            lambda call, a: cmd_x(call, {**a, "vcpu": None}, physical=True),
            category="guest memory and paging"),
    Command("mb", (), "multiboot: the header found, the load, the magic in EAX, the boot information",
            cmd_mb, "Compares the EAX the loader passed with what the spec requires (Multiboot 0.6.96\n"
            "3.2 / Multiboot2 3.3) and shows the information structure as the loader built it\n"
            "and, if the guest has changed it since, as it is now.", "guest memory and paging"),
    Command("regs", (_V,), "registers of a vCPU with decoded flags and control registers", cmd_regs,
            category="CPU state"),
    Command("disas", (Param("addr", "address", optional=True), Param("count", "count", optional=True,
                                                                     metavar="N"), _V),
            "disassemble (capstone, in the vCPU's current mode) with ELF symbols", cmd_disas,
            "Default: 12 instructions from RIP.  'disas SYMBOL' disassembles the whole function.\n"
            "The current instruction is marked with =>.", "CPU state"),
    Command("vcpus", (), "every vCPU: activity state, pCPU, debugger state, mode, RIP", cmd_vcpus,
            "'activity' is the guest activity state (SDM 25.4.2: running = active, halted,\n"
            "wait-for-SIPI, shutdown); 'debugger' says whether hvdbg holds the vCPU stopped.",
            "CPU state"),
    Command("cpuid", (_V, Param("leaf", "number", optional=True), Param("sub", "number", optional=True)),
            "CPUID leaves as the VMM answers the vCPU's CPUID exits, decoded", cmd_cpuid,
            "One number is a LEAF, two are VCPU LEAF, three VCPU LEAF SUB.  No LEAF: an overview.",
            "CPU state"),
    Command("apic", (_V,), "the vCPU's local APIC: ID, SVR, IRR/ISR, LVT, timer, IPIs", cmd_apic,
            category="CPU state"),
    Command("exits", (Param("count", "count", optional=True, metavar="N"), _V,
                      Param("reason", "reason", optional=True)),
            "the last N VM exits (default 20) and per-reason counts per vCPU (kvm_stat-like)", cmd_exits,
            "Filter by vCPU and exit reason (HLT, IO_INSTRUCTION, 48...).  'exits 0' prints the counts only.",
            "VM exits and breakpoints"),
    Command("break exit", (Param("reasons", "reason", optional=True, many=True, metavar="REASON"),),
            "stop the VM when a VM exit of this reason happens", cmd_break_exit,
            "The exit is handled first (an OUT reaches its device), then every vCPU stops.",
            "VM exits and breakpoints"),
    Command("break", (Param("addr", "address", optional=True, metavar="ADDR|SYMBOL"), _V),
            "breakpoint at a guest-linear address (all vCPUs, or one); no argument: list",
            cmd_break, "The breakpoint never modifies guest memory (a code hook, like a hardware\n"
            "breakpoint).  'break' alone lists every breakpoint, also those gdb set.",
            "VM exits and breakpoints", aliases=("b",)),
    Command("delete", (Param("numbers", "count", optional=True, many=True, metavar="N"),),
            "delete breakpoints by number (all if none given)", cmd_delete, category="VM exits and breakpoints"),
    Command("continue", (), "let every vCPU run", cmd_continue,
            "In the interactive shell the VM runs in the background; in scripts (-c) the command\n"
            "waits for the next stop (breakpoint, exit breakpoint, end of the run).", "run control",
            monitor=False, aliases=("run", "c")),
    Command("stop", (), "stop every vCPU (all-stop) and show where they are", cmd_stop, category="run control",
            monitor=False),
    Command("step", (_V, Param("count", "count", optional=True, metavar="N")),
            "execute N instructions (default 1) on one vCPU; the others stay stopped", cmd_step,
            "A single number names a vCPU if the VM has such a vCPU ('step 0 10': vCPU 0, 10 steps).",
            "run control", monitor=False, aliases=("si", "stepi")),
    Command("serial", (Param("count", "count", optional=True, metavar="LINES"),),
            "what the guest wrote to its serial port (the last LINES lines)", cmd_serial, category="other"),
    Command("sched", (), "vCPU scheduling: state, pCPU, instructions, exits, policy statistics", cmd_sched,
            category="other"),
    Command("sym", (Param("query", "word", metavar="NAME|PATTERN|ADDR"),),
            "look up ELF symbols by name or glob, or the symbol at an address", cmd_sym, category="other"),
    Command("help", (Param("topic", "command", optional=True, many=True, metavar="COMMAND"),),
            "list the commands, or describe one", cmd_help, category="other", aliases=("?",)),
    Command("quit", (), "leave the shell (the VM is stopped)", cmd_quit, category="other", monitor=False,
            aliases=("exit", "q")),
)


def _command_lookup() -> dict[str, Command]:
    table: dict[str, Command] = {}
    for cmd in COMMANDS:
        for name in (cmd.name, *cmd.aliases):
            table[name] = cmd
    return table

