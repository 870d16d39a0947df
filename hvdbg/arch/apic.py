"""Local APIC architecture (SDM Vol. 3A chapter 11): the xAPIC page and the x2APIC MSR
range, the IA32_APIC_BASE bits, register offsets (Table 11-1) and the interrupt command
register (11.6.1) with its decoder.  The model of an APIC is hvdbg.platform.apic."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


XAPIC_BASE = 0xFEE00000
XAPIC_SIZE = 0x1000
X2APIC_MSR_BASE = 0x800
X2APIC_MSR_END = 0x8FF
IA32_APIC_BASE_MSR = 0x1B
APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10     # x2APIC mode
APIC_BASE_EN = 1 << 11


class Reg(IntEnum):
    """xAPIC register offsets (SDM Table 11-1)."""

    ID = 0x20
    VERSION = 0x30
    TPR = 0x80
    APR = 0x90
    PPR = 0xA0
    EOI = 0xB0
    RRD = 0xC0
    LDR = 0xD0
    DFR = 0xE0
    SVR = 0xF0
    ISR0 = 0x100
    TMR0 = 0x180
    IRR0 = 0x200
    ESR = 0x280
    LVT_CMCI = 0x2F0
    ICR_LOW = 0x300
    ICR_HIGH = 0x310
    LVT_TIMER = 0x320
    LVT_THERMAL = 0x330
    LVT_PERF = 0x340
    LVT_LINT0 = 0x350
    LVT_LINT1 = 0x360
    LVT_ERROR = 0x370
    TIMER_INITIAL = 0x380
    TIMER_CURRENT = 0x390
    TIMER_DIVIDE = 0x3E0
    SELF_IPI = 0x3F0     # x2APIC only


class DeliveryMode(IntEnum):
    """ICR delivery mode, bits 10:8 (SDM 11.6.1)."""

    FIXED = 0
    LOWEST_PRIORITY = 1
    SMI = 2
    NMI = 4
    INIT = 5
    STARTUP = 6
    EXTINT = 7      # LVT LINT0/LINT1 only: the vector comes from an 8259A's INTA (SDM 11.5.1)


class Shorthand(IntEnum):
    """ICR destination shorthand, bits 19:18 (SDM 11.6.1)."""

    NONE = 0
    SELF = 1
    ALL_INCLUDING_SELF = 2
    ALL_EXCLUDING_SELF = 3


SHORTHAND_TEXT = {
    Shorthand.NONE: "no shorthand",
    Shorthand.SELF: "self",
    Shorthand.ALL_INCLUDING_SELF: "all including self",
    Shorthand.ALL_EXCLUDING_SELF: "all excluding self",
}

LVT_MASKED = 1 << 16
TIMER_MODES = {0: "one-shot", 1: "periodic", 2: "TSC-deadline"}


def apic_base_write_problem(old: int, new: int, x2apic_supported: bool, maxphyaddr: int) -> str | None:
    """Why WRMSR IA32_APIC_BASE of ``new`` raises #GP(0), or None: reserved bits (7:0, 9,
    and above MAXPHYADDR; bit 8, BSP, is read-only and ignored), EXTD without CPUID x2APIC
    support, the invalid state EN=0/EXTD=1, and the transitions SDM 11.12.5 (Figure
    11-27) forbids: x2APIC to xAPIC, and disabled to x2APIC, without the state between."""
    reserved = (0xFF | 1 << 9 | ~((1 << maxphyaddr) - 1)) & 0xFFFFFFFFFFFFFFFF
    if new & reserved:
        return f"reserved bits {new & reserved:#x} set"
    en, extd = bool(new & APIC_BASE_EN), bool(new & APIC_BASE_EXTD)
    was_en, was_extd = bool(old & APIC_BASE_EN), bool(old & APIC_BASE_EXTD)
    if extd and not x2apic_supported:
        return "x2APIC enable without CPUID x2APIC support"
    if extd and not en:
        return "EXTD=1 with EN=0 is the invalid state"
    if was_en and was_extd and en and not extd:
        return "x2APIC mode to xAPIC mode without disabling the APIC first"
    if not was_en and en and extd:
        return "disabled to x2APIC mode without xAPIC mode first"
    return None
@dataclass(frozen=True)
class IcrCommand:
    """A decoded interrupt command (SDM 11.6.1, Figure 11-12)."""

    vector: int
    delivery_mode: int
    logical: bool
    level_assert: bool
    trigger_level: bool
    shorthand: Shorthand
    destination: int
    x2apic: bool

    @property
    def mode_name(self) -> str:
        try:
            return DeliveryMode(self.delivery_mode).name
        except ValueError:
            return f"reserved({self.delivery_mode})"

    def describe(self) -> str:
        if self.shorthand != Shorthand.NONE:
            dest = SHORTHAND_TEXT[self.shorthand]
        else:
            dest = f"{'logical' if self.logical else 'physical'} destination {self.destination:#x}"
        text = f"{self.mode_name} IPI"
        if self.delivery_mode == DeliveryMode.STARTUP:
            text += f" vector {self.vector:#04x} (start at {self.vector << 12:#x})"
        elif self.delivery_mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY):
            text += f" vector {self.vector:#04x}"
        if self.delivery_mode == DeliveryMode.INIT and not self.level_assert and self.trigger_level:
            text += " (level de-assert)"
        return f"{text} to {dest}"


def decode_icr(value: int, x2apic: bool = False) -> IcrCommand:
    """Decode a 64-bit ICR value (high dword = ICR_HIGH in xAPIC mode).

    xAPIC: destination is ICR_HIGH bits 31:24 (8 bits); x2APIC: the full high dword.
    """
    low = value & 0xFFFFFFFF
    high = value >> 32
    dest = high if x2apic else (high >> 24) & 0xFF
    return IcrCommand(
        vector=low & 0xFF,
        delivery_mode=(low >> 8) & 7,
        logical=bool(low & (1 << 11)),
        level_assert=bool(low & (1 << 14)),
        trigger_level=bool(low & (1 << 15)),
        shorthand=Shorthand((low >> 18) & 3),
        destination=dest,
        x2apic=x2apic,
    )


def encode_icr(vector: int = 0, delivery_mode: int = 0, destination: int = 0, *, logical: bool = False,
               level_assert: bool = True, trigger_level: bool = False,
               shorthand: Shorthand = Shorthand.NONE, x2apic: bool = False) -> int:
    low = (vector & 0xFF) | (delivery_mode & 7) << 8 | logical << 11 | level_assert << 14 \
        | trigger_level << 15 | int(shorthand) << 18
    high = destination & 0xFFFFFFFF if x2apic else (destination & 0xFF) << 24
    return high << 32 | low
