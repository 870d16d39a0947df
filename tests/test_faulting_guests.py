"""Guests that fault, hang, loop or are garbage end in a classified outcome with a
diagnosis, never a Python exception."""

from __future__ import annotations

import random

import pytest

from fuzz.chaos import flat_kernel
from helpers import boot
from hvdbg.config import config_from_dict


def run_image(tmp_path, image: bytes, **cfg):
    k = tmp_path / "k.bin"
    k.write_bytes(image)
    data = {"kernel": str(k), "memory": "16M", "budget": {"instructions": 2_000_000, "seconds": 30}}
    data.update(cfg)
    return boot(config_from_dict(data))


def test_header_magic_hang(make_config):
    cfg = config_from_dict({"kernel": str(make_config().parent / "x")} | {})  # noqa: F841 (shape check)
    vm, res = boot(make_config(vcpus=2, **{"loader.magic": "header"}))
    assert res["outcome"] == "hang"
    text = " ".join(res["diagnosis"])
    assert "bad_magic_halt" in text or "_start" in text
    assert "IF=0" in text and "0x1badb002" in text and "0x2badb002" in text


def test_ept_violation_past_ram(make_config):
    vm, res = boot(make_config(vcpus=2, memory="16M", cmdline="work_mib=32"))
    assert res["outcome"] == "ept_violation"
    ex = vm.vcpus[0].last_exit
    assert ex.guest_physical == 0x1000000
    assert ex.guest_linear == 0xFFFFFF8001000000
    assert ex.qualification & 0x2 and ex.qualification & (1 << 7) and ex.qualification & (1 << 8)
    assert vm.vcpus[0].vmcs.read("GUEST_PHYSICAL_ADDRESS") == 0x1000000
    assert any("16 MiB" in line for line in res["diagnosis"])


def test_missing_high_mapping_triple_faults_then_exits_on_pf(make_config):
    vm, res = boot(make_config("smp-bug-pml4.elf", vcpus=1))
    assert res["outcome"] == "triple_fault"
    text = " ".join(res["diagnosis"])
    assert "PML4E" in text and "bit 14" in text
    # with #PF in the exception bitmap the #PF itself is the VM exit
    vm2, res2 = boot(make_config("smp-bug-pml4.elf", vcpus=1, **{"vmx.exception_bitmap": 0x4000}))
    assert res2["outcome"] == "exception"
    ex = vm2.vcpus[0].last_exit
    assert ex.interruption_info & 0xFF == 14 and ex.interruption_info >> 31
    assert ex.qualification == ex.rip  # CR2 = the faulting fetch address


def test_infinite_loop_is_a_hang_not_a_stuck_host(tmp_path):
    vm, res = run_image(tmp_path, flat_kernel(b"\xeb\xfe"), budget={"instructions": 50_000_000, "seconds": 30})
    assert res["outcome"] == "hang"
    assert "spinning" in " ".join(res["diagnosis"])


def test_busy_loop_hits_instruction_budget(tmp_path):
    # inc eax; jmp back: registers change every slice, so it is not a hang
    vm, res = run_image(tmp_path, flat_kernel(b"\x40\xeb\xfd"))
    assert res["outcome"] == "budget"


def test_guest_without_idt_faulting_triple_faults(tmp_path):
    vm, res = run_image(tmp_path, flat_kernel(b"\x31\xc9\xf7\xf1"))  # xor ecx,ecx; div ecx
    assert res["outcome"] == "triple_fault"
    assert "#DE" in " ".join(res["diagnosis"])


@pytest.mark.parametrize("seed", range(40))
def test_random_guests_end_classified(tmp_path, seed):
    rng = random.Random(seed)
    code = bytes(rng.randrange(256) for _ in range(256))
    vm, res = run_image(tmp_path, flat_kernel(code), vcpus=2)
    assert res["outcome"] in {"hang", "triple_fault", "budget", "ept_violation", "exited", "exception",
                              "ept_misconfig"}
    assert res["diagnosis"]
