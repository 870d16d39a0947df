"""State shared by the commands of one shell (and its gdb monitors): the
:class:`CommandContext` over a :class:`~hvdbg.debug.session.DebugSession`, and the
:class:`Call` a handler gets (who asks, about which vCPU by default).

Every user mistake is a :class:`~hvdbg.ui.commands.args.CommandError` with a one-line
message; :meth:`CommandContext.execute` never lets a traceback out.  Breakpoints and
their numbers belong to the session; the context only asks it.
"""

from __future__ import annotations

import contextlib
import difflib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

from hvdbg.arch.events import GuestFault
from hvdbg.debug.session import DebugSession, Stop, StopKind
from hvdbg.errors import GuestMemoryError, HvdbgError
from hvdbg.hv.vcpu import Vcpu
from hvdbg.platform import multiboot
from hvdbg.ui.commands.args import REG_ALIASES, CommandError
from hvdbg.ui.commands.registry import KINDS, Command, bind, command_lookup, next_params, split_line


class Outcome(NamedTuple):
    """What one command line produced: its text, and whether it succeeded."""

    text: str
    ok: bool



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
        key = REG_ALIASES.get(name.lower(), name.lower())
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


class _HookEdit:
    """The owner of a short stop while a command edits hooks (one per edit)."""

    def __str__(self) -> str:
        return "a command editing hooks"


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
        self.quit_requested = False
        self._lock = threading.RLock()
        self._events: queue.Queue[Stop] | None = None
        self.boot_info_at_attach, self.boot_info_attached_early = snapshot_boot_info(self.vm)
        self._lookup = command_lookup()

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
        owner = _HookEdit()
        if was_running:
            self.session.stop(owner=owner)
        try:
            yield
        finally:
            if was_running:
                self.session.release(owner=owner)  # whatever others hold stays held

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
        for index in next_params(call, cmd.params, rest):
            names += list(KINDS[cmd.params[index].kind].candidates(self))
        return names


def make_monitor(session: DebugSession) -> Callable[[str, Vcpu], str]:
    """The function the GDB stub calls for ``monitor LINE`` (qRcmd)."""
    return CommandContext(session).monitor


def snapshot_boot_info(vm) -> tuple[dict | None, bool]:
    """The multiboot information as the loader left it (when read before the guest ran)."""
    boot = vm.boot
    try:
        info = multiboot.parse_info(vm.memory, boot.ebx, boot.version)
    except (GuestMemoryError, ValueError):
        info = None
    return info, vm.total_instructions() == 0

