"""Nested VMX wired into the vCPU (hvdbg.hv.nested): a guest that runs VMX instructions
gets them emulated, with the SDM's flags, errors and exceptions, when its CPUID offers VMX
(``cpu = "hvdbg,+vmx"``), and #UD as before when it does not.  Each test writes code into
a booted machine's RAM (tests/test_intercepts.py's harness: the BSP in flat 32-bit
protected mode), turns on paging with one 4 MiB identity page (VMXON needs CR0.PG, SDM
24.8), runs it and checks registers, the guest's memory, the exit trace and the shell."""

from __future__ import annotations

import struct

import pytest

from hvdbg.api import run_machine
from hvdbg.debug.session import DebugSession
from hvdbg.hv.nested import decode
from hvdbg.ui.commands.context import CommandContext
from hvdbg.vmx.capabilities import DEFAULT_CAPABILITIES as CAPS
from hvdbg.vmx.fields import BY_NAME as FIELDS
from hvdbg.vmx.vmcs_region import VmcsRegion
from test_intercepts import DATA, STACK, assemble, machine

VMXON_R, VMCS_R, PD = 0x300000, 0x301000, 0x250000
VMX_CPU = "hvdbg,+vmx"
#: CR4.PSE + CR4.VMXE, one 4 MiB identity page, CR0.PG + CR0.NE: what VMXON needs
PAGING = f"""
 mov eax, cr4
 or eax, 0x2010
 mov cr4, eax
 mov dword ptr [{PD}], 0x83
 mov eax, {PD}
 mov cr3, eax
 mov eax, cr0
 or eax, 0x80000020
 mov cr0, eax
"""
UD_HANDLER = "mov ebp, 0x0d0d\n add dword ptr [esp], 3\n iretd"   # record #UD, skip a 3-byte instruction
#: count #GPs in EBP; skip the faulting RDMSR/WRMSR (2 bytes) or MOV to CR (3 bytes)
GP_HANDLER = """
 add esp, 4
 inc ebp
 push eax
 mov eax, [esp + 4]
 cmp byte ptr [eax + 1], 0x22
 je 1f
 add dword ptr [esp + 4], 2
 pop eax
 iretd
1:
 add dword ptr [esp + 4], 3
 pop eax
 iretd
"""


def vmx_machine(guest_kernels, tmp_path, body: str, *, cpu: str = VMX_CPU, paging: bool = True, handlers=None):
    code = assemble((PAGING if paging else "") + body + "\n hlt", tmp_path)
    handler_code = {vector: assemble(src, tmp_path) for vector, src in (handlers or {}).items()}
    vm = machine(guest_kernels, code, handlers=handler_code, cpu=cpu)
    vm.memory.write(DATA, struct.pack("<QQQ", VMXON_R, VMCS_R, 0))
    vm.memory.write(VMXON_R, struct.pack("<I", CAPS.revision_id))
    vm.memory.write(VMCS_R, struct.pack("<I", CAPS.revision_id))
    return vm


def regs_after(vm) -> dict[str, int]:
    run_machine(vm, include_stats=False)
    return vm.vcpus[0].registers()


def details(vm) -> list[str]:
    return [f"{r.reason_name} {r.detail}" for r in vm.trace.last(200)]


CF, ZF = 1 << 0, 1 << 6


def test_cpuid_msrs_and_cr4_offer_vmx_only_when_asked(guest_kernels, tmp_path):
    """CPUID.1:ECX[5], IA32_FEATURE_CONTROL locked with VMX outside SMX (as firmware leaves
    it), IA32_VMX_BASIC as hvdbg.vmx.capabilities computes it; without +vmx CPUID.1:ECX[5]
    is 0, and RDMSR 0x3A and MOV to CR4.VMXE raise #GP(0) as on a CPU without VMX."""
    body = ("mov eax, 1\n cpuid\n mov esi, ecx\n mov ecx, 0x3a\n rdmsr\n mov edi, eax\n"
            " mov ecx, 0x480\n rdmsr\n mov ebx, eax\n mov esp, edx\n mov esp, " + str(STACK))
    vm = vmx_machine(guest_kernels, tmp_path, body, paging=False)
    vm_regs = regs_after(vm)
    assert vm_regs["rsi"] >> 5 & 1 == 1
    assert vm_regs["rdi"] == 0x5
    assert vm_regs["rbx"] == CAPS.basic & 0xFFFFFFFF
    plain = vmx_machine(guest_kernels, tmp_path, "xor ebp, ebp\n mov eax, 1\n cpuid\n mov esi, ecx\n mov ecx, 0x3a\n"
                        " rdmsr\n mov eax, cr4\n or eax, 0x2000\n mov cr4, eax",
                        cpu="hvdbg", paging=False, handlers={13: GP_HANDLER})
    r = regs_after(plain)
    assert r["rsi"] >> 5 & 1 == 0 and r["rbp"] == 2
    assert plain.vcpus[0].msr_faults[-1][0] == 0x3A
    assert "CPUID feature vmx" in plain.vcpus[0].cr_faults[-1][3]


