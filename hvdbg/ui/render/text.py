"""Plain-text building blocks: sizes, bit names, columns, vector lists, statistics."""

from __future__ import annotations

from typing import Any, Iterable


def size_text(size: int) -> str:
    for unit, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size:#x}"


def bit_names(value: int, table: Iterable[tuple[int, str]]) -> str:
    return " ".join(name for bit, name in table if value >> bit & 1)


def table(rows: list[tuple], header: tuple[str, ...], right: set[int] = frozenset()) -> list[str]:
    """Plain text columns; ``right`` holds the indexes of right-aligned columns."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(parts).rstrip())
    return out


def vectors(bitmap: int) -> str:
    vecs = [f"{v:#04x}" for v in range(256) if bitmap >> v & 1]
    return " ".join(vecs) if vecs else "none"


def format_stats(stats: Any, indent: str) -> list[str]:
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
            lines += [indent + "  " + line for line in table(rows, (str(key).rstrip("s"), *columns),
                                                               right=set(range(len(columns) + 1)))]
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += format_stats(value, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines
