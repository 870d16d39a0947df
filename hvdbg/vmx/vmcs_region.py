"""A guest hypervisor's VMCS region, kept in the guest hypervisor's own memory (SDM 25.2
"Format of the VMCS Region", 25.11.3 "Initializing a VMCS").

The SDM fixes only the first 8 bytes: bits 30:0 of the first dword are the VMCS revision
identifier, bit 31 the shadow-VMCS indicator, the second dword the VMX-abort indicator.
The rest is "VMCS data (implementation-specific format)"; hvdbg's format is:

    offset 0x00  u32  revision identifier | shadow-VMCS indicator << 31
    offset 0x04  u32  VMX-abort indicator
    offset 0x08  u32  launch state (0 clear, 1 launched; SDM 25.1)
    offset 0x10  u64  one slot per VMCS field, in Appendix B order (hvdbg.vmx.fields.FIELDS)

Fields are written through to memory at once, so the region always shows the VMCS as the
processor sees it (what a debugger wants); software must not rely on that (SDM 25.11.1).
Memory that is not backed reads as all ones and ignores writes, as on a bus with nothing
behind it: a wild VMCS pointer fails the revision check instead of raising in Python.
"""

from __future__ import annotations

from typing import Iterator

from hvdbg.arch.physmem import PhysicalMemory
from hvdbg.errors import GuestMemoryError
from hvdbg.vmx.fields import FIELDS, FieldRef, VmcsField, resolve
from hvdbg.vmx.vmcs import LaunchState, SHADOW_VMCS_INDICATOR, Vmcs

REVISION_OFFSET = 0x0
ABORT_OFFSET = 0x4
LAUNCH_OFFSET = 0x8
DATA_OFFSET = 0x10
REGION_SIZE = 4096
SLOT_SIZE = 8

SLOTS: dict[int, int] = {f.encoding: DATA_OFFSET + SLOT_SIZE * i for i, f in enumerate(FIELDS)}
assert DATA_OFFSET + SLOT_SIZE * len(FIELDS) <= REGION_SIZE, "the VMCS data must fit in 4 KiB"


class OpenBusMemory:
    """A :class:`PhysicalMemory` where unbacked bytes read as 0xFF and writes to them are
    dropped (what VMX instructions see of memory that does not exist)."""

    def __init__(self, mem: PhysicalMemory) -> None:
        self.mem = mem

    def read(self, addr: int, size: int) -> bytes:
        try:
            return self.mem.read(addr, size)
        except GuestMemoryError:
            return b"\xff" * size

    def write(self, addr: int, data: bytes) -> None:
        try:
            self.mem.write(addr, data)
        except GuestMemoryError:
            pass


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 4], "little")


class VmcsRegion:
    """The VMCS at guest-physical ``address``: header, launch state and fields."""

    def __init__(self, mem: PhysicalMemory, address: int) -> None:
        self.mem = mem if isinstance(mem, OpenBusMemory) else OpenBusMemory(mem)
        self.address = address

    def _read32(self, offset: int) -> int:
        return _u32(self.mem.read(self.address + offset, 4), 0)

    def _write32(self, offset: int, value: int) -> None:
        self.mem.write(self.address + offset, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    # -- header (SDM 25.2) ---------------------------------------------------------------

    @property
    def header(self) -> int:
        return self._read32(REVISION_OFFSET)

    @property
    def revision_id(self) -> int:
        return self.header & ~SHADOW_VMCS_INDICATOR

    @property
    def shadow(self) -> bool:
        return bool(self.header & SHADOW_VMCS_INDICATOR)

    @property
    def abort_indicator(self) -> int:
        return self._read32(ABORT_OFFSET)

    def record_abort(self, indicator: int) -> None:
        """A VMX abort (SDM 28.7): the indicator goes into the region's second dword."""
        self._write32(ABORT_OFFSET, indicator)

    @property
    def launch_state(self) -> LaunchState:
        return LaunchState.LAUNCHED if self._read32(LAUNCH_OFFSET) == 1 else LaunchState.CLEAR

    @launch_state.setter
    def launch_state(self, state: LaunchState) -> None:
        self._write32(LAUNCH_OFFSET, 1 if state is LaunchState.LAUNCHED else 0)

    def initialize(self, revision_id: int, *, shadow: bool = False) -> None:
        """What software does before VMPTRLD (SDM 25.11.3): write the revision identifier;
        hvdbg also zeroes the data, as VMCLEAR of a fresh region leaves it."""
        self.mem.write(self.address, bytes(REGION_SIZE))
        self._write32(REVISION_OFFSET, revision_id | (SHADOW_VMCS_INDICATOR if shadow else 0))

    # -- fields ------------------------------------------------------------------------

    def read(self, field: str | int | FieldRef) -> int:
        """The field's value (bits 63:32 for a high access); unknown fields raise
        UnknownVmcsFieldError (the caller decides what is supported)."""
        ref = field if isinstance(field, FieldRef) else resolve(field)
        value = int.from_bytes(self.mem.read(self.address + SLOTS[ref.field.encoding], 8), "little")
        value &= ref.field.mask
        return value >> 32 if ref.high else value

    def write(self, field: str | int | FieldRef, value: int) -> None:
        """Write the field, masked to its width (a high access writes bits 63:32 only)."""
        ref = field if isinstance(field, FieldRef) else resolve(field)
        if ref.high:
            value = self.read(FieldRef(ref.field, False)) & 0xFFFFFFFF | (value & 0xFFFFFFFF) << 32
        self.mem.write(self.address + SLOTS[ref.field.encoding], (value & ref.field.mask).to_bytes(8, "little"))

    def snapshot(self) -> dict[str, int]:
        """Name -> value of every field, read from memory in one access."""
        data = self.mem.read(self.address, REGION_SIZE)
        return {f.name: int.from_bytes(data[SLOTS[f.encoding]:SLOTS[f.encoding] + 8], "little") & f.mask
                for f in FIELDS}

    def fields(self) -> Iterator[tuple[VmcsField, int]]:
        values = self.snapshot()
        return ((f, values[f.name]) for f in FIELDS)

    def to_vmcs(self) -> Vmcs:
        """A :class:`Vmcs` copy of this region, for the debugger's VMCS displays."""
        vmcs = Vmcs(self.revision_id, shadow=self.shadow)
        vmcs.update(self.snapshot())
        if self.launch_state is LaunchState.LAUNCHED:
            vmcs.mark_launched()
        return vmcs
