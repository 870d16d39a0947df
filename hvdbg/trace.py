"""The VM-exit trace: every exit of every vCPU, in order, with per-reason counts
(kvm_stat-like) and a running hash for determinism checks."""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import Counter, deque
from dataclasses import dataclass

from hvdbg.exit_reasons import ExitReason


def reason_name(reason: int) -> str:
    try:
        return ExitReason(reason).name
    except ValueError:
        return f"REASON_{reason}"


@dataclass(frozen=True, slots=True)
class ExitRecord:
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


class ExitTrace:
    """Bounded ring of exit records plus exact counts and a hash over the whole run."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.records: deque[ExitRecord] = deque(maxlen=capacity)
        self.counts: Counter[str] = Counter()
        self.per_vcpu: dict[int, Counter[str]] = {}
        self.total = 0
        self._hash = hashlib.blake2b(digest_size=16)
        self._lock = threading.Lock()
        self.listeners: list = []

    def record(self, vcpu: int, reason: int, qualification: int, rip: int, instructions: int,
               detail: str = "") -> ExitRecord:
        with self._lock:
            rec = ExitRecord(self.total, vcpu, int(reason), qualification, rip, instructions, detail)
            self.total += 1
            self.records.append(rec)
            name = rec.reason_name
            self.counts[name] += 1
            self.per_vcpu.setdefault(vcpu, Counter())[name] += 1
            self._hash.update(struct.pack("<HHQQQ", vcpu, rec.reason, qualification & (2**64 - 1),
                                          rip & (2**64 - 1), instructions))
        for listener in self.listeners:
            listener(rec)
        return rec

    def digest(self) -> str:
        with self._lock:
            return self._hash.copy().hexdigest()

    def last(self, n: int = 20, vcpu: int | None = None, reason: str | None = None) -> list[ExitRecord]:
        with self._lock:
            recs = [r for r in self.records if (vcpu is None or r.vcpu == vcpu)
                    and (reason is None or r.reason_name == reason)]
        return recs[-n:]
