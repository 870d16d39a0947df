"""CPUID as the hypervisor presents it (CPUID always causes a VM exit, SDM 26.1.2).

The guest-visible leaves are a data table; per-vCPU values (initial APIC ID in leaf 1
EBX[31:24], x2APIC ID in leaf 0xB EDX) are filled in by :class:`CpuidModel`.
Feature bit names follow SDM Vol. 2A, CPUID, Tables 3-10 / 3-11.
"""

from __future__ import annotations

from dataclasses import dataclass

# leaf 1 ECX / EDX feature bits (SDM Vol. 2A Table 3-10 and 3-11)
ECX1 = {"sse3": 0, "pclmulqdq": 1, "vmx": 5, "ssse3": 9, "cx16": 13, "pcid": 17, "sse4_1": 19, "sse4_2": 20,
        "x2apic": 21, "movbe": 22, "popcnt": 23, "tsc_deadline": 24, "aes": 25, "xsave": 26,
        "hypervisor": 31}
EDX1 = {"fpu": 0, "vme": 1, "de": 2, "pse": 3, "tsc": 4, "msr": 5, "pae": 6, "mce": 7, "cx8": 8,
        "apic": 9, "sep": 11, "mtrr": 12, "pge": 13, "mca": 14, "cmov": 15, "pat": 16, "pse36": 17,
        "clflush": 19, "mmx": 23, "fxsr": 24, "sse": 25, "sse2": 26, "htt": 28}
# leaf 7 subleaf 0 EBX / ECX (SDM Vol. 2A Table 3-8, "Structured Extended Feature Flags")
EBX7 = {"fsgsbase": 0, "bmi1": 3, "smep": 7, "bmi2": 8, "erms": 9, "invpcid": 10, "adx": 19,
        "smap": 20, "clflushopt": 23, "clwb": 24}
ECX7 = {"umip": 2, "pku": 3, "la57": 16, "rdpid": 22, "pks": 31}
# leaf 0x80000001 EDX / ECX
EDX_EXT = {"syscall": 11, "nx": 20, "pdpe1gb": 26, "rdtscp": 27, "lm": 29}
ECX_EXT = {"lahf_lm": 0}
#: Feature bits that mirror a control bit (SDM Vol. 2A CPUID: "OSXSAVE", "OSPKE"): CPUID
#: reports the bit as CR4 has it, for a feature the model offers.
CR4_MIRRORS = ((1, "ecx", 27, 18, "xsave"), (7, "ecx", 4, 22, "pku"))  # (leaf, reg, bit, CR4 bit, feature)

DEFAULT_FEATURES = (
    "sse3", "ssse3", "cx16", "sse4_1", "sse4_2", "popcnt", "hypervisor",
    "fpu", "de", "pse", "tsc", "msr", "pae", "cx8", "apic", "sep", "mtrr", "pge", "cmov", "pat", "pse36",
    "clflush", "mmx", "fxsr", "sse", "sse2", "htt",
    "syscall", "nx", "lm", "lahf_lm",
)
#: Features the VMM implements itself (the APIC, topology, the CPUID leaves): the engine
#: does not need to decode anything for them.
VMM_FEATURES = frozenset({"hypervisor", "apic", "x2apic", "tsc_deadline", "htt", "vmx"})
#: Features no model offers until a ``+FLAG`` asks for them: ``vmx`` is nested VMX, a guest
#: hypervisor's VMX operation emulated by hvdbg (hvdbg.hv.nested, docs/nested.md), as
#: QEMU/KVM offer it with ``-cpu ...,+vmx``.
OPT_IN_FEATURES = frozenset({"vmx"})


@dataclass(frozen=True)
class CpuModelDef:
    """A named CPU model: the features CPUID offers, and the Unicorn CPU model whose
    decoder implements every one of them (tests/test_cpu_model.py checks that against
    the engine's own CPUID)."""

    name: str
    features: tuple[str, ...]
    engine_model: str      # a hvdbg.engine.cpu.ENGINE_MODELS key
    doc: str


