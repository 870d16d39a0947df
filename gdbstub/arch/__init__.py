"""Register layouts and target descriptions (one module per architecture)."""

from .base import (
    TARGET_XML,
    Arch,
    Feature,
    FlagField,
    FlagsType,
    RegisterDef,
    RegisterFormatError,
    RegisterValue,
    UnionType,
    VectorType,
)
from .i386 import I386, I8086
from .x86_64 import X86_64

#: The x86 register layouts a stub can announce, by name (hvdbg's ``--gdb-arch``).
X86_LAYOUTS: dict[str, Arch] = {"x86-64": X86_64, "i386": I386, "i8086": I8086}

__all__ = [
    "TARGET_XML",
    "Arch",
    "Feature",
    "FlagField",
    "FlagsType",
    "RegisterDef",
    "RegisterFormatError",
    "RegisterValue",
    "UnionType",
    "VectorType",
    "X86_LAYOUTS",
]
