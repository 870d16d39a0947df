"""Guest memory as text: a hex dump, or GDB-style ``x/NFU`` units."""

from __future__ import annotations

from typing import Callable, NamedTuple


class ExamineFormat(NamedTuple):
    """GDB-style ``/NFU``: count, format letter, unit size in bytes."""

    count: int
    letter: str
    size: int


def hexdump(base: int, data: bytes, label: Callable[[int], str]) -> list[str]:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{label(base + off)}: {hexes:<47}  |{text}|")
    return lines


def units(base: int, data: bytes, fmt: ExamineFormat, label: Callable[[int], str], vm) -> list[str]:
    size = fmt.size
    per_row = max(1, 16 // size) if fmt.letter not in "ca" else (8 if fmt.letter == "c" else 2)
    values = []
    for off in range(0, len(data) - size + 1, size):
        raw = int.from_bytes(data[off:off + size], "little")
        values.append(unit_text(raw, size, fmt.letter, vm))
    lines = []
    for i in range(0, len(values), per_row):
        lines.append(f"{label(base + i * size)}: " + "  ".join(values[i:i + per_row]))
    return lines


def unit_text(raw: int, size: int, letter: str, vm) -> str:
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
