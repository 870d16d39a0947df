"""Instructions and events Unicorn has no hook for reach the hypervisor model, wherever the
code came from (hvdbg.engine.intercepts): every RDMSR/WRMSR, HLT, MOV to CR0/CR4, PAUSE,
and the interrupt window.  Each test boots a machine, writes code into guest RAM at run
time (the image scan that found MSR sites before 2026-12-02 never saw such code), runs it
as the BSP in 32-bit protected mode, and checks what the guest and the exit trace show."""

from __future__ import annotations

import struct
import subprocess

import pytest

from hvdbg.api import make_config, run_machine
from hvdbg.arch.apic import Reg
from hvdbg.arch.control_rules import ControlState, cr4_write_problem
from hvdbg.arch.msrs import MsrModel
from hvdbg.arch.segments import flat_segments_32
from hvdbg.hv.cr_access import CLTS, LMSW, MOV_FROM_CR, MOV_TO_CR, decode_cr_write
from hvdbg.hv.machine import Machine

CODE = 0x200000          # where the test code is written at run time
IDT = 0x210000
HANDLERS = 0x211000
DATA = 0x220000
STACK = 0x230000
GDT = 0x240000
#: null, null, 0x10 flat 32-bit code, 0x18 flat data (the selectors of flat_segments_32)
#: and at 0x20/0x28 the CPL 3 code and data segments SYSEXIT loads (SYSENTER_CS + 16/24)
GDT_ENTRIES = struct.pack("<6Q", 0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF,
                          0x00CFFB000000FFFF, 0x00CFF3000000FFFF)


def assemble(source: str, tmp_path, bits: int = 32) -> bytes:
    """GNU as -> flat binary (binutils is installed by scripts/setup.sh)."""
    src, obj, out = tmp_path / "t.s", tmp_path / "t.o", tmp_path / "t.bin"
    src.write_text(f".code{bits}\n.intel_syntax noprefix\n{source}\n")
    subprocess.run(["as", "--32" if bits != 64 else "--64", "-o", str(obj), str(src)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)], check=True)
    return out.read_bytes()


def gate32(handler: int) -> bytes:
    """A 32-bit interrupt gate to code segment 0x10 (SDM Vol. 3A 6.11, Figure 6-2)."""
    return struct.pack("<HHBBH", handler & 0xFFFF, 0x10, 0, 0x8E, handler >> 16)


def machine(guest_kernels, code: bytes, handlers: dict[int, bytes] | None = None, **overrides) -> Machine:
    """The hello kernel's machine with ``code`` written at CODE and the BSP put there in
    flat 32-bit protected mode; ``handlers`` maps vectors to handler code (IDT at IDT)."""
    vm = Machine(make_config("examples/hello.toml", kernel=str(guest_kernels / "hello.elf"), **overrides))
    vm.memory.write(CODE, code)
    idt = bytearray(8 * 256)
    for i, (vector, body) in enumerate(sorted((handlers or {}).items())):
        at = HANDLERS + 0x100 * i
        vm.memory.write(at, body)
        idt[8 * vector:8 * vector + 8] = gate32(at)
    vm.memory.write(IDT, bytes(idt))
    vm.memory.write(GDT, GDT_ENTRIES)
    vm.vcpus[0].set_guest_state(rip=CODE, cr0=0x11, rsp=STACK, segments=flat_segments_32(),
                                gdtr=(GDT, len(GDT_ENTRIES) - 1), idtr=(IDT, len(idt) - 1))
    return vm


def reasons(vm) -> list[str]:
    return [r.reason_name for r in vm.trace.last(10_000)]


def test_rdmsr_in_code_written_at_run_time_exits(guest_kernels, tmp_path):
    """IA32_APIC_BASE of the BSP reads 0xFEE00900 (SDM 11.4.4) from code the loaded
    image never contained (Unicorn alone reads 0)."""
    code = assemble("mov ecx, 0x1b\n rdmsr\n mov esi, eax\n mov edi, edx\n hlt", tmp_path)
    vm = machine(guest_kernels, code)
    run_machine(vm, include_stats=False)
    regs = vm.vcpus[0].registers()
    assert (regs["rdi"] << 32 | regs["rsi"]) == 0xFEE00900
    reads = vm.trace.last(10, reason="MSR_READ")
    assert reads and reads[-1].rip == CODE + 5 and "rdmsr 0x1b -> 0xfee00900" in reads[-1].detail


