"""Other commands: the serial output, scheduling, ELF symbols, help, quit."""

from __future__ import annotations

import fnmatch

from hvdbg.run.executors import ScheduledExecutor

from hvdbg.ui.commands.args import CommandError, eval_address
from hvdbg.ui.commands.context import Call
from hvdbg.ui.commands.registry import CATEGORIES, Command, Param, commands, register
from hvdbg.ui.render.text import format_stats, table


def cmd_serial(call: Call, a: dict) -> str:
    text = call.vm.uart.text()
    n = a["count"]
    lines = text.splitlines()
    if n is not None:
        lines = lines[-n:] if n else []
    return "\n".join(lines) if lines else "(no serial output yet)"


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "e": "\x1b", "0": "\0"}


def serial_text(words: list[str]) -> bytes:
    """The words of ``serial send`` joined by spaces, with \\n \\r \\t \\e \\0 \\\\ and
    \\xHH escapes; a bare ``serial send`` sends a newline."""
    text, out, i = " ".join(words), bytearray(), 0
    if not words:
        return b"\n"
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out += c.encode()
            i += 1
        elif text[i + 1] == "x":
            try:
                out.append(int(text[i + 2:i + 4], 16))
            except ValueError:
                raise CommandError(f"serial send: bad escape {text[i:i + 4]} (\\xHH)") from None
            i += 4
        elif text[i + 1] in _ESCAPES:
            out += _ESCAPES[text[i + 1]].encode()
            i += 2
        else:
            raise CommandError(f"serial send: unknown escape {text[i:i + 2]} (\\n \\r \\t \\e \\0 \\\\ \\xHH)")
    return bytes(out)


def cmd_serial_send(call: Call, a: dict) -> str:
    data = serial_text(a["text"] or [])
    call.vm.serial_send(data)
    uart = call.vm.uart
    state = "IRQ 4 raised" if uart.irq_line else (
        "receive interrupt enabled" if uart.ier & 1 else "the guest polls (receive interrupt off)")
    return f"sent {len(data)} bytes to COM1 ({len(uart.rx) + len(uart.pending_input)} waiting; {state})"


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
    lines += table(rows, ("vCPU", "activity", "pCPU", "debugger", "runnable", "instructions", "exits",
                           "IPIs sent"), right={0, 2, 5, 6, 7})
    if isinstance(executor, ScheduledExecutor):
        # the policy's statistics with the scheduler core's waiting reasons and times
        try:
            stats = executor.sched.stats()
        except Exception as e:  # noqa: BLE001 - a scheduler bug must not break the shell
            lines.append(f"policy statistics unavailable: {type(e).__name__}: {e}")
        else:
            lines.append(f"policy {type(executor.sched.policy).__name__}:")
            lines += format_stats(stats, "  ")
    return "\n".join(lines)


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
        cmds = [c for c in commands() if c.category == category and (origin != "monitor" or c.monitor)]
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


register(
    Command("serial send", (Param("text", "word", optional=True, many=True, metavar="TEXT"),),
            "bytes arriving on COM1's line (escapes \\n \\r \\t \\xHH; no TEXT: a newline)", cmd_serial_send,
            category="other"),
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
