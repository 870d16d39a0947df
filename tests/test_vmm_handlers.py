"""The VMM's exit handlers as functions of (vCPU, exit): synthetic exits against a fake
vCPU, no engine (the Firecracker ``handle_kvm_exit`` test style).  What each test checks
is what the guest would see: registers, the decision, the vCPU's state, the VM's end."""

from __future__ import annotations

import pytest

from hvdbg.arch.apic import APIC_BASE_EXTD, IA32_APIC_BASE_MSR, Reg, encode_icr
from hvdbg.arch.cpuid import CpuidModel
from hvdbg.arch.events import Event, EventType, hardware_exception
from hvdbg.hv import timekeeping
from hvdbg.arch.regs import IA32_PAT, IA32_TSC, IA32_TSC_DEADLINE, RFLAGS_IF
from hvdbg.arch.segments import Segment
from hvdbg.hv import activity as act
from hvdbg.hv.exit import ApicAccess, ExceptionExit, ExitDecision, ExitInfo, MsrAccess
from hvdbg.hv.trace import ExitTrace
from hvdbg.hv.vmm import HYPERCALL_EXIT, HYPERCALL_MAGIC, HYPERCALL_PING, Vmm, msr_bitmap_exiting
from hvdbg.platform.apic import ApicBus, LocalApic
from hvdbg.platform.devices.bus import IoBus
from hvdbg.platform.devices.debug_exit import DEBUG_EXIT_PORT, DebugExit
from hvdbg.vmx.controls import ActivityState
from hvdbg.vmx.exits import ApicAccessQualification, ApicAccessType, ExitReason, io_qualification
from hvdbg.vmx.vmcs import Vmcs


class FakeBatch:
    def __init__(self, engine: "FakeEngine", names: tuple[str, ...]) -> None:
        self.engine, self.names = engine, names

    def read(self) -> tuple[int, ...]:
        return tuple(self.engine.regs.get(n, 0) for n in self.names)

    def write(self, values) -> None:
        self.engine.regs.update(zip(self.names, values))


class FakeEngine:
    def __init__(self) -> None:
        self.regs: dict[str, int] = {"rip": 0x1000, "rflags": 0x2}
        self.resets = 0

    def batch_of(self, names):
        return FakeBatch(self, names)

    def read(self, name: str) -> int:
        return self.regs.get(name, 0)

    def write(self, name: str, value: int) -> None:
        self.regs[name] = value

    def rip(self) -> int:
        return self.regs["rip"]

    def set_rip(self, value: int) -> None:
        self.regs["rip"] = value

    def load_reset_state(self) -> None:
        self.resets += 1


class FakeVcpu:
    """A vCPU without an engine: a register dict, a real LocalApic, VMCS and CPUID model."""

    def __init__(self, index: int = 0, *, bsp: bool = True, bus: ApicBus | None = None) -> None:
        self.index = index
        self.engine = FakeEngine()
        self.cpuid = CpuidModel(apic_id=index, vcpu_count=2, x2apic=True)
        self.ticks = 0
        self.tsc_adjust = 0
        self.apic = LocalApic(index, bsp=bsp, x2apic_supported=True,
                              send_ipi=bus.send if bus else (lambda src, cmd: None),
                              clock=self.clock, on_pending=lambda: None)
        self.vmcs = Vmcs()
        self.msrs: dict[int, int] = {}
        self.activity = ActivityState.ACTIVE if bsp else ActivityState.WAIT_FOR_SIPI
        self.pending_init = False
        self.pending_sipi: int | None = None
        self.pending_event: Event | None = None
        self.pending_event_rip = self.pending_event_length = 0
        self.started_by_sipi = False
        self.sipi_vector: int | None = None
        self.sipi_entry: int | None = None
        self.vmx = None                 # CPUID does not offer VMX
        self.ipi_log: list = []
        self.idle_ticks = 0
        self.woken_ticks = 0
        self.guest_state: dict | None = None
        self.exits: list[ExitInfo] = []
        self.kicks = 0

    def clock(self) -> int:
        return self.ticks

    def tsc(self) -> int:
        return timekeeping.tsc(self)

    def set_tsc(self, value: int) -> None:
        timekeeping.set_tsc(self, value)

    board = None

    def next_event(self) -> int | None:
        return timekeeping.next_event(self)

    def poll_board(self) -> None:
        timekeeping.poll_board(self)

    def transition_due(self) -> bool:   # no guest hypervisor here (vmx is None)
        return False

    def interrupts_enabled(self) -> bool:
        return bool(self.engine.regs["rflags"] & RFLAGS_IF)

    def code_bits(self) -> int:
        return 64

    def get_segment(self, name: str) -> Segment:
        return Segment(0x10, 0, 0xFFFFFFFF, 0xA09B)

    def decode(self, rip: int, count: int = 1) -> list:
        return []

    def set_guest_state(self, **state) -> None:
        self.guest_state = state

    def vm_exit(self, info: ExitInfo) -> bool:
        self.exits.append(info)
        return vmm_of[self].handle_exit(self, info)

    def kick(self) -> None:
        self.kicks += 1

    def on_init_ipi(self) -> None:
        act.post_init(self)

    def on_startup_ipi(self, vector: int) -> None:
        act.post_sipi(self, vector)


