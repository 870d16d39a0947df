"""Host-physical memory, guest RAM and the EPT that joins them (rust-vmm's vm-memory
in spirit: one module owns every byte of the machine).

- :class:`HostMemory` is the emulated machine's host-physical address space: anonymous
  mmap buffers placed at host-physical addresses (guest RAM, the hypervisor's own pages).
- :class:`GuestMemory` owns guest RAM (placed at HPA = GPA + ``gpa_hpa_offset``) and the
  real EPT paging structures (built in hypervisor-owned host memory) that map it.
  Guest-physical accesses by the VMM go through the EPT translation; the Unicorn
  engines get the same mappings (derived from the EPT, never the other way round), so
  an access the EPT does not allow ends as an EPT-violation VM exit.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import threading
from dataclasses import dataclass

from typing import Protocol

from hvdbg.vmx.ept import EptPerm, MemType

from hvdbg.vmx.ept_tables import Ept, EptRange
from hvdbg.errors import GuestMemoryError

PAGE = 0x1000
MiB = 1 << 20


class EngineMapping(Protocol):
    """An execution engine's view of guest-physical memory (hvdbg.engine.cpu.EngineCpu),
    kept equal to what the EPT maps.  ``perms`` are EPT R/W/X bits."""

    def map_ram(self, gpa: int, size: int, perms: int, host_pointer: int) -> None: ...
    def protect_ram(self, gpa: int, size: int, perms: int) -> None: ...
    def flush_code(self, begin: int, end: int) -> None: ...


@dataclass
class _HostRegion:
    hpa: int
    size: int
    name: str
    buf: mmap.mmap
    addr: int  # host virtual address of the buffer


class HostMemory:
    """The emulated machine's host-physical memory (implements PhysicalMemory)."""

    def __init__(self) -> None:
        self._regions: list[_HostRegion] = []
        self._starts: list[int] = []
        #: writes through :meth:`write` (the VMM, devices, debuggers; not guest code)
        self.writes = 0

    def add(self, hpa: int, size: int, name: str) -> _HostRegion:
        if hpa % PAGE or size % PAGE:
            raise ValueError("host regions must be page aligned")
        for r in self._regions:
            if hpa < r.hpa + r.size and r.hpa < hpa + size:
                raise ValueError(f"host region {name} overlaps {r.name}")
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        region = _HostRegion(hpa, size, name, buf, addr)
        i = bisect.bisect(self._starts, hpa)
        self._starts.insert(i, hpa)
        self._regions.insert(i, region)
        return region

    def _locate(self, hpa: int, size: int) -> tuple[_HostRegion, int]:
        i = bisect.bisect(self._starts, hpa) - 1
        if i >= 0:
            r = self._regions[i]
            if hpa + size <= r.hpa + r.size:
                return r, hpa - r.hpa
        raise GuestMemoryError(f"host-physical range {hpa:#x}+{size:#x} is not backed by memory")

    def read(self, addr: int, size: int) -> bytes:
        r, off = self._locate(addr, size)
        return r.buf[off:off + size]

    def write(self, addr: int, data: bytes) -> None:
        r, off = self._locate(addr, len(data))
        self.writes += 1
        r.buf[off:off + len(data)] = data

    def pointer(self, hpa: int, size: int) -> int:
        """Host virtual address of an HPA range (for Unicorn's mem_map_ptr)."""
        r, off = self._locate(hpa, size)
        return r.addr + off

    def regions(self) -> list[tuple[int, int, str]]:
        return [(r.hpa, r.size, r.name) for r in self._regions]


class PageAllocator:
    """Hands out zeroed 4 KiB pages of a hypervisor-owned host region (for EPT tables)."""

    def __init__(self, host: HostMemory, hpa: int, size: int) -> None:
        self._host = host
        self._next = hpa
        self._end = hpa + size
        self.used = 0

    def __call__(self) -> int:
        if self._next >= self._end:
            raise GuestMemoryError("hypervisor page pool exhausted (EPT tables)")
        page = self._next
        self._next += PAGE
        self._host.write(page, bytes(PAGE))
        self.used += 1
        return page


