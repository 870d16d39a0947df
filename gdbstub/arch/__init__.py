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
]
