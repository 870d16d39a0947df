"""The PIT's IRQ 0 through the I/O APIC to a chosen vCPU, as a guest sees it: the smp guest's
``workload=pit`` routes I/O APIC pin 2 (the MADT's override of ISA IRQ 0) to CPU N, starts
channel 0 in mode 2 at 1193 counts, and waits in ``sti; hlt`` on CPU N for 20 interrupts
while every other CPU, with IF=1, increments a shared counter with ``lock incq`` that the
handler increments too.  The guest checks: 20 interrupts on CPU N and none elsewhere, the
TSC time per tick within 1% of the PIT period, and the shared counter exact.

It runs in every executor and policy: deterministic (pinned, rr, cfs, smp on fewer pCPUs),
and on host threads (pinned, rr, cfs).  Found with it: a vCPU woken from HLT kept its old
clock (its TSC fell behind the PIT by the time it slept); a kick from another thread
stopped an engine inside ``lock incq``, which then ran twice."""

from __future__ import annotations

import re

import pytest

from helpers import boot
from hvdbg.platform.devices.legacy import NS_PER_S, PIT_HZ, Pit8254
from hvdbg.platform.firmware.acpi import ISA_OVERRIDES, build_madt

PIT_LINE = re.compile(r"pit: (\d+) interrupts on CPU (\d+) \(APIC id (\d+)\), (\d+) on the other (\d+) CPUs; "
                      r"(\d+) TSC cycles from the first to the last = (\d+) PIT periods of (\d+) ns "
                      r"\((\d+) ticks lost\)")
SHARED = re.compile(r"pit: shared counter (\d+) = (\d+) lock incq by the other CPUs \+ (\d+) by the handler")
PERIOD_NS = 1193 * NS_PER_S // PIT_HZ       # 999847 ns

SETUPS = {
    "det-pinned": {"deterministic": True},
    "det-rr-2": {"deterministic": True, "pcpus": 2, "sched": "rr"},
    "det-cfs-1": {"deterministic": True, "pcpus": 1, "sched": "cfs"},
    "det-smp-2": {"deterministic": True, "pcpus": 2, "sched": "smp"},
    "threads-pinned": {"deterministic": False},
    "threads-rr-2": {"deterministic": False, "pcpus": 2, "sched": "rr"},
    "threads-cfs-2": {"deterministic": False, "pcpus": 2, "sched": "cfs"},
}


CASES = [(setup, 2) for setup in SETUPS] + [("det-pinned", 0), ("det-pinned", 3), ("threads-cfs-2", 0),
                                            ("threads-cfs-2", 3), ("det-cfs-1", 3)]


@pytest.mark.parametrize("setup,target", CASES, ids=[f"{s}-cpu{t}" for s, t in CASES])
def test_pit_interrupts_reach_the_chosen_vcpu_on_time(guest_kernels, setup, target):
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"),
                    cmdline=f"workload=pit pit_cpu={target}", **SETUPS[setup])
    serial = res["serial"]
    m = PIT_LINE.search(serial)
    assert m, (res["outcome"], res["diagnosis"], serial[-600:])
    on_target, cpu, apic_id, elsewhere, others, span, periods, period, lost = map(int, m.groups())
    assert (on_target, cpu, apic_id, elsewhere, others) == (20, target, target, 0, 3)
    assert period == PERIOD_NS and abs(span - periods * PERIOD_NS) * 100 <= PERIOD_NS, span
    # a tick is lost only when the target waited for a pCPU longer than a period: never with
    # a pCPU of its own, or on the deterministic executor's virtual pCPUs
    assert lost == periods - 19 and (lost == 0 or SETUPS[setup].get("pcpus")), (setup, lost)
    shared, spins, handler = map(int, SHARED.search(serial).groups())
    assert shared == spins + handler and handler == 20 and spins > 0
    assert res["outcome"] == "exited" and res["exit_status"] == 0, res["diagnosis"]
    assert "pit ok" in serial


SPURIOUS = re.compile(r"pit: (\d+) spurious 8259A interrupts")
PIC_CASES = [("det-pinned", 0), ("det-pinned", 2), ("det-cfs-1", 3), ("threads-pinned", 1), ("threads-cfs-2", 3)]


