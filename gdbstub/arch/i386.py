"""The 32-bit x86 register layout, announced as ``i386`` or ``i8086``.

GDB decodes instructions by the target description's architecture and refuses
``set architecture i8086`` on an x86-64 one, so real-mode code (a boot sector, an AP's
SIPI trampoline) can only be disassembled by gdb itself from a 32-bit layout. With
``<architecture>i8086</architecture>`` gdb starts in 16-bit decoding and ``set
architecture i386`` switches to 32-bit code later (both are the i386 BFD architecture).
Registers are those of GDB's ``32bit-core.xml`` and ``32bit-sse.xml`` (GDB manual,
"i386 Features") plus a system feature with CR0/2/3/4 and EFER; the target truncates its
state to 32 bits, so this layout is for code below long mode (Intel SDM Vol. 1, 3.4).
"""

from __future__ import annotations

from .base import Arch, Feature, FlagsType, RegisterDef
from .x86_64 import CR0_TYPE, CR3_TYPE, CR4_TYPE, EFER_TYPE, core_feature, sse_feature

#: GDB's i386 order (``32bit-core.xml``), not the x86-64 one.
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
POINTER_GPRS = {"esp": "data_ptr", "ebp": "data_ptr"}
#: The x86-64 register each 32-bit one is the low half of (the others share their name).
WIDE_NAMES = {**{n: "r" + n[1:] for n in GPR_NAMES}, "eip": "rip"}


def _narrow(t: FlagsType) -> FlagsType:
    return FlagsType(t.id.replace("x64_", "i386_"), 4, tuple(f for f in t.fields if f.end < 32))


CORE = core_feature("i386-core.xml", GPR_NAMES, POINTER_GPRS, 32, "eip")
SSE = sse_feature("i386-sse.xml", 8)

SYSTEM = Feature(
    name="org.gdbstub.i386.system",
    filename="i386-system.xml",
    types=tuple(_narrow(t) for t in (CR0_TYPE, CR3_TYPE, CR4_TYPE, EFER_TYPE)),
    registers=(
        RegisterDef("cr0", 32, "i386_cr0"),
        RegisterDef("cr2", 32, "int32"),
        RegisterDef("cr3", 32, "i386_cr3"),
        RegisterDef("cr4", 32, "i386_cr4"),
        RegisterDef("efer", 32, "i386_efer"),
    ),
)


def i386_arch(architecture: str = "i386") -> Arch:
    """The 32-bit layout announced as ``architecture`` (``"i386"`` or ``"i8086"``)."""
    if architecture not in ("i386", "i8086"):
        raise ValueError(f"not a 32-bit x86 architecture: {architecture!r}")
    return Arch(architecture=architecture, features=(CORE, SSE, SYSTEM), pc_register="eip",
                expedite=("ebp", "esp", "eip"))


I386 = i386_arch("i386")
I8086 = i386_arch("i8086")
