"""The ``g`` reply fast path (VmTarget.read_registers_hex, engine GdbRegisterImage) gives
exactly the bytes of the general path (read_registers + the layout's encoder), in every
register layout and CPU mode: 32-bit protected mode at the multiboot entry, 64-bit at
kmain, and an AP in real mode at its SIPI trampoline (CS.base 0x8000, $pc linear)."""

from __future__ import annotations

import pytest

from gdbstub.arch import X86_LAYOUTS
from gdbstub.target import ResumeAction, ResumeKind
from hvdbg import api
from hvdbg.debug.gdb_target import VmTarget


@pytest.fixture
def stopped(make_config):
    session = api.open_debug(make_config(vcpus=2), start_paused=True)
    targets = {name: VmTarget(session, None, None, layout) for name, layout in X86_LAYOUTS.items()}
    session.start()
    targets["x86-64"].attach()
    yield session, targets
    session.shutdown()


def both(target: VmTarget, tid: int) -> tuple[bytes, bytes]:
    return target.read_registers_hex(tid), target.layout.encode_registers(target.read_registers(tid))


def run_to(target: VmTarget, address: int, tid: int) -> None:
    target.add_hw_breakpoint(address, 1)
    target.resume({t: ResumeAction(ResumeKind.CONTINUE) for t in (1, 2)})
    stop = target.wait_for_stop(60)
    target.remove_hw_breakpoint(address, 1)
    assert stop is not None and stop.tid == tid, stop


def test_the_fast_g_reply_equals_the_general_one_in_every_mode(stopped):
    session, targets = stopped
    x64 = targets["x86-64"]
    for where, address, tid in (("entry", None, 1), ("kmain", session.vm.symbols.lookup("kmain").address, 1),
                                ("AP trampoline", 0x8000, 2)):
        if address is not None:
            run_to(x64, address, tid)
        for name, target in targets.items():
            fast, general = both(target, tid)
            assert fast == general, (where, name)
            assert len(fast) == 2 * target.layout.g_packet_size
            # a stop reply's expedited registers: the same bytes as in the full reply
            names = target.layout.expedite
            spans = target.layout.hex_spans
            assert target.read_registers_hex(tid, names) == b"".join(
                fast[spans[n][0]:spans[n][1]] for n in names), (where, name)
        if where == "AP trampoline":   # $pc is linear: CS.base 0x8000 + IP 0
            v = session.vm.vcpus[1]
            assert v.engine.rip() == 0 and v.code_base() == 0x8000
            pc = targets["i8086"].read_registers_hex(2)[8 * 8:8 * 8 + 8]
            assert bytes.fromhex(pc.decode()) == (0x8000).to_bytes(4, "little")