def test_capability_msrs_are_read_only_and_feature_control_locked(guest_kernels, tmp_path):
    body = "xor ebp, ebp\n mov ecx, 0x480\n xor eax, eax\n xor edx, edx\n wrmsr\n mov esi, ebp\n" \
           " mov ecx, 0x3a\n mov eax, 5\n wrmsr\n mov edi, ebp"
    vm = vmx_machine(guest_kernels, tmp_path, body, paging=False, handlers={13: GP_HANDLER})
    r = regs_after(vm)
    assert r["rsi"] == 1 and r["rdi"] == 2
    faults = [f[3] for f in vm.vcpus[0].msr_faults] + details(vm)
    assert any("read-only VMX capability MSR" in f for f in faults)
    assert any("IA32_FEATURE_CONTROL is locked" in f for f in faults)


def test_root_operation_instructions_follow_the_sdm(guest_kernels, tmp_path):
    """VMXON, VMCLEAR, VMPTRLD, VMWRITE/VMREAD (register and memory forms), VMPTRST, the
    VMfailValid errors 13 and 7 read back through VM_INSTRUCTION_ERROR, and the flags."""
    body = f"""
 vmxon [{DATA}]
 pushfd
 pop esi
 vmclear [{DATA + 8}]
 vmptrld [{DATA + 8}]
 mov eax, 0x681e
 mov ecx, 0x1234
 vmwrite eax, ecx
 vmread edx, eax
 mov dword ptr [{DATA + 24}], 0x5678
 mov eax, 0x681c
 vmwrite eax, [{DATA + 24}]
 vmread [{DATA + 28}], eax
 mov eax, 0x4402
 vmwrite eax, ecx
 pushfd
 pop edi
 mov eax, 0x4400
 vmread ebp, eax
 vmptrst [{DATA + 16}]
 vmlaunch
 pushfd
 pop ebx
 mov eax, 0x4400
 vmread ecx, eax
"""
    vm = vmx_machine(guest_kernels, tmp_path, body)
    r = regs_after(vm)
    assert r["rsi"] & (CF | ZF) == 0                 # VMXON: VMsucceed
    assert r["rdx"] == 0x1234                        # VMREAD GUEST_RIP, register form
    assert struct.unpack("<I", vm.memory.read(DATA + 28, 4))[0] == 0x5678   # memory forms
    assert r["rdi"] & ZF and not r["rdi"] & CF and r["rbp"] == 13   # VMWRITE read-only field
    assert struct.unpack("<Q", vm.memory.read(DATA + 16, 8))[0] == VMCS_R   # VMPTRST
    assert r["rbx"] & ZF and r["rcx"] == 7           # VMLAUNCH: invalid control fields
    region = VmcsRegion(vm.memory, VMCS_R)
    assert region.read("GUEST_RIP") == 0x1234 and region.read("GUEST_RSP") == 0x5678
    text = "\n".join(details(vm))
    assert "VMXON vmxon 0x300000: VMsucceed" in text
    assert "VMWRITE vmwrite GUEST_RIP (0x681e) <- 0x1234: VMsucceed" in text
    assert "VMfailValid(13: VMWRITE to read-only VMCS component)" in text
    assert "VM entry failed: pin-based controls must follow IA32_VMX_TRUE_PINBASED_CTLS, SDM 27.2.1.1" in text


def test_fail_invalid_and_exceptions(guest_kernels, tmp_path):
    """VMREAD without a current VMCS is VMfailInvalid (CF); VMXON in root is VMfailInvalid
    (no current VMCS to hold error 15); clearing CR4.VMXE in VMX operation is #GP(0);
    VMXOFF, then VMREAD is #UD."""
    body = f"""
 vmxon [{DATA}]
 mov eax, 0x681e
 vmread ecx, eax
 pushfd
 pop esi
 vmxon [{DATA}]
 pushfd
 pop edi
 mov eax, cr4
 and eax, 0xffffdfff
 xor ebp, ebp
 mov cr4, eax
 mov ebx, ebp
 vmxoff
 xor ebp, ebp
 mov eax, 0x681e
 vmread ecx, eax
"""
    handlers = {6: UD_HANDLER, 13: GP_HANDLER}
    vm = vmx_machine(guest_kernels, tmp_path, body, handlers=handlers)
    r = regs_after(vm)
    assert r["rsi"] & CF and r["rdi"] & CF
    assert r["rbx"] == 1 and "CR4.VMXE" in vm.vcpus[0].cr_faults[-1][3]
    assert r["rbp"] == 0x0D0D
    assert vm.vcpus[0].vmx.in_vmx_operation is False
    assert "VMREAD vmread: #UD: not in VMX operation" in details(vm)


