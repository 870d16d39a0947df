"""The target interface: what a debuggee must provide to be served over GDB RSP.

Modelled on the Rust ``gdbstub`` crate: :class:`Target` is the mandatory base
(threads, registers, memory, resume/stop) and every optional feature is a small
capability interface the target opts into by inheriting it. The session asks
``target.support_<capability>()`` which, by default, returns the target itself when
it inherits the capability and ``None`` otherwise; wrappers (see
:mod:`gdbstub.subset`) override these accessors to forward an inner target's
capabilities.

Threading contract: the server calls every method from its own (single) thread.
``resume`` must return promptly; the target runs on its own threads and reports
the stop through ``wait_for_stop``. All-stop semantics: when one thread stops,
the target stops all of them before ``wait_for_stop`` returns the event.
"""

from __future__ import annotations

import abc
import enum
import errno as _errno
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

from .arch.base import Arch, RegisterValue

SIGINT = 2
SIGTRAP = 5
SIGKILL = 9


class TargetError(Exception):
    """A recoverable target failure, reported to GDB as ``E<errno>``."""

    def __init__(self, message: str = "", errno: int = _errno.EIO) -> None:
        super().__init__(message)
        self.errno = errno


class MemoryAccessError(TargetError):
    """Memory at the requested address cannot be read or written (``E0e``)."""

    def __init__(self, message: str = "", errno: int = _errno.EFAULT) -> None:
        super().__init__(message, errno)


# ------------------------------------------------------------------ value types


@dataclass(frozen=True)
class ThreadInfo:
    """A thread as GDB sees it. ``tid`` must be > 0 (0 and -1 are wildcards)."""

    tid: int
    name: str

    def __post_init__(self) -> None:
        if self.tid <= 0:
            raise ValueError("thread ids must be > 0")


class ResumeKind(enum.Enum):
    CONTINUE = "c"
    STEP = "s"


@dataclass(frozen=True)
class ResumeAction:
    """What one thread does on resume; ``signal`` is GDB's signal to deliver, if any."""

    kind: ResumeKind
    signal: int | None = None


class WatchKind(enum.IntEnum):
    """Watchpoint kinds, numbered like the ``Z2``/``Z3``/``Z4`` packets."""

    WRITE = 2
    READ = 3
    ACCESS = 4


class StopReason(enum.Enum):
    SW_BREAKPOINT = "swbreak"
    HW_BREAKPOINT = "hwbreak"
    WATCHPOINT = "watch"
    STEP_DONE = "step"
    INTERRUPTED = "interrupted"
    SIGNAL = "signal"
    EXITED = "exited"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class StopEvent:
    """Why the target stopped. Build it with the named constructors."""

    reason: StopReason
    tid: int | None = None
    signal: int = SIGTRAP
    watch_kind: WatchKind | None = None
    watch_address: int | None = None
    exit_status: int | None = None

    @classmethod
    def sw_breakpoint(cls, tid: int) -> StopEvent:
        return cls(StopReason.SW_BREAKPOINT, tid)

    @classmethod
    def hw_breakpoint(cls, tid: int) -> StopEvent:
        return cls(StopReason.HW_BREAKPOINT, tid)

    @classmethod
    def watchpoint(cls, tid: int, kind: WatchKind, address: int) -> StopEvent:
        return cls(StopReason.WATCHPOINT, tid, watch_kind=kind, watch_address=address)

    @classmethod
    def step_done(cls, tid: int) -> StopEvent:
        return cls(StopReason.STEP_DONE, tid)

    @classmethod
    def interrupted(cls, tid: int) -> StopEvent:
        return cls(StopReason.INTERRUPTED, tid, signal=SIGINT)

    @classmethod
    def signalled(cls, tid: int, signal: int) -> StopEvent:
        return cls(StopReason.SIGNAL, tid, signal=signal)

    @classmethod
    def exited(cls, status: int) -> StopEvent:
        return cls(StopReason.EXITED, exit_status=status)

    @classmethod
    def terminated(cls, signal: int = SIGKILL) -> StopEvent:
        return cls(StopReason.TERMINATED, signal=signal)


# ------------------------------------------------------------------ capabilities


class SwBreakpointOps(abc.ABC):
    """``Z0``/``z0``. Return False when the breakpoint cannot be set/removed."""

    @abc.abstractmethod
    def add_sw_breakpoint(self, address: int, kind: int) -> bool: ...

    @abc.abstractmethod
    def remove_sw_breakpoint(self, address: int, kind: int) -> bool: ...


class HwBreakpointOps(abc.ABC):
    """``Z1``/``z1``. Return False when out of hardware resources."""

    @abc.abstractmethod
    def add_hw_breakpoint(self, address: int, kind: int) -> bool: ...

    @abc.abstractmethod
    def remove_hw_breakpoint(self, address: int, kind: int) -> bool: ...


class WatchpointOps(abc.ABC):
    """``Z2``-``Z4``/``z2``-``z4``: write, read and access watchpoints."""

    @abc.abstractmethod
    def add_watchpoint(self, address: int, length: int, kind: WatchKind) -> bool: ...

    @abc.abstractmethod
    def remove_watchpoint(self, address: int, length: int, kind: WatchKind) -> bool: ...


class ConsoleOutput(abc.ABC):
    """Text sink for monitor commands; each write reaches GDB as ``O`` packets."""

    @abc.abstractmethod
    def write(self, text: str) -> None: ...


class MonitorOps(abc.ABC):
    """``qRcmd`` (GDB's ``monitor <command>``). Raise TargetError for an ``E`` reply."""

    @abc.abstractmethod
    def monitor_command(self, command: str, out: ConsoleOutput) -> None: ...


