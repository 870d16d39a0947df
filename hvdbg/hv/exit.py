"""One VM exit as the VMM sees it: :class:`ExitInfo` (the exit-information fields of the
VMCS, SDM 25.9, plus a typed per-reason payload) and the handler's :class:`ExitDecision`.

The VMM's handlers are functions of (vCPU, exit) that return a decision
(hvdbg.hv.vmm); the vCPU applies it (hvdbg.hv.vcpu).  Payloads are slot classes built
once per exit: the hot exits (CPUID, I/O) carry none."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from hvdbg.vmx.exits import ExitReason

if TYPE_CHECKING:
    from hvdbg.arch.events import Event
    from hvdbg.vmx.ept import EptWalk


class ExitDecision(enum.Enum):
    """What the handler did with the exiting instruction, and whether the guest goes on."""

    RESUME = "resume"    # emulated (RIP past it where the instruction was completed); VM entry at once
    LEAVE = "leave"      # handled; leave the engine: the executor decides what runs next
    NATIVE = "native"    # not the VMM's after all: the engine executes the instruction itself
    FAULT = "fault"      # not completed: an exception is pending for the guest; leave the engine
    REFLECTED = "reflected"   # a guest hypervisor's exit: its guest's instruction is not performed;
                              # leave the engine, the guest hypervisor takes it (hvdbg.hv.nested_guest)

    @property
    def abandoned(self) -> bool:
        """The instruction was not performed and must not be (an exception or a reflected exit)."""
        return self is ExitDecision.FAULT or self is ExitDecision.REFLECTED

    @property
    def completed(self) -> bool:
        """The instruction was emulated (RIP moves past it)."""
        return self is ExitDecision.RESUME or self is ExitDecision.LEAVE


@dataclass(slots=True)
class ApicAccess:
    """APIC-access exit (reason 44): the access size the qualification does not carry."""

    size: int


@dataclass(slots=True)
class MmioAccess:
    """EPT violation on device MMIO (reason 48): the access the engine decoded, and the
    EPT walk that found the GPA unmapped."""

    size: int
    write: bool
    walk: object = None


@dataclass(slots=True)
class MsrAccess:
    """RDMSR/WRMSR exit (reasons 31/32): the MSR index (ECX at the exit)."""

    msr: int


@dataclass(slots=True)
class EptFault:
    """EPT violation or misconfiguration (reasons 48/49): the EPT walk that failed and the
    access that caused it ("read", "write", "fetch")."""

    walk: "EptWalk"
    access: str


@dataclass(slots=True)
class NestedEptFault:
    """An EPT violation or misconfiguration in a guest hypervisor's EPT (hvdbg.hv.
    nested_memory): that guest hypervisor's exit, not hvdbg's."""

    walk: "EptWalk"
    access: str


@dataclass(slots=True)
class ExceptionExit:
    """Exception exit (reason 0): the event the exception bitmap intercepted."""

    event: "Event"


@dataclass(slots=True)
class TripleFault:
    """Triple fault (reason 2): the chain of (event, why) that failed to deliver (SDM 6.15),
    or the engine error that stopped the vCPU (``internal``)."""

    chain: list = field(default_factory=list)
    event: "Event | None" = None
    internal: str | None = None


ExitPayload = Union[ApicAccess, MsrAccess, EptFault, NestedEptFault, ExceptionExit, TripleFault, None]


@dataclass(slots=True)
class ExitInfo:
    """One VM exit.  ``data`` carries the value of an IN / RDMSR / APIC read back into the
    guest (and the value an OUT / WRMSR / APIC write stores); ``decision`` is the handler's
    answer (set by the VMM)."""

    reason: ExitReason
    qualification: int = 0
    rip: int = 0
    instruction_length: int = 0
    guest_physical: int | None = None
    guest_linear: int | None = None
    interruption_info: int = 0
    interruption_error: int | None = None
    detail: str = ""
    data: int = 0
    payload: ExitPayload = None
    decision: ExitDecision | None = None