GP_HANDLER = "pop eax\n mov ebx, eax\n mov edx, 0xbeef\n hlt"   # error code -> EBX


@pytest.mark.parametrize("msr, write", [(0x1FF, True), (0x1FF, False), (0x40001234, False), (0xFE, True)])
def test_unimplemented_or_read_only_msr_raises_gp(guest_kernels, tmp_path, msr, write):
    """RDMSR/WRMSR of an MSR the processor does not implement, and WRMSR of a read-only
    one (IA32_MTRRCAP 0xFE is absent: CPUID hides MTRR), raise #GP(0) (SDM Vol. 2B)."""
    code = assemble(f"mov ecx, {msr}\n xor eax, eax\n xor edx, edx\n {'wrmsr' if write else 'rdmsr'}\n"
                    " mov edx, 0x1234\n hlt", tmp_path)
    vm = machine(guest_kernels, code, {13: assemble(GP_HANDLER, tmp_path)})
    run_machine(vm, include_stats=False)
    regs = vm.vcpus[0].registers()
    assert regs["rdx"] & 0xFFFF == 0xBEEF and regs["rbx"] == 0, vm.vcpus[0].msr_faults
    assert vm.vcpus[0].msr_faults[-1][:2] == (msr, write)


def test_implemented_msr_runs_on_the_engine(guest_kernels, tmp_path):
    """An MSR the VMM leaves to the processor (IA32_SYSENTER_ESP) is executed by the
    engine's CPU model: the value written reads back, with no exit in the trace."""
    code = assemble("mov ecx, 0x175\n mov eax, 0x12345678\n xor edx, edx\n wrmsr\n xor eax, eax\n rdmsr\n"
                    " mov esi, eax\n hlt", tmp_path)
    vm = machine(guest_kernels, code)
    run_machine(vm, include_stats=False)
    assert vm.vcpus[0].registers()["rsi"] == 0x12345678
    assert "MSR_READ" not in reasons(vm) and "MSR_WRITE" not in reasons(vm)


@pytest.mark.parametrize("cr4", [1 << 31, 1 << 15, 1 << 18, 1 << 12, 1 << 22])
def test_mov_to_cr4_with_a_reserved_or_hidden_bit_raises_gp(guest_kernels, tmp_path, cr4):
    """Reserved bits (31, 15) and bits of features CPUID hides (OSXSAVE without XSAVE,
    LA57, PKE) make MOV to CR4 raise #GP(0); CR4 keeps its value."""
    code = assemble(f"mov eax, {cr4}\n mov cr4, eax\n mov edx, 0x1234\n hlt", tmp_path)
    vm = machine(guest_kernels, code, {13: assemble(GP_HANDLER, tmp_path)})
    run_machine(vm, include_stats=False)
    regs = vm.vcpus[0].registers()
    assert regs["rdx"] & 0xFFFF == 0xBEEF and regs["cr4"] == 0
    assert vm.vcpus[0].cr_faults[-1][:2] == (4, cr4)


def test_allowed_cr_writes_take_effect(guest_kernels, tmp_path):
    """MOV to CR4 of offered features, CLTS, and LMSW (register and memory forms) write
    the register and go on after the instruction."""
    code = assemble(f"mov eax, 0x2b0\n mov cr4, eax\n mov eax, cr0\n or eax, 8\n mov cr0, eax\n clts\n"
                    f" mov eax, cr0\n mov esi, eax\n mov ax, 0x3\n lmsw ax\n mov word ptr [{DATA}], 0x7\n"
                    f" lmsw [{DATA}]\n mov eax, cr0\n mov edi, eax\n hlt", tmp_path)
    vm = machine(guest_kernels, code)
    run_machine(vm, include_stats=False)
    regs = vm.vcpus[0].registers()
    assert regs["cr4"] == 0x2B0                       # PAE | PGE | OSFXSR | PSE
    assert regs["rsi"] & 8 == 0                       # CLTS cleared TS
    assert regs["rdi"] & 0xF == 0x7 and regs["cr0"] & 0xF == 0x7   # LMSW set MP|EM, kept PE


