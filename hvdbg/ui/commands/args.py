"""The argument grammar: how one word becomes a value.

Numbers are hex (``0x..``) or decimal; addresses also accept ELF symbols,
``symbol+offset`` and ``$register`` of the vCPU in question; a vCPU is a decimal index;
a VMCS target is a group, a field name or encoding, or a control set; an exit reason is
a name or number of SDM Appendix C; ``/NFU`` is GDB's examine format.  ``call`` is the
:class:`~hvdbg.ui.commands.context.Call` being bound.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Callable, NamedTuple

from hvdbg.errors import HvdbgError
from hvdbg.platform.symbols import Symbol
from hvdbg.ui.render.memory import ExamineFormat
from hvdbg.vmx.controls import ControlSet, control_set
from hvdbg.vmx.exits import ExitReason
from hvdbg.vmx.fields import BY_NAME, GROUPS, FieldRef, UnknownVmcsFieldError, resolve

if TYPE_CHECKING:
    from hvdbg.ui.commands.context import Call

__all__ = ["CommandError", "Mismatch", "Addr", "ExamineFormat", "VmcsTarget", "parse_int", "eval_address"]

MASK64 = (1 << 64) - 1


class CommandError(HvdbgError):
    """A wrong argument, or a request the VM cannot satisfy in its current state."""


class Mismatch(CommandError):
    """The word is not of the kind asked for at all (a name where a number goes): when
    binding fails, an error about a right-shaped but wrong value is the better message."""


def parse_int(text: str) -> int:
    """Hex (0x..), binary (0b..), octal (0o..) or decimal; '_' separators allowed."""
    t = text.strip().replace("_", "")
    try:
        return int(t, 0)
    except ValueError:
        if t.isdigit():
            return int(t, 10)  # "010"
        raise Mismatch(f"not a number: {text!r}") from None


class Addr(NamedTuple):
    """An evaluated address expression; ``symbol`` is set when it was exactly a symbol."""

    value: int
    symbol: Symbol | None = None


_EXPR = re.compile(r"^(?P<base>[^+\-]+?)(?:(?P<op>[+-])(?P<off>[^+\-]+))?$")
REG_ALIASES = {"pc": "rip", "sp": "rsp", "eflags": "rflags"}


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
        raise Mismatch(f"{term!r} is an examine format: it goes right after the command (x/4xg -p ADDR)")
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


def parse_vcpu(call: "Call", word: str) -> int:
    if not word.isdigit():
        raise Mismatch(f"not a vCPU index: {word!r}")
    index = int(word)
    n = len(call.vm.vcpus)
    if index >= n:
        raise CommandError(f"no vCPU {index}: the VM has {n} vCPU{'s' if n > 1 else ''} (0-{n - 1})")
    return index


def parse_count(call: "Call", word: str) -> int:
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


def parse_vmcs_target(call: "Call", word: str) -> VmcsTarget:
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


def parse_reason(call: "Call", word: str) -> ExitReason:
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


_UNIT = {"b": 1, "h": 2, "w": 4, "g": 8}
_FORMATS = "xduotcasi"


def parse_format(call: "Call", word: str) -> ExamineFormat:
    if not word.startswith("/"):
        raise Mismatch(f"not an examine format: {word!r}")
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


def choice(*words: str) -> Callable[["Call", str], str]:
    def parse(call: "Call", word: str) -> str:
        if word.lower() in words:
            return word.lower()
        raise Mismatch(f"expected {' or '.join(words)}, not {word!r}")
    return parse

