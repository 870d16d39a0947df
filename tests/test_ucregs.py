"""hvdbg.engine.regs reads and writes the same values as the Unicorn binding, and its table of
stored sizes matches what this Unicorn build really writes."""

from __future__ import annotations

import ctypes
import struct

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from hvdbg.engine.regs import FULL_WIDTH, STORED_SIZE, RawRegisterBatch, RegisterBatch, RegisterFile

MARK = 0xAB


@pytest.fixture
def uc() -> Uc:
    engine = Uc(UC_ARCH_X86, UC_MODE_64)
    for i, reg in enumerate((X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_R15, X.UC_X86_REG_RIP)):
        engine.reg_write(reg, 0x1122334455667788 + i)
    engine.reg_write(X.UC_X86_REG_XMM7, (0xDEADBEEF << 96) | 0x42)
    engine.reg_write(X.UC_X86_REG_FP3, (0x8000000000000001, 0x3FFF))
    return engine


@pytest.mark.parametrize("reg", sorted(STORED_SIZE))
def test_stored_size_is_what_unicorn_writes(uc, reg):
    """Fill a buffer with a marker, read the register into it: nothing beyond the
    table's size is touched (a larger value would overrun the 16-byte slots)."""
    buf = (ctypes.c_ubyte * 32)(*([MARK] * 32))
    assert uclib.uc_reg_read(uc._uch, reg, ctypes.addressof(buf)) == 0
    assert all(b == MARK for b in buf[STORED_SIZE[reg]:]), (reg, bytes(buf).hex())


def test_register_file_matches_the_binding(uc):
    regs = RegisterFile(uc)
    for reg in FULL_WIDTH:
        assert regs.read(reg) == uc.reg_read(reg)
    regs.write(X.UC_X86_REG_RBX, -1)
    assert uc.reg_read(X.UC_X86_REG_RBX) == 2**64 - 1
    with pytest.raises(ValueError):
        regs.read(X.UC_X86_REG_CS)      # 16 bits stored: not for the 64-bit cell


def test_batches_match_the_binding(uc):
    ids = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_R15, X.UC_X86_REG_RIP)
    batch = RegisterBatch(uc, ids)
    assert batch.read() == tuple(uc.reg_read(r) for r in ids)
    batch.write((1, 2, 3, 0x1000))
    assert [uc.reg_read(r) for r in ids] == [1, 2, 3, 0x1000]
    with pytest.raises(ValueError):
        RegisterBatch(uc, (X.UC_X86_REG_EFLAGS,))


def test_raw_batch_reads_every_width(uc):
    ids = [X.UC_X86_REG_RIP, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_FPTAG,
           X.UC_X86_REG_FP3, X.UC_X86_REG_XMM7]
    rip, eflags, cs, ftag, st3, xmm7 = RawRegisterBatch(uc, ids).read()
    assert int.from_bytes(rip, "little") == uc.reg_read(X.UC_X86_REG_RIP)
    assert len(eflags) == 4 and int.from_bytes(eflags, "little") == uc.reg_read(X.UC_X86_REG_EFLAGS)
    assert len(cs) == 2 and int.from_bytes(ftag, "little") == uc.reg_read(X.UC_X86_REG_FPTAG)
    assert st3 == struct.pack("<QH", 0x8000000000000001, 0x3FFF)
    assert int.from_bytes(xmm7, "little") == (0xDEADBEEF << 96) | 0x42
    with pytest.raises(ValueError):
        RawRegisterBatch(uc, [X.UC_X86_REG_GDTR])


def test_live_state_never_outlives_its_engine():
    """An engine's located CPU state belongs to that engine object: a new engine that
    malloc places at a closed engine's address is read and written through its own
    state (a table keyed by address once made ucx patch freed memory)."""
    import gc

    from hvdbg.engine import ucx
    from hvdbg.arch.segments import Segment

    seen = set()
    for _ in range(20):
        live = Uc(UC_ARCH_X86, UC_MODE_64)
        ucx.use_live_state(live)
        seen.add(ucx.engine_address(live))
        del live
        gc.collect()
        fresh = Uc(UC_ARCH_X86, UC_MODE_64)
        ucx.write_segments(fresh, {"ss": Segment(0x18, 0x1000, 0xFFFF, 0x93)})
        assert fresh.reg_read(X.UC_X86_REG_SS) == 0x18
        assert ucx.read_segments(fresh)["ss"].base == 0x1000
        if ucx.engine_address(fresh) in seen:
            assert ucx._Blob(fresh).ctx is not None, "a new engine inherited a closed engine's state"
            return      # the reuse the table got wrong happened and was handled
        del fresh
        gc.collect()
    pytest.skip("malloc never reused an engine address in 20 tries")


def test_reset_state_has_the_x87_control_word_gdb_users_expect(uc):
    """After RESET/INIT the vCPU's x87 control word is 37FH with every tag empty (QEMU's
    reset state; gdb's ``p $fctrl`` prints 895 there), not Unicorn's 0 / 5555H."""
    from hvdbg.engine import ucx

    ucx.load_reset_state(uc)
    assert uc.reg_read(X.UC_X86_REG_FPCW) == 0x37F
    assert uc.reg_read(X.UC_X86_REG_FPTAG) == 0xFFFF
    assert uc.reg_read(X.UC_X86_REG_MXCSR) == 0x1F80