def test_vmx_instruction_without_vmx_is_ud(guest_kernels, tmp_path):
    vm = vmx_machine(guest_kernels, tmp_path, "xor ebp, ebp\n vmxoff", cpu="hvdbg", paging=False,
                     handlers={6: UD_HANDLER})
    assert regs_after(vm)["rbp"] == 0x0D0D
    assert not any(d.startswith("VMXOFF") for d in details(vm))


def _entry_ready_region(vm, host_rip: int, host_rsp: int) -> VmcsRegion:
    """A VMCS for a 32-bit guest under a 32-bit host that passes every VM-entry check."""
    region = VmcsRegion(vm.memory, VMCS_R)
    seg_ar = {"CS": 0xC09B, "SS": 0xC093, "DS": 0xC093, "ES": 0xC093, "FS": 0xC093, "GS": 0xC093,
              "TR": 0x8B, "LDTR": 0x10000}
    for name in FIELDS:
        if not name.startswith(("VM_INSTRUCTION_ERROR", "VM_EXIT_REASON")) and CAPS.vmcs_field_supported(name) \
                and FIELDS[name].type.name != "EXIT_INFO":
            region.write(name, 0)
    for s, ar in seg_ar.items():
        region.write(f"GUEST_{s}_AR_BYTES", ar)
        region.write(f"GUEST_{s}_LIMIT", 0xFFFFFFFF if s not in ("TR", "LDTR") else 0x67)
    values = dict(GUEST_CS_SELECTOR=0x10, GUEST_SS_SELECTOR=0x18, GUEST_DS_SELECTOR=0x18, GUEST_ES_SELECTOR=0x18,
                  GUEST_FS_SELECTOR=0x18, GUEST_GS_SELECTOR=0x18, GUEST_TR_SELECTOR=0x28,
                  PIN_BASED_VM_EXEC_CONTROL=CAPS.control("pin").must_be_1,
                  CPU_BASED_VM_EXEC_CONTROL=CAPS.control("primary").must_be_1 | 1 << 7,
                  VM_EXIT_CONTROLS=CAPS.control("exit").must_be_1,
                  VM_ENTRY_CONTROLS=CAPS.control("entry").must_be_1,
                  HOST_CR0=0x80000031, HOST_CR4=0x2010, HOST_CR3=PD, HOST_CS_SELECTOR=0x10,
                  HOST_SS_SELECTOR=0x18, HOST_DS_SELECTOR=0x18, HOST_TR_SELECTOR=0x28,
                  HOST_RIP=host_rip, HOST_RSP=host_rsp,
                  GUEST_CR0=0x80000031, GUEST_CR4=0x2010, GUEST_CR3=PD, GUEST_RFLAGS=2, GUEST_RIP=0x280000,
                  GUEST_DR7=0x400, VMCS_LINK_POINTER=0xFFFFFFFFFFFFFFFF, GUEST_GDTR_LIMIT=0xFFFF,
                  GUEST_IDTR_LIMIT=0xFFFF)
    for name, value in values.items():
        region.write(name, value)
    return region


def test_vm_entry_failure_loads_the_host_state(guest_kernels, tmp_path):
    """A guest-state check failure (RFLAGS bit 1 clear, SDM 27.3.1.4) is a VM exit with
    reason 33 | bit 31 (SDM 27.8): the host state is loaded and the guest hypervisor goes
    on at HOST_RIP with RFLAGS = 2 (SDM 28.5.3)."""
    body = f"""
 vmxon [{DATA}]
 vmptrld [{DATA + 8}]
 mov esi, 0xbad
 vmlaunch
 mov esi, 0xbad2
 hlt
host:
 pushfd
 pop edi
 mov esi, 0x600d
 mov eax, 0x4402
 vmread ebx, eax
"""
    vm = vmx_machine(guest_kernels, tmp_path, body)
    code = assemble(PAGING + body + "\n hlt", tmp_path)
    host_offset = code.index(bytes.fromhex("9c5fbe0d600000"))   # pushfd; pop edi; mov esi, 0x600d
    region = _entry_ready_region(vm, 0x200000 + host_offset, STACK - 0x100)
    region.write("GUEST_RFLAGS", 0)
    r = regs_after(vm)
    assert r["rsi"] == 0x600D and r["rbx"] == 0x80000021 and r["rdi"] == 0x2
    assert r["rsp"] == STACK - 0x100
    assert vm.vcpus[0].vmx.non_root is False
    assert any("VM-entry failure" in d and "RFLAGS" in d for d in details(vm))


