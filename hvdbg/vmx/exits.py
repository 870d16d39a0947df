"""VM-exit reasons and exit qualifications (Intel SDM Vol. 3C chapter 28 / Vol. 3D Appendix C).

* :class:`ExitReason` -- every basic exit reason of Appendix C, Table C-1, each with a
  short English description.
* :class:`ExitReasonField` -- the full 32-bit exit-reason field (SDM 25.9.1, Table 25-18).
* Exit-qualification records (SDM 28.2.1), each a frozen dataclass whose ``encode()`` is the
  builder and ``decode(value)`` the decoder, with a ``describe()`` sentence:
  EPT violation (Table 28-7), I/O instruction (Table 28-5), control-register access
  (Table 28-3), MOV DR (Table 28-4), APIC access (Table 28-6), task switch (Table 28-2).
* :func:`describe_exit` -- one sentence for any exit.

Sentences have no trailing full stop so callers can prefix them ("vCPU1: ...").
"""

from __future__ import annotations

import functools
from enum import IntEnum
from typing import ClassVar

from hvdbg.arch.apic import Reg as ApicReg
from hvdbg.vmx.ept import EptPerm, EptWalk
from hvdbg.vmx.controls import BitField, BitRecord, bit_record


class ExitReason(IntEnum):
    """Basic exit reasons (SDM Vol. 3D Appendix C, Table C-1). Numbers missing from the
    enumeration (35, 38, 42, 71, ...) are not used by the SDM."""

    description: str

    def __new__(cls, value: int, description: str) -> "ExitReason":
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    EXCEPTION_NMI = (0, "Exception or NMI")
    EXTERNAL_INTERRUPT = (1, "External interrupt")
    TRIPLE_FAULT = (2, "Triple fault")
    INIT_SIGNAL = (3, "INIT signal")
    SIPI = (4, "Start-up IPI (SIPI)")
    IO_SMI = (5, "I/O system-management interrupt (SMI)")
    OTHER_SMI = (6, "Other SMI")
    INTERRUPT_WINDOW = (7, "Interrupt window")
    NMI_WINDOW = (8, "NMI window")
    TASK_SWITCH = (9, "Task switch")
    CPUID = (10, "CPUID")
    GETSEC = (11, "GETSEC")
    HLT = (12, "HLT")
    INVD = (13, "INVD")
    INVLPG = (14, "INVLPG")
    RDPMC = (15, "RDPMC")
    RDTSC = (16, "RDTSC")
    RSM = (17, "RSM in SMM")
    VMCALL = (18, "VMCALL")
    VMCLEAR = (19, "VMCLEAR")
    VMLAUNCH = (20, "VMLAUNCH")
    VMPTRLD = (21, "VMPTRLD")
    VMPTRST = (22, "VMPTRST")
    VMREAD = (23, "VMREAD")
    VMRESUME = (24, "VMRESUME")
    VMWRITE = (25, "VMWRITE")
    VMXOFF = (26, "VMXOFF")
    VMXON = (27, "VMXON")
    CR_ACCESS = (28, "Control-register access")
    DR_ACCESS = (29, "MOV DR")
    IO_INSTRUCTION = (30, "I/O instruction")
    MSR_READ = (31, "RDMSR")
    MSR_WRITE = (32, "WRMSR")
    INVALID_STATE = (33, "VM-entry failure due to invalid guest state")
    MSR_LOAD_FAIL = (34, "VM-entry failure due to MSR loading")
    MWAIT_INSTRUCTION = (36, "MWAIT")
    MONITOR_TRAP_FLAG = (37, "Monitor trap flag")
    MONITOR_INSTRUCTION = (39, "MONITOR")
    PAUSE_INSTRUCTION = (40, "PAUSE")
    MCE_DURING_VMENTRY = (41, "VM-entry failure due to machine-check event")
    TPR_BELOW_THRESHOLD = (43, "TPR below threshold")
    APIC_ACCESS = (44, "APIC access")
    EOI_INDUCED = (45, "Virtualized EOI")
    GDTR_IDTR = (46, "Access to GDTR or IDTR")
    LDTR_TR = (47, "Access to LDTR or TR")
    EPT_VIOLATION = (48, "EPT violation")
    EPT_MISCONFIG = (49, "EPT misconfiguration")
    INVEPT = (50, "INVEPT")
    RDTSCP = (51, "RDTSCP")
    PREEMPTION_TIMER = (52, "VMX-preemption timer expired")
    INVVPID = (53, "INVVPID")
    WBINVD = (54, "WBINVD or WBNOINVD")
    XSETBV = (55, "XSETBV")
    APIC_WRITE = (56, "APIC write")
    RDRAND = (57, "RDRAND")
    INVPCID = (58, "INVPCID")
    VMFUNC = (59, "VMFUNC")
    ENCLS = (60, "ENCLS")
    RDSEED = (61, "RDSEED")
    PML_FULL = (62, "Page-modification log full")
    XSAVES = (63, "XSAVES")
    XRSTORS = (64, "XRSTORS")
    PCONFIG = (65, "PCONFIG")
    SPP = (66, "SPP-related event")
    UMWAIT = (67, "UMWAIT")
    TPAUSE = (68, "TPAUSE")
    LOADIWKEY = (69, "LOADIWKEY")
    ENCLV = (70, "ENCLV")
    ENQCMD_PASID_FAIL = (72, "ENQCMD PASID translation failure")
    ENQCMDS_PASID_FAIL = (73, "ENQCMDS PASID translation failure")
    BUS_LOCK = (74, "Bus lock")
    NOTIFY = (75, "Instruction timeout")
    SEAMCALL = (76, "SEAMCALL")
    TDCALL = (77, "TDCALL")
    RDMSRLIST = (78, "RDMSRLIST")
    WRMSRLIST = (79, "WRMSRLIST")
    URDMSR = (80, "URDMSR")
    UWRMSR = (81, "UWRMSR")
    MSR_READ_IMM = (84, "RDMSR with immediate operand")
    MSR_WRITE_IMM = (85, "WRMSRNS with immediate operand")


