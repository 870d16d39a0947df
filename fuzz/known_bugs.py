"""Bugs the harnesses found in hvdbg/ and gdbstub/ that are still open, as data.

Each entry names the code at fault, what goes wrong, and the suggested fix; its
``matches`` predicate recognises inputs that trigger it, so a long run can skip a
known bug (``--skip-known``) and keep looking for new ones. The xfail tests in
tests/test_hardening_*.py reproduce each of them; docs/reliability.md lists them.
When one is fixed, its xfail test starts passing (strict) and the entry goes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from gdbstub.packet import Packet, PacketDecoder


@dataclass(frozen=True)
class KnownBug:
    key: str
    where: str
    what: str
    fix: str
    #: Recognises an input that triggers the bug (packet payloads as the stub decodes them).
    matches: Callable[[list[bytes]], bool] = lambda packets: False
    #: Regexes matched against a finding's diagnosis text (state-dependent bugs).
    signatures: tuple[str, ...] = ()

    def explains(self, detail: str) -> bool:
        return any(re.search(p, detail) for p in self.signatures)


def packets_of(raw: bytes) -> list[bytes]:
    """The payloads of the well-formed packets in a raw input (as the stub decodes them)."""
    return [e.data for e in PacketDecoder(1 << 22).feed(raw) if isinstance(e, Packet)]


KNOWN_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        key="wide-values-in-narrow-mode",
        where="hvdbg/vcpu.py:394 (Vcpu._ept_violation -> ept.walk) and hvdbg/vcpu.py:413 "
              "(Vcpu._paging_structure_ept_violation -> paging.walk); the values come from "
              "hvdbg/gdbtarget.py:106 (VmTarget.write_registers, no architectural checks)",
        what="A debugger can give a vCPU a state the CPU cannot be in: RIP above 4 GiB in 32-bit code, or "
             "EFER.LMA set with paging off (P/G packets). Unicorn then reports a fetch at a GPA of more "
             "than 48 bits (ept.walk_ept raises ValueError 'guest-physical address ... exceeds 48 bits') "
             "or a #PF whose CR2 has more than 32 bits in 32-bit paging (paging.walk raises ValueError "
             "'linear address ... exceeds 32 bits'). Both end the VM as internal_error instead of a "
             "classified outcome.",
        fix="In VmTarget.write_registers, refuse what mov-to-CR/WRMSR would refuse (CR0/CR4 reserved "
            "bits, CR3 above MAXPHYADDR, EFER.LMA is read-only, RIP wider than the current code size) with "
            "TargetError(EINVAL) -> E16. Defensively, in Vcpu._ept_violation treat a GPA >= 2^48 as an EPT "
            "violation without a walk, and in _paging_structure_ept_violation truncate CR2 to 32 bits "
            "outside long mode (as the CPU does), so any impossible state still ends classified.",
        signatures=(r"guest-physical address 0x[0-9a-f]+ exceeds 48 bits",
                    r"linear address 0x[0-9a-f]+ exceeds 32 bits in"),
    ),
)


#: Bugs found by the chaos guests (recognised by their diagnosis text only).
GUEST_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        key="efer-lma-at-reset",
        where="hvdbg/ucx.py:197-207 (set_control_registers), used by Vcpu.load_guest_state "
              "(hvdbg/vcpu.py:578); the crash itself is hvdbg/vcpu.py:394 (_ept_violation -> ept.walk)",
        what="Unicorn's UC_MODE_64 engine starts with CR0=0x11, CR4=0x50200 and EFER=0x500 (LMA set with "
             "paging off). set_control_registers toggles CR0.PG through 0 to make QEMU recompute LMA, but "
             "PG is already 0, so LMA stays 1: the BSP reads EFER=0x400 at the multiboot entry and APs "
             "in wait-for-SIPI show EFER=0x500, CR4=0x50200 (SDM Vol. 3A 9.1.1 / Table 9-1: EFER = 0 and "
             "CR4 = 0 after INIT). A guest whose CR4.PAE write is lost (smp.elf with the byte at file "
             "offset 0x1061 changed 0x22 -> 0x46: 'mov cr4, eax' becomes 'cmovbe esp, eax') then far-jumps "
             "to its 64-bit code segment and runs 64-bit code with paging off; the fetch of "
             "0xffffff800010009b reaches the EPT-fault hook as GPA 0xfff800010009b and ept.walk_ept "
             "raises ValueError: the VM ends as internal_error. On hardware the guest would fault.",
        fix="In set_control_registers, when the engine has LMA=1 and the state to load has LMA=0, pass "
            "through real long mode first (CR4.PAE=1, EFER.LME=1, CR0=PE|PG, then CR0.PG=0: QEMU clears "
            "LMA on that transition), then load CR0/CR3/CR4/EFER; reset APs' CR4/EFER the same way at "
            "INIT. Independently, make Vcpu._ept_violation treat a GPA >= 2^48 as an EPT violation "
            "without a walk so no guest state can end as internal_error.",
        signatures=(r"guest-physical address 0x[0-9a-f]+ exceeds 48 bits",),
    ),
    KnownBug(
        key="elf-header-offset-overflow",
        where="hvdbg/symbols.py:48 (SymbolTable._load); the same pattern in hvdbg/multiboot/kernel.py:137 "
              "and :152 (_elf_file / _plan_elf catch only ELFError)",
        what="A kernel whose ELF e_phoff is beyond 2^63 makes pyelftools seek there: "
             "OverflowError 'Python int too large to convert to C ssize_t', which SymbolTable._load does "
             "not catch (it catches ELFError, ValueError, KeyError). Machine() raises it, so `hvdbg run` "
             "prints a Python traceback (exit status 1) instead of a one-line load error.",
        fix="In SymbolTable._load catch every Exception from pyelftools (symbols are optional: start "
            "over with an empty table), and in multiboot/kernel.py turn (ELFError, OverflowError, "
            "ValueError, struct.error) from ELFFile / iter_segments into GuestLoadError.",
        signatures=(r"symbols\.py[\s\S]*OverflowError", r"multiboot/kernel\.py[\s\S]*OverflowError"),
    ),
)


def explaining_bug(detail: str) -> KnownBug | None:
    """The known bug whose signature matches a finding's diagnosis text, if any."""
    return next((b for b in KNOWN_BUGS + GUEST_BUGS if b.explains(detail)), None)


def known_bug_of(raw: bytes) -> KnownBug | None:
    packets = packets_of(raw)
    for bug in KNOWN_BUGS:
        if bug.matches(packets):
            return bug
    return None
