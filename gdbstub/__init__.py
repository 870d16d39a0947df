"""GDB Remote Serial Protocol stub, independent of what it debugs.

The protocol core (:mod:`gdbstub.packet`, :mod:`gdbstub.session`,
:mod:`gdbstub.server`) talks to a :class:`~gdbstub.target.Target`; optional
features are capability interfaces a target opts into (see :mod:`gdbstub.target`).
"""

from .arch.base import Arch, RegisterDef, RegisterValue
from .server import GdbServer
from .session import GdbSession, SessionEnd
from .subset import ThreadSubsetTarget
from .target import (
    ConsoleOutput,
    DetachOps,
    HwBreakpointOps,
    KillOps,
    MemoryAccessError,
    MonitorOps,
    PhysicalMemoryOps,
    RawRegistersOps,
    ResumeAction,
    ResumeKind,
    SingleStepFlagsOps,
    SstepFlags,
    StopEvent,
    StopReason,
    SwBreakpointOps,
    Target,
    TargetError,
    ThreadExtraInfoOps,
    ThreadInfo,
    WatchKind,
    WatchpointOps,
)

__all__ = [
    "Arch",
    "ConsoleOutput",
    "DetachOps",
    "GdbServer",
    "GdbSession",
    "HwBreakpointOps",
    "KillOps",
    "MemoryAccessError",
    "MonitorOps",
    "PhysicalMemoryOps",
    "RegisterDef",
    "RegisterValue",
    "ResumeAction",
    "ResumeKind",
    "SessionEnd",
    "SingleStepFlagsOps",
    "SstepFlags",
    "StopEvent",
    "StopReason",
    "SwBreakpointOps",
    "Target",
    "TargetError",
    "ThreadExtraInfoOps",
    "ThreadInfo",
    "ThreadSubsetTarget",
    "WatchKind",
    "WatchpointOps",
]
