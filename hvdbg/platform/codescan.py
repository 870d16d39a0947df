"""Finding instructions Unicorn cannot intercept by itself (RDMSR, WRMSR, PAUSE) in the
loaded guest image, so that the VMM can put per-address code hooks on them.

Unicorn has no instruction hook for these; a hook on every instruction would cost 40x.
The scan covers the kernel image at its load (physical) addresses and at its ELF virtual
addresses; code created or copied at run time is not covered (docs/design.md)."""

from __future__ import annotations

from typing import Iterable

from hvdbg.arch.physmem import PhysicalMemory

RDMSR = b"\x0f\x32"
WRMSR = b"\x0f\x30"
PAUSE = b"\xf3\x90"


def find_sites(mem: PhysicalMemory, segments: Iterable[tuple[int, int, int]], deltas: Iterable[int],
               opcodes: Iterable[bytes]) -> list[int]:
    """Addresses where any of ``opcodes`` occurs in the loaded segments ``(paddr, filesz,
    memsz)``, each at its physical address plus every virtual-minus-physical delta."""
    sites: set[int] = set()
    deltas = set(deltas) | {0}
    for paddr, filesz, _memsz in segments:
        data = mem.read(paddr, filesz)
        for opcode in opcodes:
            pos = data.find(opcode)
            while pos >= 0:
                for d in deltas:
                    sites.add((paddr + pos + d) & 0xFFFFFFFFFFFFFFFF)
                pos = data.find(opcode, pos + 1)
    return sorted(sites)