L1_HANDLER = f"""
 vmxon [{DATA}]
 vmptrld [{DATA + 8}]
 vmlaunch
 mov esi, 0xbad
 hlt
host:
 mov eax, 0x4402
 vmread ebx, eax
 mov ecx, [{DATA + 32}]
 mov [{DATA + 0x40} + ecx * 4], ebx
 inc dword ptr [{DATA + 32}]
 cmp ebx, 12
 je done
 cmp ebx, 48
 je done
 cmp ebx, 0
 je done
 cmp ebx, 2
 je done
 cmp ebx, 7
 je done
 mov eax, 0x681e
 vmread edx, eax
 mov eax, 0x440c
 vmread ecx, eax
 add edx, ecx
 mov eax, 0x681e
 vmwrite eax, edx
 vmresume
 mov esi, 0xbad3
 hlt
done:
 mov esi, 0x600d
"""
L2_CODE = 0x280000
#: the guest hypervisor's guest: CPUID (always an exit), OUT (unconditional I/O exiting), HLT (HLT exiting)
L2_BODY = "mov edi, 0x1234\n xor eax, eax\n cpuid\n mov ebp, edi\n out 0x80, al\n hlt"


def l1_and_l2(guest_kernels, tmp_path, l2_body: str = L2_BODY, primary_extra: int = 1 << 24):
    vm = vmx_machine(guest_kernels, tmp_path, L1_HANDLER)
    code = assemble(PAGING + L1_HANDLER + "\n hlt", tmp_path)
    host = 0x200000 + code.index(bytes.fromhex("b802440000"))      # host: mov eax, 0x4402
    region = _entry_ready_region(vm, host, STACK - 0x100)
    region.write("CPU_BASED_VM_EXEC_CONTROL", region.read("CPU_BASED_VM_EXEC_CONTROL") | primary_extra)
    vm.memory.write(L2_CODE, assemble(l2_body, tmp_path))
    return vm, region


def exit_log(vm) -> list[int]:
    count = struct.unpack("<I", vm.memory.read(DATA + 32, 4))[0]
    return list(struct.unpack(f"<{count}I", vm.memory.read(DATA + 0x40, 4 * count)))


def test_guest_hypervisor_runs_its_guest_and_takes_its_exits(guest_kernels, tmp_path):
    """VMLAUNCH runs L2 at GUEST_RIP; CPUID, an OUT under unconditional I/O exiting and a
    HLT under HLT exiting are VM exits to the L1's HOST_RIP with their exit reason, RIP and
    instruction length in the L1's VMCS; VMRESUME goes on after each.  L2's registers are
    the L1's after the exit (VM exits do not switch GPRs)."""
    vm, region = l1_and_l2(guest_kernels, tmp_path)
    r = regs_after(vm)
    assert r["rsi"] == 0x600D, hex(r["rsi"])
    assert exit_log(vm) == [10, 30, 12]
    assert r["rbp"] == 0x1234                   # L2 ran on after the CPUID exit
    assert region.read("GUEST_RIP") == L2_CODE + 13     # the HLT
    assert region.read("VM_EXIT_INSTRUCTION_LEN") == 1
    assert region.read("EXIT_QUALIFICATION") == 0
    state = vm.vcpus[0].vmx
    assert state.non_root is False and state.l2_entries == 3 and state.l2_exits == 3
    assert region.read("VM_EXIT_REASON") == 12
    text = details(vm)
    assert f"CPUID L2 -> L1 at {L2_CODE + 7:#x}: CPUID (exit reason 10)" in text
    assert f"IO_INSTRUCTION L2 -> L1 at {L2_CODE + 11:#x}: I/O instruction: OUT 1 byte to port 0x80 (immediate port)" in text
    assert sum(t.startswith("VMRESUME vmresume: VM entry") for t in text) == 2


EPT12 = 0x310000          # the guest hypervisor's EPT: PML4, PDPT, PD in its memory
L2_OFFSET = 0x400000      # L2-physical 0 is L1-physical 4 MiB


