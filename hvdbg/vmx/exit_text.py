"""One English sentence for any VM exit (SDM 28.2: the exit reason, its qualification
and the other exit-information fields): the "descriptions" of hvdbg.vmx.exits, apart
from the codecs.  Sentences have no trailing full stop so callers can prefix them."""

from __future__ import annotations

from typing import Any, Callable

from hvdbg.vmx.controls import InterruptionInfo, InterruptionType, exception_label
from hvdbg.vmx.exits import (ApicAccessQualification, CrAccessQualification, DrAccessQualification,
                             EptViolationQualification, ExitReason, ExitReasonField, IoQualification,
                             TaskSwitchQualification, _hex_or_none)


# --------------------------------------------------------------------------------------
# Exceptions and NMIs (SDM 28.2.1 "exit qualification for #DB/#PF", 28.2.2 interruption info)
# --------------------------------------------------------------------------------------

_PF_VECTOR = 14
_DB_VECTOR = 1


def describe_exception(intr_info: int | InterruptionInfo, qualification: int = 0,
                       error_code: int | None = None) -> str:
    """Sentence for an exception-or-NMI exit.  For #PF the exit qualification is the faulting
    linear address (what would have gone to CR2); for #DB it holds the pending debug bits.

    E.g. 'Exception: hardware exception #PF (page fault), error code 0x2, CR2 0x7f000'.
    """
    info = intr_info if isinstance(intr_info, InterruptionInfo) else InterruptionInfo.decode(intr_info)
    if not info.valid:
        return "Exception or NMI with invalid interruption information"
    if info.type is InterruptionType.NMI:
        return "NMI"
    text = f"Exception: {info.type.label} {exception_label(info.vector)}"
    if info.error_code_valid:
        text += f", error code {error_code:#x}" if error_code is not None else ", error code valid"
    if info.vector == _PF_VECTOR:
        text += f", CR2 {qualification:#x}"
    elif info.vector == _DB_VECTOR and qualification:
        text += f", debug qualification {qualification:#x}"
    if info.nmi_unblocking:
        text += ", NMI unblocking due to IRET"
    return text


# --------------------------------------------------------------------------------------
# describe_exit
# --------------------------------------------------------------------------------------

_ENTRY_FAILURE_PREFIX = "VM-entry failure"
EXTRA_KEYS: frozenset[str] = frozenset({"gpa", "gla", "intr_info", "error_code", "msr"})


def _generic(reason: ExitReason, qualification: int) -> str:
    text = f"{reason.description} (exit reason {int(reason)})"
    return text + (f", exit qualification {qualification:#x}" if qualification else "")


def _sipi(qualification: int) -> str:
    vector = qualification & 0xFF
    return f"Start-up IPI (SIPI) with vector {vector:#x} (start at {vector << 12:#x})"


def _external_interrupt(qualification: int, intr_info: int | None) -> str:
    if intr_info is None:
        return _generic(ExitReason.EXTERNAL_INTERRUPT, qualification)
    info = InterruptionInfo.decode(intr_info)
    if not info.valid:  # "acknowledge interrupt on exit" was 0: the vector was not read
        return "External interrupt (not acknowledged)"
    return f"External interrupt vector {info.vector:#x}"


def _msr(reason: ExitReason, msr: int | None) -> str:
    if msr is None:
        return _generic(reason, 0)
    return f"{reason.description} of MSR {msr:#x}"


def _ept_misconfig(gpa: int | None) -> str:
    return f"EPT misconfiguration at GPA {_hex_or_none(gpa)}"


Describer = Callable[[int, dict[str, Any]], str]

_DESCRIBERS: dict[ExitReason, Describer] = {
    ExitReason.EXCEPTION_NMI: lambda q, x: describe_exception(x.get("intr_info", 0), q, x.get("error_code")),
    ExitReason.EXTERNAL_INTERRUPT: lambda q, x: _external_interrupt(q, x.get("intr_info")),
    ExitReason.SIPI: lambda q, x: _sipi(q),
    ExitReason.TASK_SWITCH: lambda q, x: TaskSwitchQualification.decode(q).describe(),
    ExitReason.CR_ACCESS: lambda q, x: CrAccessQualification.decode(q).describe(),
    ExitReason.DR_ACCESS: lambda q, x: DrAccessQualification.decode(q).describe(),
    ExitReason.IO_INSTRUCTION: lambda q, x: IoQualification.decode(q).describe(),
    ExitReason.MSR_READ: lambda q, x: _msr(ExitReason.MSR_READ, x.get("msr")),
    ExitReason.MSR_WRITE: lambda q, x: _msr(ExitReason.MSR_WRITE, x.get("msr")),
    ExitReason.APIC_ACCESS: lambda q, x: ApicAccessQualification.decode(q).describe(),
    ExitReason.EPT_VIOLATION: lambda q, x: EptViolationQualification.decode(q).describe(x.get("gpa"), x.get("gla")),
    ExitReason.EPT_MISCONFIG: lambda q, x: _ept_misconfig(x.get("gpa")),
}


def describe_exit(reason: int, qualification: int = 0, **extra: Any) -> str:
    """One English sentence for a VM exit.

    ``reason`` is the exit-reason field (basic reason in bits 15:0; bit 31 marks a
    VM-entry failure) or an :class:`ExitReason`.  ``extra`` may carry other VMCS exit
    information: ``gpa`` (GUEST_PHYSICAL_ADDRESS), ``gla`` (GUEST_LINEAR_ADDRESS),
    ``intr_info`` (VM_EXIT_INTR_INFO), ``error_code`` (VM_EXIT_INTR_ERROR_CODE), ``msr``
    (guest ECX for RDMSR/WRMSR).  Reasons without a decoder get a generic sentence.
    """
    unknown = set(extra) - EXTRA_KEYS
    if unknown:
        raise TypeError(f"describe_exit() got unexpected keyword(s): {', '.join(sorted(unknown))}")
    field = ExitReasonField.decode(int(reason))
    known = field.reason
    if known is None:
        text = f"Unknown exit reason {field.basic}" + (f", exit qualification {qualification:#x}" if qualification else "")
    else:
        describer = _DESCRIBERS.get(known)
        text = describer(qualification, extra) if describer else _generic(known, qualification)
    if field.entry_failure and not text.startswith(_ENTRY_FAILURE_PREFIX):
        text = f"{_ENTRY_FAILURE_PREFIX}: {text}"
    return text