@bit_record
class ExitReasonField(BitRecord):
    """The 32-bit exit-reason field (SDM 25.9.1, Table 25-18)."""

    basic: int = 0
    enclave_mode: bool = False
    pending_mtf: bool = False
    from_vmx_root: bool = False
    entry_failure: bool = False

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("basic", 0, 16, int),
        BitField("enclave_mode", 27),
        BitField("pending_mtf", 28),
        BitField("from_vmx_root", 29),
        BitField("entry_failure", 31),
    )

    @property
    def reason(self) -> ExitReason | None:
        try:
            return ExitReason(self.basic)
        except ValueError:
            return None


GPR_NAMES: tuple[str, ...] = ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                              "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")


def _hex_or_none(value: int | None) -> str:
    return "unknown" if value is None else f"{value:#x}"


# --------------------------------------------------------------------------------------
# EPT violation (SDM 28.2.1, Table 28-7)
# --------------------------------------------------------------------------------------

@bit_record
class EptViolationQualification(BitRecord):
    """Exit qualification for EPT violations.

    ``readable``/``writable``/``executable``/``user_executable`` are the permissions of the
    guest-physical address as seen through the EPT paging structures (all clear means the
    translation is not present).  ``gla_translated`` (bit 8) is meaningful only when
    ``gla_valid``: set for an access to the translated linear address, clear for an access
    to a guest paging-structure entry during the page walk.
    """

    read: bool = False
    write: bool = False
    fetch: bool = False
    readable: bool = False
    writable: bool = False
    executable: bool = False
    user_executable: bool = False
    gla_valid: bool = False
    gla_translated: bool = False
    nmi_unblocking: bool = False

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("read", 0),
        BitField("write", 1),
        BitField("fetch", 2),
        BitField("readable", 3),
        BitField("writable", 4),
        BitField("executable", 5),
        BitField("user_executable", 6),
        BitField("gla_valid", 7),
        BitField("gla_translated", 8),
        BitField("nmi_unblocking", 12),
    )

    @property
    def present(self) -> bool:
        return self.readable or self.writable or self.executable or self.user_executable

    def access_text(self) -> str:
        kinds = [name for name, on in (("read", self.read), ("write", self.write),
                                       ("instruction fetch", self.fetch)) if on]
        return "/".join(kinds) if kinds else "access"

    def permissions_text(self) -> str:
        if not self.present:
            return "page not present"
        rwx = ("r" if self.readable else "-") + ("w" if self.writable else "-") + ("x" if self.executable else "-")
        return f"page permissions {rwx}" + (" (user-mode executable)" if self.user_executable else "")

    def describe(self, gpa: int | None = None, gla: int | None = None) -> str:
        """E.g. 'EPT violation: write to GPA 0x1000000, page not present, GLA 0xffffff8001000000 valid'.

        The GPA and GLA live in separate VMCS fields (GUEST_PHYSICAL_ADDRESS, GUEST_LINEAR_ADDRESS).
        """
        preposition = "to" if self.write else "from"
        text = f"EPT violation: {self.access_text()} {preposition} GPA {_hex_or_none(gpa)}, {self.permissions_text()}"
        if self.gla_valid:
            text += f", GLA {gla:#x} valid" if gla is not None else ", GLA valid"
            if not self.gla_translated:
                text += " (guest paging-structure access)"
        else:
            text += ", no GLA"
        if self.nmi_unblocking:
            text += ", NMI unblocking due to IRET"
        return text