def test_guest_hypervisor_ept_maps_its_guest_and_reports_violations(guest_kernels, tmp_path):
    """With enable EPT and unrestricted guest, L2 runs with paging off in the memory the
    L1's EPT gives it (L2-physical 0-4 MiB at L1-physical 4-8 MiB): its loads and stores
    land there; a load past the mapping is an EPT violation for the L1 with the L2-physical
    address, a read access and no permissions in the qualification (SDM Table 28-7)."""
    l2 = "mov eax, [0x2000]\n inc eax\n mov [0x2004], eax\n cpuid\n mov ebx, [0x800000]\n hlt"
    vm, region = l1_and_l2(guest_kernels, tmp_path, l2_body="nop", primary_extra=1 << 31)
    vm.memory.write(L2_OFFSET + 0x1000, assemble(l2, tmp_path))
    vm.memory.write(L2_OFFSET + 0x2000, struct.pack("<I", 0x41414141))
    vm.memory.write(0x2000, struct.pack("<I", 0x51515151))      # the same GPA in the L1: not what L2 sees
    vm.memory.write(EPT12, struct.pack("<Q", (EPT12 + 0x1000) | 7))
    vm.memory.write(EPT12 + 0x1000, struct.pack("<Q", (EPT12 + 0x2000) | 7))
    vm.memory.write(EPT12 + 0x2000, struct.pack("<QQ", L2_OFFSET | 7 | 6 << 3 | 1 << 7,
                                                (L2_OFFSET + 0x200000) | 7 | 6 << 3 | 1 << 7))
    region.write("SECONDARY_VM_EXEC_CONTROL", 1 << 1 | 1 << 7)     # enable EPT, unrestricted guest
    region.write("EPT_POINTER", EPT12 | 6 | 3 << 3)
    region.write("GUEST_CR0", 0x31)
    region.write("GUEST_RIP", 0x1000)
    result = run_machine(vm, include_stats=False).result
    r = vm.vcpus[0].registers()
    assert r["rsi"] == 0x600D and exit_log(vm) == [10, 48]
    finding = next(d for d in result["diagnosis"] if "the guest hypervisor's guest (L2) last exited" in d)
    assert "EPT violation" in finding and "0x800000" in finding and f"L2 RIP {0x100d:#x}" in finding, finding
    assert "it maps L2-physical 0x0-0x400000" in finding, finding
    assert struct.unpack("<I", vm.memory.read(L2_OFFSET + 0x2004, 4))[0] == 0x41414142
    assert region.read("GUEST_PHYSICAL_ADDRESS") == 0x800000
    qual = region.read("EXIT_QUALIFICATION")
    assert qual & 0b111 == 0b001 and qual >> 3 & 0b111 == 0
    assert region.read("GUEST_RIP") == 0x1000 + 5 + 1 + 5 + 2      # the faulting load
    assert any("EPT_VIOLATION L2 -> L1 at 0x100d: read of L2-physical 0x800000" in d for d in details(vm))
    assert vm.vcpus[0].physical is vm.memory                    # the L1's view is back


MSR_BITMAP_PAGE = 0x320000