@pytest.mark.parametrize("setup,target", PIC_CASES, ids=[f"{s}-cpu{t}" for s, t in PIC_CASES])
def test_pit_through_the_8259a_reaches_the_vcpu_whose_lint0_takes_extint(guest_kernels, setup, target):
    """``pit_via=pic``: the guest initializes both 8259As (IR0 at vector 0x48), programs
    only CPU N's LVT LINT0 for ExtINT and EOIs the PIC in its handler. The PIC's INT
    reaches every LINT0 and only CPU N takes it, with the vector of the INTA cycle, on
    time, with no spurious IR7, while the other CPUs' lock incq stays exact."""
    _vm, res = boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"),
                    cmdline=f"workload=pit pit_via=pic pit_cpu={target}", **SETUPS[setup])
    serial = res["serial"]
    assert "8259A IR0 -> LINT0 (ExtINT) of CPU" in serial, serial[-600:]
    m = PIT_LINE.search(serial)
    assert m, (res["outcome"], res["diagnosis"], serial[-600:])
    on_target, cpu, apic_id, elsewhere, others, span, periods, period, lost = map(int, m.groups())
    assert (on_target, cpu, apic_id, elsewhere, others) == (20, target, target, 0, 3)
    assert abs(span - periods * PERIOD_NS) * 100 <= PERIOD_NS, span
    assert SPURIOUS.search(serial).group(1) == "0"
    shared, spins, handler = map(int, SHARED.search(serial).groups())
    assert shared == spins + handler and handler == 20 and spins > 0
    assert res["outcome"] == "exited" and res["exit_status"] == 0 and "pit ok" in serial, res["diagnosis"]


def test_deterministic_runs_repeat_the_tick_times(guest_kernels):
    runs = [boot("examples/smp-4vcpu.toml", kernel=str(guest_kernels / "smp.elf"),
                 cmdline="workload=pit pit_cpu=1")[1] for _ in range(2)]
    assert runs[0]["trace_hash"] == runs[1]["trace_hash"]
    assert PIT_LINE.search(runs[0]["serial"]).group(6) == PIT_LINE.search(runs[1]["serial"]).group(6)
    assert PIT_LINE.search(runs[0]["serial"]).group(9) == "0"


def test_pit_channel0_edges_follow_the_clock():
    now = {"t": 0}
    edges = []
    pit = Pit8254(lambda: now["t"])
    pit.on_irq0 = edges.append
    assert pit.next_irq() is None                     # nothing programmed
    pit.io_write(0x43, 1, 0x34)                        # channel 0, lo/hi, mode 2
    pit.io_write(0x40, 1, 1193 & 0xFF)
    pit.io_write(0x40, 1, 1193 >> 8)
    assert pit.next_irq() == PERIOD_NS + 1             # ceil(1193 / 1.193182 MHz)
    now["t"] = PERIOD_NS
    pit.poll()
    assert edges == []
    now["t"] = PERIOD_NS + 1
    pit.poll()
    assert edges == [PERIOD_NS + 1] and pit.next_irq() == -(-2 * 1193 * NS_PER_S // PIT_HZ)
    now["t"] = 10 * PERIOD_NS                          # nobody polled: one edge, not nine
    pit.poll()
    assert len(edges) == 2 and pit.next_irq() > now["t"]
    pit.io_write(0x43, 1, 0x30)                        # mode 0, no count: OUT stays low
    assert pit.next_irq() is None
    pit.io_write(0x40, 1, 100)
    pit.io_write(0x40, 1, 0)                           # one-shot: one edge at terminal count
    due = pit.next_irq()
    now["t"] = due
    pit.poll()
    assert len(edges) == 3 and pit.next_irq() is None


def test_madt_lists_the_ioapic_and_the_isa_overrides():
    madt = build_madt([0, 1], ioapic=(0, 0xFEC00000))
    body = madt[44:]
    entries, i = [], 0
    while i < len(body):
        kind, length = body[i], body[i + 1]
        entries.append((kind, body[i:i + length]))
        i += length
    assert [k for k, _ in entries] == [0, 0, 1, 2, 2]
    ioapic = entries[2][1]
    assert int.from_bytes(ioapic[4:8], "little") == 0xFEC00000 and int.from_bytes(ioapic[8:12], "little") == 0
    overrides = [(e[3], int.from_bytes(e[4:8], "little"), int.from_bytes(e[8:10], "little")) for k, e in entries if k == 2]
    assert overrides == list(ISA_OVERRIDES) == [(0, 2, 0), (9, 9, 0xD)]
    assert sum(madt) & 0xFF == 0