def ept_violation_qualification(access: str, walk: "EptWalk", gla_valid: bool,
                                translated_access: bool = True, *,
                                nmi_unblocking: bool = False) -> EptViolationQualification:
    """The qualification of an EPT violation caused by ``access`` ("read", "write",
    "fetch") through ``walk``: bits 5:3 are the AND of the R/W/X bits of the EPT entries
    used (all 0 when none was used or one was not present), bit 7 whether the
    guest-linear-address field is valid, bit 8 (only with bit 7) an access to the
    translated address (1) rather than to a guest paging-structure entry (0)."""
    if access not in ("read", "write", "fetch"):
        raise ValueError(f"unknown access kind {access!r}")
    perms = walk.effective_perms if walk.levels else EptPerm(0)
    return EptViolationQualification(
        read=access == "read", write=access == "write", fetch=access == "fetch",
        readable=bool(perms & EptPerm.R), writable=bool(perms & EptPerm.W),
        executable=bool(perms & EptPerm.X),
        gla_valid=gla_valid, gla_translated=gla_valid and translated_access,
        nmi_unblocking=nmi_unblocking)


# --------------------------------------------------------------------------------------
# I/O instruction (SDM 28.2.1, Table 28-5)
# --------------------------------------------------------------------------------------

class IoSize(IntEnum):
    """Bits 2:0: size of access minus one."""

    BYTE = 0
    WORD = 1
    DWORD = 3

    @property
    def bytes(self) -> int:
        return self.value + 1

    @classmethod
    def of(cls, nbytes: int) -> "IoSize":
        return cls(nbytes - 1)


class IoDirection(IntEnum):
    OUT = 0
    IN = 1


class IoOperand(IntEnum):
    """Bit 6: how the port was named."""

    DX = 0
    IMMEDIATE = 1


@bit_record
class IoQualification(BitRecord):
    """Exit qualification for I/O instructions."""

    port: int = 0
    size: IoSize = IoSize.BYTE
    direction: IoDirection = IoDirection.OUT
    string: bool = False
    rep: bool = False
    operand: IoOperand = IoOperand.DX

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("size", 0, 3, IoSize),
        BitField("direction", 3, 1, IoDirection),
        BitField("string", 4),
        BitField("rep", 5),
        BitField("operand", 6, 1, IoOperand),
        BitField("port", 16, 16, int),
    )

    def describe(self) -> str:
        """E.g. 'I/O instruction: OUT 1 byte to port 0x3f8 (port in DX)'."""
        mnemonic = self.direction.name + ("S" if self.string else "")
        if self.rep:
            mnemonic = "REP " + mnemonic
        count = self.size.bytes
        unit = "byte" if count == 1 else "bytes"
        preposition = "from" if self.direction is IoDirection.IN else "to"
        how = "port in DX" if self.operand is IoOperand.DX else "immediate port"
        return f"I/O instruction: {mnemonic} {count} {unit} {preposition} port {self.port:#x} ({how})"


