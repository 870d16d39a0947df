"""The CPU model (``cpu = "MODEL,+flag,-flag"``): every feature a model offers is one the
engine really implements, CPUID reports what the model offers (with OSXSAVE/OSPKE
following CR4), CR4 bits follow the features, and a bad setting is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from hvdbg import api
from hvdbg.arch.control_rules import ControlState, cr4_write_problem
from hvdbg.arch.cpuid import (CPU_MODELS, EBX7, ECX1, ECX7, ECX_EXT, EDX1, EDX_EXT, VMM_FEATURES, CpuidModel,
                              parse_cpu_spec)
from hvdbg.engine.cpu import ENGINE_MODELS
from hvdbg.errors import ConfigError
from hvdbg.hv.machine import Machine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: (leaf, register) of each feature table
TABLES = (((1, "ecx"), ECX1), ((1, "edx"), EDX1), ((7, "ebx"), EBX7), ((7, "ecx"), ECX7),
          ((0x80000001, "ecx"), ECX_EXT), ((0x80000001, "edx"), EDX_EXT))


def engine_cpuid(model: str, leaf: int) -> dict[str, int]:
    """CPUID as the Unicorn model itself answers it (no VMM in between): the features
    its decoder and MMU implement."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(ENGINE_MODELS[model])
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\xa2")            # cpuid
    uc.reg_write(X.UC_X86_REG_RAX, leaf)
    uc.reg_write(X.UC_X86_REG_RCX, 0)
    uc.emu_start(0x1000, 0x1002)
    return {n: uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}")) for n in ("eax", "ebx", "ecx", "edx")}


@pytest.mark.parametrize("name", sorted(CPU_MODELS))
def test_every_offered_feature_is_implemented_by_the_engine(name):
    model = CPU_MODELS[name]
    missing = []
    for (leaf, reg), table in TABLES:
        native = engine_cpuid(model.engine_model, leaf)[reg]
        for feature in model.features:
            if feature in table and feature not in VMM_FEATURES and not native >> table[feature] & 1:
                missing.append(feature)
    assert missing == [], f"model {name} offers features its engine ({model.engine_model}) lacks"


def test_the_cpuid_leaves_report_the_model():
    spec = parse_cpu_spec("max")
    m = CpuidModel(apic_id=0, vcpu_count=1, features=spec.features, engine_model=spec.model.engine_model)
    _eax, ebx, ecx, _edx = m.query(7, 0)
    assert ebx >> EBX7["smap"] & 1 and ebx >> EBX7["smep"] & 1 and ecx >> ECX7["pku"] & 1
    assert m.query(7, 1) == (0, 0, 0, 0)
    assert m.query(0x80000001)[3] >> EDX_EXT["rdtscp"] & 1
    # OSPKE mirrors CR4.PKE (bit 22), only for a model with PKU
    assert m.with_control_bits(7, ecx, 1 << 22) >> 4 & 1
    assert not m.with_control_bits(7, ecx, 0) >> 4 & 1
    default = CpuidModel(apic_id=0, vcpu_count=1)
    assert default.query(7, 0) == (0, 0, 0, 0)
    assert not default.with_control_bits(7, 0, 1 << 22) >> 4 & 1


def test_flags_add_and_remove_features_in_qemu_spelling():
    assert "smap" not in parse_cpu_spec("max,-smap").features
    feats = parse_cpu_spec("qemu64,+tsc-deadline,+sse4.1,pku=on").features
    assert {"tsc_deadline", "sse4_1", "pku"} <= set(feats)
    assert "ssse3" not in feats and "ssse3" in parse_cpu_spec("hvdbg").features


@pytest.mark.parametrize("spec, message", [
    ("pentium9", "unknown CPU model 'pentium9' (models: hvdbg, qemu64, max)"),
    ("max,+warp", "unknown CPU feature 'warp'"),
    ("max,+la57", "CPU feature 'la57' is not implemented by hvdbg's vCPU"),
    ("max,vendor=AuthenticAMD", "'vendor=AuthenticAMD': expected +FLAG, -FLAG or FLAG=on|off"),
])
def test_a_bad_cpu_setting_is_one_config_error(spec, message):
    with pytest.raises(ConfigError) as exc:
        api.make_config(EXAMPLES / "smp-4vcpu.toml", cpu=spec)
    text = str(exc.value)
    assert "'cpu'" in text and message in text and "\n" not in text


def test_cr4_bits_follow_the_model():
    lma = ControlState(cr0=0x80000011, cr3=0, cr4=0x20, efer=0x500, rip=0x1000, cs_long=True)
    smap = 1 << 21
    hv = frozenset(parse_cpu_spec("hvdbg").features)
    mx = frozenset(parse_cpu_spec("max").features)
    assert "needs CPUID feature smap" in cr4_write_problem(lma, 0x20 | smap, hv)
    assert cr4_write_problem(lma, 0x20 | smap, mx) is None
    assert "needs CPUID feature pku" in cr4_write_problem(lma, 0x20 | 1 << 22, frozenset(parse_cpu_spec("max,-pku").features))


def test_a_machine_runs_its_vcpus_on_the_models_engine():
    vm = Machine(api.make_config(EXAMPLES / "smp-4vcpu.toml", cpu="max"))
    v = vm.vcpus[1]
    assert v.cpuid.engine_model == "icelake-server"
    assert v.cpuid.query(1)[2] >> ECX1["x2apic"] & 1          # max offers x2APIC
    assert Machine(api.make_config(EXAMPLES / "smp-4vcpu.toml")).vcpus[0].cpuid.engine_model == "haswell"