class ThreadExtraInfoOps(abc.ABC):
    """``qThreadExtraInfo``: the text GDB prints in parentheses in ``info threads``."""

    @abc.abstractmethod
    def thread_extra_info(self, tid: int) -> str: ...


class SstepFlags(enum.IntFlag):
    """QEMU's single-step flags (``qqemu.sstepbits``)."""

    ENABLE = 1
    NOIRQ = 2
    NOTIMER = 4


class SingleStepFlagsOps(abc.ABC):
    """QEMU-compatible ``qemu.sstepbits``/``qemu.sstep`` probes.

    Opting in makes pwndbg/gef recognise the stub as QEMU system mode.
    """

    @abc.abstractmethod
    def single_step_flags(self) -> SstepFlags: ...

    @abc.abstractmethod
    def set_single_step_flags(self, flags: SstepFlags) -> None: ...


class PhysicalMemoryOps(abc.ABC):
    """Physical memory access, used for ``m``/``M``/``X`` after ``Qqemu.PhyMemMode:1``."""

    @abc.abstractmethod
    def read_physical_memory(self, address: int, length: int) -> bytes: ...

    @abc.abstractmethod
    def write_physical_memory(self, address: int, data: bytes) -> None: ...


class RawRegistersOps(abc.ABC):
    """The ``g`` reply built by the target itself (gdb sends ``g`` after every stop and
    step, so this is on the stepi round trip): no per-register values in between."""

    @abc.abstractmethod
    def read_registers_hex(self, tid: int, names: Sequence[str] | None = None) -> bytes:
        """Every register of the layout in order as ASCII hex in the arch's byte order,
        ``xx`` pairs for unavailable bytes: exactly ``2 * arch.g_packet_size`` bytes.
        With ``names``, only those registers, in that order (a stop reply's expedited
        ones), each as it would be in the full reply."""


class DetachOps(abc.ABC):
    """Called after GDB detaches (``D``) or disconnects; breakpoints already removed.

    Without this capability the session resumes every thread (like QEMU).
    """

    @abc.abstractmethod
    def detach(self) -> None: ...


class KillOps(abc.ABC):
    """Called on ``k``/``vKill``. Without it the target is left stopped."""

    @abc.abstractmethod
    def kill(self) -> None: ...


Cap = TypeVar("Cap")


def _capability(target: object, cap: type[Cap]) -> Cap | None:
    return target if isinstance(target, cap) else None


# ------------------------------------------------------------------ base target


class Target(abc.ABC):
    """Mandatory operations of a debuggee (all-stop, multi-thread)."""

    @property
    @abc.abstractmethod
    def arch(self) -> Arch:
        """Register layout and target description."""

    @abc.abstractmethod
    def threads(self) -> Sequence[ThreadInfo]:
        """Threads (e.g. vCPUs) in a stable order; the first is the default one."""

    def thread_ids(self) -> Sequence[int]:
        """The ids of :meth:`threads`, in the same order. The session asks for them on
        most packets (thread selection); a target whose names cost something to build
        overrides this."""
        return [t.tid for t in self.threads()]

    @abc.abstractmethod
    def read_registers(self, tid: int) -> Mapping[str, RegisterValue]:
        """Register values by layout name; missing names read as unavailable."""

    @abc.abstractmethod
    def write_registers(self, tid: int, values: Mapping[str, RegisterValue]) -> None:
        """Write the given registers (a subset of the layout) of ``tid``."""

    @abc.abstractmethod
    def read_memory(self, tid: int, address: int, length: int) -> bytes:
        """Read memory as seen by ``tid``; raise MemoryAccessError when unmapped."""

    @abc.abstractmethod
    def write_memory(self, tid: int, address: int, data: bytes) -> None:
        """Write memory as seen by ``tid``; raise MemoryAccessError when unmapped."""

    @abc.abstractmethod
    def resume(self, actions: Mapping[int, ResumeAction]) -> None:
        """Start the listed threads (others stay stopped) and return immediately."""

    @abc.abstractmethod
    def wait_for_stop(self, timeout: float | None) -> StopEvent | None:
        """Block up to ``timeout`` seconds for the stop that ends the last resume."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Ask a running target to stop (GDB Ctrl-C); the stop arrives via wait_for_stop."""

    @abc.abstractmethod
    def attach(self) -> StopEvent:
        """A debugger connected: stop every thread if running; return the state to report."""

    # ---- optional capabilities (override to forward, e.g. in wrappers)

    def support_sw_breakpoints(self) -> SwBreakpointOps | None:
        return _capability(self, SwBreakpointOps)

    def support_hw_breakpoints(self) -> HwBreakpointOps | None:
        return _capability(self, HwBreakpointOps)

    def support_watchpoints(self) -> WatchpointOps | None:
        return _capability(self, WatchpointOps)

    def support_monitor(self) -> MonitorOps | None:
        return _capability(self, MonitorOps)

    def support_thread_extra_info(self) -> ThreadExtraInfoOps | None:
        return _capability(self, ThreadExtraInfoOps)

    def support_single_step_flags(self) -> SingleStepFlagsOps | None:
        return _capability(self, SingleStepFlagsOps)

    def support_physical_memory(self) -> PhysicalMemoryOps | None:
        return _capability(self, PhysicalMemoryOps)

    def support_raw_registers(self) -> RawRegistersOps | None:
        return _capability(self, RawRegistersOps)

    def support_detach(self) -> DetachOps | None:
        return _capability(self, DetachOps)

    def support_kill(self) -> KillOps | None:
        return _capability(self, KillOps)