vmm_of: dict[FakeVcpu, Vmm] = {}


class FakeMachine:
    def __init__(self) -> None:
        self.vcpus: list = []
        self.ending: tuple | None = None

    def end(self, outcome: str, status: int | None = None, detail: str = "") -> None:
        if self.ending is None:
            self.ending = (outcome, status, detail)

    @property
    def ended(self) -> bool:
        return self.ending is not None


@pytest.fixture
def setup():
    life = FakeMachine()
    bus = IoBus()
    bus.register(DEBUG_EXIT_PORT, 4, DebugExit(lambda status: life.end("exited", status=status)))
    vmm = Vmm(life, bus, ExitTrace())
    v = FakeVcpu()
    vmm_of[v] = vmm
    life.vcpus.append(v)
    yield vmm, v, life
    vmm_of.pop(v, None)


def decide(vmm: Vmm, v: FakeVcpu, info: ExitInfo) -> tuple[bool, ExitDecision]:
    stay = vmm.handle_exit(v, info)
    return stay, info.decision


def test_cpuid_answers_from_the_vcpus_model_and_resumes(setup):
    vmm, v, _ = setup
    v.engine.regs.update(rax=1, rcx=0)
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.CPUID, rip=0x1000, instruction_length=2))
    assert stay and decision is ExitDecision.RESUME
    eax, ebx, ecx, edx = v.cpuid.query(1, 0)
    assert (v.engine.regs["rax"], v.engine.regs["rbx"], v.engine.regs["rcx"], v.engine.regs["rdx"]) == (eax, ebx, ecx, edx)
    assert v.engine.regs["rbx"] >> 24 == v.index          # initial APIC ID in EBX[31:24]
    assert vmm.trace.counts["CPUID"] == 1


def test_cpuid_hides_the_apic_when_it_is_globally_disabled(setup):
    vmm, v, _ = setup
    v.apic.base_msr &= ~(1 << 11)                         # IA32_APIC_BASE.EN = 0 (SDM 11.4.3)
    v.engine.regs.update(rax=1, rcx=0)
    decide(vmm, v, ExitInfo(ExitReason.CPUID))
    assert not v.engine.regs["rdx"] >> 9 & 1


def test_out_to_the_debug_exit_port_ends_the_vm_with_the_guests_status(setup):
    vmm, v, life = setup
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.IO_INSTRUCTION,
                                             qualification=io_qualification(DEBUG_EXIT_PORT, 4, False), data=3))
    assert not stay and decision is ExitDecision.LEAVE
    assert life.ending[0] == "exited" and life.ending[1] is not None


def test_in_from_an_unclaimed_port_reads_all_ones(setup):
    vmm, v, _ = setup
    info = ExitInfo(ExitReason.IO_INSTRUCTION, qualification=io_qualification(0x1234, 2, True))
    stay, decision = decide(vmm, v, info)
    assert stay and decision is ExitDecision.RESUME
    assert info.data == 0xFFFF and info.detail == "in 0x1234 -> 0xffff"


