"""gdbstub driven by the real GDB (MI3 through pygdbmi) against a fake 3-CPU target."""

from __future__ import annotations

import shutil
import time

import pytest

pygdbmi = pytest.importorskip("pygdbmi.gdbcontroller")

from gdbstub import GdbServer, ThreadSubsetTarget  # noqa: E402
from helpers import GDB_TIMEOUT, Gdb, GdbError  # noqa: E402,F401  (Gdb: also used by test_shell, test_gdb_hvdbg)
from gdbstub_fake_target import (  # noqa: E402
    LOAD_OFFSET,
    STORE_OFFSET,
    VIRT_BASE,
    FakeMachine,
    code_base,
    data_address,
)

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed")

TIDS = (1, 2, 7)  # non-contiguous on purpose: GDB must use the stub's ids
TIMEOUT = GDB_TIMEOUT


@pytest.fixture
def machine():
    fake = FakeMachine(TIDS)
    yield fake
    fake.shutdown()


@pytest.fixture
def server(machine):
    with GdbServer(machine) as srv:
        yield srv


@pytest.fixture
def gdb():
    g = Gdb()
    g.mi("-gdb-set confirm off")
    g.mi("-gdb-set pagination off")
    g.mi("-gdb-set mi-async on")  # accept -exec-interrupt while the target runs
    g.console("set architecture i386:x86-64")
    yield g
    g.close()


@pytest.fixture
def connected(gdb, server):
    gdb.connect(server.port)
    return gdb


# ===================================================================== threads, registers, memory


def test_info_threads_shows_every_cpu_with_name(connected):
    result, _ = connected.mi("-thread-info")
    threads = result["payload"]["threads"]
    assert [t["target-id"] for t in threads] == ["Thread 1", "Thread 2", "Thread 7"]
    assert [t["name"] for t in threads] == ["CPU#0", "CPU#1", "CPU#2"]
    assert [t["details"] for t in threads] == ["vCPU 0", "vCPU 1", "vCPU 2"]
    text = connected.console("info threads")
    assert 'Thread 7 "CPU#2" (vCPU 2)' in text
    assert f"{code_base(2):#018x}" in text


def test_registers_and_memory_read_and_write(connected, machine):
    assert connected.value("$rip") == code_base(0)
    assert connected.value("$rax") == 0x1000
    assert connected.value("$cr0") == 0x80000011
    assert connected.value("$efer") == 0x500
    assert "PG" in connected.console("p $cr0")
    assert connected.console("p $xmm0.v16_int8[3]").strip().endswith("= 3")

    machine.memory[0x8000:0x8010] = bytes.fromhex("8877665544332211" "efbeadde00000000")
    out = connected.console(f"x/4gx {VIRT_BASE + 0x8000:#x}")
    assert "0x1122334455667788" in out and "0x00000000deadbeef" in out

    connected.console("set var $rbx = 0x1234")
    assert machine.cpu(1).regs["rbx"] == 0x1234
    connected.console(f"set {{long}}{VIRT_BASE + 0x8010:#x} = 0x55aa")
    assert machine.memory[0x8010:0x8018] == (0x55AA).to_bytes(8, "little")
    assert "Cannot access memory" in connected.console("x/gx 0x10", allow_error=True)


def test_layout_stays_64_bit_when_cpu_is_in_real_mode(connected, machine):
    machine.cpu(1).regs.update(cr0=0x10, efer=0, cs=0xF000, rip=0xFFF0)
    connected.console("maintenance flush register-cache")
    assert connected.value("$rip") == 0xFFF0
    assert connected.value("$cs") == 0xF000
    assert "too long" not in connected.console("info registers rip cs cr0")


def test_large_memory_read_uses_big_packets(connected, machine):
    result, _ = connected.mi(f"-data-read-memory-bytes {VIRT_BASE:#x} 65536")
    blocks = result["payload"]["memory"]
    data = b"".join(bytes.fromhex(b["contents"]) for b in blocks)
    assert data == bytes(machine.memory[:65536])
    assert machine.largest_read >= 0x8000  # GDB honours PacketSize (QEMU: 2048 max)


# ===================================================================== execution control


def test_breakpoint_stops_on_the_right_thread(connected, machine):
    target = code_base(2) + 0x10
    connected.mi(f"-break-insert *{target:#x}")
    connected.mi("-exec-continue")
    stop = connected.wait_for_stop()
    assert stop["reason"] == "breakpoint-hit"
    assert int(stop["frame"]["addr"], 16) == target
    assert connected.current_target_id() == "Thread 7"
    assert machine.cpu(7).regs["rip"] == target
    assert machine.cpu(2).regs["rip"] != target


