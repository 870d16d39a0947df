"""Bugs the harnesses found in hvdbg/ and gdbstub/ that are still open, as data.

Each entry names the code at fault, what goes wrong, and the suggested fix; its
``matches`` predicate recognises inputs that trigger it, so a long run can skip a
known bug (``--skip-known``) and keep looking for new ones. The xfail tests in
tests/test_hardening_*.py reproduce each of them; docs/reliability.md lists them.
When one is fixed, its xfail test starts passing (strict) and the entry goes; the
record of fixed bugs (what broke, the fix, the commit) is in docs/reliability.md. The
tuples may be empty: the runners and tests only iterate over them.
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


#: Bugs of the GDB stub and its hvdbg target (recognised by their inputs or diagnosis text).
KNOWN_BUGS: tuple[KnownBug, ...] = ()


#: Bugs found by the chaos guests (recognised by their diagnosis text only).
GUEST_BUGS: tuple[KnownBug, ...] = ()


def explaining_bug(detail: str) -> KnownBug | None:
    """The known bug whose signature matches a finding's diagnosis text, if any."""
    return next((b for b in KNOWN_BUGS + GUEST_BUGS if b.explains(detail)), None)


def known_bug_of(raw: bytes) -> KnownBug | None:
    packets = packets_of(raw)
    for bug in KNOWN_BUGS:
        if bug.matches(packets):
            return bug
    return None
