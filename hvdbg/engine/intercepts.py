"""VM exits Unicorn has no hook for, taken through QEMU's own SVM intercept checks.

Unicorn 2.1.4 hooks CPUID and IN/OUT, but not RDMSR/WRMSR, HLT, MOV to CR0/CR4 or PAUSE,
and it looks at pending interrupts only between translation blocks that it leaves.  The
QEMU helpers it runs for those instructions do call ``cpu_svm_check_intercept_param``,
which acts while ``hflags`` has HF_GUEST_MASK: an intercepted event ends in
``cpu_vmexit``, which restores the guest state to the start of the instruction and
raises the exception number 0x100 + SVM exit code, and Unicorn hands that to the
UC_HOOK_INTR hook with ``env->error_code`` = EXITINFO1 (AMD APM Vol. 2, 15.9-15.14 and
Appendix C; target/i386/svm_helper.c).  Every engine therefore runs its guest as an SVM
guest of a VMCB that only hvdbg sees, at a physical address above what the engine's page
walks can reach, and turns those exits into the VMX exits and processor behaviour of the
SDM.  The interrupt-window request is QEMU's own ``cpu_interrupt(CPU_INTERRUPT_HARD)``
with the INTR intercept: its check runs between instructions, exactly when RFLAGS.IF = 1
and no STI / MOV SS shadow blocks (SDM Vol. 3A 6.8.3, Vol. 3C 26.7.5).

Nothing outside engine/ knows about SVM: the vCPU sees :class:`Intercepted` events.
"""

from __future__ import annotations

import ctypes
import enum
import struct

from unicorn import UC_PROT_READ, Uc

from hvdbg.engine import ucx

#: Unicorn reports ``cpu_vmexit`` as interrupt number EXCP_VMEXIT + exit code.
EXCP_VMEXIT = 0x100

# SVM exit codes (AMD APM Vol. 2 Appendix C, target/i386/svm.h)
SVM_EXIT_READ_CR0 = 0x000
SVM_EXIT_WRITE_CR0 = 0x010
SVM_EXIT_INTR = 0x060
SVM_EXIT_NMI = 0x061
SVM_EXIT_INVD = 0x076
SVM_EXIT_WBINVD = 0x089     # Unicorn 2.1.4 (QEMU 5.0) checks it for INVD too: (b & 2) should be (b & 1)
SVM_EXIT_PAUSE = 0x077
SVM_EXIT_HLT = 0x078
SVM_EXIT_INVLPG = 0x079
SVM_EXIT_MSR = 0x07C
SVM_EXIT_SHUTDOWN = 0x07F

#: QEMU's CPU_INTERRUPT_HARD and CPU_INTERRUPT_NMI (include/exec/cpu-all.h, target/i386/cpu.h).
_CPU_INTERRUPT_HARD = 0x0002
_CPU_INTERRUPT_NMI = 0x0200

#: The hidden VMCB and its MSR permission map (MSRPM, 2 bits per MSR, APM 15.11): at a
#: physical address wider than the engine CPU's 40 physical-address bits, which no guest
#: paging structure can point at (its reserved bits would fault).
VMCB_GPA = 0xF_FFF0_0000_0000
_VMCB_MSRPM_BASE = 0x48          # offsetof(struct vmcb, control.msrpm_base_pa)
_MSRPM_OFFSET = 0x1000
_MSRPM_SIZE = 0x2000
_VMCB_SIZE = _MSRPM_OFFSET + _MSRPM_SIZE


def _intercept_bit(code: int) -> int:
    return 1 << (code - SVM_EXIT_INTR)


class Intercepted(enum.Enum):
    """What the engine stopped on (the SVM exit, named by what the vCPU must do)."""

    RDMSR = "rdmsr"
    WRMSR = "wrmsr"
    MOV_TO_CR = "mov-to-cr"            # also CLTS and LMSW (CR0); ``cr`` says which
    MOV_FROM_CR = "mov-from-cr"        # CR8 (the TPR: Unicorn reads it as 0); CR0/CR4 and SMSW
                                       # while shadowed reads are asked for (set_cr_reads)
    HLT = "hlt"
    INVD = "invd"                      # INVD or WBINVD (the engine reports both the same way)
    INVLPG = "invlpg"                  # while a guest hypervisor's guest runs with INVLPG exiting
    PAUSE = "pause"
    INTERRUPT_WINDOW = "interrupt-window"
    NMI_WINDOW = "nmi-window"
    SHUTDOWN = "shutdown"              # QEMU's own triple fault