class GuestMemory:
    """Guest-physical memory of one VM (implements PhysicalMemory for GPAs)."""

    POOL_SIZE = 4 * MiB

    def __init__(self, ram_size: int, gpa_hpa_offset: int = 0) -> None:
        self.ram_size = ram_size
        self.gpa_hpa_offset = gpa_hpa_offset
        self.host = HostMemory()
        self.ram = self.host.add(gpa_hpa_offset, ram_size, "guest RAM")
        pool_hpa = (gpa_hpa_offset + ram_size + 2 * MiB - 1) & ~(2 * MiB - 1)
        self.host.add(pool_hpa, self.POOL_SIZE, "hypervisor pages")
        self.alloc_page = PageAllocator(self.host, pool_hpa, self.POOL_SIZE)
        self.ept = Ept(self.host, self.alloc_page)
        self.ept.map(0, gpa_hpa_offset, ram_size, EptPerm.RWX, MemType.WB)
        self._engines: list[EngineMapping] = []
        self._runs: list[EptRange] = []
        self._run_starts: list[int] = []
        self._ept_changes = 0
        self._lock = threading.Lock()
        self._refresh_runs()

    # -- EPT-derived views ------------------------------------------------------------
    def _refresh_runs(self) -> None:
        self._ept_changes += 1
        self._runs = list(self.ept.mapped_ranges())
        self._run_starts = [r.gpa_start for r in self._runs]

    @property
    def generation(self) -> int:
        """Grows with every change of guest memory made outside guest code: writes through
        :class:`HostMemory` (the VMM, devices, debuggers) and EPT changes."""
        return self.host.writes + self._ept_changes

    def translate(self, gpa: int) -> int | None:
        """GPA -> HPA through the EPT (cached runs), or None if not mapped."""
        i = bisect.bisect(self._run_starts, gpa) - 1
        if i >= 0:
            r = self._runs[i]
            if gpa < r.gpa_end:
                return r.hpa_start + gpa - r.gpa_start
        return None

    def _span(self, gpa: int, size: int) -> list[tuple[int, int]]:
        out = []
        while size > 0:
            i = bisect.bisect(self._run_starts, gpa) - 1
            if i < 0 or gpa >= self._runs[i].gpa_end:
                raise GuestMemoryError(f"guest-physical address {gpa:#x} is not mapped by the EPT")
            r = self._runs[i]
            n = min(size, r.gpa_end - gpa)
            out.append((r.hpa_start + gpa - r.gpa_start, n))
            gpa += n
            size -= n
        return out

    def read(self, addr: int, size: int) -> bytes:
        i = bisect.bisect(self._run_starts, addr) - 1
        if i >= 0:                 # within one run (a page-table entry, a stack read)
            r = self._runs[i]
            if addr + size <= r.gpa_end:
                return self.host.read(r.hpa_start + addr - r.gpa_start, size)
        return b"".join(self.host.read(hpa, n) for hpa, n in self._span(addr, size))

    def write(self, addr: int, data: bytes) -> None:
        pos = 0
        for hpa, n in self._span(addr, len(data)):
            self.host.write(hpa, data[pos:pos + n])
            pos += n

    def flush_code(self, gpa: int, size: int) -> None:
        """Drop translated code covering a range from every engine (after the VMM or a
        debugger changed code bytes).  Call only while the vCPUs are stopped."""
        for engine in self._engines:
            engine.flush_code(gpa, gpa + size)

    def runs(self) -> list[EptRange]:
        """The EPT's mapped runs (GPA order, merged), as engines map them."""
        return list(self._runs)

    def is_mapped(self, gpa: int) -> bool:
        return self.translate(gpa) is not None

    # -- engines ----------------------------------------------------------------------
    def attach(self, engine: "EngineMapping") -> None:
        """Give an engine the EPT's mappings (one shared host buffer, SDM 29.3 semantics:
        what the EPT does not map, the engine does not map)."""
        for r in self._runs:
            size = r.gpa_end - r.gpa_start
            engine.map_ram(r.gpa_start, size, int(r.perms), self.host.pointer(r.hpa_start, size))
        self._engines.append(engine)

    def protect(self, gpa: int, size: int, perms: EptPerm) -> None:
        """Change EPT permissions and every engine's view of them (an INVEPT)."""
        with self._lock:
            self.ept.protect(gpa, size, perms)
            self._refresh_runs()
            for engine in self._engines:
                engine.protect_ram(gpa, size, int(perms))
