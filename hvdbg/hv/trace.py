"""The VM-exit trace: every exit of every vCPU, in order, with per-reason counts
(kvm_stat-like) and a running hash for determinism checks."""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import Counter, defaultdict, deque
from typing import NamedTuple

from hvdbg.vmx.exits import ExitReason


def reason_name(reason: int) -> str:
    try:
        return ExitReason(reason).name
    except ValueError:
        return f"REASON_{reason}"


class ExitRecord(NamedTuple):
    """One VM exit in the trace (a tuple: cheap to build at every exit)."""

    seq: int
    vcpu: int
    reason: int
    qualification: int
    rip: int
    instructions: int
    detail: str = ""

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)

    def to_json(self) -> dict:
        return {"seq": self.seq, "vcpu": self.vcpu, "reason": self.reason_name,
                "qualification": self.qualification, "rip": self.rip,
                "instructions": self.instructions, "detail": self.detail}


_HASHED = struct.Struct("<HHQQQ")   # vcpu, reason, qualification, rip, instructions
_U64 = (1 << 64) - 1
_HASH_CHUNK = 1 << 16


class ExitTrace:
    """Bounded ring of exit records plus exact counts and a hash over the whole run.

    Counting is by (vCPU, integer reason) and the hash is fed in chunks; names are
    resolved when counts are displayed: :meth:`record` runs at every VM exit.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.records: deque[ExitRecord] = deque(maxlen=capacity)
        self._counts: dict[tuple[int, int], int] = {}   # (vcpu, reason) -> exits
        self.total = 0
        self._hash = hashlib.blake2b(digest_size=16)
        self._unhashed = bytearray()   # packed records not yet fed to the hash
        self._lock = threading.Lock()
        self.listeners: list = []

    def record(self, vcpu: int, reason: int, qualification: int, rip: int, instructions: int,
               detail: str = "") -> ExitRecord:
        reason = int(reason)
        key = (vcpu, reason)
        with self._lock:
            rec = ExitRecord(self.total, vcpu, reason, qualification, rip, instructions, detail)
            self.total += 1
            self.records.append(rec)
            counts = self._counts
            counts[key] = counts.get(key, 0) + 1
            pending = self._unhashed
            pending += _HASHED.pack(vcpu, reason, qualification & _U64, rip & _U64, instructions)
            if len(pending) >= _HASH_CHUNK:
                self._hash.update(pending)
                pending.clear()
        for listener in self.listeners:
            listener(rec)
        return rec

    @property
    def counts(self) -> Counter[str]:
        """Exits per reason name over the whole run (kvm_stat-like)."""
        out: Counter[str] = Counter()
        with self._lock:
            for (_vcpu, reason), n in self._counts.items():
                out[reason_name(reason)] += n
        return out

    @property
    def per_vcpu(self) -> dict[int, Counter[str]]:
        """Exits per reason name for each vCPU that exited."""
        out: dict[int, Counter[str]] = defaultdict(Counter)
        with self._lock:
            for (vcpu, reason), n in self._counts.items():
                out[vcpu][reason_name(reason)] += n
        return dict(sorted(out.items()))

    def digest(self) -> str:
        """Hash of every record so far (blake2b over the packed records, in order: feeding
        them in chunks gives the same digest as one by one)."""
        with self._lock:
            if self._unhashed:
                self._hash.update(self._unhashed)
                self._unhashed.clear()
            return self._hash.copy().hexdigest()

    def last(self, n: int = 20, vcpu: int | None = None, reason: str | None = None) -> list[ExitRecord]:
        with self._lock:
            recs = [r for r in self.records if (vcpu is None or r.vcpu == vcpu)
                    and (reason is None or r.reason_name == reason)]
        return recs[-n:]
