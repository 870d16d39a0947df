"""Segment registers with their hidden part in the VMX access-rights format (SDM 25.4.1,
Table 25-2), and the segment sets the boot protocols define."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """A segment register with its hidden part, VMX style (SDM 25.4.1).

    ``access_rights`` uses the VMCS access-rights format: type 3:0, S 4, DPL 6:5, P 7,
    AVL 12, L 13, D/B 14, G 15, unusable 16.  ``limit`` is the byte-granular limit.
    """

    selector: int
    base: int
    limit: int
    access_rights: int

    @property
    def unusable(self) -> bool:
        return bool(self.access_rights & (1 << 16))


def as_held(name: str, seg: Segment) -> Segment:
    """``seg`` (register ``name``) as the processor's hidden part holds it once loaded:
    code and data segments accessed (the load sets the descriptor's A bit, SDM Vol. 3A
    3.4.5.1), TR busy (LTR sets B, 8.2.4).  QEMU caches the descriptor's type from before
    the load; a VMCS's guest-state area must have both (SDM 27.3.1.2)."""
    ar = seg.access_rights
    if not seg.unusable and ar & 0x10:
        ar |= 1
    elif name == "tr" and ar & 0xF in (1, 9):
        ar |= 2
    return seg if ar == seg.access_rights else Segment(seg.selector, seg.base, seg.limit, ar)


def flat_segments_32() -> dict[str, Segment]:
    """The multiboot machine state: flat 4 GiB code (0x10) and data (0x18) segments
    (Multiboot 0.6.96, 3.2)."""
    code = Segment(0x10, 0, 0xFFFFFFFF, 0xC09B)
    data = Segment(0x18, 0, 0xFFFFFFFF, 0xC093)
    return {"cs": code, "ds": data, "es": data, "ss": data, "fs": data, "gs": data,
            "ldtr": Segment(0, 0, 0, 1 << 16), "tr": Segment(0, 0, 0xFFFF, 0x8B)}


def real_mode_segments(cs_selector: int, cs_base: int) -> dict[str, Segment]:
    """State after INIT + SIPI: CS.sel = vector << 8, CS.base = vector << 12 (SDM 9.1.1, 11.4.4)."""
    data = Segment(0, 0, 0xFFFF, 0x93)
    return {"cs": Segment(cs_selector, cs_base, 0xFFFF, 0x9B), "ds": data, "es": data, "ss": data,
            "fs": data, "gs": data, "ldtr": Segment(0, 0, 0xFFFF, 0x82), "tr": Segment(0, 0, 0xFFFF, 0x8B)}

