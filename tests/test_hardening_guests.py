"""Chaos guests: random-byte and mutated kernels (fuzz/chaos.py) each end in a classified
outcome within a small budget, never a Python exception, an internal_error or a hung host.

The long run is ``python -m fuzz.run_chaos --guests 3000 --jobs 2`` (docs/reliability.md).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from fuzz.chaos import (
    CLASSIFIED_OUTCOMES,
    GUEST_CORPUS,
    RECIPE_WEIGHTS,
    ChaosGuest,
    GuestMutator,
    GuestRunner,
    flat_kernel,
    run_guest,
)
from fuzz.known_bugs import GUEST_BUGS, explaining_bug

RECIPES = sorted(RECIPE_WEIGHTS)


@pytest.fixture(scope="module")
def runner(guest_kernels):
    r = GuestRunner(timeout=90)  # a worker subprocess: a hung run is killed, not waited for
    yield r
    r.close()


def test_every_recipe_ends_classified(runner):
    """A few guests of every kind of damage, each in the worker subprocess."""
    rng = random.Random(2024)
    mutator = GuestMutator(rng)
    outcomes: Counter[str] = Counter()
    problems = []
    for recipe in RECIPES:
        for _ in range(3):
            image, description = getattr(mutator, recipe)()
            guest = ChaosGuest(image, f"{recipe}: {description}", mutator.config())
            result = runner.run(guest)
            outcomes[result.outcome or result.verdict] += 1
            if result.is_bug and explaining_bug(result.detail) is None:
                problems.append(f"{guest.recipe} {guest.config}: {result.verdict}\n{result.detail[-800:]}")
    assert not problems, "\n\n".join(problems)
    assert len(outcomes) >= 4, outcomes  # really different ends, not one failure mode


@pytest.mark.parametrize("seed", range(6))
def test_random_chaos_guests(runner, seed):
    mutator = GuestMutator(random.Random(seed))
    for _ in range(6):
        guest = mutator.make()
        result = runner.run(guest)
        assert result.verdict != "host_hang", f"{guest.recipe}: {result.detail}"
        if result.is_bug:
            assert explaining_bug(result.detail) is not None, f"{guest.recipe} {guest.config}:\n{result.detail}"
        elif result.verdict == "ok":
            assert result.outcome in CLASSIFIED_OUTCOMES
        else:  # rejected by the loader: one line naming the problem
            assert result.detail.startswith("GuestLoadError: ") and "\n" not in result.detail


def test_budget_is_respected_by_busy_and_spinning_guests(guest_kernels):
    """Guests that never end on their own stop at their budget, quickly."""
    budget = {"instructions": 300_000, "seconds": 5, "idle_slices": 5}
    busy = run_guest(ChaosGuest(flat_kernel(b"\x40\xeb\xfd"), "inc eax; jmp", {"budget": budget, "slice": 1000}))
    spin = run_guest(ChaosGuest(flat_kernel(b"\xeb\xfe"), "jmp $", {"budget": budget, "slice": 1000}))
    assert busy.outcome == "budget" and spin.outcome == "hang"
    assert busy.seconds < 10 and spin.seconds < 10


def test_mutated_kernels_through_the_cli(tmp_path, guest_kernels):
    """The same guests through `hvdbg run --json`: JSON with a classified outcome, or
    exit status 2 with one 'hvdbg: ...' line; never a traceback."""
    mutator = GuestMutator(random.Random(77))
    for i in range(8):
        guest = mutator.make()
        kernel = tmp_path / f"k{i}.bin"
        kernel.write_bytes(guest.image)
        cfg = tmp_path / f"vm{i}.toml"
        cfg.write_text(f'kernel = "{kernel}"\nvcpus = 2\nmemory = "32M"\n'
                       "[budget]\ninstructions = 500000\nseconds = 5\nidle_slices = 20\n")
        proc = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(cfg), "--json", "--compact"],
                              capture_output=True, text=True, timeout=120)
        if explaining_bug(proc.stderr) is not None:
            continue
        assert "Traceback" not in proc.stderr, f"{guest.recipe}:\n{proc.stderr[-1500:]}"
        if proc.returncode == 2:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("hvdbg: "), proc.stderr
        else:
            assert json.loads(proc.stdout)["outcome"] in CLASSIFIED_OUTCOMES, guest.recipe


def corpus_params():
    bugs = {b.key: b for b in GUEST_BUGS}
    for path in sorted(GUEST_CORPUS.glob("*.json")):
        meta = json.loads(path.read_text())
        marks = []
        if meta.get("known_bug") in bugs:
            marks.append(pytest.mark.xfail(strict=True, reason=f"{meta['known_bug']}: {bugs[meta['known_bug']].where}"))
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", list(corpus_params()))
def test_corpus_guest_is_classified(runner, path):
    """Guests that once broke hvdbg (fuzz/corpus/guests/): now they must end classified."""
    result = runner.run(ChaosGuest.load(path))
    assert not result.is_bug, f"{result.verdict}: {result.detail[-1500:]}"


def test_huge_e_phoff_is_a_one_line_load_error(tmp_path, guest_kernels):
    import struct

    image = bytearray((guest_kernels / "smp.elf").read_bytes())
    struct.pack_into("<Q", image, 0x20, 0xFFFFFFFFFFFFFFFF)
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(bytes(image))
    cfg = tmp_path / "vm.toml"
    cfg.write_text(f'kernel = "{kernel}"\n')
    proc = subprocess.run([sys.executable, "-m", "hvdbg.ui.cli", "run", str(cfg), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (0, 1, 2)


def test_reset_state_has_no_long_mode_bits(guest_kernels):
    """SDM Vol. 3A 9.1.1 (Table 9-1): after INIT, EFER = 0 and CR4 = 0; LMA is only ever set by
    the CPU when CR0.PG = 1 with EFER.LME = 1 (2.2.1). Multiboot enters with paging off."""
    from hvdbg.config import config_from_dict
    from hvdbg.hv.machine import Machine

    vm = Machine(config_from_dict({"kernel": str(guest_kernels / "smp.elf"), "vcpus": 2}))
    bsp, ap = (v.registers() for v in vm.vcpus)
    assert bsp["cr0"] & (1 << 31) == 0
    assert bsp["efer"] & (1 << 10) == 0, f"BSP EFER {bsp['efer']:#x} at the multiboot entry"
    assert ap["efer"] == 0 and ap["cr4"] == 0, f"AP EFER {ap['efer']:#x} CR4 {ap['cr4']:#x} in wait-for-SIPI"
    from unicorn import x86_const as X

    assert vm.vcpus[1].engine.uc.reg_read(X.UC_X86_REG_MXCSR) == 0x1F80   # Table 9-1, also what gdb shows


def test_engine_reset_state_is_table_9_1():
    """hvdbg.engine.ucx.load_reset_state: SDM Vol. 3A Table 9-1 where Unicorn's engine differs, and
    set_control_registers clears the LMA Unicorn's engine starts with (efer-lma-at-reset)."""
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn import x86_const as X

    from hvdbg.arch import regs
    from hvdbg.engine import ucx

    fresh = Uc(UC_ARCH_X86, UC_MODE_64)
    assert fresh.msr_read(regs.IA32_EFER) & regs.EFER_LMA  # what Unicorn gives: LMA with paging off
    ucx.set_control_registers(fresh, 0x11, 0, 0, 0)  # the multiboot entry state
    assert fresh.msr_read(regs.IA32_EFER) == 0 and fresh.reg_read(X.UC_X86_REG_CR0) == 0x11
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    ucx.load_reset_state(uc)
    got = (uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3), uc.reg_read(X.UC_X86_REG_CR4),
           uc.msr_read(regs.IA32_EFER), uc.reg_read(X.UC_X86_REG_MXCSR))
    assert got == (0x60000010, 0, 0, 0, 0x1F80), [hex(x) for x in got]
    # and long mode still works after it: PAE, LME, PG set LMA
    ucx.set_control_registers(uc, 0x80000011, 0x1000, 0x20, 0x100)
    assert uc.msr_read(regs.IA32_EFER) == 0x500