def test_apic_access_read_of_the_id_register(setup):
    vmm, v, _ = setup
    q = ApicAccessQualification(offset=Reg.ID, access_type=ApicAccessType.LINEAR_READ).encode()
    info = ExitInfo(ExitReason.APIC_ACCESS, qualification=q, payload=ApicAccess(4))
    stay, decision = decide(vmm, v, info)
    assert stay and decision is ExitDecision.RESUME
    assert info.data == v.apic.read(Reg.ID) and info.data >> 24 == v.apic.apic_id


def test_apic_icr_write_sends_init_and_sipi_through_the_bus():
    life = FakeMachine()
    bus = ApicBus()
    vmm = Vmm(life, IoBus(), ExitTrace())
    bsp, ap = FakeVcpu(0, bus=bus), FakeVcpu(1, bsp=False, bus=bus)
    for v in (bsp, ap):
        vmm_of[v] = vmm
        bus.attach(v)
        life.vcpus.append(v)
    try:
        def icr(value: int) -> None:
            for offset, word in ((Reg.ICR_HIGH, value >> 32), (Reg.ICR_LOW, value & 0xFFFFFFFF)):
                q = ApicAccessQualification(offset=offset, access_type=ApicAccessType.LINEAR_WRITE).encode()
                decide(vmm, bsp, ExitInfo(ExitReason.APIC_ACCESS, qualification=q, data=word, payload=ApicAccess(4)))

        icr(encode_icr(delivery_mode=5, destination=1, level_assert=True))     # INIT to APIC 1
        assert ap.pending_init and ap.kicks == 1
        icr(encode_icr(vector=0x08, delivery_mode=6, destination=1))          # SIPI vector 8
        assert ap.pending_sipi == 0x08
        assert [c.mode_name for c, targets in bsp.ipi_log] == ["INIT", "STARTUP"]
        assert all(targets == [1] for _c, targets in bsp.ipi_log)
        # the AP takes both as its own exits: INIT -> wait-for-SIPI, SIPI -> real mode at 0x8000
        assert not vmm.take_signals(ap)
        assert [e.reason for e in ap.exits] == [ExitReason.INIT_SIGNAL, ExitReason.SIPI]
        assert ap.engine.resets == 1 and ap.started_by_sipi and ap.sipi_entry == 0x8000
        segs = ap.guest_state["segments"]
        assert segs["cs"].selector == 0x0800 and segs["cs"].base == 0x8000 and ap.guest_state["rip"] == 0
    finally:
        for v in (bsp, ap):
            vmm_of.pop(v, None)


def test_sipi_uses_hpa_fault_shifts_the_entry_by_the_offset():
    life = FakeMachine()
    vmm = Vmm(life, IoBus(), ExitTrace(), sipi_offset=0x10000000)
    ap = FakeVcpu(1, bsp=False)
    vmm_of[ap] = vmm
    try:
        decide(vmm, ap, ExitInfo(ExitReason.SIPI, qualification=0x08))
        assert ap.sipi_entry == 0x10008000
    finally:
        vmm_of.pop(ap)


@pytest.mark.parametrize("msr, value", [(IA32_APIC_BASE_MSR, None), (IA32_TSC, None)])
def test_rdmsr_of_emulated_msrs(setup, msr, value):
    vmm, v, _ = setup
    v.ticks = 12345
    info = ExitInfo(ExitReason.MSR_READ, payload=MsrAccess(msr))
    stay, decision = decide(vmm, v, info)
    assert stay and decision is ExitDecision.RESUME
    expected = 0xFEE00900 if msr == IA32_APIC_BASE_MSR else 12345     # BSP: base | BSP | EN
    assert info.data == expected


def test_wrmsr_ia32_tsc_sets_the_counter_which_goes_on_with_the_clock(setup):
    """SDM 18.17: WRMSR to IA32_TSC loads the counter; it then counts on from there."""
    vmm, v, _ = setup
    v.ticks = 500
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=1_000_000, payload=MsrAccess(IA32_TSC)))
    assert stay and decision is ExitDecision.RESUME
    v.ticks = 700
    info = ExitInfo(ExitReason.MSR_READ, payload=MsrAccess(IA32_TSC))
    decide(vmm, v, info)
    assert info.data == 1_000_200 == v.tsc()


