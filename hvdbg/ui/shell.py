"""``hvdbg shell CONFIG``: an interactive prompt on a VM, built on the command registry of
:mod:`hvdbg.ui.commands` (the same commands gdb reaches through ``monitor``).

The VM is created held at its entry point.  Interactively (a terminal on stdin and
stdout) the prompt_toolkit shell completes commands, VMCS field names, exit reasons and
ELF symbols, keeps a history, colours its output, and lets the VM run in the background
while you type: stops (breakpoints, exit breakpoints, the end of the run) are announced
as they happen.  With ``-c CMD`` (repeatable), or commands on a non-terminal stdin, the
commands run one after the other (``continue`` then waits for the next stop) and the
exit status is 1 if any of them failed.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import threading
from typing import Callable, Iterable, TextIO

from hvdbg.debug.session import Stop, StopKind
from hvdbg.ui.commands import CommandContext
from hvdbg.ui.render.stops import describe_stop

HISTORY_FILE = "~/.hvdbg_history"


def run_shell(args: argparse.Namespace) -> int:
    """Entry point of ``hvdbg shell`` (wired in :mod:`hvdbg.ui.cli`)."""
    from hvdbg.debug.session import DebugSession
    from hvdbg.hv.machine import Machine
    from hvdbg.run.control import START_HOLD
    from hvdbg.ui import app

    interactive = not args.command and sys.stdin.isatty() and sys.stdout.isatty()
    # the interactive shell echoes whole lines itself
    vm = Machine(app.config_from_args(args, output__echo_serial=False))
    session = DebugSession(vm, start_paused=True)
    ctx = CommandContext(session, background=interactive)
    servers: list = []
    try:
        if args.gdb is not None:
            servers = app.start_gdb_servers(session, args.gdb_host, args.gdb, ctx.monitor, args.gdb_arch)
            app.gdb_banner(vm, args.gdb_host, args.gdb)
        session.start()
        session.stop(owner=START_HOLD)   # wait until the start hold has parked every vCPU
        if interactive:
            return interactive_shell(ctx)
        lines = args.command if args.command else sys.stdin
        return run_script(ctx, lines, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 130
    finally:
        session.shutdown()
        for server in servers:
            server.stop()


def run_script(ctx: CommandContext, lines: Iterable[str], out: TextIO, err: TextIO) -> int:
    """Run command lines in order (blank lines and '#' comments skipped); output to
    ``out``, errors to ``err``; 1 if any command failed."""
    status = 0
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        result = ctx.execute(line)
        if result.text:
            print(result.text, file=out if result.ok else err, flush=True)
        if not result.ok:
            status = 1
        if ctx.quit_requested:
            break
    return status


# --------------------------------------------------------------------------------------
# Colour: a few regular expressions over the commands' plain text
# --------------------------------------------------------------------------------------

_ANSI = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36",
         "bold": "1", "dim": "2"}
# (pattern, colour) applied in order to each line that is not an error
_LINE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\*\*\* .* \*\*\*$"), "bold"),
    (re.compile(r"^[A-Za-z][\w ]*:$"), "bold"),
)
_SPAN_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^=>"), "green"),
    (re.compile(r"<[^<>\s]+>"), "yellow"),
    (re.compile(r"\b(?:EPT violation|EPT misconfiguration|#PF|#GP|not present|WRONG|INVALID)\b[^;,]*"), "red"),
    (re.compile(r"(?<![\w<])0x[0-9a-fA-F]+\b"), "cyan"),
)


def _paint(text: str, colour: str) -> str:
    return f"\x1b[{_ANSI[colour]}m{text}\x1b[0m"


def colourize(text: str, ok: bool = True) -> str:
    """ANSI-coloured version of a command's output."""
    if not ok:
        return _paint(text, "red")
    out = []
    for line in text.split("\n"):
        rule = next((c for p, c in _LINE_RULES if p.match(line)), None)
        if rule:
            out.append(_paint(line, rule))
            continue
        for pattern, colour in _SPAN_RULES:
            line = _paint_spans(line, pattern, colour)
        out.append(line)
    return "\n".join(out)


def _paint_spans(line: str, pattern: re.Pattern[str], colour: str) -> str:
    # never paint inside an escape sequence added by an earlier rule
    parts = re.split(r"(\x1b\[[0-9;]*m.*?\x1b\[0m)", line)
    return "".join(p if p.startswith("\x1b") else pattern.sub(lambda m: _paint(m.group(0), colour), p)
                   for p in parts)


