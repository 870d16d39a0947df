"""What the VMM learns from the loaded kernel image before the first instruction runs:
where its RDMSR/WRMSR instructions are (hvdbg's MSR exits are code hooks on those
addresses), which MSR each one reaches when the index is an immediate, and at which
higher-half virtual address a kernel without symbols runs its own code.

Why sites are filtered: in Unicorn 2.1.4 every code hook's address bounds are checked on
*every* guest instruction while an instruction count is set (hvdbg always sets one), so
each hooked site costs the whole guest time.  A kernel with a handful of sites (hvdbg's
own guests) gets all of them hooked.  A big one (Xen 4.17 has ~950) gets only the sites
whose ECX is loaded with an MSR the VMM keeps itself (:func:`hvdbg.hv.vmm.vmm_keeps_msr`);
the others would have run natively in the engine anyway (the VMM's handler lets MSRs it
does not keep through), so what is lost is their exits in the trace, not behaviour.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import capstone

MSR_OPCODES = (b"\x0f\x30", b"\x0f\x32")     # WRMSR, RDMSR (SDM Vol. 2B)
HOOK_ALL_LIMIT = 64                           # at most this many candidate sites: hook them all
ECX_LOOKBACK = 8                              # instructions searched back for "mov ecx, imm"
WINDOW_STARTS = (64, 61, 57, 50, 43)          # bytes before a candidate where decoding starts
HIGH_HALF = 0xFFFF800000000000
ALIAS_ALIGN = 1 << 21
MIN_ALIAS_POINTERS = 64


@dataclass(frozen=True)
class MsrSite:
    """An RDMSR/WRMSR at physical address ``paddr``; ``msr`` is ECX if an immediate loads it."""

    paddr: int
    write: bool
    msr: int | None


def raw_sites(segments: Iterable[tuple[int, bytes]]) -> list[int]:
    """Every physical address where the bytes of RDMSR or WRMSR appear (code or not)."""
    out = []
    for paddr, data in segments:
        for opcode in MSR_OPCODES:
            pos = data.find(opcode)
            while pos >= 0:
                out.append(paddr + pos)
                pos = data.find(opcode, pos + 1)
    return sorted(out)


def _ecx_immediate(previous: Sequence[tuple[str, str]]) -> int | None:
    """ECX if the straight-line code before the instruction loads it with an immediate."""
    for mnemonic, ops in reversed(previous[-ECX_LOOKBACK:]):
        if mnemonic == "mov" and (ops.startswith("ecx, ") or ops.startswith("rcx, ")):
            try:
                return int(ops.split(", ", 1)[1], 0)
            except ValueError:
                return None
        if mnemonic == "xor" and ops in ("ecx, ecx", "rcx, rcx"):
            return 0
        if "cx" in ops or mnemonic.startswith(("j", "call", "ret", "loop")):
            return None
    return None


def decoded_sites(segments: Iterable[tuple[int, bytes]]) -> list[MsrSite]:
    """The candidate sites that really are RDMSR/WRMSR instructions, with the MSR index when
    an immediate loads it.  x86 decoding resynchronises within a few instructions, so each
    candidate is checked by disassembling a short window that ends on it (from a few start
    offsets; a candidate no window lands on is data)."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    out = []
    for paddr, data in segments:
        for site in raw_sites([(paddr, data)]):
            for back in WINDOW_STARTS:
                start = max(paddr, site - back)
                found = _decode_to(md, data[start - paddr:site - paddr + 2], start, site)
                if found is not None:
                    mnemonic, previous = found
                    out.append(MsrSite(site, mnemonic == "wrmsr", _ecx_immediate(previous)))
                    break
    return out


def _decode_to(md: capstone.Cs, code: bytes, start: int,
               site: int) -> tuple[str, list[tuple[str, str]]] | None:
    previous: list[tuple[str, str]] = []
    for address, _size, mnemonic, ops in md.disasm_lite(code, start):
        if address == site:
            return (mnemonic, previous) if mnemonic in ("rdmsr", "wrmsr") else None
        if address > site:
            return None
        previous.append((mnemonic, ops))
    return None


def select_sites(segments: Sequence[tuple[int, bytes]], keeps: Callable[[int], bool]) -> list[int]:
    """Physical addresses to hook: all candidates of a small image; in a big one the decoded
    sites whose immediate MSR index the VMM keeps (``keeps(msr)``)."""
    candidates = raw_sites(segments)
    if len(candidates) <= HOOK_ALL_LIMIT:
        return candidates
    return sorted(s.paddr for s in decoded_sites(segments) if s.msr is not None and keeps(s.msr))


def higher_half_alias(segments: Sequence[tuple[int, bytes]]) -> int | None:
    """``virtual - physical`` of a kernel that runs its image at a higher-half alias, inferred
    from the absolute 64-bit pointers the image holds (function tables, exception tables,
    page-table constants): the alias, 2 MiB aligned, under which most of them point back into
    the image.  None if fewer than MIN_ALIAS_POINTERS do (no such alias, or a 32-bit kernel)."""
    lo = min(p for p, _ in segments)
    hi = max(p + len(d) for p, d in segments)
    slots: Counter[int] = Counter()
    pointers = []
    for _paddr, data in segments:
        usable = len(data) - len(data) % 8
        for (q,) in struct.iter_unpack("<Q", data[:usable]):
            if q >= HIGH_HALF:
                pointers.append(q)
                slots[q & ~(ALIAS_ALIGN - 1)] += 1
    if not pointers:
        return None
    best, best_hits = None, 0
    for slot, _ in slots.most_common(4):
        for base in range(lo & ~(ALIAS_ALIGN - 1), hi, ALIAS_ALIGN):
            delta = slot - base
            hits = sum(1 for q in pointers if lo <= q - delta < hi)
            if hits > best_hits:
                best, best_hits = delta, hits
    return best if best_hits >= MIN_ALIAS_POINTERS else None