def test_rdmsr_of_an_msr_the_vmm_does_not_keep_runs_natively(setup):
    vmm, v, _ = setup
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.MSR_READ, payload=MsrAccess(0xC0000080)))
    assert stay and decision is ExitDecision.NATIVE


def test_x2apic_msr_read_with_x2apic_off_injects_gp(setup):
    vmm, v, _ = setup
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.MSR_READ, rip=0x2000, payload=MsrAccess(0x802)))
    assert not stay and decision is ExitDecision.FAULT
    assert v.pending_event is not None and v.pending_event.vector == 13 and v.pending_event_rip == 0x2000
    assert v.engine.regs["rip"] == 0x2000            # the RDMSR will fault, not be skipped


def test_wrmsr_enables_x2apic_then_x2apic_msrs_work(setup):
    vmm, v, _ = setup
    decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=v.apic.base_msr | APIC_BASE_EXTD,
                            payload=MsrAccess(IA32_APIC_BASE_MSR)))
    assert v.apic.x2apic_mode
    info = ExitInfo(ExitReason.MSR_READ, payload=MsrAccess(0x802))            # x2APIC ID
    assert decide(vmm, v, info) == (True, ExitDecision.RESUME) and info.data == v.apic.apic_id


@pytest.mark.parametrize("path, last", [
    ([0xFEE00000 | 1 << 11 | 1 << 10, 0xFEE00000 | 1 << 11], "x2APIC mode to xAPIC mode"),
    ([0xFEE00000, 0xFEE00000 | 1 << 11 | 1 << 10], "disabled to x2APIC mode"),
    ([0xFEE00000 | 1 << 10], "EXTD=1 with EN=0"),
    ([0xFEE00000 | 1 << 11 | 1 << 9], "reserved bits"),
    ([0x10000000000 | 1 << 11], "reserved bits"),           # above the 40 bits CPUID reports
])
def test_illegal_apic_base_writes_raise_gp(setup, path, last):
    """IA32_APIC_BASE state transitions of SDM 11.12.5 (Figure 11-27): every step but the
    last is legal; the last raises #GP(0) and leaves the MSR as it was."""
    vmm, v, _ = setup
    for value in path[:-1]:
        assert decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=value, payload=MsrAccess(IA32_APIC_BASE_MSR)))[1] \
            is ExitDecision.RESUME
    before = v.apic.base_msr
    info = ExitInfo(ExitReason.MSR_WRITE, data=path[-1], payload=MsrAccess(IA32_APIC_BASE_MSR))
    assert decide(vmm, v, info) == (False, ExitDecision.FAULT) and last in info.detail
    assert v.pending_event.vector == 13 and v.apic.base_msr == before


def test_the_xapic_page_is_not_decoded_while_the_apic_is_disabled_or_in_x2apic_mode(setup):
    """SDM 11.4.3 / 11.12.1: nothing answers on the xAPIC page: reads are all-ones, writes
    reach no register (kvm-unit-tests' apic test memsets the page to 0xff)."""
    vmm, v, _ = setup
    read = ApicAccessQualification(offset=Reg.VERSION, access_type=ApicAccessType.LINEAR_READ).encode()
    write = ApicAccessQualification(offset=Reg.TPR, access_type=ApicAccessType.LINEAR_WRITE).encode()
    for base in (0xFEE00000, 0xFEE00000 | 1 << 11 | 1 << 10):      # disabled; then x2APIC
        if base & 1 << 10:
            decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=0xFEE00000 | 1 << 11, payload=MsrAccess(IA32_APIC_BASE_MSR)))
        decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=base, payload=MsrAccess(IA32_APIC_BASE_MSR)))
        info = ExitInfo(ExitReason.APIC_ACCESS, qualification=read, payload=ApicAccess(4))
        decide(vmm, v, info)
        assert info.data == 0xFFFFFFFF and "not decoded" in info.detail
        decide(vmm, v, ExitInfo(ExitReason.APIC_ACCESS, qualification=write, data=0xF0, payload=ApicAccess(4)))
        assert v.apic.regs[Reg.TPR] == 0
    decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=0xFEE00000, payload=MsrAccess(IA32_APIC_BASE_MSR)))
    decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=0xFEE00000 | 1 << 11, payload=MsrAccess(IA32_APIC_BASE_MSR)))
    info = ExitInfo(ExitReason.APIC_ACCESS, qualification=read, payload=ApicAccess(4))
    decide(vmm, v, info)
    assert info.data == v.apic.read(Reg.VERSION) != 0xFFFFFFFF              # xAPIC mode: decoded