class Intercepts:
    """The SVM intercept state of one engine (its live CPU state, written directly)."""

    #: always on: every RDMSR/WRMSR, HLT, INVD/WBINVD (INVD is a VM exit in VMX non-root operation,
    #: SDM 26.1.2),
    #: MOV to CR0/CR4, the INTR and NMI checks of an armed window
    BASE = _intercept_bit(SVM_EXIT_INTR) | _intercept_bit(SVM_EXIT_NMI) | _intercept_bit(SVM_EXIT_HLT) \
        | _intercept_bit(SVM_EXIT_MSR) | _intercept_bit(SVM_EXIT_SHUTDOWN) | _intercept_bit(SVM_EXIT_INVD) \
        | _intercept_bit(SVM_EXIT_WBINVD)
    CR_WRITES = (1 << 0) | (1 << 4) | (1 << 8)
    CR_READS = 1 << 8        # CR8 is the local APIC's TPR[7:4] (SDM 10.8.6.1)

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        cpu, env = ucx.locate_cpu_state(uc)
        self._hflags = ctypes.c_uint32.from_address(env + ucx.ENV_HFLAGS)
        self._hflags2 = ctypes.c_uint32.from_address(env + ucx.ENV_HFLAGS2)
        self._error_code = ctypes.c_int32.from_address(env + ucx.ENV_ERROR_CODE)
        self._exception_is_int = ctypes.c_int32.from_address(env + ucx.ENV_EXCEPTION_IS_INT)
        self._vm_vmcb = ctypes.c_uint64.from_address(env + ucx.ENV_VM_VMCB)
        self._intercept = ctypes.c_uint64.from_address(env + ucx.ENV_INTERCEPT)
        self._cr_write = ctypes.c_uint16.from_address(env + ucx.ENV_INTERCEPT_CR_WRITE)
        self._cr_read = ctypes.c_uint16.from_address(env + ucx.ENV_INTERCEPT_CR_READ)
        self._interrupt_request = ctypes.c_uint32.from_address(cpu + ucx.CPU_INTERRUPT_REQUEST)
        decr = ctypes.c_uint64.from_address(cpu + ucx.CPU_ICOUNT_DECR_PTR).value
        self._icount_decr_high = ctypes.c_int16.from_address(decr + 2)
        uc.mem_map(VMCB_GPA, _VMCB_SIZE, UC_PROT_READ)
        uc.mem_write(VMCB_GPA + _VMCB_MSRPM_BASE, struct.pack("<Q", VMCB_GPA + _MSRPM_OFFSET))
        uc.mem_write(VMCB_GPA + _MSRPM_OFFSET, b"\xff" * _MSRPM_SIZE)   # every MSR, both directions
        self.pause_exiting = False
        self.invlpg_exiting = False
        self.arm()

    def arm(self) -> None:
        """(Re)load the intercepts into the CPU state (after an engine reset)."""
        self._vm_vmcb.value = VMCB_GPA
        self._intercept.value = self.BASE | (_intercept_bit(SVM_EXIT_PAUSE) if self.pause_exiting else 0) \
            | (_intercept_bit(SVM_EXIT_INVLPG) if self.invlpg_exiting else 0)
        self._cr_write.value = self.CR_WRITES
        self._cr_read.value = self.CR_READS
        self._hflags.value |= ucx.HF_GUEST_MASK

    def set_cr_reads(self, crs: frozenset[int], writes: frozenset[int] = frozenset()) -> None:
        """Intercept reads of these control registers too (MOV from CR0/CR3/CR4, SMSW), and
        writes of ``writes`` (CR3): a guest hypervisor's read shadows and CR3-load/store
        exiting (SDM 25.6.6, 25.6.7).  CR8 reads and CR0/CR4/CR8 writes are always
        intercepted."""
        self._cr_read.value = self.CR_READS | sum(1 << cr for cr in crs)
        self._cr_write.value = self.CR_WRITES | sum(1 << cr for cr in writes)

    def set_invlpg_exiting(self, on: bool) -> None:
        """Intercept INVLPG (a guest hypervisor's INVLPG exiting, SDM 25.6.2)."""
        self.invlpg_exiting = on
        self._intercept.value = (self._intercept.value & ~_intercept_bit(SVM_EXIT_INVLPG)) \
            | (_intercept_bit(SVM_EXIT_INVLPG) if on else 0)

    def set_pause_exiting(self, on: bool) -> None:
        """Intercept PAUSE (for PAUSE-loop exiting, SDM 25.1.3)."""
        self.pause_exiting = on
        self.arm()

    def decode(self, intno: int) -> tuple[Intercepted, int] | None:
        """(event, CR number) for an interrupt number from the INTR hook, or None if it is
        a guest exception or interrupt."""
        code = intno - EXCP_VMEXIT
        if code < 0:
            return None
        if code == SVM_EXIT_MSR:
            return (Intercepted.WRMSR if self._error_code.value else Intercepted.RDMSR), 0
        if SVM_EXIT_WRITE_CR0 <= code <= SVM_EXIT_WRITE_CR0 + 8:
            return Intercepted.MOV_TO_CR, code - SVM_EXIT_WRITE_CR0
        if SVM_EXIT_READ_CR0 <= code <= SVM_EXIT_READ_CR0 + 8:
            return Intercepted.MOV_FROM_CR, code - SVM_EXIT_READ_CR0
        if code == SVM_EXIT_INTR:
            self.request_interrupt_window(False)   # one window exit per request
            return Intercepted.INTERRUPT_WINDOW, 0
        if code == SVM_EXIT_NMI:
            self.request_nmi_window(False)
            return Intercepted.NMI_WINDOW, 0
        kind = {SVM_EXIT_HLT: Intercepted.HLT, SVM_EXIT_PAUSE: Intercepted.PAUSE, SVM_EXIT_INVD: Intercepted.INVD,
                SVM_EXIT_INVLPG: Intercepted.INVLPG,
                SVM_EXIT_WBINVD: Intercepted.INVD,
                SVM_EXIT_SHUTDOWN: Intercepted.SHUTDOWN}.get(code)
        if kind is None:
            raise ucx.UnicornLayoutError(f"unexpected SVM exit {code:#x} from the engine")
        return kind, 0

    def exception_taken(self) -> None:
        """After the interrupt hook handled a guest exception or INT n: QEMU's
        ``exception_is_int`` stays set (cpu_vmexit does not clear it), and Unicorn's
        exception path would then move RIP of the next intercepted instruction to the
        INT's stale ``exception_next_eip`` (measured: an RDMSR after an INT3 reported at
        the block start, and the code between ran twice)."""
        self._exception_is_int.value = 0

    # -- interrupt window ------------------------------------------------------------------
    def request_interrupt_window(self, on: bool) -> None:
        """Exit at the first instruction boundary where the guest can take an external
        interrupt (RFLAGS.IF = 1, no STI or MOV SS blocking), as VMX interrupt-window
        exiting does (SDM 25.2).  Safe while the engine runs: it is cpu_interrupt()."""
        if on:
            self._interrupt_request.value |= _CPU_INTERRUPT_HARD
            self._icount_decr_high.value = -1   # leave the chained blocks to check it
        else:
            self._interrupt_request.value &= ~_CPU_INTERRUPT_HARD

    def request_nmi_window(self, on: bool) -> None:
        """Exit at the first instruction boundary without blocking by NMI (after the IRET
        that ends an NMI handler), as VMX NMI-window exiting does (SDM 25.2): QEMU's
        ``cpu_interrupt(CPU_INTERRUPT_NMI)`` with the NMI intercept."""
        if on:
            self._interrupt_request.value |= _CPU_INTERRUPT_NMI
            self._icount_decr_high.value = -1
        else:
            self._interrupt_request.value &= ~_CPU_INTERRUPT_NMI

    def interrupt_shadow(self) -> bool:
        """Blocking by STI or by MOV SS (SDM 25.4.2, interruptibility state bits 0-1; QEMU
        keeps one flag for both)."""
        return bool(self._hflags.value & ucx.HF_INHIBIT_IRQ_MASK)

    def end_interrupt_shadow(self) -> None:
        """The shadow of an STI ends with the instruction after it (a HLT there: QEMU's
        own HLT does this too, which the intercepted one skips)."""
        self._hflags.value &= ~ucx.HF_INHIBIT_IRQ_MASK

    def set_nmi_blocked(self, on: bool) -> None:
        """Blocking by NMI (SDM 6.7.1): QEMU's IRET clears it."""
        if on:
            self._hflags2.value |= ucx.HF2_NMI_MASK
        else:
            self._hflags2.value &= ~ucx.HF2_NMI_MASK

    def in_64_bit_code(self) -> bool:
        """IA-32e mode with CS.L = 1 (SDM 5.2.1): QEMU's HF_CS64, which it (and
        hvdbg.engine.ucx on state writes) keeps in step with EFER.LMA and CS."""
        return bool(self._hflags.value & ucx.HF_CS64_MASK)

    def nmi_blocked(self) -> bool:
        return bool(self._hflags2.value & ucx.HF2_NMI_MASK)