# --------------------------------------------------------------------------------------
# Stop notifications while the VM runs in the background
# --------------------------------------------------------------------------------------

class StopNotifier:
    """Announces stops as they happen (from any source: the shell's breakpoints, gdb,
    the end of the run).  A stop caused by one of the shell's own breakpoints stops the
    whole VM, like gdb's all-stop mode; steps announce themselves."""

    def __init__(self, ctx: CommandContext, emit: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.emit = emit
        self._queue: queue.Queue[Stop] = ctx.session.subscribe()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hvdbg-shell-stops", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self.ctx.session.unsubscribe(self._queue)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                stop = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if stop.kind is StopKind.STEP:
                continue
            if self._ours(stop):
                self.ctx.session.stop()
                self.ctx.current = stop.vcpu
            self.emit(describe_stop(self.ctx.session, stop))

    def _ours(self, stop: Stop) -> bool:
        if stop.kind is StopKind.EXIT_BREAK:
            return True
        return stop.kind is StopKind.BREAKPOINT and self.ctx.session.numbered_at(stop.vcpu, stop.address) is not None


class SerialEcho:
    """UART sink for the interactive shell: the guest's output, a whole line at a time
    (written byte by byte it would be cut by every redraw of the prompt)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self._buffer = bytearray()
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self._lock:
            self._buffer += data
            while b"\n" in self._buffer:
                line, _, rest = bytes(self._buffer).partition(b"\n")
                self._buffer = bytearray(rest)
                self.emit(line.decode("utf-8", "replace"))

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                self.emit(self._buffer.decode("utf-8", "replace"))
                self._buffer.clear()


# --------------------------------------------------------------------------------------
# The prompt_toolkit shell
# --------------------------------------------------------------------------------------

def _completer(ctx: CommandContext):
    from prompt_toolkit.completion import Completer, Completion

    class CommandCompleter(Completer):
        """Commands, then each argument's kind: vCPUs, VMCS fields, exit reasons, symbols."""

        def get_completions(self, document, complete_event):
            names, length = ctx.complete(document.text_before_cursor)
            for name in names[:300]:
                yield Completion(name, start_position=-length)

    return CommandCompleter()


def _history():
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = os.path.expanduser(os.environ.get("HVDBG_HISTORY", HISTORY_FILE))
    try:
        with open(path, "a"):
            pass
        return FileHistory(path)
    except OSError:
        return InMemoryHistory()


def interactive_shell(ctx: CommandContext) -> int:
    """The prompt loop: Ctrl-C stops a running VM, Ctrl-D or 'quit' leaves."""
    from prompt_toolkit import PromptSession, print_formatted_text
    from prompt_toolkit.formatted_text import ANSI
    from prompt_toolkit.patch_stdout import patch_stdout

    def show(text: str, ok: bool = True) -> None:
        print_formatted_text(ANSI(colourize(text, ok)))

    def background(text: str) -> None:
        # from other threads: one write to the patched stdout (thread-safe), not a redraw
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def announce(text: str) -> None:
        background(_paint(f"[stop] {text}", "magenta"))

    def message():
        state = ctx.vm_state()
        colour = {"running": "ansigreen", "stopped": "ansiyellow", "ended": "ansired"}[state]
        return [("ansicyan bold", "hvdbg"), ("", " "), (colour, state), ("", f" vCPU{ctx.current}> ")]

    vm = ctx.vm
    prompt = PromptSession(history=_history(), completer=_completer(ctx), complete_while_typing=False)
    notifier = StopNotifier(ctx, announce)
    echo = SerialEcho(background)
    with patch_stdout(raw=True):
        vm.uart.sink = echo
        show(f"hvdbg shell: {vm.kernel_path.name}, {len(vm.vcpus)} vCPUs, held at the multiboot entry "
             f"{vm.boot.entry:#x} on vCPU 0.  'continue' runs it, 'help' lists the commands.")
        notifier.start()
        try:
            while not ctx.quit_requested:
                try:
                    line = prompt.prompt(message, refresh_interval=0.5)
                except KeyboardInterrupt:
                    if ctx.vm_state() == "running":
                        show(ctx.execute("stop").text)
                    continue
                except EOFError:
                    break
                result = ctx.execute(line)
                if result.text:
                    show(result.text, result.ok)
        finally:
            vm.uart.sink = None
            echo.flush()
            notifier.close()
    return 0
