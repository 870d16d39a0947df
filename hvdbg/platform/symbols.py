"""ELF symbols of the guest kernel (pyelftools), by virtual and by physical address."""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int


class SymbolTable:
    """Address -> 'function+0xoff' for a kernel image; empty for non-ELF images."""

    def __init__(self, image: bytes | None = None) -> None:
        self._syms: list[Symbol] = []
        self._by_name: dict[str, Symbol] = {}
        self._phys_deltas: list[tuple[int, int, int]] = []  # (vaddr, vend, vaddr - paddr)
        if image:
            self._load(image)
        self._starts = [s.address for s in self._syms]


    def phys_deltas(self) -> list[int]:
        """Virtual-minus-physical offset of every loaded segment whose ELF addresses differ
        from its load addresses (a higher-half kernel's aliases)."""
        return [d for _lo, _hi, d in self._phys_deltas]

    def _load(self, image: bytes) -> None:
        try:
            elf = ELFFile(io.BytesIO(image))
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    self._phys_deltas.append((seg["p_vaddr"], seg["p_vaddr"] + seg["p_memsz"],
                                              seg["p_vaddr"] - seg["p_paddr"]))
            for sec in elf.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    if sym.name and sym["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE", "STT_OBJECT") \
                            and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                        s = Symbol(sym.name, sym["st_value"], sym["st_size"])
                        self._syms.append(s)
                        self._by_name.setdefault(sym.name, s)
        except Exception:  # noqa: BLE001 - symbols are optional: a damaged file has none
            self._syms, self._by_name = [], {}
        self._syms.sort(key=lambda s: (s.address, -s.size))

    def __len__(self) -> int:
        return len(self._syms)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def lookup(self, name: str) -> Symbol | None:
        return self._by_name.get(name)

    def symbolize(self, addr: int) -> str | None:
        """'name+0xoff' for a virtual address, trying the physical alias too (code that
        runs before paging runs at its load address)."""
        best: tuple[int, str] | None = None
        for cand in [addr] + [addr + d for lo, hi, d in self._phys_deltas if lo <= addr + d < hi]:
            s = self._find(cand)
            if s:
                off = int(s.split("+")[1], 16) if "+" in s else 0
                if best is None or off < best[0]:
                    best = (off, s)
        return best[1] if best else None

    def _find(self, addr: int) -> str | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        while i >= 0:
            s = self._syms[i]
            if s.size == 0 or addr < s.address + s.size:
                if s.size == 0 and addr - s.address > 0x10000:
                    return None
                off = addr - s.address
                return s.name if off == 0 else f"{s.name}+{off:#x}"
            if addr - s.address > 0x100000:
                return None
            i -= 1
        return None

    def function_of(self, addr: int) -> str | None:
        s = self.symbolize(addr)
        return s.split("+")[0] if s else None