CPU_MODELS: dict[str, CpuModelDef] = {m.name: m for m in (
    CpuModelDef("hvdbg", DEFAULT_FEATURES, "haswell",
                "the default: SSE up to 4.2, NX, long mode, SYSCALL; no structured extended features"),
    CpuModelDef("qemu64", ("sse3", "cx16", "hypervisor", "fpu", "de", "pse", "tsc", "msr", "pae", "cx8", "apic",
                           "sep", "mtrr", "pge", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2",
                           "syscall", "nx", "lm", "lahf_lm"), "haswell",
                "QEMU's qemu64 features (less MCE/MCA: hvdbg has no machine-check MSRs)"),
    CpuModelDef("max", DEFAULT_FEATURES + ("pclmulqdq", "movbe", "aes", "x2apic", "tsc_deadline",
                                            "fsgsbase", "bmi1", "smep", "bmi2", "erms", "adx", "smap",
                                            "clflushopt", "clwb", "pku", "pdpe1gb", "rdtscp"),
                "icelake-server",
                "every feature hvdbg implements: adds SMEP, SMAP, PKU, FSGSBASE, BMI1/2, ADX, RDTSCP, "
                "1-GByte pages, x2APIC and the TSC-deadline timer"),
)}
#: QEMU's spellings of hvdbg's feature names (``-cpu qemu64,+tsc-deadline,+sse4.1``).
QEMU_ALIASES = {"pni": "sse3", "lahf-lm": "lahf_lm", "tsc-deadline": "tsc_deadline",
                "sse4.1": "sse4_1", "sse4.2": "sse4_2", "sse4-1": "sse4_1", "sse4-2": "sse4_2"}
ALL_FEATURES = frozenset(ECX1) | frozenset(EDX1) | frozenset(EBX7) | frozenset(ECX7) | frozenset(EDX_EXT) | frozenset(ECX_EXT)
#: Features some model offers: the ones a ``+flag`` may add.
IMPLEMENTED = frozenset(f for m in CPU_MODELS.values() for f in m.features) | OPT_IN_FEATURES


@dataclass(frozen=True)
class CpuSpec:
    """A parsed ``cpu = "MODEL,+flag,-flag"`` setting."""

    model: CpuModelDef
    features: tuple[str, ...]


def parse_cpu_spec(text: str) -> CpuSpec:
    """``MODEL[,+FLAG|-FLAG|FLAG=on|off]...`` in QEMU's ``-cpu`` spelling; ValueError (one
    line, naming the part) for an unknown model or flag, or a flag hvdbg cannot implement."""
    parts = [p.strip() for p in text.split(",")]
    name = parts[0]
    if name not in CPU_MODELS:
        raise ValueError(f"unknown CPU model {name!r} (models: {', '.join(CPU_MODELS)})")
    model = CPU_MODELS[name]
    feats = list(model.features)
    for part in parts[1:]:
        if part[:1] in "+-":
            flag, on = part[1:], part[0] == "+"
        elif part.endswith(("=on", "=off")):
            flag, _, value = part.partition("=")
            on = value == "on"
        else:
            raise ValueError(f"{part!r}: expected +FLAG, -FLAG or FLAG=on|off")
        flag = QEMU_ALIASES.get(flag, flag)
        if flag not in ALL_FEATURES:
            raise ValueError(f"unknown CPU feature {flag!r}")
        if on and flag not in IMPLEMENTED:
            raise ValueError(f"CPU feature {flag!r} is not implemented by hvdbg's vCPU "
                             f"(it can offer: {', '.join(sorted(IMPLEMENTED))})")
        if on and flag not in feats:
            feats.append(flag)
        elif not on and flag in feats:
            feats.remove(flag)
    return CpuSpec(model, tuple(feats))