@functools.lru_cache(maxsize=4096)
def io_qualification(port: int, size: int, is_in: bool) -> int:
    """The encoded qualification of a non-string IN/OUT of ``size`` bytes with the port in
    DX (the exits hvdbg takes); memoized, since I/O exits are a hot path."""
    return IoQualification(port=port, size=IoSize.of(size),
                           direction=IoDirection.IN if is_in else IoDirection.OUT).encode()


# --------------------------------------------------------------------------------------
# Control-register access (SDM 28.2.1, Table 28-3)
# --------------------------------------------------------------------------------------

class CrAccessType(IntEnum):
    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


@bit_record
class CrAccessQualification(BitRecord):
    """Exit qualification for control-register accesses."""

    cr: int = 0
    access_type: CrAccessType = CrAccessType.MOV_TO_CR
    lmsw_memory_operand: bool = False
    gpr: int = 0
    lmsw_source: int = 0

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("cr", 0, 4, int),
        BitField("access_type", 4, 2, CrAccessType),
        BitField("lmsw_memory_operand", 6),
        BitField("gpr", 8, 4, int),
        BitField("lmsw_source", 16, 16, int),
    )

    def describe(self) -> str:
        """E.g. 'Control-register access: MOV to CR3 from RAX'."""
        prefix = "Control-register access: "
        if self.access_type is CrAccessType.MOV_TO_CR:
            return f"{prefix}MOV to CR{self.cr} from {GPR_NAMES[self.gpr]}"
        if self.access_type is CrAccessType.MOV_FROM_CR:
            return f"{prefix}MOV from CR{self.cr} to {GPR_NAMES[self.gpr]}"
        if self.access_type is CrAccessType.CLTS:
            return f"{prefix}CLTS"
        operand = "memory" if self.lmsw_memory_operand else "register"
        return f"{prefix}LMSW with source data {self.lmsw_source:#x} ({operand} operand)"


# --------------------------------------------------------------------------------------
# MOV DR (SDM 28.2.1, Table 28-4)
# --------------------------------------------------------------------------------------

class DrDirection(IntEnum):
    MOV_TO_DR = 0
    MOV_FROM_DR = 1


@bit_record
class DrAccessQualification(BitRecord):
    """Exit qualification for MOV DR."""

    dr: int = 0
    direction: DrDirection = DrDirection.MOV_TO_DR
    gpr: int = 0

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("dr", 0, 3, int),
        BitField("direction", 4, 1, DrDirection),
        BitField("gpr", 8, 4, int),
    )

    def describe(self) -> str:
        """E.g. 'Debug-register access: MOV to DR7 from RAX'."""
        if self.direction is DrDirection.MOV_TO_DR:
            return f"Debug-register access: MOV to DR{self.dr} from {GPR_NAMES[self.gpr]}"
        return f"Debug-register access: MOV from DR{self.dr} to {GPR_NAMES[self.gpr]}"


# --------------------------------------------------------------------------------------
# APIC access (SDM 28.2.1, Table 28-6)
# --------------------------------------------------------------------------------------

class ApicAccessType(IntEnum):
    LINEAR_READ = 0
    LINEAR_WRITE = 1
    LINEAR_FETCH = 2
    LINEAR_EVENT_DELIVERY = 3
    PHYSICAL_EVENT_DELIVERY = 10
    PHYSICAL_INSTRUCTION = 15

    @property
    def label(self) -> str:
        return _APIC_ACCESS_LABELS[self]

    @property
    def is_linear(self) -> bool:
        return self.value <= ApicAccessType.LINEAR_EVENT_DELIVERY