def test_timer_interrupt_taken_in_a_one_instruction_window(guest_kernels, tmp_path):
    """A loop whose only interrupts-on window is the instruction after STI
    (``sti; nop; cli``) takes every APIC timer interrupt (SDM 6.8.3): the interrupt is
    recognized at the first boundary after the STI shadow, not at the next slice."""
    iterations, period = 20000, 2000     # ~5 instructions per iteration: ~50 periods
    code = assemble(f"cli\n mov ecx, {iterations}\n1: sti\n nop\n cli\n dec ecx\n jnz 1b\n hlt", tmp_path)
    handler = assemble(f"inc dword ptr [{DATA}]\n mov dword ptr [0xfee000b0], 0\n iret", tmp_path)
    vm = machine(guest_kernels, code, {0x40: handler})
    apic = vm.vcpus[0].apic
    apic.write(Reg.SVR, 0x1FF)                        # APIC software-enabled
    apic.write(Reg.TIMER_DIVIDE, 0xB)                 # divide by 1
    apic.write(Reg.LVT_TIMER, 0x40 | 1 << 17)         # periodic, vector 0x40
    apic.write(Reg.TIMER_INITIAL, period)
    run_machine(vm, include_stats=False)
    ticks = int.from_bytes(vm.memory.read(DATA, 4), "little")
    instructions = vm.vcpus[0].instructions
    assert instructions > iterations * 5
    assert ticks >= instructions // period - 2, (ticks, instructions)


def test_interrupt_window_exit_when_the_vmm_asks(guest_kernels, tmp_path):
    """With interrupt-window exiting set (primary control bit 2), the window is a VM exit
    (reason 7) in the trace, at the instruction after the STI shadow."""
    code = assemble("cli\n mov eax, 1\n sti\n nop\n mov ebx, 2\n hlt", tmp_path)
    vm = machine(guest_kernels, code)
    v = vm.vcpus[0]
    v.vmcs.write("CPU_BASED_VM_EXEC_CONTROL", v.vmcs.read("CPU_BASED_VM_EXEC_CONTROL") | 1 << 2)
    run_machine(vm, include_stats=False)
    windows = vm.trace.last(10, reason="INTERRUPT_WINDOW")
    assert windows and windows[0].rip == CODE + len(assemble("cli\n mov eax, 1\n sti\n nop", tmp_path))


def test_a_second_nmi_waits_for_the_iret_of_the_first(guest_kernels, tmp_path):
    """NMIs are blocked from the delivery of an NMI to the next IRET (SDM 6.7.1): a self-NMI
    sent inside the NMI handler is taken after its IRET, through an NMI-window exit
    (reason 8), never nested."""
    count, depth, deepest = DATA, DATA + 4, DATA + 8
    self_nmi = "mov dword ptr [0xfee00300], 0x40400"     # ICR: self shorthand, delivery mode NMI
    code = assemble(f"{self_nmi}\n 1: cmp dword ptr [{count}], 2\n jne 1b\n hlt", tmp_path)
    handler = assemble(f"inc dword ptr [{depth}]\n mov eax, [{depth}]\n cmp eax, [{deepest}]\n jbe 2f\n"
                       f" mov [{deepest}], eax\n 2: cmp dword ptr [{count}], 0\n jne 3f\n {self_nmi}\n"
                       f" mov ecx, 1000\n 4: dec ecx\n jnz 4b\n 3: dec dword ptr [{depth}]\n"
                       f" inc dword ptr [{count}]\n iret", tmp_path)
    vm = machine(guest_kernels, code, {2: handler})
    vm.vcpus[0].apic.write(Reg.SVR, 0x1FF)
    res = run_machine(vm, include_stats=False).result
    assert res["outcome"] == "exited" or res["outcome"] == "hang", res["diagnosis"]
    values = [int.from_bytes(vm.memory.read(a, 4), "little") for a in (count, depth, deepest)]
    assert values == [2, 0, 1], values                   # two NMIs, never two handlers at once
    assert vm.trace.last(10, reason="NMI_WINDOW")