def test_bsp_enters_multiboot_without_long_mode_bits(guest_kernels):
    from hvdbg.config import config_from_dict
    from hvdbg.hv.machine import Machine

    bsp = Machine(config_from_dict({"kernel": str(guest_kernels / "smp.elf"), "vcpus": 1})).vcpus[0].registers()
    assert (bsp["cr0"], bsp["cr4"], bsp["efer"]) == (0x11, 0, 0), bsp


def test_guest_physical_address_beyond_the_ept_is_a_violation(guest_kernels):
    """A GPA of more than 48 bits (only an impossible engine state makes one) ends the VM as
    an EPT violation with no EPT entry used, not as internal_error (hvdbg/hv/vcpu.py:_ept_violation)."""
    from hvdbg.config import config_from_dict
    from hvdbg.hv.machine import Machine

    vm = Machine(config_from_dict({"kernel": str(guest_kernels / "smp.elf"), "vcpus": 1}))
    v = vm.vcpus[0]
    assert v._ept_violation(0xFFF800010009B, "fetch", 0x100000, None, translated=True) is False
    assert vm.ending is not None and vm.ending.outcome == "ept_violation", vm.ending
    exit = v.last_exit
    assert exit.guest_physical == 0xFFF800010009B
    assert exit.qualification == 0x4  # a fetch; bits 5:3 clear (no entry); no valid GLA
    assert "48 bits" in exit.payload.walk.reason