def test_stepi_moves_only_the_selected_thread_by_one(connected, machine):
    connected.mi("-exec-step-instruction")
    stop = connected.wait_for_stop()
    assert stop["reason"] == "end-stepping-range"
    assert machine.cpu(1).regs["rip"] == code_base(0) + 1
    connected.mi("-thread-select 2")
    before = machine.cpu(2).regs["rip"]
    connected.mi("-exec-step-instruction")
    connected.wait_for_stop()
    assert connected.current_target_id() == "Thread 2"
    assert machine.cpu(2).regs["rip"] == before + 1
    assert connected.value("$rip") == before + 1


def test_write_watchpoint_fires_on_the_writing_cpu(connected, machine):
    watched = data_address(1)
    assert "Hardware watchpoint" in connected.console(f"watch *(long*){watched:#x}")
    connected.mi("-exec-continue")
    stop = connected.wait_for_stop()
    assert stop["reason"] == "watchpoint-trigger"
    assert stop["value"] == {"old": "0", "new": str(0x2000)}
    assert connected.current_target_id() == "Thread 2"
    # x86 reports after the store: rip is past it.
    assert machine.cpu(2).regs["rip"] == code_base(1) + STORE_OFFSET + 1


def test_read_watchpoint_reports_rwatch(connected, machine):
    watched = data_address(2)
    assert "Hardware read watchpoint" in connected.console(f"rwatch *(long*){watched:#x}")
    connected.mi("-exec-continue")
    stop = connected.wait_for_stop()
    assert stop["reason"] == "read-watchpoint-trigger"
    assert connected.current_target_id() == "Thread 7"
    assert machine.cpu(7).regs["rip"] == code_base(2) + LOAD_OFFSET + 1


def test_ctrl_c_interrupts_a_running_target(connected, machine):
    connected.mi("-exec-continue")
    time.sleep(0.3)
    assert machine.running
    connected.mi("-exec-interrupt")
    stop = connected.wait_for_stop()
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGINT"
    assert not machine.running
    assert connected.value("$rip") == machine.cpu(1).regs["rip"]


# ===================================================================== monitor, probes, sessions


def test_monitor_command_output_appears(connected):
    out = connected.console("monitor cpus")
    assert "CPU#0 tid=1 rip=0x401000" in out and "CPU#2 tid=7" in out
    assert "hello there" in connected.console("monitor echo hello there")
    with pytest.raises(GdbError):
        connected.console("monitor no-such-command")


def test_qemu_system_mode_probes_as_pwndbg_sends_them(connected):
    assert 'received: "ENABLE=1,NOIRQ=2,NOTIMER=4"' in connected.console(
        "maintenance packet Qqemu.sstepbits"
    )
    assert "Text=" not in connected.console("maintenance packet qOffsets")
    assert 'received: "OK"' in connected.console("maintenance packet Qqemu.PhyMemMode:1")
    out = connected.console(f"x/2bx {code_base(0) - VIRT_BASE:#x}")  # physical address
    assert "0x90\t0x90" in out
    connected.console("maintenance packet Qqemu.PhyMemMode:0")


def test_detach_then_reconnect(connected, server, machine):
    connected.mi(f"-break-insert *{code_base(0) + 4:#x}")
    assert "detached" in connected.console("detach")
    assert server.wait_for_session_end(1, TIMEOUT)
    assert machine.sw_breakpoints == set()
    assert machine.running  # detached targets run on, as with QEMU
    stop = connected.connect(server.port)
    assert not machine.running
    assert stop["thread-id"]
    result, _ = connected.mi("-thread-info")
    assert len(result["payload"]["threads"]) == 3


def test_kill_then_reconnect(connected, server, machine):
    connected.console("kill")
    assert server.wait_for_session_end(1, TIMEOUT)
    assert machine.kills == 1
    connected.connect(server.port)
    assert connected.value("$rip") == machine.cpu(1).regs["rip"]


def test_thread_subset_server_shows_one_cpu(gdb, machine):
    with GdbServer(ThreadSubsetTarget(machine, [2])) as srv:
        gdb.connect(srv.port)
        result, _ = gdb.mi("-thread-info")
        assert [t["target-id"] for t in result["payload"]["threads"]] == ["Thread 2"]
        assert gdb.value("$rip") == code_base(1)
        gdb.mi("-target-disconnect")


def test_second_gdb_is_refused_with_a_clear_message(connected, server):
    other = Gdb()
    try:
        result, records = other.mi(f"-target-select remote 127.0.0.1:{server.port}",
                                   allow_error=True)
        logs = "".join(r["payload"] or "" for r in records if r["type"] == "log")
        assert result["message"] == "error"
        assert "another debugger is already connected" in logs
    finally:
        other.close()
    assert connected.value("$rip") == code_base(0)  # the first debugger is unaffected