@pytest.mark.parametrize("name, l2_body, primary, fields, log, checks", [
    # RDTSC exiting: exit 16 with the instruction's length; EDX:EAX untouched
    ("rdtsc exiting", "mov eax, 7\n rdtsc\n hlt", 1 << 12, {}, [16, 12],
     {"trace": f"RDTSC L2 -> L1 at {L2_CODE + 5:#x}"}),
    # TSC offsetting: L2's RDTSC adds TSC_OFFSET (2^40)
    ("tsc offset", "rdtsc\n mov ebp, edx\n hlt", 1 << 3, {"TSC_OFFSET": 1 << 40}, [12], {"rbp>=": 0x100}),
    # exception bitmap: #UD is exit 0 with the interruption information, RIP at the ud2
    ("exception bitmap", "nop\n ud2", 0, {"EXCEPTION_BITMAP": 1 << 6}, [0],
     {"VM_EXIT_INTR_INFO": 0x80000306, "GUEST_RIP": L2_CODE + 1}),
    # MSR bitmap: RDMSR of IA32_TSC exits (bit set); IA32_APIC_BASE (bit clear) is hvdbg's
    ("msr bitmap", "mov ecx, 0x10\n rdmsr\n mov ecx, 0x1b\n rdmsr\n mov ebp, eax\n hlt", 1 << 28,
     {"MSR_BITMAP": MSR_BITMAP_PAGE}, [31, 12], {"rbp": 0xFEE00900}),
    # CR0 guest/host mask on TS with shadow 0: MOV to CR0 setting TS exits, qualification CR0, MOV to, EAX
    ("cr0 mask", "mov eax, cr0\n or eax, 8\n mov cr0, eax\n hlt", 0,
     {"CR0_GUEST_HOST_MASK": 8, "CR0_READ_SHADOW": 0}, [28, 12], {"EXIT_QUALIFICATION": 0}),
    # VMCALL and VMX instructions in L2 always exit
    ("vmcall", "vmcall\n mov eax, 0x4400\n vmread ebx, eax\n hlt", 0, {}, [18, 23, 12], {}),
    # INVLPG exiting: exit 14 with the linear address as qualification, the instruction's length
    ("invlpg exiting", "invlpg [0x1234]\n hlt", 1 << 9, {}, [14, 12],
     {"trace": f"INVLPG L2 -> L1 at {L2_CODE:#x}"}),
    # interrupt-window exiting: L2 with IF = 1 exits at once
    ("interrupt window", "nop\n hlt", 1 << 2, {"GUEST_RFLAGS": 0x202}, [7], {"GUEST_RIP": L2_CODE}),
])
def test_exits_by_the_guest_hypervisors_controls(guest_kernels, tmp_path, name, l2_body, primary, fields, log,
                                                 checks):
    """Each exit the L1's controls ask for reaches the L1 with its reason and exit fields,
    and nothing else does (SDM 25.6, 26.1-26.2, 28.2)."""
    vm, region = l1_and_l2(guest_kernels, tmp_path, l2_body=l2_body, primary_extra=primary)
    for field_name, value in fields.items():
        region.write(field_name, value)
    bitmap = bytearray(4096)
    bitmap[0x10 // 8] |= 1 << (0x10 % 8)       # read-low: IA32_TSC
    vm.memory.write(MSR_BITMAP_PAGE, bytes(bitmap))
    r = regs_after(vm)
    assert r["rsi"] == 0x600D, f"{name}: {details(vm)[-3:]}"
    assert exit_log(vm) == log
    for key, want in checks.items():
        if key == "trace":
            assert any(d.startswith(want) for d in details(vm)), details(vm)
        elif key.endswith(">="):
            assert r[key[:-2]] >= want, key
        elif key in r:
            assert r[key] & 0xFFFFFFFF == want, key
        else:
            assert region.read(key) == want, f"{key} = {region.read(key):#x}"


def test_exits_the_guest_hypervisor_does_not_ask_for_run_in_its_guest(guest_kernels, tmp_path):
    """Without unconditional I/O exiting the OUT reaches hvdbg's port 0x80 from L2 without
    an exit to the L1; CPUID and HLT still exit."""
    vm, _ = l1_and_l2(guest_kernels, tmp_path, primary_extra=0)
    r = regs_after(vm)
    assert r["rsi"] == 0x600D and exit_log(vm) == [10, 12]


MSR_LISTS = 0x330000      # entry load, exit store, exit load lists (16-byte entries)
KERNEL_GS_BASE = 0xC0000102


def test_msr_lists_load_at_entry_store_and_load_at_exit(guest_kernels, tmp_path):
    """The VM-entry MSR-load list sets IA32_KERNEL_GS_BASE for L2 (SDM 27.4), the VM-exit
    MSR-store list saves L2's value (28.4), the VM-exit MSR-load list sets the L1's (28.6);
    the shell shows the L1's view afterwards."""
    l2 = f"mov ecx, {KERNEL_GS_BASE:#x}\n rdmsr\n mov ebp, eax\n hlt"
    vm, region = l1_and_l2(guest_kernels, tmp_path, l2_body=l2, primary_extra=1 << 28)    # MSR bitmaps: none exit
    region.write("MSR_BITMAP", MSR_LISTS + 0x1000)
    vm.memory.write(MSR_LISTS + 0x1000, bytes(4096))
    vm.memory.write(MSR_LISTS, struct.pack("<IIQ", KERNEL_GS_BASE, 0, 0x1234000))
    vm.memory.write(MSR_LISTS + 0x100, struct.pack("<IIQ", KERNEL_GS_BASE, 0, 0))
    vm.memory.write(MSR_LISTS + 0x200, struct.pack("<IIQ", KERNEL_GS_BASE, 0, 0x5678000))
    for prefix, offset in (("VM_ENTRY_MSR_LOAD", 0), ("VM_EXIT_MSR_STORE", 0x100), ("VM_EXIT_MSR_LOAD", 0x200)):
        region.write(f"{prefix}_ADDR", MSR_LISTS + offset)
        region.write(f"{prefix}_COUNT", 1)
    session = DebugSession(vm)
    try:
        session.start()
        session.join(timeout=60)
        r = vm.vcpus[0].registers()
        assert r["rsi"] == 0x600D and exit_log(vm) == [12] and r["rbp"] == 0x1234000
        assert struct.unpack("<Q", vm.memory.read(MSR_LISTS + 0x108, 8))[0] == 0x1234000
        assert vm.vcpus[0].engine.msr_read(KERNEL_GS_BASE) == 0x5678000
        ctx = CommandContext(session, wait_timeout=10)
        out = ctx.execute("vmx 0")
        assert out.ok and "L1 running" in out.text and f"VMXON region {VMXON_R:#x}" in out.text, out.text
        assert f"current VMCS {VMCS_R:#x}: revision 0x1, launch state launched" in out.text
        assert "1 VM entries into L2, 1 exits to L1 (HLT 1)" in out.text, out.text
        vmcs = ctx.execute("vmx vmcs 0 guest")
        assert vmcs.ok and f"GPA {VMCS_R:#x}" in vmcs.text and f"0x681e = {L2_CODE + 9:#018x}" in vmcs.text
        plain = ctx.execute("vmx vmcs 0 GUEST_CR3")
        assert plain.ok and f"= {PD:#018x}" in plain.text
    finally:
        session.shutdown()


def test_a_bad_msr_load_entry_is_a_vm_entry_failure(guest_kernels, tmp_path):
    """IA32_FS_BASE may not be in a VM-entry MSR-load list: VM-entry failure with exit
    reason 34 | bit 31 and the entry's number as qualification (SDM 27.4, 27.8); the host
    state is loaded and the VMCS stays not launched, so the L1's VMRESUME fails."""
    vm, region = l1_and_l2(guest_kernels, tmp_path)
    vm.memory.write(MSR_LISTS, struct.pack("<IIQIIQ", KERNEL_GS_BASE, 0, 1, 0xC0000100, 0, 0))
    region.write("VM_ENTRY_MSR_LOAD_ADDR", MSR_LISTS)
    region.write("VM_ENTRY_MSR_LOAD_COUNT", 2)
    r = regs_after(vm)
    assert exit_log(vm) == [0x80000022] and r["rsi"] == 0xBAD3
    assert region.read("EXIT_QUALIFICATION") == 2 and region.read("VM_INSTRUCTION_ERROR") == 5
    assert "MSR-load entry 2 (MSR 0xc0000100)" in vm.vcpus[0].vmx.entry_failures[-1]


@pytest.mark.parametrize("code, bits, info, qualification", [
    ("f30fc7742408", 64, 0 | 2 << 7 | 2 << 15 | 1 << 22 | 4 << 23, 8),      # vmxon [rsp+8]: SS, base rsp
    ("0f78c8", 64, 0 << 3 | 1 << 10 | 1 << 28, 0),                         # vmread rax, rcx
    ("440f78c0", 64, 0 << 3 | 1 << 10 | 8 << 28, 0),                       # vmread rax, r8
    ("660f38800c8e", 64, 2 | 2 << 7 | 3 << 15 | 1 << 18 | 6 << 23 | 1 << 28, 0),   # invept rcx, [rsi+rcx*4]
    ("0fc73d00100000", 32, 1 << 7 | 3 << 15 | 1 << 22 | 1 << 27, 0x1000),  # vmptrst [0x1000]
])
def test_instruction_information_field(code, bits, info, qualification):
    """SDM 28.2.5, Tables 28-11 .. 28-13: scaling, address size, segment, index, base and
    the register operands."""
    insn = decode(bytes.fromhex(code), bits)
    assert insn is not None and insn.instruction_info() == info
    assert (insn.mem.disp if insn.mem else 0) == qualification


#: values that cross the entry checks' edges (alignment, canonical form, reserved bits, flags)
FUZZ_VALUES = (0, 1, 2, 3, 0x8B, 0xC093, 0xC09B, 0xA09B, 0x10000, 0xFFFF, 0xFFFF_FFFF, 1 << 31, 1 << 63,
               0xFFFF_FFFF_FFFF_FFFF, 0x1000, 0x280000, 0x80000031, 0x31, 0x2010, 0x202)


def test_fuzz_random_vmwrites_then_vmlaunch_in_a_running_machine():
    """Random VMCS fields (the guest-state, host-state and control fields the L1 writes)
    then VMLAUNCH, executed by a real vCPU: every outcome is a VMfail, an entry failure
    that returns to the host, or a running L2 that exits or runs out of budget, never an
    internal error (a Python exception inside hvdbg)."""
    import pathlib
    import random
    import tempfile
    rng = random.Random(1806)
    names = sorted(n for n in FIELDS if CAPS.vmcs_field_supported(n) and FIELDS[n].group != "exit"
                   and not n.startswith(("VMCS_LINK", "EPT_POINTER", "VIRTUAL_PROCESSOR")))
    kernels = pathlib.Path(__file__).resolve().parent.parent / "guests" / "build"
    outcomes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(40):
            vm, region = l1_and_l2(kernels, pathlib.Path(tmp))
            vm.config.values["budget.instructions"] = 20_000
            for _ in range(rng.randint(1, 4)):
                name = rng.choice(names)
                region.write(name, rng.choice(FUZZ_VALUES) if rng.random() < 0.7 else rng.getrandbits(64))
            result = run_machine(vm, include_stats=False).result
            assert vm.vmm.internal_errors == [], vm.vmm.internal_errors[-1]
            assert result["outcome"] != "internal_error", result["diagnosis"]
            rsi = vm.vcpus[0].registers()["rsi"] & 0xFFFF
            kind = {0xBAD: "VMfail", 0xBAD3: "entry failure, then VMRESUME fails", 0x600D: "L2 ran and exited"}
            if rsi in kind:
                key = kind[rsi]
            elif vm.vcpus[0].vmx.non_root:
                key = "L2 still running at the budget"
            elif any(f.startswith("VMX abort") for f in vm.vcpus[0].vmx.entry_failures):
                assert vm.vcpus[0].activity.label == "shutdown"     # SDM 28.7: random MSR-list fields
                key = "VMX abort on an exit's MSR list"
            else:   # a random HOST_CR3 / HOST_RIP / HOST_GDTR is what the L1 gets after an exit
                assert result["outcome"] in ("triple_fault", "ept_violation"), result["diagnosis"]
                key = "the guest hypervisor faulted on the host state it wrote"
            outcomes[key] = outcomes.get(key, 0) + 1
    assert {"VMfail", "L2 ran and exited"} <= set(outcomes), outcomes


def test_break_on_an_l2_exit_stops_before_the_guest_hypervisor_runs(guest_kernels, tmp_path):
    """`break exit CPUID` stops when L2's CPUID is recognised: the vCPU still holds L2's
    state, `vmx` says the exit to L1 is due; continuing, the L1 gets it as before."""
    vm, region = l1_and_l2(guest_kernels, tmp_path)
    session = DebugSession(vm, start_paused=True)
    ctx = CommandContext(session, wait_timeout=30)
    session.start()
    session.stop()
    try:
        assert ctx.execute("break exit CPUID").ok
        stop = ctx.execute("continue")
        assert stop.ok and stop.text.startswith("vCPU 0 stopped on VM exit CPUID"), stop.text
        state = ctx.execute("vmx 0").text
        assert "L2 running" in state and "VM exit to L1 due at the next run: CPUID" in state, state
        assert f"at L2 RIP {L2_CODE + 7:#x}" in state
        assert vm.vcpus[0].engine.rip() == L2_CODE + 9      # CPUID done in the engine, not yet in the L1
        assert ctx.execute("delete").ok
        end = ctx.execute("continue")
        assert end.ok and "the VM ended" in end.text, end.text
        assert exit_log(vm) == [10, 30, 12]
    finally:
        session.shutdown()


def test_saved_segments_have_the_accessed_and_busy_bits(guest_kernels, tmp_path):
    """A segment L2 loads from a descriptor without the accessed bit, and the TSS LTR loads,
    are saved into the L1's VMCS as the processor holds them: accessed (SDM 3.4.5.1) and
    busy (8.2.4) - the next VM entry's guest-state checks require both (SDM 27.3.1.2)."""
    gdt = 0x340000
    descriptors = struct.pack("<4Q", 0, 0, 0x00CF9B000000FFFF, 0x00CF92000000FFFF)   # 0x18: data, A = 0
    tss = struct.pack("<Q", 0x0000890000000067 | (0x350000 & 0xFFFFFF) << 16)           # 0x20: TSS, type 9
    l2 = "mov ax, 0x18\n mov ds, ax\n mov ax, 0x20\n ltr ax\n hlt"
    vm, region = l1_and_l2(guest_kernels, tmp_path, l2_body=l2, primary_extra=0)
    vm.memory.write(gdt, descriptors + tss)
    region.write("GUEST_GDTR_BASE", gdt)
    region.write("GUEST_GDTR_LIMIT", 0x27)
    r = regs_after(vm)
    assert r["rsi"] == 0x600D and exit_log(vm) == [12]
    assert region.read("GUEST_DS_SELECTOR") == 0x18 and region.read("GUEST_DS_AR_BYTES") == 0xC093
    assert region.read("GUEST_TR_SELECTOR") == 0x20 and region.read("GUEST_TR_AR_BYTES") & 0xF == 0xB
