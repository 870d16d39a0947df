"""vCPU scheduling policies: which vCPU each pCPU runs, for how long (docs/scheduling.md).

Pure policy objects (no Unicorn, no threads, no clocks) driven by an executor through
the :class:`SchedPolicy` calls; :mod:`hvdbg.run.sched.sim` drives them with a simulated SMP
guest for tests and the benchmark (``python bench/sched_sim.py``).
"""

from __future__ import annotations

from hvdbg.run.sched.cfs import CfsParams, CfsPolicy
from hvdbg.run.sched.core import (NICE_0_WEIGHT, UNLIMITED, RunFeedback, SchedError, SchedPolicy,
                              SliceEnd)
from hvdbg.run.sched.simple import FifoPolicy, PinnedPolicy, RoundRobinPolicy, RrParams
from hvdbg.run.sched.smp import SmpAwarePolicy, SmpParams

POLICIES = {
    "pinned": (PinnedPolicy, None),
    "fifo": (FifoPolicy, None),
    "rr": (RoundRobinPolicy, RrParams),
    "cfs": (CfsPolicy, CfsParams),
    "smp": (SmpAwarePolicy, SmpParams),
}
"""Policy name -> (class, parameter dataclass or None)."""


def make_policy(name: str, **params: int | bool) -> SchedPolicy:
    """A fresh policy by name, with tunables from its parameter dataclass."""
    try:
        cls, params_cls = POLICIES[name]
    except KeyError:
        raise SchedError(f"unknown scheduling policy {name!r} (have {', '.join(POLICIES)})") from None
    if params_cls is None:
        if params:
            raise SchedError(f"policy {name!r} takes no parameters (got {', '.join(sorted(params))})")
        return cls()
    try:
        return cls(params_cls(**params))
    except TypeError as e:
        raise SchedError(f"policy {name!r}: {e}") from None
    except ValueError as e:
        raise SchedError(str(e)) from None


__all__ = ["NICE_0_WEIGHT", "UNLIMITED", "POLICIES", "CfsParams", "CfsPolicy", "FifoPolicy",
           "PinnedPolicy", "RoundRobinPolicy", "RrParams", "RunFeedback", "SchedError",
           "SchedPolicy", "SliceEnd", "SmpAwarePolicy", "SmpParams", "make_policy"]
