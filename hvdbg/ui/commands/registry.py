"""The command registry: a command is data (:class:`Command`: name, parameters, summary,
details, handler); each handler module registers its commands next to its handlers
(:func:`register`).  :func:`bind` matches the words of a line to a command's
parameters, :func:`next_params` tells completion what may come next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from hvdbg.ui.commands import args
from hvdbg.ui.commands.args import CommandError
from hvdbg.vmx.controls import CONTROL_SETS
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.fields import BY_NAME, GROUPS

if TYPE_CHECKING:
    from hvdbg.ui.commands.context import Call, CommandContext

#: The order ``help`` lists the categories in.
CATEGORIES = ("VMX", "guest memory and paging", "CPU state", "VM exits and breakpoints", "run control",
              "other")

_REGISTRY: list["Command"] = []


def register(*cmds: "Command") -> None:
    """Add commands to the registry (in the order ``help`` lists them)."""
    _REGISTRY.extend(cmds)


def commands() -> tuple["Command", ...]:
    return tuple(_REGISTRY)


def command_lookup() -> dict[str, "Command"]:
    """Every command by its name and its aliases."""
    table: dict[str, Command] = {}
    for cmd in _REGISTRY:
        for name in (cmd.name, *cmd.aliases):
            table[name] = cmd
    return table


@dataclass(frozen=True)
class Kind:
    """How a word is read, and the candidates offered for completion."""

    parse: Callable[["Call", str], Any]
    candidates: Callable[["CommandContext"], Iterable[str]] = lambda ctx: ()


KINDS: dict[str, Kind] = {
    "vcpu": Kind(args.parse_vcpu, lambda ctx: [str(v.index) for v in ctx.vm.vcpus]),
    "count": Kind(args.parse_count),
    "number": Kind(lambda call, w: args.parse_int(w)),
    "address": Kind(args.eval_address, lambda ctx: ctx.vm.symbols.names()),
    "vmcs": Kind(args.parse_vmcs_target,
                 lambda ctx: list(GROUPS) + [c.name for c in CONTROL_SETS] + list(BY_NAME)),
    "reason": Kind(args.parse_reason, lambda ctx: list(ExitReason.__members__)),
    "format": Kind(args.parse_format),
    "access": Kind(args.choice("read", "write", "fetch"), lambda ctx: ["read", "write", "fetch"]),
    "all": Kind(args.choice("all"), lambda ctx: ["all"]),
    "phys": Kind(args.choice("-p", "--phys"), lambda ctx: ["-p"]),
    "exit": Kind(args.choice("exit"), lambda ctx: ["exit"]),
    "word": Kind(lambda call, w: w),
    "command": Kind(lambda call, w: w, lambda ctx: sorted({c.name.split()[0] for c in commands()})),
}


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
        failures.append((wi, 1 if isinstance(e, args.Mismatch) else 2, str(e)))

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


def next_params(call: "Call", params: tuple[Param, ...], words: list[str]) -> set[int]:
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


#: The optional ``[VCPU]`` parameter most commands take.
VCPU = Param("vcpu", "vcpu", optional=True)