_APIC_ACCESS_LABELS = {
    ApicAccessType.LINEAR_READ: "linear read",
    ApicAccessType.LINEAR_WRITE: "linear write",
    ApicAccessType.LINEAR_FETCH: "linear instruction fetch",
    ApicAccessType.LINEAR_EVENT_DELIVERY: "linear access during event delivery",
    ApicAccessType.PHYSICAL_EVENT_DELIVERY: "guest-physical access during event delivery",
    ApicAccessType.PHYSICAL_INSTRUCTION: "guest-physical access for an instruction fetch or execution",
}


def _apic_access_type(raw: int) -> ApicAccessType | int:
    """Tolerant converter: reserved access types stay plain integers."""
    try:
        return ApicAccessType(raw)
    except ValueError:
        return raw


# Register banks of 8 x 16-byte registers (SDM Vol. 3A Table 11-1).
_APIC_BANKS = ((ApicReg.ISR0, "ISR"), (ApicReg.TMR0, "TMR"), (ApicReg.IRR0, "IRR"))


def apic_register_name(offset: int) -> str | None:
    """Name of the xAPIC register containing ``offset`` ('ICR_LOW', 'ISR3'), if any."""
    aligned = offset & ~0xF
    for base, bank in _APIC_BANKS:
        if base <= aligned < base + 0x80:
            return f"{bank}{(aligned - base) >> 4}"
    try:
        return ApicReg(aligned).name
    except ValueError:
        return None


@bit_record
class ApicAccessQualification(BitRecord):
    """Exit qualification for APIC-access VM exits."""

    offset: int = 0
    access_type: ApicAccessType | int = ApicAccessType.LINEAR_READ
    asynchronous: bool = False

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("offset", 0, 12, int),
        BitField("access_type", 12, 4, _apic_access_type),
        BitField("asynchronous", 16),
    )

    def describe(self) -> str:
        """E.g. 'APIC access: linear write at offset 0x300 (ICR_LOW)'."""
        if not isinstance(self.access_type, ApicAccessType):
            return f"APIC access: reserved access type {self.access_type}, offset {self.offset:#x}"
        text = f"APIC access: {self.access_type.label}"
        if self.access_type.is_linear:
            register = apic_register_name(self.offset)
            text += f" at offset {self.offset:#x}" + (f" ({register})" if register else "")
        if self.asynchronous:
            text += ", asynchronous to instruction execution"
        return text


@functools.lru_cache(maxsize=8192)
def apic_access_qualification(offset: int, write: bool) -> int:
    """The encoded qualification of a linear data access to the APIC-access page at
    ``offset`` (memoized: APIC exits are a hot path)."""
    return ApicAccessQualification(
        offset=offset & 0xFFF,
        access_type=ApicAccessType.LINEAR_WRITE if write else ApicAccessType.LINEAR_READ).encode()


# --------------------------------------------------------------------------------------
# Task switch (SDM 28.2.1, Table 28-2)
# --------------------------------------------------------------------------------------

class TaskSwitchSource(IntEnum):
    CALL = 0
    IRET = 1
    JMP = 2
    IDT_TASK_GATE = 3


@bit_record
class TaskSwitchQualification(BitRecord):
    """Exit qualification for task switches."""

    selector: int = 0
    source: TaskSwitchSource = TaskSwitchSource.CALL

    LAYOUT: ClassVar[tuple[BitField, ...]] = (
        BitField("selector", 0, 16, int),
        BitField("source", 30, 2, TaskSwitchSource),
    )

    def describe(self) -> str:
        """E.g. 'Task switch: JMP to TSS selector 0x28'."""
        source = "task gate in IDT" if self.source is TaskSwitchSource.IDT_TASK_GATE else self.source.name
        return f"Task switch: {source} to TSS selector {self.selector:#x}"