def test_tsc_deadline_msr_arms_the_apic_timer_on_the_tsc(setup):
    """IA32_TSC_DEADLINE counts on the TSC (the clock plus IA32_TSC's offset), only in the
    LVT's TSC-deadline mode, fires once and then reads 0 (SDM 11.5.4.1)."""
    vmm, v, _ = setup
    v.apic.write(Reg.SVR, 0x1FF)

    def wrmsr(msr, value):
        decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=value, payload=MsrAccess(msr)))

    def rdmsr(msr):
        info = ExitInfo(ExitReason.MSR_READ, payload=MsrAccess(msr))
        decide(vmm, v, info)
        return info.data

    wrmsr(IA32_TSC_DEADLINE, 5000)                 # one-shot mode: ignored
    assert rdmsr(IA32_TSC_DEADLINE) == 0 and v.next_event() is None
    v.apic.write(Reg.LVT_TIMER, 0x50 | 2 << 17)    # TSC-deadline mode, vector 0x50
    wrmsr(IA32_TSC, 1_000_000)                     # TSC = clock + 1e6
    v.ticks = 100
    wrmsr(IA32_TSC_DEADLINE, 1_000_000 + 3000)
    assert rdmsr(IA32_TSC_DEADLINE) == 1_003_000
    assert v.next_event() == 3000                  # on the vCPU's clock
    v.apic.write(Reg.TIMER_INITIAL, 10)           # ignored in TSC-deadline mode
    assert v.next_event() == 3000 and v.apic.read(Reg.TIMER_CURRENT) == 0
    v.ticks = 2999
    assert v.apic.pending_vector() is None
    v.ticks = 3000
    assert v.apic.pending_vector() == 0x50
    assert rdmsr(IA32_TSC_DEADLINE) == 0 and v.next_event() is None   # fired: disarmed
    wrmsr(IA32_TSC_DEADLINE, 5)                    # in the past: fires at once
    assert v.next_event() is None and v.apic.irr >> 0x50 & 1
    wrmsr(IA32_TSC_DEADLINE, 1_000_000 + 9000)
    v.apic.write(Reg.LVT_TIMER, 0x50)              # leaving TSC-deadline mode disarms
    assert v.next_event() is None and rdmsr(IA32_TSC_DEADLINE) == 0
    v.apic.write(Reg.LVT_TIMER, 0x50 | 2 << 17)
    wrmsr(IA32_TSC_DEADLINE, 1_000_000 + 9000)
    wrmsr(IA32_TSC_DEADLINE, 0)                    # 0 disarms
    assert v.next_event() is None


@pytest.mark.parametrize("msr", [IA32_PAT])
def test_wrmsr_of_kept_msrs_is_remembered(setup, msr):
    vmm, v, _ = setup
    decide(vmm, v, ExitInfo(ExitReason.MSR_WRITE, data=0x0007040600070406, payload=MsrAccess(msr)))
    info = ExitInfo(ExitReason.MSR_READ, payload=MsrAccess(msr))
    decide(vmm, v, info)
    assert info.data == 0x0007040600070406


def test_msr_exit_without_its_msr_is_an_error(setup):
    vmm, v, _ = setup
    with pytest.raises(TypeError):
        vmm.handle_exit(v, ExitInfo(ExitReason.MSR_READ))


def test_msr_bitmap_covers_the_emulated_traced_and_x2apic_msrs():
    exiting = msr_bitmap_exiting()
    assert {IA32_APIC_BASE_MSR, IA32_TSC, 0xC0000080, 0x800, 0x8FF} <= exiting and 0x900 not in exiting