HYPERVISOR_SIGNATURE = b"hvdbghvdbghv"
_MAX_ANSWERS = 256   # a guest probing every leaf must not grow the memo without bound


def _bits(names: tuple[str, ...] | list[str], table: dict[str, int]) -> int:
    return sum(1 << table[n] for n in names if n in table)


def _regs_from_text(text: bytes) -> tuple[int, int, int]:
    return tuple(int.from_bytes(text[i:i + 4], "little") for i in (0, 4, 8))  # type: ignore[return-value]


@dataclass
class CpuidModel:
    """CPUID results for one vCPU.

    ``apic_id`` is what the guest reads as its initial APIC ID; hvdbg's bug scenario
    can make it differ from the LAPIC's real ID (``cpuid_apic_id = "same"``).
    """

    apic_id: int
    vcpu_count: int
    x2apic: bool = False
    features: tuple[str, ...] = DEFAULT_FEATURES
    engine_model: str = "haswell"     # the CpuModelDef's engine model

    def __setattr__(self, name: str, value) -> None:
        # any change of the model invalidates the answers computed so far
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_answers", {})

    def query(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) for CPUID.leaf.subleaf (memoized: CPUID exits are hot)."""
        key = (leaf, subleaf) if leaf in (7, 0xB) else leaf   # only leaves 7 and 0xB depend on ECX
        answer = self._answers.get(key)
        if answer is None:
            answer = self._compute(leaf, subleaf)
            if len(self._answers) < _MAX_ANSWERS:
                self._answers[key] = answer
        return answer

    def with_control_bits(self, leaf: int, ecx: int, cr4: int) -> int:
        """ECX of leaf 1 or 7 with OSXSAVE / OSPKE as CR4 has them."""
        for mleaf, _reg, bit, cr4_bit, feature in CR4_MIRRORS:
            if mleaf == leaf and feature in self.features and cr4 >> cr4_bit & 1:
                ecx |= 1 << bit
        return ecx

    def _compute(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        feats = list(self.features) + (["x2apic"] if self.x2apic else [])
        if leaf == 0:
            ebx, edx, ecx = _regs_from_text(b"GenuineIntel")
            return 0xB, ebx, ecx, edx
        if leaf == 1:
            eax = 0x000506E3  # family 6, model 0x5E, stepping 3
            logical = max(1, self.vcpu_count) & 0xFF
            ebx = (self.apic_id & 0xFF) << 24 | logical << 16 | 8 << 8
            return eax, ebx, _bits(feats, ECX1), _bits(feats, EDX1)
        if leaf == 0xB:
            # x2APIC topology: level 0 = SMT (1 thread), level 1 = core (vcpu_count)
            if subleaf == 0:
                return 0, 1, 0x100 | subleaf, self.apic_id
            if subleaf == 1:
                shift = max(1, (self.vcpu_count - 1).bit_length())
                return shift, self.vcpu_count, 0x200 | subleaf, self.apic_id
            return 0, 0, subleaf, self.apic_id
        if leaf == 7:
            if subleaf:
                return 0, 0, 0, 0
            return 0, _bits(feats, EBX7), _bits(feats, ECX7), 0
        if leaf == 0x40000000:
            ebx, ecx, edx = _regs_from_text(HYPERVISOR_SIGNATURE)
            return 0x40000000, ebx, ecx, edx
        if leaf == 0x80000000:
            return 0x80000008, 0, 0, 0
        if leaf == 0x80000001:
            return 0, 0, _bits(feats, ECX_EXT), _bits(feats, EDX_EXT)
        if leaf in (0x80000002, 0x80000003, 0x80000004):
            brand = b"hvdbg virtual CPU".ljust(48, b"\0")
            chunk = brand[(leaf - 0x80000002) * 16:][:16]
            return tuple(int.from_bytes(chunk[i:i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]
        if leaf == 0x80000008:
            return 0x3028, 0, 0, 0  # 40-bit physical, 48-bit linear addresses
        return 0, 0, 0, 0
