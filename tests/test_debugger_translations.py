"""A debugger's reads of a stopped guest reuse their linear -> guest-physical translations
(hvdbg.hv.guest_view.Translations) only while nothing could change them: these tests
change each thing that can (the page tables by a debugger's write, guest code running,
CR3) and check that the next read sees the new mapping, never a stale one."""

from __future__ import annotations

import pytest

from gdbstub.target import ResumeAction, ResumeKind
from hvdbg import api
from hvdbg.debug.gdb_target import VmTarget

PAGE = 0x1000


@pytest.fixture
def at_kmain(make_config):
    session = api.open_debug(make_config(vcpus=1), start_paused=True)
    target = VmTarget(session, None)
    session.start()
    target.attach()
    kmain = session.vm.symbols.lookup("kmain").address
    target.add_hw_breakpoint(kmain, 1)
    target.resume({1: ResumeAction(ResumeKind.CONTINUE)})
    assert target.wait_for_stop(60) is not None
    target.remove_hw_breakpoint(kmain, 1)
    yield session, target, kmain
    session.shutdown()


def _leaf(v, address: int):
    walk = v.page_walk(address)
    assert walk.gpa is not None
    return walk.levels[-1]


def test_a_remapped_page_is_read_through_the_new_entry(at_kmain):
    """Repoint the leaf entry of kmain's page (a 2 MiB PDE in this kernel) through
    guest-physical memory, as a debugger's write would: the next linear read follows it."""
    session, target, kmain = at_kmain
    v = session.vm.vcpus[0]
    before = target.read_memory(1, kmain, 16)
    assert target.read_memory(1, kmain, 16) == before          # a second read, translated once
    leaf = _leaf(v, kmain)
    span = leaf.page_size
    old_frame = leaf.next_gpa
    new_frame = old_frame + span if old_frame + 2 * span <= session.vm.memory.ram_size else old_frame - span
    entry = int.from_bytes(target.read_physical_memory(leaf.entry_gpa, 8), "little")
    moved = entry - old_frame + new_frame
    target.write_physical_memory(leaf.entry_gpa, moved.to_bytes(8, "little"))
    offset = (kmain - 0) & (span - 1)
    expected = target.read_physical_memory(new_frame + offset, 16)
    assert expected != before
    assert target.read_memory(1, kmain, 16) == expected
    target.write_physical_memory(leaf.entry_gpa, entry.to_bytes(8, "little"))
    assert target.read_memory(1, kmain, 16) == before


def test_guest_code_and_cr3_writes_drop_the_translations(at_kmain):
    session, target, kmain = at_kmain
    v = session.vm.vcpus[0]
    target.read_memory(1, kmain, 8)
    taken = v.turns.taken
    target.resume({1: ResumeAction(ResumeKind.STEP)})
    assert target.wait_for_stop(10) is not None
    assert v.turns.taken > taken               # a step is a turn: cached pages are dropped
    assert v.translations.lookup((), kmain, "read") is None
    # a CR3 of an empty table: kmain's address no longer translates (and is not served
    # from what was cached under the old CR3)
    target.read_memory(1, kmain, 8)
    empty = session.vm.memory.ram_size - PAGE
    target.write_physical_memory(empty, bytes(PAGE))
    cr3 = v.engine.read("cr3")
    target.write_registers(1, {"cr3": empty})
    with pytest.raises(Exception, match="not present|PML4E"):
        target.read_memory(1, kmain, 8)
    target.write_registers(1, {"cr3": cr3})
    assert len(target.read_memory(1, kmain, 8)) == 8


@pytest.mark.parametrize("bit, faults", [(41, True), (45, True), (52, False)])
def test_the_debugger_and_the_cpu_agree_on_reserved_address_bits(at_kmain, bit, faults):
    """CPUID tells the guest 40 physical-address bits (leaf 80000008H): a leaf entry with
    bit 41 or 45 set has reserved bits, so the CPU faults on the page (here the fetch at
    kmain, once CR3 is reloaded) and the debugger must not read it as mapped; bit 52 is
    ignored by both. (The walk used to assume 46 bits and read such a page.)"""
    session, target, kmain = at_kmain
    v = session.vm.vcpus[0]
    assert v.maxphyaddr == 40
    leaf = _leaf(v, kmain)
    target.write_physical_memory(leaf.entry_gpa, (leaf.raw | 1 << bit).to_bytes(8, "little"))
    walk = v.page_walk(kmain)
    if faults:
        assert walk.gpa is None and "reserved bits" in walk.reason, walk.reason
        with pytest.raises(Exception, match="reserved bits"):
            target.read_memory(1, kmain, 8)
    else:
        assert walk.gpa is not None
        assert len(target.read_memory(1, kmain, 8)) == 8
    target.write_registers(1, {"cr3": v.engine.read("cr3")})   # the engine's TLB forgets the page
    target.resume({1: ResumeAction(ResumeKind.STEP)})
    assert target.wait_for_stop(10) is not None
    assert (v.engine.read("cr2") == kmain) is faults         # the CPU's #PF names the fetch