def test_hlt_with_if0_halts_for_good(setup):
    vmm, v, _ = setup
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.HLT))
    assert not stay and decision is ExitDecision.LEAVE
    assert v.activity is ActivityState.HLT
    assert act.blocked_reason(v) == "finished" and act.stuck_reason(v) == "halted with IF=0"


def test_hlt_with_a_pending_interrupt_does_not_halt(setup):
    vmm, v, _ = setup
    v.engine.regs["rflags"] |= RFLAGS_IF
    v.apic.write(Reg.SVR, 0x1FF)
    v.apic.accept(0x40)
    decide(vmm, v, ExitInfo(ExitReason.HLT))
    assert v.activity is ActivityState.ACTIVE and "already pending" in vmm.trace.last(1)[0].detail


def test_halted_vcpu_wakes_on_an_interrupt_it_can_take(setup):
    vmm, v, _ = setup
    v.engine.regs["rflags"] |= RFLAGS_IF
    v.apic.write(Reg.SVR, 0x1FF)
    decide(vmm, v, ExitInfo(ExitReason.HLT))
    assert not act.wake_if_possible(v) and act.blocked_reason(v) == "halted"
    v.apic.accept(0x41)
    assert act.blocked_reason(v) is None and act.wake_if_possible(v) and v.activity is ActivityState.ACTIVE


@pytest.mark.parametrize("nr, rax, ends", [(HYPERCALL_PING, HYPERCALL_MAGIC, False), (0x99, 2**64 - 1, False),
                                           (HYPERCALL_EXIT, HYPERCALL_EXIT, True)])
def test_vmcall_hypercalls(setup, nr, rax, ends):
    vmm, v, life = setup
    v.engine.regs.update(rax=nr, rbx=7)
    stay, _ = decide(vmm, v, ExitInfo(ExitReason.VMCALL, instruction_length=3))
    assert v.engine.regs["rax"] == rax
    assert stay is not ends and life.ended is ends
    if ends:
        assert life.ending[:2] == ("exited", 7)


@pytest.mark.parametrize("reason, outcome", [(ExitReason.EPT_VIOLATION, "ept_violation"),
                                             (ExitReason.EPT_MISCONFIG, "ept_misconfig"),
                                             (ExitReason.TRIPLE_FAULT, "triple_fault"),
                                             (ExitReason.TASK_SWITCH, "fatal")])
def test_fatal_exits_end_the_vm(setup, reason, outcome):
    vmm, v, life = setup
    stay, decision = decide(vmm, v, ExitInfo(reason, rip=0xdead))
    assert not stay and decision is ExitDecision.LEAVE and life.ending[0] == outcome


def test_exception_exit_ends_the_vm_and_names_the_exception(setup):
    vmm, v, life = setup
    ev = hardware_exception(14, 2, 0xffffff8001000000)
    decide(vmm, v, ExitInfo(ExitReason.EXCEPTION_NMI, interruption_info=ev.interruption_info(),
                            payload=ExceptionExit(ev)))
    assert life.ending[0] == "exception" and "#PF" in life.ending[2]


def test_break_on_exit_reason_leaves_after_the_handler(setup):
    vmm, v, _ = setup
    seen = []
    vmm.exit_breakpoints.add(int(ExitReason.CPUID))
    vmm.on_exit_breakpoint = lambda vcpu, exit: seen.append(exit.reason)
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.CPUID))
    assert not stay and decision is ExitDecision.RESUME and seen == [ExitReason.CPUID]


def test_no_resume_once_the_vm_has_ended(setup):
    vmm, v, life = setup
    life.end("stopped")
    stay, decision = decide(vmm, v, ExitInfo(ExitReason.CPUID))
    assert not stay and decision is ExitDecision.RESUME


def test_activity_sipi_outside_wait_for_sipi_is_dropped():
    v = FakeVcpu(0)
    act.post_sipi(v, 0x10)
    assert act.take_sipi(v) is None and v.pending_sipi is None
    assert Event(2, EventType.NMI).vector == 2
