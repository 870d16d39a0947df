"""I/O bitmaps, MSR bitmap (SDM 25.6.4, 25.6.9) and the VMX-preemption timer (26.5.1)."""

from __future__ import annotations

from hvdbg.vmx.bitmaps import IoBitmaps, MsrBitmap
from hvdbg.arch.physmem import RegionMemory
from helpers import boot


def pages():
    mem = RegionMemory()
    mem.add_region(0x10000, bytearray(0x4000))
    nxt = iter(range(0x10000, 0x14000, 0x1000))
    return mem, lambda: next(nxt)


def test_io_bitmap_bits_per_port_and_across_a_and_b():
    mem, alloc = pages()
    io = IoBitmaps.allocate(mem, alloc)
    assert io.exits(0x3F8, 1) and io.exits(0x8000, 1)
    io.set([0x3F8, 0x3F9], exiting=False)
    assert not io.exits(0x3F8, 1) and not io.exits(0x3F8, 2)
    assert io.exits(0x3F8, 4)                       # 0x3FA still exits
    assert mem.read(io.a + 0x3F8 // 8, 1)[0] == 0xFC  # bits 0,1 of byte 0x7F cleared
    io.set([0x8001], exiting=False)
    assert mem.read(io.b, 1)[0] == 0xFD and not io.exits(0x8001, 1)
    assert io.exits(0xFFFF, 2)                      # wraps past 0xFFFF: exits


def test_msr_bitmap_layout():
    mem, alloc = pages()
    msr = MsrBitmap.allocate(mem, alloc)
    assert not msr.exits(0x1B, write=False)
    msr.set([0x1B, 0xC0000080], exiting=True, read=False, write=True)
    assert msr.exits(0x1B, write=True) and not msr.exits(0x1B, write=False)
    assert mem.read(msr.page + 0x800 + 0x1B // 8, 1)[0] == 1 << (0x1B % 8)   # write-low
    assert mem.read(msr.page + 0xC00 + 0x80 // 8, 1)[0] == 1                   # write-high
    assert msr.exits(0x40000000, write=False)       # outside both ranges: always exits


def test_io_passthrough_removes_uart_exits_but_keeps_output(make_config):
    base_vm, base = boot(make_config(vcpus=2, deterministic=True))
    vm, res = boot(make_config(vcpus=2, deterministic=True, **{"vmx.io_passthrough": list(range(0x3F8, 0x400))}))
    assert res["outcome"] == "exited" and res["serial"] == base["serial"]
    assert res["exits"]["IO_INSTRUCTION"] < base["exits"]["IO_INSTRUCTION"] // 10
    assert vm.vcpus[0].vmcs.read("CPU_BASED_VM_EXEC_CONTROL") >> 25 & 1   # use I/O bitmaps


def test_vmm_msrs_exit_and_others_run_natively(make_config):
    vm, res = boot(make_config(vcpus=1))
    assert res["exits"]["MSR_WRITE"] == 1           # the guest's EFER write (LME) exits
    assert vm.msr_bitmap.exits(0x1B, write=True) and vm.msr_bitmap.exits(0x830, write=True)
    assert not vm.msr_bitmap.exits(0x174, write=True)  # SYSENTER_CS: runs in the engine
    assert vm.vcpus[0].vmcs.read("MSR_BITMAP") == vm.msr_bitmap.page


def test_preemption_timer_exits(make_config):
    vm, res = boot(make_config(vcpus=2, deterministic=True, **{"vmx.preemption_timer": 2000}))
    assert res["outcome"] == "exited" and res["exit_status"] == 0
    n = res["exits"]["PREEMPTION_TIMER"]
    # one exit per 2000 * 32 guest instructions, give or take the slices that straddle it
    assert 0.5 * res["instructions"] / 64000 <= n <= 1.5 * res["instructions"] / 64000 + 2