@pytest.mark.parametrize("shadow", ["mov ss, ax", "sti"])
def test_an_nmi_waits_for_the_end_of_an_interrupt_shadow(guest_kernels, tmp_path, shadow):
    """An NMI pending right after MOV SS (architectural, SDM 6.8.3) or STI (as KVM holds
    it) is taken after the next instruction, not between the two: the handler sees the
    return address past the first NOP."""
    code = assemble(f"mov ax, 0x18\n {shadow}\n nop\n nop\n hlt", tmp_path)
    vm = machine(guest_kernels, code, {2: assemble("mov esi, [esp]\n hlt", tmp_path)})
    v = vm.vcpus[0]
    v.run(2)                                             # mov ax; then the shadow's instruction
    assert v.engine.intercepts.interrupt_shadow()
    first_nop = v.engine.rip()
    v.apic.nmi_pending = True
    for _ in range(3):                                   # one instruction, then the NMI's entry
        v.run(100)
    assert v.registers()["rsi"] == first_nop + 1         # not first_nop: delivered after it


def test_pause_exits_only_when_pause_loop_exiting_is_on(guest_kernels, tmp_path):
    code = assemble("mov ecx, 100\n1: pause\n dec ecx\n jnz 1b\n hlt", tmp_path)
    vm = machine(guest_kernels, code)
    run_machine(vm, include_stats=False)
    assert "PAUSE_INSTRUCTION" not in reasons(vm) and vm.vcpus[0].registers()["rcx"] == 0
    vm = machine(guest_kernels, code)
    vm.vcpus[0].enable_pause_exiting(64)
    run_machine(vm, include_stats=False)
    pauses = vm.trace.last(10, reason="PAUSE_INSTRUCTION")
    assert len(pauses) == 1 and vm.vcpus[0].registers()["rcx"] == 0


def test_sysenter_and_sysexit_round_trip(guest_kernels, tmp_path):
    """SYSEXIT (Unicorn's own) drops to CPL 3; SYSENTER (a no-op in Unicorn 2.1.4,
    performed by hvdbg.hv.system_calls) comes back to CPL 0 at IA32_SYSENTER_EIP with
    IA32_SYSENTER_ESP, and CS/SS from IA32_SYSENTER_CS (SDM Vol. 2B SYSENTER)."""
    entry = CODE + 0x800
    code = assemble(f"mov ecx, 0x174\n mov eax, 0x10\n xor edx, edx\n wrmsr\n"
                    f" mov ecx, 0x175\n mov eax, {STACK - 0x100}\n wrmsr\n"
                    f" mov ecx, 0x176\n mov eax, {entry}\n wrmsr\n"
                    f" mov ecx, {STACK - 0x800}\n lea edx, [user + {CODE}]\n sysexit\n"
                    "user: mov eax, cs\n and eax, 3\n mov edi, eax\n sysenter\n", tmp_path)
    vm = machine(guest_kernels, code)
    vm.memory.write(entry, assemble("mov ebx, cs\n mov ebp, ss\n mov esi, esp\n hlt", tmp_path))
    res = run_machine(vm, include_stats=False)
    regs = vm.vcpus[0].registers()
    assert regs["rdi"] == 3, res.result["diagnosis"]                       # ran at CPL 3
    assert (regs["rbx"], regs["rbp"], regs["rsi"]) == (0x10, 0x18, STACK - 0x100)
    assert regs["rflags"] & (1 << 9) == 0


# -- units -----------------------------------------------------------------------------------
def test_decode_cr_write_forms():
    assert decode_cr_write(bytes.fromhex("0f22e0"), 64) == decode_cr_write(bytes.fromhex("0f22e0"), 32)
    w = decode_cr_write(bytes.fromhex("440f22c0"), 64)      # mov cr8, rax
    assert (w.cr, w.access, w.gpr, w.length) == (8, MOV_TO_CR, 0, 4)
    w = decode_cr_write(bytes.fromhex("410f22e7"), 64)      # mov cr4, r15
    assert (w.cr, w.gpr, w.length) == (4, 15, 4)
    assert decode_cr_write(bytes.fromhex("0f06"), 32).access == CLTS
    w = decode_cr_write(bytes.fromhex("0f01f0"), 16)        # lmsw ax
    assert (w.access, w.gpr, w.length) == (LMSW, 0, 3)
    assert decode_cr_write(bytes.fromhex("0f0130"), 32).lmsw_memory
    w = decode_cr_write(bytes.fromhex("440f20c1"), 64)      # mov rcx, cr8
    assert (w.cr, w.access, w.gpr, w.length) == (8, MOV_FROM_CR, 1, 4)


def test_msr_model_follows_cpuid():
    m = MsrModel(("tsc", "apic", "sep", "syscall", "lm"))
    assert m.problem(0x175, True) is None and m.problem(0xC0000082, False) is None
    assert "not implemented" in m.problem(0x200, False)            # MTRRs: no "mtrr" feature
    assert MsrModel(("mtrr",)).problem(0x200, False) is None
    assert "read-only" in MsrModel(("mtrr",)).problem(0xFE, True)
    assert "not implemented" in m.problem(0xC0000103, False)       # TSC_AUX needs RDTSCP


def test_cr4_feature_rules():
    s = ControlState(cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0x500, rip=0, cs_long=True)
    assert "LA57 cannot change" in cr4_write_problem(s, 0x20 | 1 << 12, frozenset({"la57"}))
    assert "xsave" in cr4_write_problem(s, 0x20 | 1 << 18, frozenset())
    assert cr4_write_problem(s, 0x20 | 1 << 7, frozenset({"pge"})) is None
    assert cr4_write_problem(s, 0x20 | 1 << 17, frozenset({"pcid"})) is None
    with_pcid_bits = ControlState(cr0=0x80000011, cr3=0x1008, cr4=0x20, efer=0x500, rip=0, cs_long=True)
    assert "PCIDE" in cr4_write_problem(with_pcid_bits, 0x20 | 1 << 17, frozenset({"pcid"}))


# -- the machine's own trouble, in the diagnosis ---------------------------------------------
def test_diagnosis_names_an_exception_storm(guest_kernels, tmp_path):
    """A #UD handler that returns to the UD2: thousands of exceptions, no progress."""
    vm = machine(guest_kernels, assemble("ud2\n hlt", tmp_path), {6: assemble("iret", tmp_path)},
                 budget__instructions=5_000)
    res = run_machine(vm, include_stats=False).result
    assert any("exception storm" in line and "#UD" in line for line in res["diagnosis"]), res["diagnosis"]


def test_diagnosis_names_interrupts_held_back(guest_kernels, tmp_path):
    """The APIC timer fires while the guest spins with RFLAGS.IF = 0: entry after entry
    finds the interrupt pending and cannot inject it."""
    vm = machine(guest_kernels, assemble("cli\n 1: jmp 1b", tmp_path), slice=500)
    apic = vm.vcpus[0].apic
    apic.write(Reg.SVR, 0x1FF)
    apic.write(Reg.TIMER_DIVIDE, 0xB)
    apic.write(Reg.LVT_TIMER, 0x40)
    apic.write(Reg.TIMER_INITIAL, 100)
    res = run_machine(vm, include_stats=False).result
    assert res["outcome"] == "hang"
    assert any("could not take" in line and "vector 0x40 is pending now with RFLAGS.IF=0" in line
               for line in res["diagnosis"]), res["diagnosis"]


def test_diagnosis_names_an_smp_vm_without_apic_accesses(guest_kernels):
    """The single-CPU hello kernel in a 2-vCPU VM never starts the AP."""
    vm = Machine(make_config("examples/hello.toml", kernel=str(guest_kernels / "hello.elf"), vcpus=2))
    res = run_machine(vm, include_stats=False).result
    assert any("no vCPU touched its local APIC" in line for line in res["diagnosis"]), res["diagnosis"]
